"""The dense decoders' decode cache: every layer's roped keys and values per K/V head.

Axis legend: L layers, B batch, S cache slots, T new tokens, G K/V heads (num_key_value_heads),
K head width.

Rows are LEFT-padded (r1jax/models/common/left_padded.py: `start[b]` is row b's first real slot).
Grouped-query attention keeps only the G K/V heads: 2 L G K values per token
(R1-Distill-Llama-8B: 128 KiB in bf16).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.models.common import left_padded
from r1jax.parallel import sharding
from r1jax.models.llama.config import DenseConfig

_AXES = ("layers", "batch", "seq", "kv_heads", "head_dim")


class KVCache(NamedTuple):
    k: jnp.ndarray        # [L, B, S, G, K] compute dtype: roped keys
    v: jnp.ndarray        # [L, B, S, G, K] compute dtype: values
    start: jnp.ndarray    # [B] int32: first real (not padding) slot of each row

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, layer, slot, k, v) -> "KVCache":
        """Stores k, v [B, T, G, K] of one layer at slots slot..slot+T-1."""
        z = jnp.zeros((), jnp.int32)
        at = (jnp.asarray(layer, jnp.int32), z, jnp.asarray(slot, jnp.int32), z, z)
        return self._replace(
            k=jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), at),
            v=jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), at))

    def write_layers(self, first_layer: int, k, v) -> "KVCache":
        """Stores a stack's prefill, k and v [L', B, T, G, K], at layers first_layer.. and slots
        0..T-1."""
        z = jnp.zeros((), jnp.int32)
        at = (jnp.asarray(first_layer, jnp.int32), z, z, z, z)
        return self._replace(
            k=jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), at),
            v=jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), at))

    def layer(self, layer) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(k [B, S, G, K], v [B, S, G, K]) of one layer."""
        return (jax.lax.dynamic_index_in_dim(self.k, layer, 0, keepdims=False),
                jax.lax.dynamic_index_in_dim(self.v, layer, 0, keepdims=False))

    def key_mask(self, slot, t: int) -> jnp.ndarray:
        """[B, T, S] bool: query t (at slot slot+t) sees the row's real slots up to its own."""
        return left_padded.key_mask(self.start, self.max_len, slot, t)

    def positions(self, slot, t: int) -> jnp.ndarray:
        """[B, T] int32 rope positions of the tokens at slots slot..slot+T-1."""
        return left_padded.positions(self.start, slot, t)


def init_cache(cfg: DenseConfig, batch: int, max_len: int, start: jnp.ndarray) -> KVCache:
    """A zero cache of max_len slots for `batch` rows whose real tokens begin at `start` [B]."""
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_size)
    zeros = lambda: sharding.constrain(jnp.zeros(shape, cfg.dtype), _AXES)  # noqa: E731
    return KVCache(zeros(), zeros(), jnp.asarray(start, jnp.int32))
