"""Multi-token prediction module (DeepSeek-V3 paper, sec. 2.2), depth 1 as released (layer 61).

Axis legend: B batch, T time, D model, V vocab.

At position i it combines the main model's final-normed hidden state h_i with the embedding of the
next token t_{i+1} and predicts t_{i+2}:
    x_i = eh_proj([enorm(Emb(t_{i+1})); hnorm(h_i)])   (the order serving engines use for the release)
    logits_i = head(norm(Block(x_i)))
The module has its own embedding and head, as the release stores them (copies of the main ones).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from r1jax.models.common import params
from r1jax.models.common.config import LoraConfig
from r1jax.models.deepseek_v3.config import ModelConfig
from r1jax.models.common.norm import RMSNorm
from r1jax.models.deepseek_v3.transformer import Block


def shift_left(x: jnp.ndarray, fill) -> jnp.ndarray:
    """x [B, T] -> [B, T] with x[:, i] = x[:, i+1] and `fill` in the last column."""
    return jnp.concatenate([x[:, 1:], jnp.full_like(x[:, :1], fill)], axis=1)


class MTP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, v, pd = cfg.hidden_size, cfg.vocab_size, cfg.param_dtype
        self.cfg = cfg
        self.embed = params.normal(rngs, (v, d), ("vocab", "embed"), pd)
        self.enorm = RMSNorm(d, cfg.rms_norm_eps, pd)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps, pd)
        self.eh_proj = params.normal(rngs, (2 * d, d), ("mlp", "embed"), pd)
        # The MTP block stays a plain bf16/float block: no FP8 codes, no adapters (its group is "mtp").
        self.block = Block(cfg.replace(fp8_weights=False, lora=LoraConfig()), moe=True, rngs=rngs)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, pd)
        self.head = params.normal(rngs, (d, v), ("embed", "vocab"), pd)
        params.set_group(self, "mtp")  # one optimizer group for the whole module, its block included

    def __call__(self, h, tokens, cos, sin, segment_ids):
        """h [B, T, D] (main model, final-normed), tokens/segment_ids [B, T], cos/sin from rope_tables
        -> (float32 logits [B, T, V] predicting tokens two ahead, MoE stats)."""
        dt = self.cfg.dtype
        e = jnp.take(self.embed[...], shift_left(tokens, 0), axis=0).astype(dt)  # [B, T, D]
        x = jnp.concatenate([self.enorm(e), self.hnorm(h.astype(dt))], axis=-1)  # [B, T, 2D]
        x = x @ self.eh_proj[...].astype(dt)
        x, stats = self.block(x, cos, sin, segment_ids)
        logits = jnp.einsum("btd,dv->btv", self.norm(x), self.head[...].astype(dt),
                            preferred_element_type=jnp.float32)
        return logits, stats
