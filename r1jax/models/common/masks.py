"""Masks of packed attention: which keys a query may see, from the segment ids of a packed row.

Axis legend: B batch, T query time, S key time. Segment id 0 marks padding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Same-segment mask [B, 1, T, S] from segment_ids [B, T]; causality is applied separately.

    Padding has segment id 0: pad queries see only pad keys, so no row is empty and none leaks.
    """
    return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


def segment_starts(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """segment_ids [B, T] -> [B, T] int32: where the run of equal ids holding each position begins.

    With causality, query t attending to keys segment_starts[t]..t is the same-segment mask
    (attention_mask) whenever each segment is one contiguous run, as packed rows and left or right
    padding are; RuntimeConfig.attention_mask "ranges" passes these ranges instead of the mask array.
    """
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
    new = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                           segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return jax.lax.cummax(jnp.where(new, t, 0), axis=1)
