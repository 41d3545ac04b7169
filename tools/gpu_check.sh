#!/usr/bin/env bash
# One accelerator call: which tokamax kernels run for r1jax's shapes, then the v3-small train-step
# benchmark with the HF peer in the same run. Results land in $OUT (kernels.json, bench.json, log).
#   usage (device machine, repo root): bash tools/gpu_check.sh PEER_SCRIPT
# Missing packages travel as wheels in .whl/ (installed into /tmp/site when present).
set -uo pipefail
OUT=${OUT:-/tmp/r1jax-gpu}; mkdir -p "$OUT"
PEER=${1:-../shared/bench/hf_peer.py}
if ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import jax, flax, optax, tokamax, transformers, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, jax.devices())"
timeout 150 python3 tools/kernel_probe.py --out "$OUT/kernels.json" 2>&1 | grep -v Warning | tee "$OUT/kernels.log"
timeout 420 python3 tools/bench.py --preset v3-small --batch 2 --seq 4096 --steps 10 --peer "$PEER" \
  --out "$OUT/bench.json" 2>&1 | grep -v Warning | tee "$OUT/bench.log"
# The same step with the LM head + cross-entropy chunked (no [B, T, V] float32 logits).
timeout 300 python3 tools/bench.py --preset v3-small --batch 2 --seq 4096 --steps 10 --loss_chunk 4096 \
  --out "$OUT/bench_chunk.json" 2>&1 | grep -v Warning | tee "$OUT/bench_chunk.log"
# Generation: prefill and decode tokens/s on the latent cache, cache bytes per token vs per-head K/V.
timeout 240 python3 tools/bench_decode.py --preset v3-small --batch 32 --prompt_len 1024 --new_tokens 128 \
  --out "$OUT/bench_decode.json" 2>&1 | grep -v Warning | tee "$OUT/bench_decode.log"
