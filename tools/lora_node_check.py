"""One GPU's share of an 8-GPU node fine-tuning R1-671B with LoRA, measured on one device.

    python tools/lora_node_check.py --out $OUT/lora_node.json            # one H200 (gpu_check.sh lora_node)
    python tools/lora_node_check.py --preset tiny --experts 8 --seq 64   # CPU: checks the script

The node (mesh preset r1-671b-gpu: expert 8 inside the node, fsdp over the rest) gives each GPU 32 of
the 256 routed experts of every MoE layer and 1/8 of every other weight. One device cannot hold
"1/8 of a weight that fsdp gathers per layer", so this check builds the model with
n_routed_experts = 256 / 8 (all 61 layers, every expert of this GPU) and the attention, dense-MLP,
shared-expert, embedding and head weights WHOLE: an upper bound on the resting base by 7/8 of those
(the tool prints the amount). FSDP gathers one layer's weights at a time anyway, so the whole
weights stand in for the gathered layer too. Two things of the real node are missing and printed
as analytic corrections: the resting base minus 7/8 of the non-expert weights, and the expert-
parallel dropless receive buffers (r1jax/models/deepseek_v3/expert_parallel.py: ep = 8 times the balanced rows of
one chunk of moe_chunk_tokens, in [R, D] and [R, 2F] buffers; one device runs no exchange).

The step is the real LoRA step (r1jax/train/step.py train_step with the base as the frozen input, split as
r1jax/train/loop.py splits it: split_trained), FP8 base (ModelConfig.fp8_weights), rank-16 adapters on
the default targets, remat full, one sequence of --seq tokens, AdamW with float32 moments. Weights
are filled without the model's initializer (whose float32 temporaries of a [58, 32, 7168, 2048]
stack would not fit): FP8 codes from random bytes with the top exponent bit cleared (|w| <= 1.875,
never NaN), one random [in, out] slab repeated over layers and experts, under scales of 1/64, other weights normal(0, 0.02), norms 1, adapters A normal(0, 0.01)
and B 0. Prints the base / adapter / optimizer bytes, the compiled step's memory analysis, the
device's peak bytes in use after the step, the step time and the corrected estimate, one JSON line.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.models.common.config import LoraConfig
from r1jax.models.common import groups
from r1jax.train.optim import path_str
from r1jax.train.step import StepConfig, train_step
from r1jax.models.common.partition import split_trained

GIB = 1024 ** 3
EP = 8   # GPUs per node = expert-parallel degree of mesh preset r1-671b-gpu


def node_share_config(name: str, experts: int, rank: int, chunk: int):
    """The preset with `experts` routed experts per layer (one GPU's share), FP8 base, adapters."""
    return preset(name, dtype="bfloat16", param_dtype="bfloat16", remat="full", fp8_weights=True,
                  moe_chunk_tokens=chunk, n_routed_experts=experts, lora=LoraConfig(rank=rank))


def _fill(path: str, x: jax.ShapeDtypeStruct, key) -> jax.Array:
    """A value of x's shape and dtype for the leaf at `path` (see the module docstring)."""
    if x.dtype == jnp.float8_e4m3fn:
        # One random [in, out] slab, repeated over the stack (layers, experts): no temporary of the
        # stack's size (a [58, 32, 7168, 2048] stack is 25 GiB of codes).
        bits = jax.random.bits(key, x.shape[-2:], jnp.uint8) & jnp.uint8(0xBF)  # exponent <= 7
        codes = jax.lax.bitcast_convert_type(bits, jnp.float8_e4m3fn)
        return jnp.broadcast_to(codes, x.shape)
    if path.endswith("_scale"):
        return jnp.full(x.shape, 1 / 64, x.dtype)
    if "norm" in path.split(".")[-1]:
        return jnp.ones(x.shape, x.dtype)
    if path.endswith(".b") and "lora" in path:
        return jnp.zeros(x.shape, x.dtype)
    if "router_bias" in path:
        return jnp.zeros(x.shape, x.dtype)
    std = 0.01 if "lora" in path else 0.02
    return (std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


def filled(abstract_state, seed: int):
    """Concrete arrays for an abstract nnx.State, one jitted fill per leaf (no whole-model temporary)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    keys = jax.random.split(jax.random.key(seed), max(len(flat), 1))
    out = [jax.jit(functools.partial(_fill, path_str(p), x))(k) for (p, x), k in zip(flat, keys)]
    return jax.tree_util.tree_unflatten(treedef, out)


def nbytes(tree) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def non_expert_bytes(frozen) -> int:
    """Bytes of the frozen weights outside the routed experts (whole here, 1/8 per GPU on the node)."""
    places = groups.placements(frozen)
    return sum(x.size * jnp.dtype(x.dtype).itemsize
               for p, x in jax.tree_util.tree_flatten_with_path(frozen)[0]
               if places[path_str(p)].group != "routed_experts")


def ep_buffer_bytes(cfg, chunk: int) -> int:
    """Extra bytes of the node's dropless expert-parallel buffers over one device's balanced ones
    (r1jax/models/deepseek_v3/expert_parallel.py): R = EP * C * min(K, El) rows instead of C * K, in the receive
    [R, D] bf16, the SwiGLU [R, 2F] bf16 and the returned [R, D] bf16 buffers of one chunk."""
    k, el = cfg.num_experts_per_tok, cfg.n_routed_experts
    rows_node, rows_here = EP * chunk * min(k, el), chunk * k
    per_row = 2 * (cfg.hidden_size * 2 + 2 * cfg.moe_intermediate_size)
    return (rows_node - rows_here) * per_row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="r1-671b")
    p.add_argument("--experts", type=int, default=256 // EP, help="routed experts of this GPU")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=512, help="moe_chunk_tokens (configs/r1_671b.py's)")
    p.add_argument("--loss_chunk", type=int, default=4096)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    cfg = node_share_config(a.preset, a.experts, a.rank, a.chunk)
    graphdef, abs_params, abs_rest, abs_frozen = split_trained(
        nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    t0 = time.perf_counter()
    frozen, params, rest = filled(abs_frozen, 1), filled(abs_params, 2), filled(abs_rest, 3)
    fill_s = time.perf_counter() - t0
    tx = optax.adamw(1e-5, weight_decay=0.1)
    opt_state = jax.jit(tx.init)(params)
    tokens = jax.random.randint(jax.random.key(0), (1, a.seq), 0, cfg.vocab_size, jnp.int32)
    batch = {"tokens": tokens, "positions": jnp.arange(a.seq, dtype=jnp.int32)[None],
             "segment_ids": jnp.ones((1, a.seq), jnp.int32)}
    step = jax.jit(functools.partial(train_step, graphdef, tx, StepConfig(loss_chunk=a.loss_chunk)),
                   donate_argnums=(0, 1, 2))
    t0 = time.perf_counter()
    compiled = step.lower(params, rest, opt_state, batch, frozen, None).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        params, rest, opt_state, m = compiled(params, rest, opt_state, batch, frozen, None)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    base, non_expert = nbytes(frozen), non_expert_bytes(frozen)
    r = {"device": jax.devices()[0].device_kind, "preset": a.preset, "experts_here": a.experts,
         "layers": cfg.num_hidden_layers, "seq": a.seq, "rank": a.rank,
         "base_gib": base / GIB, "non_expert_base_gib": non_expert / GIB,
         "adapters_gib": nbytes(params) / GIB, "adam_gib": nbytes(opt_state) / GIB,
         "compiled_temporaries_gib": None if ma is None else ma.temp_size_in_bytes / GIB,
         "peak_gib": None if peak is None else peak / GIB,
         "step_s": statistics.median(times) if times else None, "compile_s": compile_s,
         "fill_s": fill_s, "loss": float(m["loss"]) if a.steps else None,
         "minus_7_8_non_expert_gib": -7 / 8 * non_expert / GIB,
         "plus_ep_buffers_gib": ep_buffer_bytes(cfg, a.chunk) / GIB}
    if peak is not None:
        r["node_share_estimate_gib"] = (peak - 7 / 8 * non_expert + ep_buffer_bytes(cfg, a.chunk)) / GIB
    print(json.dumps(r), flush=True)
    print(f"one GPU of 8 ({a.experts} experts x {cfg.num_hidden_layers} layers, FP8 base, rank {a.rank}): "
          f"base {r['base_gib']:.1f} GiB (non-expert {r['non_expert_base_gib']:.1f} whole), adapters "
          f"{r['adapters_gib']:.2f}, Adam {r['adam_gib']:.2f}; peak {r['peak_gib'] or 0:.1f} GiB; "
          f"node share ~ peak - 7/8 non-expert + EP buffers = {r.get('node_share_estimate_gib', 0):.1f} GiB; "
          f"step {r['step_s'] or 0:.2f} s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "result": r}, f, indent=1)
    return 0 if a.steps == 0 or math.isfinite(r["loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
