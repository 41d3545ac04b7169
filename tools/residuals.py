"""What a train step keeps from its forward pass for its backward pass, by JAX's own accounting.

    python tools/residuals.py --preset v3-small --batch 2 --seq 4096 --loss_chunk 4096

Abstract shapes only (nothing is allocated or run, any machine). Totals the residuals of the loss's
gradient (r1jax.residuals) by dtype, sets apart the attention kernel's internals (on a CPU the
kernel is XLA's reference implementation, which keeps float32 scores and a mask [L, B, H, T, T]
that the GPU and TPU kernels do not; told apart by that shape), and lists the largest. This is the activation part of a step's memory
before the compiler's own choices; peak device memory is that plus parameters, gradients,
optimizer state and temporaries. The last line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import PEER_SMALL, shape_arguments  # noqa: E402  (tools/bench.py)

from r1jax import residuals  # noqa: E402
from r1jax.model import Transformer, preset  # noqa: E402
from r1jax.step import StepConfig, loss_fn  # noqa: E402

GIB = 2 ** 30


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(p)
    p.add_argument("--remat", default="none", choices=["none", "full", "dots", "dots_no_batch"])
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    cfg = preset(a.preset, dtype="bfloat16", param_dtype="float32", remat=a.remat,
                 **(PEER_SMALL if a.small else {}))
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))),
                                       nnx.Param, ...)
    shape = jax.ShapeDtypeStruct((a.batch, a.seq), jnp.int32)
    batch = {"tokens": shape, "positions": shape, "segment_ids": shape}
    sc = StepConfig(loss_chunk=a.loss_chunk)
    rows = residuals.saved(lambda p_, b: loss_fn(p_, rest, graphdef, b, sc)[0], params, batch)
    # [..., T, S] with S = T: attention scores, probabilities and mask (the scanned layers' show up as
    # outputs of the scan, so they are told by shape)
    kernel = [r for r in rows if len(r.shape) >= 2 and r.shape[-2:] == (a.seq, a.seq)]
    model = [r for r in rows if r not in kernel]
    by_dtype: dict[str, float] = {}
    for r in model:
        by_dtype[r.dtype] = by_dtype.get(r.dtype, 0.0) + r.nbytes / GIB
    result = {"command": "python " + " ".join(sys.argv), "preset": a.preset + ("/small" if a.small else ""),
              "batch": a.batch, "seq": a.seq, "loss_chunk": a.loss_chunk, "remat": a.remat,
              "model_gib": sum(by_dtype.values()), "model_gib_by_dtype": by_dtype,
              "attention_reference_gib": sum(r.nbytes for r in kernel) / GIB,
              "largest": [{"gib": r.nbytes / GIB, "dtype": r.dtype, "shape": list(r.shape), "where": r.where}
                          for r in sorted(model, key=lambda r: -r.nbytes)[:a.top]]}
    print(f"{result['preset']} batch {a.batch} x {a.seq}, remat {a.remat}: {result['model_gib']:.2f} GiB "
          f"kept for the backward pass (" + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_dtype.items()))
          + f"); and {result['attention_reference_gib']:.2f} GiB of attention scores and masks of the CPU "
          "reference kernel (not kept by the accelerator kernels)")
    for r in result["largest"]:
        print(f"  {r['gib']:7.3f} GiB {r['dtype']}{r['shape']}  {r['where'][:100]}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
