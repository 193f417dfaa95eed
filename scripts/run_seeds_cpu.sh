#!/usr/bin/env bash
# Seeds for the fidelity table: per task, three full runs (fp32 -> QAT -> integer engine, each seeded), then from
# each run's fp32 model PTQ and QAT distilled from that fp32 model (distill=logits). Rerun to resume; logs in
# runs/logs/. Then: python scripts/report.py multirun
#   bash scripts/run_seeds_cpu.sh [tasks...]   (default: rte mrpc stsb cola)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/glue_data}"
mkdir -p runs/logs
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(rte mrpc stsb cola)
for t in "${tasks[@]}"; do
  echo "== $t: QAT, seeds 1,2,3"
  /usr/bin/time -v python scripts/train.py -m experiment=small_task_minilm_cpu task="$t" seed=1,2,3 \
    > "runs/logs/seeds_$t.log" 2>&1
  for s in 1 2 3; do
    echo "== $t: PTQ, seed $s"
    /usr/bin/time -v python scripts/train.py -m experiment=small_task_minilm_cpu task="$t" seed="$s" path=ptq \
      "init_from=multirun/$t/minilm/qat-none-seed$s/fp32/model" > "runs/logs/ptq_${t}_seed$s.log" 2>&1
    echo "== $t: QAT distilled from fp32, seed $s"
    /usr/bin/time -v python scripts/train.py -m experiment=small_task_minilm_cpu task="$t" seed="$s" distill=logits \
      "init_from=multirun/$t/minilm/qat-none-seed$s/fp32/model" > "runs/logs/distill_${t}_seed$s.log" 2>&1
  done
done
