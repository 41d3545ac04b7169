"""What a train step keeps from its forward pass for its backward pass, by JAX's own accounting.

    python tools/residuals.py --preset v3-small --batch 2 --seq 4096 --loss_chunk 4096

Abstract shapes only (nothing is allocated or run, any machine). Totals the residuals of the loss's
gradient (r1jax.train.residuals) by dtype and lists the largest, twice: with attention as a fused kernel
keeps it (the GPU: tokamax's flash kernels keep q, k, v, the output and the softmax's float32
log-sum-exp), modelled by a stand-in with exactly those residuals; and with the attention this
machine's tokamax runs (on a CPU, and on a TPU where its Mosaic kernel declines MLA's batched mask,
the chunked XLA implementation, which keeps float32 running sums per block of keys). The first is
the figure for a GPU (r1jax.train.residuals.fused_attention); the difference is what the XLA attention adds. This is the activation part of
a step's memory before the compiler's own choices; peak device memory is that plus parameters,
gradients, optimizer state and temporaries. The last line of stdout is one JSON object.
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
from bench import SMALL, shape_arguments  # noqa: E402  (tools/bench.py)

from r1jax.train import residuals  # noqa: E402
from r1jax.models import registry  # noqa: E402
from r1jax.models.registry import preset  # noqa: E402
from r1jax.train.step import StepConfig, loss_fn  # noqa: E402

GIB = 2 ** 30


def account(rows) -> tuple[float, dict[str, float]]:
    """(GiB, GiB by dtype) of residual rows."""
    by_dtype: dict[str, float] = {}
    for r in rows:
        by_dtype[r.dtype] = by_dtype.get(r.dtype, 0.0) + r.nbytes / GIB
    return sum(by_dtype.values()), by_dtype


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(p)
    p.add_argument("--remat", default="none", choices=["none", "full", "dots", "dots_no_batch"])
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    cfg = preset(a.preset, dtype="bfloat16", param_dtype="float32", remat=a.remat,
                 **(SMALL if a.small else {}))
    graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: registry.build(cfg, nnx.Rngs(0))),
                                       nnx.Param, ...)
    shape = jax.ShapeDtypeStruct((a.batch, a.seq), jnp.int32)
    batch = {"tokens": shape, "positions": shape, "segment_ids": shape}
    sc = StepConfig(loss_chunk=a.loss_chunk)
    step = lambda p_, b: loss_fn(p_, rest, graphdef, b, sc)[0]
    here = residuals.saved(step, params, batch)
    with residuals.attention_as_fused_kernel():
        rows = residuals.saved(step, params, batch)
    gib, by_dtype = account(rows)
    here_gib, here_by_dtype = account(here)
    result = {"command": "python " + " ".join(sys.argv), "preset": a.preset + ("/small" if a.small else ""),
              "batch": a.batch, "seq": a.seq, "loss_chunk": a.loss_chunk, "remat": a.remat,
              "model_gib": gib, "model_gib_by_dtype": by_dtype,
              "with_this_machines_attention_gib": here_gib,
              "with_this_machines_attention_by_dtype": here_by_dtype,
              "largest": [{"gib": r.nbytes / GIB, "dtype": r.dtype, "shape": list(r.shape), "where": r.where}
                          for r in sorted(rows, key=lambda r: -r.nbytes)[:a.top]]}
    print(f"{result['preset']} batch {a.batch} x {a.seq}, remat {a.remat}: {gib:.2f} GiB kept for the "
          "backward pass with a fused attention kernel (" + ", ".join(f"{k} {v:.2f}" for k, v in
                                                           sorted(by_dtype.items()))
          + f"); {here_gib:.2f} GiB with this machine's attention (" + ", ".join(
              f"{k} {v:.2f}" for k, v in sorted(here_by_dtype.items())) + ")")
    for r in result["largest"]:
        print(f"  {r['gib']:7.3f} GiB {r['dtype']}{r['shape']}  {r['where'][:100]}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
