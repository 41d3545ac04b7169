"""What every decoder family's model shares around its layers: the embedding, the head, the logits.

Axis legend: B batch, T time, D model, V vocab.

A family's Transformer subclasses `CausalLM` and defines its layers: `hidden_states` (the training
forward), `init_cache`, `prefill` and `decode`. `CausalLM` gives the rest of the model interface
(r1jax/models/family.py), from the variables `embed` [V, D] and, unless cfg.tie_word_embeddings,
`lm_head` [D, V]:

    embed_tokens(tokens [B, T])  = embed[tokens]                         [B, T, D] in cfg.dtype
    head_weight()                = lm_head, or embed^T when tied          [D, V]
    logits(h [B, T, D])          = h @ head_weight(), accumulated in f32   [B, T, V]
    __call__(tokens, ...)        = (logits(h), stats) with (h, stats) = hidden_states(tokens, ...)
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding


def default_positions(tokens: jnp.ndarray) -> jnp.ndarray:
    """0..T-1 for every row of tokens [B, T]."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def packed_layout(tokens: jnp.ndarray, positions=None, segment_ids=None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(positions [B, T], segment_ids [B, T]) of a forward: the given ones, else 0..T-1 and all 1
    (one unpadded sequence per row)."""
    positions = default_positions(tokens) if positions is None else positions
    segment_ids = jnp.ones_like(tokens, jnp.int32) if segment_ids is None else segment_ids
    return positions, segment_ids


class CausalLM(nnx.Module):
    """The shared part of a decoder-only language model (see the module docstring)."""

    def embed_tokens(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """tokens [B, T] int -> [B, T, D] in the compute dtype."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype)
        return sharding.constrain(x, ("batch", "seq", "embed"))

    def head_weight(self) -> jnp.ndarray:
        """The LM head [D, V]: lm_head, or embed.T when the embeddings are tied."""
        return self.embed[...].T if getattr(self.cfg, "tie_word_embeddings", False) else self.lm_head[...]

    def logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """h [B, T, D] -> float32 logits [B, T, V]."""
        out = jnp.einsum("btd,dv->btv", h, self.head_weight().astype(h.dtype),
                         preferred_element_type=jnp.float32)
        return sharding.constrain(out, ("batch", "seq", "vocab"))

    def __call__(self, tokens, positions=None, segment_ids=None):
        """tokens [B, T] -> (float32 logits [B, T, V], stats of hidden_states)."""
        h, stats = self.hidden_states(tokens, positions, segment_ids)
        return self.logits(h), stats
