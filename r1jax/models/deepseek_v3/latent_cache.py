"""MLA's compressed decode cache: per layer and token only the normed latent and the shared rope key.

Axis legend: L layers (all of them: dense stack first, then MoE), B batch, S cache slots, T new
tokens, C kv_lora_rank, R qk_rope_head_dim.

DeepSeek-V2 paper, sec. 2.1.3: with kv_b absorbed into the query and output projections, attention
needs per token only c (C values) and the roped key (R values), against H*(N+R) + H*V for per-head
K/V: 576 against 40,960 values per layer for R1 (71x less).

Rows are LEFT-padded (r1jax/models/common/left_padded.py: `start[b]` is row b's first real slot).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.models.common import left_padded
from r1jax.parallel import sharding
from r1jax.models.deepseek_v3.config import ModelConfig


class LatentCache(NamedTuple):
    latent: jnp.ndarray   # [L, B, S, C] compute dtype: kv_a_layernorm(c)
    k_rope: jnp.ndarray   # [L, B, S, R] compute dtype: the roped shared key
    start: jnp.ndarray    # [B] int32: first real (not padding) slot of each row

    @property
    def max_len(self) -> int:
        return self.latent.shape[2]

    def write(self, layer, slot, latent, k_rope) -> "LatentCache":
        """Stores latent [B, T, C] and k_rope [B, T, R] of one layer at slots slot..slot+T-1."""
        z = jnp.zeros((), jnp.int32)
        return self._replace(
            latent=jax.lax.dynamic_update_slice(self.latent, latent[None].astype(self.latent.dtype),
                                                (layer, z, slot, z)),
            k_rope=jax.lax.dynamic_update_slice(self.k_rope, k_rope[None].astype(self.k_rope.dtype),
                                                (layer, z, slot, z)))

    def write_layers(self, first_layer: int, latent, k_rope) -> "LatentCache":
        """Stores a stack's prefill, latent [L', B, T, C] and k_rope [L', B, T, R], at layers
        first_layer.. and slots 0..T-1."""
        z = jnp.zeros((), jnp.int32)
        first = jnp.asarray(first_layer, jnp.int32)
        return self._replace(
            latent=jax.lax.dynamic_update_slice(self.latent, latent.astype(self.latent.dtype),
                                                (first, z, z, z)),
            k_rope=jax.lax.dynamic_update_slice(self.k_rope, k_rope.astype(self.k_rope.dtype),
                                                (first, z, z, z)))

    def layer(self, layer) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(latent [B, S, C], k_rope [B, S, R]) of one layer."""
        return (jax.lax.dynamic_index_in_dim(self.latent, layer, 0, keepdims=False),
                jax.lax.dynamic_index_in_dim(self.k_rope, layer, 0, keepdims=False))

    def key_mask(self, slot, t: int) -> jnp.ndarray:
        """[B, T, S] bool: query t (at slot slot+t) sees the row's real slots up to its own."""
        return left_padded.key_mask(self.start, self.max_len, slot, t)

    def positions(self, slot, t: int) -> jnp.ndarray:
        """[B, T] int32 rope positions of the tokens at slots slot..slot+T-1."""
        return left_padded.positions(self.start, slot, t)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, start: jnp.ndarray) -> LatentCache:
    """A zero cache of max_len slots for `batch` rows whose real tokens begin at `start` [B]."""
    n = cfg.num_hidden_layers
    zeros = lambda width: sharding.constrain(jnp.zeros((n, batch, max_len, width), cfg.dtype),
                                             ("layers", "batch", "seq", None))
    return LatentCache(zeros(cfg.kv_lora_rank), zeros(cfg.qk_rope_head_dim),
                       jnp.asarray(start, jnp.int32))


def bytes_per_token(cfg: ModelConfig, itemsize: int) -> dict[str, int]:
    """Decode-cache bytes per token over all layers: the latent cache against per-head K/V."""
    latent = cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * itemsize
    per_head = cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * itemsize
    return {"latent": latent, "per_head_kv": per_head}
