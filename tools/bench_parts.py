"""Where a train step's time goes: each part of the model timed alone, forward + backward, at the
benchmark's shapes, times how often one step runs it, next to the full step. DeepSeek-V3 / R1 only
(its MLA, MoE and FLOP parts, r1jax/models/deepseek_v3/): a preset of another family is refused.

    python tools/bench_parts.py --preset v3-small --batch 2 --seq 4096 --loss_chunk 4096 \
        --out tools/results/parts_h200.json                                     # one GPU
    python tools/bench_parts.py --small --batch 2 --seq 32 --steps 1 --no_full   # CPU smoke

Parts (bf16 compute on float32 parameters, as in training; random inputs and weights):
  attention  attention norm + MLA + residual of one layer              x num_hidden_layers
  moe        MoE norm + router + routed and shared experts + residual  x MoE layers
  dense_mlp  MLP norm + MLP + residual of a dense layer                x first_k_dense_replace
  head       final norm + LM head + cross-entropy (--loss_chunk)       x 1
  adamw      the AdamW update of every parameter                       x 1
Each part is one jitted function returning the gradients of its output (a fixed cotangent) with
respect to its parameters and its input, which is what the step's backward pass computes for it.
Prints the median ms of --steps calls after warm-up, the ms it costs per step, its share of the
full step (tools/bench.py's measurement, in the same run unless --no_full) and the model TFLOP/s of
the matmul parts (r1jax.models.deepseek_v3.flops, per part). What the parts do not add up to is the rest: scan, remat,
the embedding, moving activations between layers. The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as step_bench  # noqa: E402  (tools/bench.py: the full step, and its shrunken config)

from r1jax.models.deepseek_v3 import flops  # noqa: E402
from r1jax.models.losses import chunked_loss_sums, next_token_loss_sums  # noqa: E402
from r1jax.models import registry  # noqa: E402
from r1jax.models.registry import preset  # noqa: E402
from r1jax.models.common.norm import RMSNorm  # noqa: E402
from r1jax.models.deepseek_v3.rope import rope_tables  # noqa: E402
from r1jax.models.deepseek_v3.transformer import Block  # noqa: E402


def median_ms(fn, args, steps: int, warmup: int) -> tuple[float, float]:
    """(median ms of `steps` calls after `warmup`, compile seconds) of the jitted `fn` on `args`."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times), compile_s


def grads_of(f):
    """f(params, x) -> y  ==>  g(params, x) -> (d params, d x) for the cotangent 1e-2 everywhere."""
    def g(params, x):
        y, pull = jax.vjp(f, params, x)
        return pull(jnp.full(y.shape, 1e-2, y.dtype))
    return g


def block_part(cfg, moe: bool, attention: bool, batch: int, seq: int):
    """(fn, args) timing one Block's attention half or its feed-forward half, fwd + bwd."""
    graphdef, params, rest = jax.jit(lambda: nnx.split(Block(cfg, moe, rngs=nnx.Rngs(0)), nnx.Param, ...))()
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    cos, sin = rope_tables(cfg, positions)
    segment_ids = jnp.ones((batch, seq), jnp.int32)
    x = 0.5 * jax.random.normal(jax.random.key(1), (batch, seq, cfg.hidden_size), cfg.dtype)

    def f(p, h):
        blk = nnx.merge(graphdef, p, rest)
        if attention:
            return h + blk.attn(blk.attn_norm(h), cos, sin, segment_ids)
        return blk.feed_forward(h, segment_ids > 0)[0]
    return grads_of(f), (params, x)


def head_part(cfg, batch: int, seq: int, loss_chunk: int):
    """(fn, args) timing final norm + LM head + cross-entropy, fwd + bwd."""
    norm = nnx.split(RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype))
    kernel = 0.02 * jax.random.normal(jax.random.key(2), (cfg.hidden_size, cfg.vocab_size), jnp.float32)
    tokens = jax.random.randint(jax.random.key(3), (batch, seq), 0, cfg.vocab_size, jnp.int32)
    segment_ids = jnp.ones((batch, seq), jnp.int32)
    x = jax.random.normal(jax.random.key(4), (batch, seq, cfg.hidden_size), cfg.dtype)

    def loss(p, h):
        h = nnx.merge(norm[0], p["norm"])(h)
        if loss_chunk:
            nll, _, _ = chunked_loss_sums(h, p["kernel"], tokens, segment_ids, chunk=loss_chunk)
        else:
            logits = jnp.einsum("btd,dv->btv", h, p["kernel"].astype(h.dtype), preferred_element_type=jnp.float32)
            nll, _, _ = next_token_loss_sums(logits, tokens, segment_ids)
        return nll
    return jax.grad(loss, argnums=(0, 1)), ({"norm": norm[1], "kernel": kernel}, x)


def adamw_part(cfg):
    """(fn, args) timing the AdamW update of every parameter of the model (float32 moments)."""
    _, params, _ = step_bench.init_state(cfg)
    grads = jax.jit(lambda p: jax.tree.map(lambda x: 1e-2 * x, p))(params)
    optimizer = optax.adamw(1e-5, weight_decay=0.1)
    state = jax.jit(optimizer.init)(params)

    def update(state, pg):
        p, g = pg
        updates, state = optimizer.update(g, state, p)
        return optax.apply_updates(p, updates), state
    return update, (state, (params, grads))


def parts(cfg, batch: int, seq: int, loss_chunk: int):
    """[(name, count per step, model FLOPs per call or None, factory of (fn, args))]."""
    tokens = batch * seq
    score = 3.0 * flops.attention_score_flops(cfg, seq) * tokens
    rows = [("attention", cfg.num_hidden_layers, 6.0 * flops.attention_params(cfg) * tokens + score,
             lambda: block_part(cfg, False, True, batch, seq))]
    if cfg.num_moe_layers:
        rows.append(("moe", cfg.num_moe_layers, 6.0 * flops.moe_active_params(cfg) * tokens,
                     lambda: block_part(cfg, True, False, batch, seq)))
    if cfg.first_k_dense_replace:
        rows.append(("dense_mlp", cfg.first_k_dense_replace, 6.0 * flops.dense_mlp_params(cfg) * tokens,
                     lambda: block_part(cfg, False, False, batch, seq)))
    rows.append(("head", 1, 6.0 * flops.head_params(cfg) * tokens, lambda: head_part(cfg, batch, seq, loss_chunk)))
    rows.append(("adamw", 1, None, lambda: adamw_part(cfg)))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    step_bench.shape_arguments(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no_full", action="store_true", help="skip timing the full step (tools/bench.py)")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    if registry.presets().get(a.preset, (None,))[0] is not registry.family("deepseek_v3"):
        p.error(f"--preset {a.preset}: bench_parts times DeepSeek-V3 / R1 parts only; choose one of "
                f"{sorted(registry.family('deepseek_v3').presets)} (tools/bench.py times any family)")
    cfg = preset(a.preset, dtype="bfloat16", param_dtype="float32", **(step_bench.SMALL if a.small else {}))
    device = jax.devices()[0]
    full = None
    if not a.no_full:  # first, while the device is empty: it holds the whole model and its optimizer
        full = step_bench.bench(argparse.Namespace(
            preset=a.preset, small=a.small, experts=0, dtype="bfloat16", remat="none", attention_mask="dense",
            batch=a.batch,
            seq=a.seq, loss_chunk=a.loss_chunk, warmup=a.warmup, steps=a.steps))
    rows, total = [], 0.0
    for name, count, part_flops, make in parts(cfg, a.batch, a.seq, a.loss_chunk):
        fn, args = make()
        ms, compile_s = median_ms(fn, args, a.steps, a.warmup)
        del fn, args
        rows.append({"part": name, "ms": ms, "count": count, "ms_per_step": ms * count,
                     "tflops": None if part_flops is None else part_flops / (ms / 1e3) / 1e12,
                     "flops_per_call": part_flops, "compile_s": compile_s})
        total += ms * count
    step_ms = None if full is None else full["step_ms"]
    for r in rows:
        r["share"] = None if step_ms is None else r["ms_per_step"] / step_ms
    result = {"command": "python " + " ".join(sys.argv), "preset": a.preset + ("/small" if a.small else ""),
              "device": device.device_kind, "jax": jax.__version__, "batch": a.batch, "seq": a.seq,
              "loss_chunk": a.loss_chunk, "parts": rows, "parts_ms": total, "step_ms": step_ms,
              "rest_ms": None if step_ms is None else step_ms - total, "full_step": full}
    print(f"{'part':<11}{'ms':>10}{'x':>4}{'ms/step':>10}{'share':>8}{'TFLOP/s':>9}")
    for r in rows:
        share = "" if r["share"] is None else f"{100 * r['share']:.1f}%"
        tf = "" if r["tflops"] is None else f"{r['tflops']:.1f}"
        print(f"{r['part']:<11}{r['ms']:>10.2f}{r['count']:>4}{r['ms_per_step']:>10.1f}{share:>8}{tf:>9}")
    print(f"parts {total:.1f} ms" + ("" if step_ms is None else
                                     f"; full step {step_ms:.1f} ms; rest {step_ms - total:.1f} ms"))
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
