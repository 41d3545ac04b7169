"""The tokamax kernels the model calls (Mosaic/Triton on GPU, XLA fallback elsewhere).

tokamax reads its options through absl flags and, on first use, parses `sys.argv` as absl flags if
nobody has: that fails on any command line it does not know (pytest's, ours). r1jax has no absl
flags of its own, so flags are marked parsed here, leaving tokamax's options at their defaults.
"""
from __future__ import annotations

import tokamax
from absl import flags

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def attention(q, k, v, mask, scale):
    """Causal attention; q, k [B, T, H, K], v [B, T, H, V], mask [B, 1, T, S] bool -> [B, T, H, V].

    Softmax statistics are float32 in every tokamax implementation.
    """
    return tokamax.dot_product_attention(q, k, v, mask=mask, is_causal=True, scale=scale)


def ragged_dot(lhs, rhs, group_sizes):
    """Grouped matmul: rows of lhs [M, K] in consecutive groups times rhs [G, K, N] -> [M, N]."""
    return tokamax.ragged_dot(lhs, rhs, group_sizes)
