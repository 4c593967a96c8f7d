#!/usr/bin/env bash
# Issue 15's GPU check: bf16 pretraining of `tiny` with the real loader (tokens/s per GPU,
# MFU, loader wait fraction, peak GPU memory), torch.compile off and on, the bf16 loss
# against an fp32 run of the same steps, and fine-tuning one task on the GPU (not yet
# run on a GPU, so its wall time there is unknown).  It fails loudly (exit 2) where no
# CUDA GPU is visible and fails (exit 1) if any step ran on the CPU: it never falls
# back silently.
#
#   benchmarks/gpu_check.sh                   # on a GPU node
#   benchmarks/gpu_check.sh --dry-run         # the same path on the CPU (debug, fp32): 115 s, idle 2 cores
#   benchmarks/gpu_check.sh --help            # every option (steps, batch, workers, peak TFLOP/s)
#
# The work is done by benchmarks/gpu_check.py (its docstring explains each step and the
# loss tolerance).  Python: $PYTHON, else the project's .venv, else python3 on PATH.
# OMP_NUM_THREADS defaults to 1: the training process only drives the GPU, the loader
# workers decode with one thread each, and on a shared node more threads only contend.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then
        python="$repo/.venv/bin/python"
    else
        python="$(command -v python3)"
    fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}"

if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L || true  # for the log: what the node has (torch decides what is used)
fi
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
