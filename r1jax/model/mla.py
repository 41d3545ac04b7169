"""Multi-head Latent Attention (DeepSeek-V2 paper, sec. 2.1), with YaRN rope on interleaved pairs.

Axis legend: B batch, T query time, S key time, D model, H heads, Q q_lora_rank, C kv_lora_rank,
N qk_nope_head_dim, R qk_rope_head_dim, V v_head_dim.

    q      = q_b(rmsnorm(q_a(x)))                      [B, T, H, N+R]
    c, kr  = split(kv_a(x))                            [B, T, C], [B, T, R] (one rope key, shared)
    k_n, v = split(kv_b(rmsnorm(c)))                   [B, T, H, N], [B, T, H, V]
    attn   = softmax(q.k * scale, causal & same segment) v
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax import sharding
from r1jax.model import kernels, params
from r1jax.model.config import ModelConfig
from r1jax.model.norm import RMSNorm
from r1jax.model.rope import apply_rope


def attention_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Same-segment mask [B, 1, T, S] from segment_ids [B, T]; causality is applied separately.

    Padding has segment id 0: pad queries see only pad keys, so no row is empty and none leaks.
    """
    return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


class MLA(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, pd = cfg.hidden_size, cfg.num_attention_heads, cfg.param_dtype
        self.cfg = cfg
        if cfg.q_lora_rank is None:
            self.q_proj = params.normal(rngs, (d, h, cfg.qk_head_dim), ("embed", "heads", "head_dim"), pd)
        else:
            self.q_a = params.normal(rngs, (d, cfg.q_lora_rank), ("embed", "q_lora"), pd)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps, pd)
            self.q_b = params.normal(rngs, (cfg.q_lora_rank, h, cfg.qk_head_dim),
                                     ("q_lora", "heads", "head_dim"), pd)
        self.kv_a = params.normal(rngs, (d, cfg.kv_lora_rank + cfg.qk_rope_head_dim),
                                  ("embed", "kv_lora"), pd)
        self.kv_a_norm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps, pd)
        self.kv_b = params.normal(rngs, (cfg.kv_lora_rank, h, cfg.qk_nope_head_dim + cfg.v_head_dim),
                                  ("kv_lora", "heads", "head_dim"), pd)
        self.o = params.normal(rngs, (h, cfg.v_head_dim, d), ("heads", "head_dim", "embed"), pd)

    def __call__(self, x, cos, sin, segment_ids):
        """x [B, T, D], cos/sin [B, T, R/2] (rope.rope_tables), segment_ids [B, T] -> [B, T, D]."""
        cfg, dt = self.cfg, self.cfg.dtype
        c = lambda p: p[...].astype(dt)
        x = x.astype(dt)
        if cfg.q_lora_rank is None:
            q = jnp.einsum("btd,dhk->bthk", x, c(self.q_proj))
        else:
            q = jnp.einsum("btq,qhk->bthk", self.q_a_norm(x @ c(self.q_a)), c(self.q_b))
        q = sharding.constrain(q, ("batch", "seq", "heads", "head_dim"))  # [B, T, H, N+R]
        q_nope, q_rope = q[..., :cfg.qk_nope_head_dim], q[..., cfg.qk_nope_head_dim:]
        q = jnp.concatenate([q_nope, apply_rope(q_rope, cos, sin)], axis=-1)

        kv = x @ c(self.kv_a)  # [B, T, C+R]
        latent = self.kv_a_norm(kv[..., :cfg.kv_lora_rank])  # [B, T, C]
        k_rope = apply_rope(kv[..., None, cfg.kv_lora_rank:], cos, sin)  # [B, T, 1, R]
        kvh = jnp.einsum("btc,chk->bthk", latent, c(self.kv_b))  # [B, T, H, N+V]
        kvh = sharding.constrain(kvh, ("batch", "seq", "heads", "head_dim"))
        k_nope, v = kvh[..., :cfg.qk_nope_head_dim], kvh[..., cfg.qk_nope_head_dim:]
        k = jnp.concatenate([k_nope, jnp.broadcast_to(k_rope, k_nope.shape[:-1] + k_rope.shape[-1:])],
                            axis=-1)  # [B, T, H, N+R]

        out = kernels.attention(q, k, v, attention_mask(segment_ids), cfg.softmax_scale)  # [B, T, H, V]
        out = sharding.constrain(out, ("batch", "seq", "heads", "head_dim"))
        return jnp.einsum("bthv,hvd->btd", out, c(self.o))
