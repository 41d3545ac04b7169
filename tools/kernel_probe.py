"""Which tokamax kernels run for r1jax's shapes, and how fast (forward + backward, bf16).

    python tools/kernel_probe.py [--out FILE.json]

Attention at B4 S4096 H16 qk192 v128, causal: tokamax with a segment mask (what the model passes),
causal only, and each implementation forced; rows packed with 4 documents, masked (the model's
default) and as key ranges (ModelConfig.attention_mask "ranges"); grouped matmul at 131072 rows, 64
experts, 2048x1408; the routed experts' gate and up projections at v3-small's shapes (65536 token
copies, 64 experts, 2048 -> 1024) as two grouped matmuls and as one against the paired weights
(mlp.pair_columns, what the model runs), each followed by the SwiGLU.
Each variant also checks its output against a float32 XLA reference (relative L2 error).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import r1jax.models.common.kernels  # noqa: F401  (marks absl flags parsed before tokamax reads them)
import tokamax


def timeit(fn, *args, n=10):
    out = fn(*args)
    jax.block_until_ready(out)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def rel(a, b):
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def attention_rows(b=4, s=4096, h=16, qk=192, v=128):
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (b, s, h, qk), jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, s, h, qk), jnp.bfloat16)
    vv = jax.random.normal(ks[2], (b, s, h, v), jnp.bfloat16)
    dout = jax.random.normal(ks[3], (b, s, h, v), jnp.bfloat16)
    seg = jnp.ones((b, s), jnp.int32)
    mask = seg[:, None, :, None] == seg[:, None, None, :]
    scale = qk ** -0.5
    flops = 3 * b * h * s * s * (qk + v)  # causal fwd = b h s^2 (qk+v); fwd+bwd = 3x fwd
    ref = tokamax.dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                        vv.astype(jnp.float32), is_causal=True, scale=scale,
                                        implementation="xla")
    rows = []
    variants = [("tokamax mask+causal (model)", dict(mask=mask)), ("tokamax causal", {})]
    variants += [(f"{impl} causal", dict(implementation=impl))
                 for impl in ("mosaic", "triton", "cudnn", "xla")]
    variants += [(f"{impl} mask+causal", dict(mask=mask, implementation=impl))
                 for impl in ("mosaic", "triton")]
    for name, kw in variants:
        def fwd_bwd(q, k, vv):
            f = lambda q, k, vv: tokamax.dot_product_attention(q, k, vv, is_causal=True, scale=scale, **kw)
            out, vjp = jax.vjp(f, q, k, vv)
            return out, vjp(dout)
        try:
            sec, (out, _) = timeit(jax.jit(fwd_bwd), q, k, vv)
            rows.append({"kernel": "attention", "variant": name, "ms": sec * 1e3,
                         "tflops": flops / sec / 1e12, "rel_err": rel(out, ref)})
        except Exception as e:  # an implementation unsupported on this device
            rows.append({"kernel": "attention", "variant": name, "error": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def packed_rows(b=4, s=4096, h=16, qk=192, v=128, docs=4):
    """Packed rows of `docs` documents of uneven lengths: the model's dense same-segment mask
    against key ranges (ModelConfig.attention_mask "ranges"), both checked against float32 XLA with
    the mask. TFLOP/s count the full causal square, as the model FLOPs do."""
    import warnings

    from r1jax.models.common import kernels
    from r1jax.models.common.masks import attention_mask, segment_starts
    ks = jax.random.split(jax.random.key(2), 4)
    q = jax.random.normal(ks[0], (b, s, h, qk), jnp.bfloat16)
    k = jax.random.normal(ks[1], (b, s, h, qk), jnp.bfloat16)
    vv = jax.random.normal(ks[2], (b, s, h, v), jnp.bfloat16)
    dout = jax.random.normal(ks[3], (b, s, h, v), jnp.bfloat16)
    cuts = jnp.sort(jax.random.randint(jax.random.key(3), (b, docs - 1), 1, s), axis=1)  # [B, docs-1]
    seg = 1 + (jnp.arange(s)[None, :, None] >= cuts[:, None, :]).sum(-1).astype(jnp.int32)  # [B, S]
    scale, flops = qk ** -0.5, 3 * b * h * s * s * (qk + v)
    ref = kernels.attention(q.astype(jnp.float32), k.astype(jnp.float32), vv.astype(jnp.float32),
                            attention_mask(seg), scale)
    rows = []
    variants = [("packed, dense mask (model default)", lambda q, k, vv: kernels.attention(
                    q, k, vv, attention_mask(seg), scale)),
                ("packed, key ranges (attention_mask=ranges)", lambda q, k, vv: kernels.attention_ranges(
                    q, k, vv, segment_starts(seg), scale))]
    for name, f in variants:
        def fwd_bwd(q, k, vv, f=f):
            out, vjp = jax.vjp(f, q, k, vv)
            return out, vjp(dout)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sec, (out, _) = timeit(jax.jit(fwd_bwd), q, k, vv)
            rows.append({"kernel": "attention", "variant": name, "ms": sec * 1e3,
                         "tflops": flops / sec / 1e12, "rel_err": rel(out, ref),
                         "warnings": [str(w.message)[:200] for w in caught]})
        except Exception as e:  # noqa: BLE001 - reported, not raised
            rows.append({"kernel": "attention", "variant": name, "error": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ragged_rows(m=131072, e=64, d=2048, f=1408):
    ks = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(ks[0], (m, d), jnp.bfloat16)
    w = (jax.random.normal(ks[1], (e, d, f), jnp.float32) * d ** -0.5).astype(jnp.bfloat16)
    sizes = jax.random.multinomial(ks[2], m, jnp.full((e,), 1.0 / e), shape=(e,)).astype(jnp.int32)
    sizes = sizes.at[-1].add(m - sizes.sum())
    ref = jax.lax.ragged_dot(x.astype(jnp.float32), w.astype(jnp.float32), sizes)
    rows = []
    for name, fn in [("tokamax", lambda x, w: tokamax.ragged_dot(x, w, sizes)),
                     ("lax", lambda x, w: jax.lax.ragged_dot(x, w, sizes))]:
        def fwd_bwd(x, w):
            out, vjp = jax.vjp(fn, x, w)
            return out, vjp(out)
        try:
            sec, (out, _) = timeit(jax.jit(fwd_bwd), x, w)
            rows.append({"kernel": "ragged_dot", "variant": name, "ms": sec * 1e3,
                         "tflops": 3 * 2 * m * d * f / sec / 1e12, "rel_err": rel(out, ref)})
        except Exception as e:
            rows.append({"kernel": "ragged_dot", "variant": name, "error": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def gate_up_rows(m=65536, e=64, d=2048, f=1024):
    """SwiGLU(x W_gate, x W_up) per expert, fwd + bwd: two grouped matmuls vs one against the pairs.
    The weights come in float32 and are cast to bf16 inside, as the model's parameters are."""
    from r1jax.models.common import kernels
    from r1jax.models.common.mlp import pair_columns, swiglu, swiglu_pairs
    ks = jax.random.split(jax.random.key(2), 4)
    x = jax.random.normal(ks[0], (m, d), jnp.bfloat16)
    gate, up = (jax.random.normal(k, (e, d, f), jnp.float32) * d ** -0.5 for k in ks[1:3])
    sizes = jax.random.multinomial(ks[3], m, jnp.full((e,), 1.0 / e), shape=(e,)).astype(jnp.int32)
    sizes = sizes.at[-1].add(m - sizes.sum())
    xf, bf = x.astype(jnp.float32), lambda w: w.astype(jnp.bfloat16)
    ref = swiglu(jax.lax.ragged_dot(xf, gate, sizes), jax.lax.ragged_dot(xf, up, sizes))
    variants = [("two matmuls", lambda x, g, u: swiglu(kernels.ragged_dot(x, bf(g), sizes),
                                                        kernels.ragged_dot(x, bf(u), sizes))),
                ("paired (model)", lambda x, g, u: swiglu_pairs(kernels.ragged_dot(x, pair_columns(bf(g), bf(u)),
                                                                                   sizes)))]
    rows = []
    for name, fn in variants:
        def fwd_bwd(x, g, u, fn=fn):
            out, vjp = jax.vjp(fn, x, g, u)
            return out, vjp(out)
        try:
            sec, (out, _) = timeit(jax.jit(fwd_bwd), x, gate, up)
            rows.append({"kernel": "gate_up", "variant": name, "ms": sec * 1e3,
                         "tflops": 3 * 2 * m * d * 2 * f / sec / 1e12, "rel_err": rel(out, ref)})
        except Exception as e:  # noqa: BLE001 - reported, not raised
            rows.append({"kernel": "gate_up", "variant": name, "error": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out")
    p.add_argument("--small", action="store_true", help="tiny shapes: a CPU dry run of the code paths")
    a = p.parse_args(argv)
    print("jax", jax.__version__, jax.devices()[0].device_kind, flush=True)
    if a.small:
        rows = attention_rows(b=1, s=256, h=2) + packed_rows(b=2, s=256, h=2) + \
            ragged_rows(m=1024, e=8, d=64, f=32) + gate_up_rows(m=1024, e=8, d=64, f=32)
    else:
        rows = attention_rows() + packed_rows() + ragged_rows() + gate_up_rows()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": "python " + " ".join(sys.argv), "device": jax.devices()[0].device_kind,
                       "jax": jax.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
