"""Multi-head Latent Attention (DeepSeek-V2 paper, sec. 2.1), with YaRN rope on interleaved pairs.

Axis legend: B batch, T query time, S key time, D model, H heads, Q q_lora_rank, C kv_lora_rank,
N qk_nope_head_dim, R qk_rope_head_dim, V v_head_dim.

    q      = q_b(rmsnorm(q_a(x)))                      [B, T, H, N+R]
    c, kr  = split(kv_a(x))                            [B, T, C], [B, T, R] (one rope key, shared)
    k_n, v = split(kv_b(rmsnorm(c)))                   [B, T, H, N], [B, T, H, V]
    attn   = softmax(q.k * scale, causal & same segment) v

Decode (`decode`, `attend_latent`) caches only c and kr (r1jax/models/deepseek_v3/latent_cache.py) and absorbs
kv_b: scores = (q_nope W_k^T).c + q_rope.kr, out = (softmax . c) W_v, never forming per-head K/V.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.common import kernels, lora, params
from r1jax.models.common.masks import attention_mask, segment_starts
from r1jax.models.deepseek_v3.config import ModelConfig
from r1jax.models.common.norm import RMSNorm
from r1jax.models.deepseek_v3.rope import apply_rope


class MLA(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, pd = cfg.hidden_size, cfg.num_attention_heads, cfg.param_dtype
        self.cfg = cfg
        proj = lambda name, shape, axes, fan_in=1: params.projection(self, name, rngs, shape, axes, cfg,
                                                                     "attention", fan_in)
        if cfg.q_lora_rank is None:
            proj("q_proj", (d, h, cfg.qk_head_dim), ("embed", "heads", "head_dim"))
        else:
            proj("q_a", (d, cfg.q_lora_rank), ("embed", "q_lora"))
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps, pd)
            proj("q_b", (cfg.q_lora_rank, h, cfg.qk_head_dim), ("q_lora", "heads", "head_dim"))
        proj("kv_a", (d, cfg.kv_lora_rank + cfg.qk_rope_head_dim), ("embed", "kv_lora"))
        self.kv_a_norm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps, pd)
        proj("kv_b", (cfg.kv_lora_rank, h, cfg.qk_nope_head_dim + cfg.v_head_dim),
             ("kv_lora", "heads", "head_dim"))
        proj("o", (h, cfg.v_head_dim, d), ("heads", "head_dim", "embed"), fan_in=2)

    def queries(self, x, cos, sin):
        """x [B, T, D] (compute dtype) -> q_nope [B, T, H, N], roped q_rope [B, T, H, R]."""
        cfg, dt = self.cfg, self.cfg.dtype
        if cfg.q_lora_rank is None:
            q = lora.project(self, "q_proj", "btd,dhk->bthk", x, dt)
        else:
            q_lat = self.q_a_norm(lora.project(self, "q_a", "btd,dq->btq", x, dt))
            q = lora.project(self, "q_b", "btq,qhk->bthk", q_lat, dt)
        q = sharding.constrain(q, ("batch", "seq", "heads", "head_dim"))  # [B, T, H, N+R]
        q_nope, q_rope = q[..., :cfg.qk_nope_head_dim], q[..., cfg.qk_nope_head_dim:]
        return q_nope, apply_rope(q_rope, cos, sin)

    def latent_kv(self, x, cos, sin):
        """x [B, T, D] (compute dtype) -> normed latent [B, T, C], roped shared key [B, T, R]:
        everything the keys and values of these tokens are made of (what the decode cache holds)."""
        cfg = self.cfg
        kv = lora.project(self, "kv_a", "btd,dc->btc", x, cfg.dtype)  # [B, T, C+R]
        latent = self.kv_a_norm(kv[..., :cfg.kv_lora_rank])  # [B, T, C]
        k_rope = apply_rope(kv[..., None, cfg.kv_lora_rank:], cos, sin)[:, :, 0]  # [B, T, R]
        return latent, k_rope

    def forward_with_latent(self, x, cos, sin, segment_ids):
        """The training forward (per-head K/V, attention kernel), also returning what it cached:
        x [B, T, D] -> (y [B, T, D], latent [B, T, C], k_rope [B, T, R])."""
        cfg, dt = self.cfg, self.cfg.dtype
        x = x.astype(dt)
        q_nope, q_rope = self.queries(x, cos, sin)
        q = jnp.concatenate([q_nope, q_rope], axis=-1)  # [B, T, H, N+R]
        latent, k_rope = self.latent_kv(x, cos, sin)
        kvh = lora.project(self, "kv_b", "btc,chk->bthk", latent, dt)  # [B, T, H, N+V]
        kvh = sharding.constrain(kvh, ("batch", "seq", "heads", "head_dim"))
        k_nope, v = kvh[..., :cfg.qk_nope_head_dim], kvh[..., cfg.qk_nope_head_dim:]
        k_shared = jnp.broadcast_to(k_rope[:, :, None], k_nope.shape[:-1] + k_rope.shape[-1:])
        k = jnp.concatenate([k_nope, k_shared], axis=-1)  # [B, T, H, N+R]

        if cfg.attention_mask == "ranges":
            out = kernels.attention_ranges(q, k, v, segment_starts(segment_ids), cfg.softmax_scale)
        else:
            out = kernels.attention(q, k, v, attention_mask(segment_ids), cfg.softmax_scale)  # [B, T, H, V]
        out = sharding.constrain(out, ("batch", "seq", "heads", "head_dim"))
        return lora.project(self, "o", "bthv,hvd->btd", out, dt), latent, k_rope

    def __call__(self, x, cos, sin, segment_ids):
        """x [B, T, D], cos/sin [B, T, R/2] (rope.rope_tables), segment_ids [B, T] -> [B, T, D]."""
        return self.forward_with_latent(x, cos, sin, segment_ids)[0]

    def attend_latent(self, q_nope, q_rope, latent, k_rope, mask):
        """Attention with kv_b absorbed (DeepSeek-V2 paper, sec. 2.1.3), against cached keys.

        q_nope [B, T, H, N], q_rope [B, T, H, R] (roped); latent [B, S, C], k_rope [B, S, R];
        mask [B, T, S] bool -> [B, T, D]. q_nope times kv_b's key part gives a query in latent space
        (q.k_nope = (q_nope W_k^T).c), so scores need no per-head keys; the attention-weighted
        latent goes through kv_b's value part once per query instead of once per cached token.
        """
        cfg, dt = self.cfg, self.cfg.dtype
        kv_b = lora.weight(self, "kv_b", dt, merged=True)  # its adapter folded in: nothing to differentiate
        w_k, w_v = kv_b[..., :cfg.qk_nope_head_dim], kv_b[..., cfg.qk_nope_head_dim:]  # [C, H, N], [C, H, V]
        q_lat = jnp.einsum("bthn,chn->bthc", q_nope, w_k)  # [B, T, H, C]
        q_lat = sharding.constrain(q_lat, ("batch", "seq", "heads", None))
        scores = (jnp.einsum("bthc,bsc->bhts", q_lat, latent, preferred_element_type=jnp.float32)
                  + jnp.einsum("bthr,bsr->bhts", q_rope, k_rope, preferred_element_type=jnp.float32))
        scores = jnp.where(mask[:, None], scores * cfg.softmax_scale, -jnp.inf)  # [B, H, T, S]
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        o_lat = jnp.einsum("bhts,bsc->bthc", probs, latent)  # [B, T, H, C]
        out = jnp.einsum("bthc,chv->bthv", o_lat, w_v)  # [B, T, H, V]
        out = sharding.constrain(out, ("batch", "seq", "heads", "head_dim"))
        return lora.project(self, "o", "bthv,hvd->btd", out, dt)

    def decode(self, x, cos, sin, cache, layer, slot, mask):
        """x [B, T, D] at cache slots slot..slot+T-1 (cos/sin for their positions), mask [B, T, S]
        -> (y [B, T, D], cache with this layer's new latent and rope key written)."""
        x = x.astype(self.cfg.dtype)
        q_nope, q_rope = self.queries(x, cos, sin)
        latent, k_rope = self.latent_kv(x, cos, sin)
        cache = cache.write(layer, slot, latent, k_rope)
        c_l, r_l = cache.layer(layer)  # [B, S, C], [B, S, R]
        return self.attend_latent(q_nope, q_rope, c_l, r_l, mask), cache
