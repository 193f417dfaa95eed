#!/usr/bin/env bash
# The RESULTS.md runs on a 2-core CPU with all-MiniLM-L6-v2; rerun to resume. Logs in runs/logs/.
#   bash scripts/run_glue_cpu.sh [tasks...]   (default: sst2 mrpc rte cola stsb sst2_ablation)
set -euo pipefail
cd "$(dirname "$0")/.."
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/glue_data}"
mkdir -p runs/logs
run() { local name=$1; shift; echo "== $name: python scripts/train.py $*"; /usr/bin/time -v python scripts/train.py "$@" > "runs/logs/$name.log" 2>&1; }
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(sst2 mrpc rte cola stsb sst2_ablation)
for t in "${tasks[@]}"; do
  case $t in
    sst2) run sst2 experiment=sst2_minilm_cpu ;;
    sst2_ablation) run sst2_ablation -m sweep=force_dequant task=sst2 init_from=runs/sst2/minilm/qat-none-seed42/fp32/model ;;
    *) run "$t" experiment=small_task_minilm_cpu task="$t" ;;
  esac
done
python scripts/report.py runs multirun --out benchmarks/glue_runs.md --plot benchmarks/glue_results.png
