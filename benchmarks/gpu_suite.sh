#!/usr/bin/env bash
# Every GPU measurement behind docs/parity.md, docs/deployment.md and docs/benchmarks.md, one step a call:
#
#   benchmarks/gpu_suite.sh STEP [OUTDIR]      STEP: info | sweep-float32 | sweep-bfloat16 | sweep-float16 |
#                                                    train | verify | bench
#
# Needs resnet-spec installed with torch (CUDA), onnxruntime-gpu and, for the keras-jax leg, keras + JAX
# with CUDA. Each step writes Markdown/JSON into OUTDIR (default: gpu_out) entry by entry (a step that is
# interrupted keeps every entry it finished) and prints a short summary. DEVICE=cpu runs the sweep-float32
# and verify steps on the CPU (a dry run where no GPU is); MODELS=a,b limits them to those zoo entries.
set -u
step=${1:?usage: gpu_suite.sh STEP [OUTDIR]}
out=${2:-gpu_out}
dev=${DEVICE:-cuda}
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
TRAIN_SPECS="resnet20 resnet50 keras_resnet50v2 preact_resnet164 seresnet50 resnet50d"

case "$step" in
  info)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
    python3 -c "import torch, onnxruntime as o, jax, keras; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| onnxruntime', o.__version__, o.get_available_providers(), '| jax', jax.__version__, jax.devices(),
'| keras', keras.__version__)" | tee -a "$out/gpu.txt" ;;
  sweep-float32)
    python3 "$here/parity_sweep.py" --device "$dev" --backends torch,onnx,keras-jax --dtype float32 --batch 4 \
      ${MODELS:+--models "$MODELS"} > "$out/sweep_float32.md"; tail -4 "$out/sweep_float32.md" ;;
  sweep-bfloat16|sweep-float16)
    dt=${step#sweep-}
    python3 "$here/parity_sweep.py" --device cuda --backends torch,keras-jax --dtype "$dt" --batch 4 \
      > "$out/sweep_$dt.md"; tail -4 "$out/sweep_$dt.md" ;;
  train)
    for s in $TRAIN_SPECS; do
      for dt in float32 bfloat16; do
        echo "## $s $dt"
        resnet-spec parity "$s" --train --device cuda --dtype "$dt" --backends torch,keras-jax --batch 8 2>&1 | tail -14
      done
    done > "$out/train.txt"; grep -E "^## |PASS|FAIL" "$out/train.txt" ;;
  verify)
    python3 "$here/gpu_verify_zoo.py" --device "$dev" ${MODELS:+--models "$MODELS"} --out "$out/verify.md"; tail -5 "$out/verify.md" ;;
  bench)
    python3 "$here/bench_gpu.py" --json "$out/bench.json" > "$out/bench.md"; cat "$out/bench.md" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
