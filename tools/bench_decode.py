"""Generation benchmark: prefill and decode tokens/s on MLA's latent cache, and its bytes per token.

    python tools/bench_decode.py --preset v3-small --batch 32 --prompt_len 1024 --new_tokens 256 \
        --out tools/results/bench_decode_h200.json                       # one GPU
    python tools/bench_decode.py --preset tiny --batch 2 --prompt_len 32 --new_tokens 8   # CPU smoke

Random weights (the numbers do not depend on them), params and compute in --dtype. Times, after a
warm-up call that compiles, the same jitted functions r1jax.generate runs: the prefill of a batch of
left-padded prompts (prompt tokens/s) and decode calls of --steps_per_call steps each (sampling with
--temperature and top-p 0.95 included; generated tokens/s over the batch), median of --repeats.
Random weights give near-flat next-token distributions (top-p keeps most of the vocabulary; its
cost does not depend on that, r1jax/inference/sampling.py); --temperature 0 times greedy decoding.
Reports the decode cache per token over all layers, latent (kv_lora_rank + qk_rope_head_dim values)
against what per-head K/V would hold (heads * (qk_head_dim + v_head_dim)), and the cache's total.
The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.inference import generate, sampling
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models import registry
from r1jax.models.registry import preset
from r1jax.models.deepseek_v3.latent_cache import bytes_per_token


def init_model(cfg, seed: int = 0):
    """(graphdef, state) with random weights (N(0, 0.02) matrices, unit norm scales, zero router
    bias) drawn on the device by one small jit: cheaper to compile than the model's own init."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed))))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(abstract))

    sizes = [math.prod(s.shape) for _, s in leaves]

    @jax.jit
    def fill():
        # one draw for all matrices: a single random-bits kernel compiles much faster than one each
        flat = 0.02 * jax.random.normal(jax.random.key(seed), (sum(sizes),), jnp.float32)
        out, at = [], 0
        for (path, s), n in zip(leaves, sizes):
            name = jax.tree_util.keystr(path)
            if "scale" in name or "bias" in name:
                out.append(jnp.full(s.shape, 1.0 if "scale" in name else 0.0, s.dtype))
            else:
                out.append(flat[at:at + n].reshape(s.shape).astype(s.dtype))
            at += n
        return jax.tree_util.tree_unflatten(treedef, out)

    nnx.replace_by_pure_dict(abstract, fill())
    return graphdef, abstract


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, last result); fn blocks on its own output."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override preset fields, e.g. vocab_size=512 (smaller CPU runs)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=32, help="decode steps timed per repeat")
    p.add_argument("--steps_per_call", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.6, help="0: greedy (no sampling)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    if registry.presets().get(a.preset, (None,))[0] is not registry.family("deepseek_v3"):
        p.error(f"--preset {a.preset}: bench_decode measures MLA's latent cache (DeepSeek-V3 / R1 only); "
                f"choose one of {sorted(registry.family('deepseek_v3').presets)}")
    over = {}
    for item in a.set:
        key, _, value = item.partition("=")
        over[key] = json.loads(value)  # numbers and null as JSON
    cfg = preset(a.preset, dtype=a.dtype, param_dtype=a.dtype, **over)
    n = min(a.steps_per_call, a.new_tokens)
    calls = -(-a.new_tokens // n)
    # room for the warm-up call and every timed repeat: the slot only moves forward
    max_len = a.prompt_len + n * calls * (a.repeats + 1)
    if max_len > cfg.max_position_embeddings:
        p.error(f"prompt_len + steps ({max_len}) > max_position_embeddings {cfg.max_position_embeddings}")

    t0 = time.perf_counter()
    graphdef, state = init_model(cfg)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    rng = np.random.RandomState(0)
    tokens = jnp.asarray(rng.randint(2, cfg.vocab_size, (a.batch, a.prompt_len)), jnp.int32)
    start = jnp.zeros((a.batch,), jnp.int32)
    rows = jnp.arange(a.batch, dtype=jnp.int32)
    done = jnp.zeros((a.batch,), bool)
    prefill = lambda: generate._prefill(graphdef, state, tokens, start, rows, done, jnp.asarray(0, jnp.int32),
                                        max_len=max_len)
    t0 = time.perf_counter()
    d = jax.block_until_ready(prefill())
    prefill_compile_s = time.perf_counter() - t0
    prefill_s, d = timed(prefill, a.repeats)

    decode = generate._decode_fn(jax.default_backend())
    eos = jnp.asarray([-1], jnp.int32)  # never sampled: every step runs for every row
    settings = sampling.SamplingSettings(temperature=a.temperature)
    box = {"d": d}

    def run_decode():
        for _ in range(calls):
            box["d"], toks = decode(graphdef, state, box["d"], eos, n, settings)
        return toks

    t0 = time.perf_counter()
    box["d"], _ = jax.block_until_ready(decode(graphdef, state, box["d"], eos, n, settings))
    decode_compile_s = time.perf_counter() - t0
    decode_s, _ = timed(run_decode, a.repeats)

    itemsize = jnp.dtype(cfg.dtype).itemsize
    per_tok = bytes_per_token(cfg, itemsize)
    result = {
        "preset": a.preset, "device": str(jax.devices()[0].device_kind), "dtype": a.dtype,
        "temperature": a.temperature, "batch": a.batch, "prompt_len": a.prompt_len, "decode_steps": n * calls, "steps_per_call": n,
        "prefill_tokens_per_s": a.batch * a.prompt_len / prefill_s, "prefill_s": prefill_s,
        "decode_tokens_per_s": a.batch * n * calls / decode_s,
        "decode_ms_per_step": 1e3 * decode_s / (n * calls),
        "cache_bytes_per_token": per_tok["latent"], "per_head_kv_bytes_per_token": per_tok["per_head_kv"],
        "cache_ratio": per_tok["per_head_kv"] / per_tok["latent"],
        "cache_total_bytes": int(box["d"].cache.latent.nbytes + box["d"].cache.k_rope.nbytes),
        "cache_slots": max_len, "init_s": init_s,
        "prefill_compile_s": prefill_compile_s, "decode_compile_s": decode_compile_s,
    }
    print(f"{a.preset} {result['device']} {a.dtype}, batch {a.batch}, prompt {a.prompt_len}: "
          f"prefill {result['prefill_tokens_per_s']:,.0f} tok/s; decode {result['decode_tokens_per_s']:,.0f} "
          f"tok/s ({result['decode_ms_per_step']:.2f} ms/step); cache {per_tok['latent']:,} B/token vs "
          f"per-head K/V {per_tok['per_head_kv']:,} ({result['cache_ratio']:.1f}x less)")
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
