#!/usr/bin/env bash
# One accelerator call per stage (each fits the device tool's 10-minute command limit); results land in
# $OUT as JSON + log. Stages:
#   main      v3-small 2x4096 full train step (chunked LM head + CE) with the HF peer in the same run,
#             then the decode benchmark (latent cache)                                   (~6 min)
#   variants  the same step without loss chunking, with remat full and remat dots          (~6 min)
#   kernels   which tokamax kernels run for r1jax's shapes (tools/kernel_probe.py), then the
#             step with attention over key ranges instead of a mask (--attention_mask ranges) (~5 min)
#   parts     the step's time per part: attention, MoE, dense MLP, head + CE, AdamW      (~4 min)
#   scaling   tokens/s and memory vs sequence length and routed-expert count              (~9 min)
#   convert   weight conversion on the machine's 16 cores, no GPU (tools/bench_convert.py) (~4 min)
#   lora_node one H200 as one GPU of an 8 x H200 node fine-tuning R1-671B with LoRA: all 61 layers,
#             32 of the 256 routed experts, FP8 base, rank-16 adapters, a real step, peak memory
#             (tools/lora_node_check.py; its docstring says what is approximated), then the LoRA
#             step next to the full step on v3-small (tools/bench.py --lora 16)    (~8 min)
#             CPU check of the same script: LORA_NODE_ARGS="--preset tiny --experts 8 --seq 64"
#   distill   R1-Distill-Qwen-7B full fine-tuning on one H200 as configs/distill_qwen_7b.py runs it
#             (float32 params, bf16 Adam moments, remat full, its micro-batch 4 x 4096, LM head in
#             4096-position chunks): tokens/s, MFU, peak memory against the config's estimates (~95
#             GiB with an in-place update, 136 GiB by the CPU compiler's schedule), with the
#             transformers peer (Qwen2ForCausalLM, gradient checkpointing) in the same run
#             (tools/bench.py --peer). Estimate: a step is 8 x 7.07e9 x 16,384 = 0.93 PFLOP (remat
#             full: 8 N instead of 6 N), ~2.5 s at 40% of 989 TFLOP/s; peer ~2 min (init, 7 steps),
#             r1jax ~3 min (init, two loss checks, compile, 7 steps)                      (~6 min)
#             CPU check of the same command line:
#             DISTILL_ARGS="--preset tiny-qwen2 --batch 2 --seq 128 --steps 2 --warmup 1" bash tools/gpu_check.sh distill
#   usage (device machine, repo root): bash tools/gpu_check.sh [STAGE]
# Missing packages travel as wheels in .whl/ (installed into /tmp/site when present).
set -uo pipefail
OUT=${OUT:-/tmp/r1jax-gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import jax, flax, optax, tokamax, transformers, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, jax.devices())"
STAGE=${1:-main}
bench() {  # NAME TIMEOUT ARGS...: one tools/bench.py run of v3-small 2 x 4096
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 tools/bench.py --preset v3-small --batch 2 --seq 4096 --steps 10 "$@" \
    --out "$OUT/$name.json" 2>&1 | grep -v Warning | tee "$OUT/$name.log"
}
case "$STAGE" in
  main)
    bench bench 360 --loss_chunk 4096 --peer
    # Generation: prefill and decode tokens/s on the latent cache, cache bytes per token vs per-head K/V.
    timeout 180 python3 tools/bench_decode.py --preset v3-small --batch 32 --prompt_len 1024 --new_tokens 128 \
      --out "$OUT/bench_decode.json" 2>&1 | grep -v Warning | tee "$OUT/bench_decode.log" ;;
  variants)
    bench bench_full_logits 150 --loss_chunk 0
    bench bench_remat_full 150 --loss_chunk 4096 --remat full
    bench bench_remat_dots 150 --loss_chunk 4096 --remat dots ;;
  parts)
    timeout 400 python3 tools/bench_parts.py --preset v3-small --batch 2 --seq 4096 --loss_chunk 4096 \
      --out "$OUT/parts.json" 2>&1 | grep -v Warning | tee "$OUT/parts.log" ;;
  kernels)
    timeout 150 python3 tools/kernel_probe.py --out "$OUT/kernels.json" 2>&1 | grep -v Warning | tee "$OUT/kernels.log"
    bench bench_ranges 200 --loss_chunk 4096 --attention_mask ranges ;;
  scaling)
    timeout 560 python3 tools/bench_scaling.py --steps 3 --out "$OUT/scaling.json" 2>&1 | grep -v Warning \
      | tee "$OUT/scaling.log" ;;
  convert)
    timeout 560 python3 tools/bench_convert.py --workers 8 --json 2>&1 | grep -v Warning \
      | tee "$OUT/convert.log" ;;
  lora_node)
    # shellcheck disable=SC2086  # LORA_NODE_ARGS is a list of flags
    timeout 400 python3 tools/lora_node_check.py ${LORA_NODE_ARGS:-} --out "$OUT/lora_node.json" 2>&1 \
      | grep -v Warning | tee "$OUT/lora_node.log"
    bench bench_lora 150 --loss_chunk 4096 --lora 16 ;;
  distill)
    # shellcheck disable=SC2086  # DISTILL_ARGS is a list of flags (later flags win)
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout 540 python3 tools/bench.py --preset r1-distill-qwen-7b \
      --batch 4 --seq 4096 --steps 5 --warmup 2 --remat full --loss_chunk 4096 --param_dtype float32 \
      --state_dtype bfloat16 --peer ${DISTILL_ARGS:-} --out "$OUT/distill.json" 2>&1 | grep -v Warning \
      | tee "$OUT/distill.log" ;;
  *) echo "unknown stage $STAGE (main, variants, kernels, parts, scaling, convert, lora_node, distill)" >&2; exit 2 ;;
esac
