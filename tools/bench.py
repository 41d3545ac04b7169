"""Train-step benchmark on the local accelerator, with the HF peer measured in the same run.

    python tools/bench.py --preset v3-small --batch 2 --seq 4096 --peer --out tools/results/bench_h200.json
    python tools/bench.py --small --batch 2 --seq 128 --steps 3 --peer     # CPU
    python tools/bench.py --small --batch 2 --seq 128 --steps 3 --lora 16  # LoRA step vs full step
    python tools/bench.py --preset r1-distill-qwen-7b --batch 8 --seq 4096 --remat full --loss_chunk 4096 \
        --state_dtype bfloat16 --peer                                       # 7B full fine-tuning, one H200
    python tools/bench.py --preset tiny-qwen2 --batch 2 --seq 128 --steps 3 --peer   # the same, CPU

--small shrinks v3-small (SMALL below) for CPU runs; the tiny-llama and tiny-qwen2 presets are the
dense families' CPU sizes. The peer gets the same flags, so the two implementations are compared on
the same config on a CPU too (tests/tools/test_bench.py runs it).

Times the full r1jax train step (forward, backward, AdamW update; bf16 compute, --param_dtype master
params, default float32, and --state_dtype Adam moments, default float32) after warm-up, median of
--steps; checks the bf16 loss against a float32-compute forward on the same batch; prints tokens/s,
model TFLOP/s (the family's, r1jax.models.registry.train_flops_per_token), MFU against the device's
bf16 peak, peak device memory next to the analytic need of params + the float32 gradient
accumulator (r1jax/train/step.py) + Adam state at those dtypes, and compile time.
With --peer, runs tools/hf_peer.py (HF transformers' model of the same config, any family: forward +
backward only, gradient checkpointing with --remat full) in a subprocess first and prints our
tokens/s over its.
With --lora RANK, also times the LoRA step (r1jax/models/common/lora.py adapters of that rank on
--lora_targets, trained as r1jax/train/loop.py trains them: split_trained, the base an undonated frozen
input; --fp8_base holds its projections as FP8 codes + scales) on the same model, batch and step
options, and prints its step time over the full step's (below 1: the LoRA step is cheaper).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1jax.train.monitor import PEAK_TFLOPS
from r1jax.models import registry
from r1jax.models.registry import preset
from r1jax.models.common.config import LoraConfig
from r1jax.train.optim import adam_with_dtype
from r1jax.train.step import StepConfig, loss_fn, train_step
from r1jax.models.common.partition import split_trained



# v3-small shrunk for CPU runs (--small) of the step tools and of the side-by-side with the peer.
SMALL = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                  num_hidden_layers=3, num_attention_heads=4, n_routed_experts=16, kv_lora_rank=64,
                  q_lora_rank=96, qk_rope_head_dim=16, v_head_dim=32, qk_nope_head_dim=32, n_group=4,
                  topk_group=2, num_experts_per_tok=4)


def shape_arguments(p, loss_chunk: int = 4096) -> None:
    """The config and batch flags the step tools share (bench_parts.py, residuals.py)."""
    p.add_argument("--preset", default="v3-small")
    p.add_argument("--small", action="store_true", help="v3-small shrunk (SMALL) for CPU runs")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--loss_chunk", type=int, default=loss_chunk,
                   help="LM head + cross-entropy in chunks of this many positions (0: full logits)")


def init_state(cfg):
    """(graphdef, params, rest) of a randomly initialized model, created on the default device."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0))))

    @jax.jit
    def init():
        _, params, rest = nnx.split(registry.build(cfg, nnx.Rngs(0)), nnx.Param, ...)
        return params, rest

    params, rest = init()
    return graphdef, params, rest


def make_batch(cfg, batch, seq, seed=0):
    tokens = jax.random.randint(jax.random.key(seed), (batch, seq), 0, cfg.vocab_size, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    return {"tokens": tokens, "positions": positions, "segment_ids": jnp.ones((batch, seq), jnp.int32)}


def peak_memory_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_peer.py")


def run_peer(args) -> list[dict]:
    """Runs tools/hf_peer.py on this run's config and batch shape; returns its result rows."""
    with tempfile.TemporaryDirectory() as out:
        result = os.path.join(out, "hf_peer.json")
        cmd = [sys.executable, PEER, "--preset", args.preset, "--batch", str(args.batch),
               "--seq", str(args.seq), "--experts", str(args.experts), "--out", result,
               "--remat", "full" if args.remat == "full" else "none"]
        r = subprocess.run(cmd + (["--small"] if args.small else []), capture_output=True, text=True,
                           timeout=1200)
        print(r.stdout + r.stderr[-2000:], file=sys.stderr)
        return json.load(open(result)) if os.path.exists(result) else []


def adamw(state_dtype: str) -> optax.GradientTransformation:
    """optax.adamw(1e-5, weight_decay=0.1) with its moments stored in `state_dtype`
    (r1jax.train.optim.adam_with_dtype: bfloat16 halves them, as optim.state_dtype does)."""
    if state_dtype == "float32":
        return optax.adamw(1e-5, weight_decay=0.1)
    return optax.chain(adam_with_dtype(0.9, 0.999, 1e-8, state_dtype), optax.add_decayed_weights(0.1),
                       optax.scale(-1e-5))


def state_bytes_per_param(param_dtype: str, state_dtype: str) -> int:
    """Bytes of training state per parameter: the parameter, the train step's float32 gradient
    accumulator (r1jax/train/step.py) and two Adam moments."""
    return jnp.dtype(param_dtype).itemsize + 4 + 2 * jnp.dtype(state_dtype).itemsize


def bench(args) -> dict:
    cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.param_dtype, remat=args.remat,
                 attention_mask=args.attention_mask, **(SMALL if args.small else {}))
    if args.experts:  # same active parameters per token, more (or fewer) routed experts
        cfg = cfg.replace(n_routed_experts=args.experts)
    fpt = registry.train_flops_per_token(cfg, args.seq)
    device = jax.devices()[0]
    graphdef, params, rest = init_state(cfg)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    optimizer = adamw(args.state_dtype)
    opt_state = jax.jit(optimizer.init)(params)
    batch = make_batch(cfg, args.batch, args.seq)

    # Correctness: the run's loss against a float32-compute forward of the same params and batch.
    graphdef32 = nnx.graphdef(nnx.eval_shape(lambda: registry.build(cfg.replace(dtype="float32"),
                                                                    nnx.Rngs(0))))
    sc = StepConfig(loss_chunk=args.loss_chunk)   # chunked as the step: no whole-batch logits
    loss16 = float(jax.jit(loss_fn, static_argnums=(2, 4))(params, rest, graphdef, batch, sc)[0])
    loss32 = float(jax.jit(loss_fn, static_argnums=(2, 4))(params, rest, graphdef32, batch, sc)[0])

    step = jax.jit(functools.partial(train_step, graphdef, optimizer, StepConfig(loss_chunk=args.loss_chunk)),
                   donate_argnums=(0, 1, 2))
    t0 = time.perf_counter()
    compiled = step.lower(params, rest, opt_state, batch).compile()
    compile_s = time.perf_counter() - t0
    times, m = time_steps(compiled, (params, rest, opt_state), batch, args.steps, args.warmup)
    sec = statistics.median(times)
    tok_s = args.batch * args.seq / sec
    tflops = fpt * tok_s / 1e12
    peak = PEAK_TFLOPS.get(device.device_kind)
    return {
        "impl": "r1jax", "preset": args.preset + ("/small" if args.small else ""),
        "batch": args.batch, "seq": args.seq,
        "n_routed_experts": getattr(cfg, "n_routed_experts", 0), "loss_chunk": args.loss_chunk,
        "remat": args.remat, "dtype": args.dtype, "param_dtype": args.param_dtype,
        "state_dtype": args.state_dtype,
        "attention_mask": args.attention_mask,
        "device": device.device_kind, "jax": jax.__version__, "params_B": n_params / 1e9,
        "step_ms": sec * 1e3, "tokens_per_s": tok_s, "model_tflops": tflops,
        "mfu": None if peak is None else tflops / peak, "peak_mem_gib": peak_memory_gib(),
        "analytic_state_gib": n_params * state_bytes_per_param(args.param_dtype, args.state_dtype) / 2**30,
        "compile_s": compile_s, "loss_bf16": loss16, "loss_f32": loss32,
        "loss_rel_diff": abs(loss16 - loss32) / abs(loss32), "final_loss": float(m["loss"]),
        "step_times_ms": [t * 1e3 for t in times],
    }


def time_steps(compiled, state, batch, steps: int, warmup: int, extra=()) -> tuple[list[float], dict]:
    """(seconds per step, last metrics) of `steps` timed runs after `warmup` of a compiled train
    step; state = (params, rest, opt_state), threaded through (donated); extra: trailing arguments
    (frozen, key) passed unchanged."""
    m = None
    for _ in range(warmup):
        *state, m = compiled(*state, batch, *extra)
    if m is not None:
        jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        *state, m = compiled(*state, batch, *extra)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    return times, m


def bench_lora(args, full: dict) -> dict:
    """The LoRA step on the model of `full` (bench's result): adapters of rank args.lora on
    args.lora_targets, float32 adapters and AdamW moments, the base (frozen) in the full step's
    parameter dtype, or FP8 with args.fp8_base; same batch, StepConfig and optimizer."""
    targets = tuple(t for t in args.lora_targets.split(",") if t)
    cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.param_dtype, remat=args.remat,
                 attention_mask=args.attention_mask, fp8_weights=args.fp8_base,
                 lora=LoraConfig(rank=args.lora, targets=targets), **(SMALL if args.small else {}))
    if args.experts:
        cfg = cfg.replace(n_routed_experts=args.experts)
    graphdef = split_trained(nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0))))[0]
    params, rest, frozen = jax.jit(lambda: split_trained(registry.build(cfg, nnx.Rngs(0)))[1:])()
    optimizer = optax.adamw(1e-5, weight_decay=0.1)
    opt_state = jax.jit(optimizer.init)(params)
    batch = make_batch(cfg, args.batch, args.seq)
    step = jax.jit(functools.partial(train_step, graphdef, optimizer, StepConfig(loss_chunk=args.loss_chunk)),
                   donate_argnums=(0, 1, 2))
    t0 = time.perf_counter()
    compiled = step.lower(params, rest, opt_state, batch, frozen, None).compile()
    compile_s = time.perf_counter() - t0
    times, m = time_steps(compiled, (params, rest, opt_state), batch, args.steps, args.warmup,
                          (frozen, None))
    sec = statistics.median(times)
    return {"impl": "r1jax-lora", "rank": args.lora, "targets": ",".join(targets),
            "fp8_base": args.fp8_base, "adapter_params": sum(x.size for x in jax.tree.leaves(params)),
            "frozen_params": sum(x.size for x in jax.tree.leaves(frozen)),
            "step_ms": sec * 1e3, "tokens_per_s": args.batch * args.seq / sec,
            "model_tflops": registry.train_flops_per_token(cfg, args.seq) * args.batch * args.seq / sec / 1e12,
            "peak_mem_gib": peak_memory_gib(), "compile_s": compile_s,
            "final_loss": float(m["loss"]), "step_times_ms": [t * 1e3 for t in times],
            "step_time_over_full": sec * 1e3 / full["step_ms"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(p, loss_chunk=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
    p.add_argument("--param_dtype", default="float32", choices=["bfloat16", "float32"],
                   help="master parameters (model.param_dtype)")
    p.add_argument("--state_dtype", default="float32", choices=["bfloat16", "float32"],
                   help="Adam moments (optim.state_dtype)")
    p.add_argument("--remat", default="none", choices=["none", "full", "dots", "dots_no_batch"])
    p.add_argument("--attention_mask", default="dense", choices=["dense", "ranges"],
                   help="packed attention as a [B, 1, T, S] mask or as key ranges (ModelConfig.attention_mask)")
    p.add_argument("--experts", type=int, default=0, help="override the number of routed experts")
    p.add_argument("--peer", action="store_true",
                   help="also measure tools/hf_peer.py (transformers) on the same config, first")
    p.add_argument("--lora", type=int, default=0,
                   help="also time the LoRA step with adapters of this rank (0: no)")
    p.add_argument("--lora_targets", default=",".join(LoraConfig().targets),
                   help="groups with adapters (ModelConfig ADAPTABLE_GROUPS)")
    p.add_argument("--fp8_base", action="store_true", help="the LoRA step's base projections in FP8")
    p.add_argument("--out", help="write the results (JSON) here")
    a = p.parse_args(argv)
    if a.small and a.preset != "v3-small":
        p.error("--small shrinks v3-small; use --preset v3-small")
    # The peer runs first, in its own process: once JAX holds the device memory, torch cannot get it.
    peer_rows = run_peer(a) if a.peer else []
    ours = bench(a)
    print(json.dumps(ours), flush=True)
    lora_rows = [bench_lora(a, ours)] if a.lora else []
    for r in lora_rows:
        print(json.dumps(r), flush=True)
    rows = [ours] + lora_rows + peer_rows
    print(f"\n{'impl':<16}{'tokens/s':>12}{'TFLOP/s':>10}{'peak GiB':>10}{'step ms':>10}")
    for r in rows:
        mem = r.get("peak_mem_gib")
        print(f"{r['impl']:<16}{r['tokens_per_s']:>12.0f}{r['model_tflops']:>10.1f}"
              f"{(mem or 0):>10.1f}{r['step_ms']:>10.1f}")
    peers = [r for r in rows[1:] if r["impl"] in ("hf-grouped_mm", "hf")]
    if peers:
        name = "HF grouped_mm" if peers[0]["impl"] == "hf-grouped_mm" else "HF"
        print(f"r1jax full train step / {name} fwd+bwd tokens/s: "
              f"{ours['tokens_per_s'] / peers[0]['tokens_per_s']:.2f}x")
    for r in lora_rows:
        print(f"LoRA step (rank {r['rank']} on {r['targets']}, {r['adapter_params']:,} adapter "
              f"parameters, {'FP8' if r['fp8_base'] else 'float32'} base) / full step time: "
              f"{r['step_time_over_full']:.2f} ({r['step_ms']:.1f} / {ours['step_ms']:.1f} ms)")
    print(f"loss bf16 {ours['loss_bf16']:.5f} vs float32 {ours['loss_f32']:.5f} "
          f"(rel {ours['loss_rel_diff']:.2e}); compile {ours['compile_s']:.1f} s")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "results": rows}, f, indent=1)
    return 0 if (ours["loss_rel_diff"] < 1e-2 and np.isfinite(ours["final_loss"])
                 and all(np.isfinite(r["final_loss"]) for r in lora_rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
