"""The tokamax kernels the model calls (Mosaic/Triton on GPU, XLA fallback elsewhere).

tokamax reads its options through absl flags and, on first use, parses `sys.argv` as absl flags if
nobody has: that fails on any command line it does not know (pytest's, ours). r1jax has no absl
flags of its own, so flags are marked parsed here, leaving tokamax's options at their defaults.

tokamax's GPU kernels are tied to the JAX version they were written for (tokamax 0.0.12 on JAX 0.11
fails while lowering its Mosaic kernels). A kernel that fails to trace is retried with the next
implementation of FALLBACKS, with one warning, rather than stopping a run. float32 inputs (parity
and reference runs) always take the XLA implementation: the GPU kernels are built for bf16 and run
out of shared memory in float32.

Attention where no fused kernel takes the call (a TPU, whose Mosaic kernel declines MLA's batched
segment mask; a CPU) uses tokamax's chunked XLA implementation rather than its plain one: the plain
one materializes float32 scores [B, H, T, S] (8 GiB per layer for one 4096-token sequence of R1's
128 heads), the chunked one a block of them at a time (online softmax, as the fused kernels do).
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import tokamax
from absl import flags

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

FALLBACKS = {"attention": ("triton", "cudnn", "xla_chunked", "xla"), "ragged_dot": ("triton", "xla")}
_warned: set[str] = set()


def attention_order() -> tuple[str, ...]:
    """tokamax's own order of attention implementations (its fused kernels installed here, then XLA),
    with the chunked XLA implementation in place of the plain one (module docstring)."""
    from tokamax._src.ops.attention import api  # noqa: PLC0415 - internal: tokamax's default order
    return tuple("xla_chunked" if name == "xla" else name for name in api._DEFAULT_IMPLEMENTATION)


def _first_that_traces(name: str, call, dtype, order=None):
    """call(order) (None: tokamax's own choice), else call(impl) for impl in FALLBACKS[name]."""
    if dtype == jnp.float32:
        return call("xla")
    try:
        return call(order)
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
        q, k, v, mask=mask, is_causal=True, scale=scale, implementation=impl), q.dtype, attention_order())


def _tokamax_ranges(q, k, v, k_start, scale, implementation):
    """tokamax attention with query t seeing keys k_start[b, t]..t, as tokamax's own mask object
    (kernels skip key blocks outside the range, and no mask array is read). The public
    `dot_product_attention` takes only a dense mask, so this goes through tokamax's implementation
    table; AttributeError/TypeError from a tokamax whose internals moved reach the caller."""
    from tokamax._src.ops.attention import api, base  # noqa: PLC0415 - internal: see docstring
    mask = base.Mask(k_start=k_start[:, None, :], is_causal=True)  # [B, 1 (heads), T]
    names = attention_order() if implementation is None else (implementation,)
    errors = []
    for name in names:
        if name == "mosaic":
            name = "mosaic_gpu" if "NVIDIA" in jax.devices()[0].device_kind else "mosaic_tpu"
        if name not in api.IMPLEMENTATIONS:
            continue
        try:
            return api.IMPLEMENTATIONS[name](q, k, v, bias=None, mask=mask, logits_scale=scale,
                                             precision=None, logits_soft_cap=None, q_sharding=None)
        except NotImplementedError as e:
            errors.append(e)
    raise NotImplementedError(f"no tokamax attention takes key ranges: {errors}")


def attention_ranges(q, k, v, k_start, scale):
    """Causal attention where query t of row b sees keys k_start[b, t]..t: q, k [B, T, H, K],
    v [B, T, H, V], k_start [B, T] int -> [B, T, H, V] (masks.segment_starts gives the ranges of packed
    segments). When no tokamax kernel takes ranges, the same mask as a [B, 1, T, S] array."""
    try:
        return _first_that_traces("attention", lambda impl: _tokamax_ranges(q, k, v, k_start, scale, impl),
                                  q.dtype)
    except Exception as e:  # noqa: BLE001 - any failure: the dense mask computes the same thing
        if "attention_ranges" not in _warned:
            _warned.add("attention_ranges")
            warnings.warn(f"tokamax attention with key ranges failed ({e!r:.300}); using a dense mask")
    keys = jnp.arange(k.shape[1], dtype=jnp.int32)
    return attention(q, k, v, keys[None, None, None, :] >= k_start[:, None, :, None], scale)


def ragged_dot(lhs, rhs, group_sizes):
    """Grouped matmul: rows of lhs [M, K] in consecutive groups times rhs [G, K, N] -> [M, N]."""
    return _first_that_traces("ragged_dot", lambda impl: tokamax.ragged_dot(
        lhs, rhs, group_sizes, implementation=impl), lhs.dtype)
