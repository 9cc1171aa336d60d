#!/usr/bin/env bash
# The four benchmarks on one CUDA GPU with bf16 autocast, channels_last and torch.compile, and the UNet
# training step through the distributed path (torchrun, DDP on 1 GPU), sized to finish within 9 minutes (each
# part has its own time limit; together they add up to 540 s). The UNet benchmark and the DDP step print model
# FLOP utilisation of the training step: FlopCounterMode's forward FLOPs x3 over the step time, divided by
# PEAK_TFLOPS (dense bf16; default 989 for H100/H200 SXM).
#
#   bench/gpu.sh                 # on the GPU; results in $WORKDIR/bench/*-cuda.json (default ./outputs)
#   bench/gpu.sh --device cpu    # dry run: the same flags at toy sizes on the CPU (compile traced with the
#                                # 'eager' backend), a smoke check; results in ./outputs/gpu-dry-run
#
# The first run in a work folder also trains two small domain classifiers (MNIST 32x32 for eval_throughput,
# 16x16 for sweep_overhead's quickstart trial); later runs reuse them. Per-part limits in seconds can be
# changed with LIMITS="unet cost eval sweep ddp", e.g. LIMITS="300 80 50 50 60" (defaults: 220 100 70 90 60).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
case "${1:-}" in
  "") ;;
  --device) DEVICE="${2:?--device needs cpu or cuda}" ;;
  *) echo "usage: bench/gpu.sh [--device cpu|cuda]" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-.venv/bin/python}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
SPEED=(--bf16 --channels-last)

if [[ "$DEVICE" == cuda ]]; then
  WORKDIR="${WORKDIR:-outputs}"
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device; for a dry run: bench/gpu.sh --device cpu')"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
  UNET=(--sizes 32 --batch 64 --repeats 10 --warmup 3 --sample-sizes 32 --ddim-steps 50 --sample-repeats 3
        --compile inductor)
  COST=(--resolution 256 --batch 16 --ddim-steps 50 --repeats 2)  # eager: compiling 5 UNets would eat the budget
  EVAL=(--n 1000 --eval-n 1000 --batch-size 250)
  SWEEP=(--trials 1)  # the quickstart spec's first trial (f = 1); its three take about 10 minutes on 2 CPU cores
  DDP=(--resolution 256 --f 8 --batch 64 --repeats 20 --warmup 3)
  RANKS=1
  DEFAULT_LIMITS="220 100 70 90 60"
  THREADS=$(nproc)  # CPU-side work (data, the domain classifiers) should use the GPU machine's cores
else
  WORKDIR="${WORKDIR:-outputs/gpu-dry-run}"
  UNET=(--sizes 4 --batch 2 --base-channels 16 --context-dim 32 --repeats 1 --sample-sizes 4 --ddim-steps 3
        --sample-repeats 1 --compile eager)
  COST=(--resolution 32 --factors 1,2,4 --batch 2 --ddim-steps 2 --repeats 1)
  EVAL=(--n 20 --eval-n 20 --batch-size 10)
  SWEEP=(--trials 1 -o training.autoencoder.steps=5 -o training.diffusion.steps=5 -o training.autoencoder.log_every=5
         -o training.diffusion.log_every=5 -o evaluation.num_samples=20 -o evaluation.kid_subset_size=10)
  DDP=(--resolution 32 --f 8 --batch 4 --repeats 2 --warmup 1)
  RANKS=2  # gloo on the CPU
  DEFAULT_LIMITS="240 120 300 300 120"
  THREADS=2
fi
read -r -a LIMITS <<< "${LIMITS:-$DEFAULT_LIMITS}"
COMMON=(--device "$DEVICE" --workdir "$WORKDIR" --threads "$THREADS")

failed=()
run_part() {  # run_part LIMIT_S MODULE ARGS...: one benchmark under its time limit; a failure does not stop the rest
  local limit=$1 module=$2
  shift 2
  echo "=== $module (limit ${limit} s): $PYTHON -m bench.$module ${*}"
  if ! timeout --signal=INT --kill-after=10 "$limit" "$PYTHON" -m "bench.$module" "$@"; then
    failed+=("$module")
  fi
}

run_part "${LIMITS[0]}" unet_vs_diffusers "${COMMON[@]}" "${SPEED[@]}" --peak-tflops "$PEAK_TFLOPS" "${UNET[@]}"
run_part "${LIMITS[1]}" cost_vs_f "${COMMON[@]}" "${SPEED[@]}" "${COST[@]}"
run_part "${LIMITS[2]}" eval_throughput "${COMMON[@]}" "${EVAL[@]}"
run_part "${LIMITS[3]}" sweep_overhead "${COMMON[@]}" "${SWEEP[@]}"
echo "=== ddp_step on $RANKS rank(s) (limit ${LIMITS[4]} s)"
if ! timeout --signal=INT --kill-after=10 "${LIMITS[4]}" "$PYTHON" -m torch.distributed.run --standalone \
     --nproc_per_node="$RANKS" -m bench.ddp_step "${COMMON[@]}" --peak-tflops "$PEAK_TFLOPS" "${DDP[@]}"; then
  failed+=(ddp_step)
fi

if ((${#failed[@]})); then
  echo "failed or out of time: ${failed[*]}" >&2
  exit 1
fi
echo "all parts finished; results in $WORKDIR/bench/"
