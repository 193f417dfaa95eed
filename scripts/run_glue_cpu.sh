#!/usr/bin/env bash
# The RESULTS.md runs on a 2-core CPU with all-MiniLM-L6-v2; rerun to resume. Logs in runs/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/glue_data}"
mkdir -p runs/logs
run() { local name=$1; shift; echo "== $name: python scripts/train.py $*"; /usr/bin/time -v python scripts/train.py "$@" > "runs/logs/$name.log" 2>&1; }
for t in mrpc rte cola stsb; do run "$t" experiment=small_task_minilm_cpu task=$t; done
run sst2 experiment=sst2_minilm_cpu
run sst2_ablation -m sweep=force_dequant task=sst2 init_from=runs/sst2/minilm/qat-none-seed42/fp32/model
python scripts/report.py runs multirun --out benchmarks/glue_runs.md --plot benchmarks/glue_results.png
