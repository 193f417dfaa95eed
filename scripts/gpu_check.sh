#!/usr/bin/env bash
# The first thing to run when a GPU is lent: everything only a GPU shows, one log per step.
#   bash scripts/gpu_check.sh [log dir]      (default: gpu_check/; needs the project installed: see README)
# 1. the whole test suite (Triton tests on CUDA tensors, the gpu and slow markers included)
# 2. a short training run on CUDA (fp32 -> QAT -> integer engine, the smoke experiment)
# 3. the kernel and model benchmarks on the GPU, and the Triton autotuning sweep (quick)
set -uo pipefail
cd "$(dirname "$0")/.."
logs="${1:-gpu_check}"
mkdir -p "$logs"
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/glue_data}"
status=0
step() {
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$logs/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (rc $?), see $logs/$name.log"; status=1; fi
  tail -3 "$logs/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$logs/gpu.txt"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'" || exit 1
step tests python -m pytest -q
step train python scripts/train.py experiment=smoke task=sst2 device=cuda "hydra.run.dir=$logs/smoke_run"
step bench_kernels python scripts/bench_kernels.py --device cuda --quick
step bench_model python scripts/bench_model.py --device cuda --no-train
step autotune python scripts/autotune.py --quick --out "$logs/autotune"
exit $status
