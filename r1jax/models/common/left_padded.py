"""Left-padded rows in a decode cache: where each row's tokens sit and what each query sees.

Axis legend: B batch, T tokens, S cache slots. Rows are LEFT-padded: every row's newest token sits at
the same slot, so one dynamic_update_slice writes a step for the whole batch. start[b] is row b's
first real slot; its rope position at slot s is s - start[b]. Every family's cache
(r1jax/models/deepseek_v3/latent_cache.py, r1jax/models/llama/kv_cache.py) keeps `start` and asks
these functions.
"""
from __future__ import annotations

import jax.numpy as jnp


def prompt_layout(t: int, start: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Prompts in slots 0..t-1, row b real from start[b]: (segment_ids [B, T], 0 for padding, so
    padding is its own segment and never reaches a real token; positions [B, T], 0 on padding)."""
    slots = jnp.arange(t, dtype=jnp.int32)[None, :]
    segment_ids = (slots >= start[:, None]).astype(jnp.int32)
    return segment_ids, jnp.maximum(slots - start[:, None], 0)


def key_mask(start: jnp.ndarray, max_len: int, slot, t: int) -> jnp.ndarray:
    """[B, T, S] bool: query t (at slot slot+t) sees the row's real slots up to its own."""
    s = jnp.arange(max_len, dtype=jnp.int32)
    q = slot + jnp.arange(t, dtype=jnp.int32)  # [T]
    return (s[None, None, :] >= start[:, None, None]) & (s[None, None, :] <= q[None, :, None])


def positions(start: jnp.ndarray, slot, t: int) -> jnp.ndarray:
    """[B, T] int32 rope positions of the tokens at slots slot..slot+T-1."""
    return slot + jnp.arange(t, dtype=jnp.int32)[None, :] - start[:, None]
