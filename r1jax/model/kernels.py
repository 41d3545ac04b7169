"""The tokamax kernels the model calls (Mosaic/Triton on GPU, XLA fallback elsewhere).

tokamax reads its options through absl flags and, on first use, parses `sys.argv` as absl flags if
nobody has: that fails on any command line it does not know (pytest's, ours). r1jax has no absl
flags of its own, so flags are marked parsed here, leaving tokamax's options at their defaults.

tokamax's GPU kernels are tied to the JAX version they were written for (tokamax 0.0.12 on JAX 0.11
fails while lowering its Mosaic kernels). A kernel that fails to trace is retried with the next
implementation of FALLBACKS, with one warning, rather than stopping a run. float32 inputs (parity
and reference runs) always take the XLA implementation: the GPU kernels are built for bf16 and run
out of shared memory in float32.
"""
from __future__ import annotations

import warnings

import jax.numpy as jnp
import tokamax
from absl import flags

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

FALLBACKS = {"attention": ("triton", "cudnn", "xla"), "ragged_dot": ("triton", "xla")}
_warned: set[str] = set()


def _first_that_traces(name: str, call, dtype):
    """call(None) (tokamax's own choice), else call(impl) for impl in FALLBACKS[name]."""
    if dtype == jnp.float32:
        return call("xla")
    try:
        return call(None)
    except Exception as first:  # noqa: BLE001 - any lowering failure means "try another kernel"
        for impl in FALLBACKS[name]:
            try:
                out = call(impl)
            except Exception:  # noqa: BLE001
                continue
            if name not in _warned:
                _warned.add(name)
                warnings.warn(f"tokamax {name}: default kernel failed ({first!r:.300}); using {impl!r}")
            return out
        raise


def attention(q, k, v, mask, scale):
    """Causal attention; q, k [B, T, H, K], v [B, T, H, V], mask [B, 1, T, S] bool -> [B, T, H, V].

    Softmax statistics are float32 in every tokamax implementation.
    """
    return _first_that_traces("attention", lambda impl: tokamax.dot_product_attention(
        q, k, v, mask=mask, is_causal=True, scale=scale, implementation=impl), q.dtype)


def ragged_dot(lhs, rhs, group_sizes):
    """Grouped matmul: rows of lhs [M, K] in consecutive groups times rhs [G, K, N] -> [M, N]."""
    return _first_that_traces("ragged_dot", lambda impl: tokamax.ragged_dot(
        lhs, rhs, group_sizes, implementation=impl), lhs.dtype)
