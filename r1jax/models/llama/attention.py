"""Grouped-query attention (Ainslie et al. 2023) with rotate-half rope, as HF Llama and Qwen2 compute it.

Axis legend: B batch, T query time, S key time, D model, H query heads, G K/V heads (H/G query heads
share one), K head width.

    q = x Wq (+ bq)   [B, T, H, K]      k = x Wk (+ bk), v = x Wv (+ bv)   [B, T, G, K]
    attn = softmax(rope(q).rope(k) / sqrt(K), causal & same segment) v      (query head h reads
                                                                             K/V head h // (H/G))
    y = attn Wo (+ bo)                  [B, T, D]

Biases: q/k/v with cfg.qkv_bias (qwen2, llama attention_bias), o with cfg.o_bias (llama).
tokamax's dot_product_attention takes fewer K/V heads than query heads (its XLA implementations
repeat each K/V head H/G times, its Triton kernel indexes K/V head h // (H/G)), so K/V go to the
kernel with G heads. Decode (`decode`) attends against the cache (r1jax/models/llama/kv_cache.py)
with a grouped einsum, never repeating K/V.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.common import kernels, lora, params
from r1jax.models.common.masks import attention_mask, segment_starts
from r1jax.models.llama.config import DenseConfig
from r1jax.models.llama.rope import apply_rope

_HEADS = ("batch", "seq", "heads", "head_dim")
_KV_HEADS = ("batch", "seq", "kv_heads", "head_dim")


class Attention(nnx.Module):
    def __init__(self, cfg: DenseConfig, *, rngs: nnx.Rngs):
        d, h, g, k, pd = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                          cfg.head_size, cfg.param_dtype)
        self.cfg = cfg
        proj = lambda name, shape, axes, fan_in=1: params.projection(  # noqa: E731
            self, name, rngs, shape, axes, cfg, "attention", fan_in)
        proj("q", (d, h, k), ("embed", "heads", "head_dim"))
        proj("k", (d, g, k), ("embed", "kv_heads", "head_dim"))
        proj("v", (d, g, k), ("embed", "kv_heads", "head_dim"))
        proj("o", (h, k, d), ("heads", "head_dim", "embed"), fan_in=2)
        if cfg.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((h, k), pd), axes=("heads", "head_dim"), group="attention")
            self.k_bias = nnx.Param(jnp.zeros((g, k), pd), axes=("kv_heads", "head_dim"), group="attention")
            self.v_bias = nnx.Param(jnp.zeros((g, k), pd), axes=("kv_heads", "head_dim"), group="attention")
        if cfg.o_bias:
            self.o_bias = nnx.Param(jnp.zeros((d,), pd), axes=("embed",), group="attention")

    def _project(self, name: str, eq: str, x, axes):
        """Projection owner.NAME of x (lora.project) plus its bias NAME_bias when it has one."""
        dt = self.cfg.dtype
        y = lora.project(self, name, eq, x, dt)
        bias = getattr(self, name + "_bias", None)
        if bias is not None:
            y = y + bias[...].astype(dt)
        return sharding.constrain(y, axes)

    def qkv(self, x, cos, sin):
        """x [B, T, D] -> roped q [B, T, H, K], roped k [B, T, G, K], v [B, T, G, K] (compute dtype)."""
        x = x.astype(self.cfg.dtype)
        q = self._project("q", "btd,dhk->bthk", x, _HEADS)
        k = self._project("k", "btd,dgk->btgk", x, _KV_HEADS)
        v = self._project("v", "btd,dgk->btgk", x, _KV_HEADS)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, attn):
        """attn [B, T, H, K] -> [B, T, D]."""
        attn = sharding.constrain(attn, _HEADS)
        return self._project("o", "bthk,hkd->btd", attn, ("batch", "seq", "embed"))

    def forward_with_kv(self, x, cos, sin, segment_ids):
        """The training forward, also returning its keys and values (what prefill caches):
        x [B, T, D], cos/sin [B, T, K/2], segment_ids [B, T] -> (y [B, T, D], k, v [B, T, G, K])."""
        cfg = self.cfg
        q, k, v = self.qkv(x, cos, sin)
        if cfg.attention_mask == "ranges":
            attn = kernels.attention_ranges(q, k, v, segment_starts(segment_ids), cfg.softmax_scale)
        else:
            attn = kernels.attention(q, k, v, attention_mask(segment_ids), cfg.softmax_scale)
        return self.out(attn), k, v

    def __call__(self, x, cos, sin, segment_ids):
        """x [B, T, D], cos/sin [B, T, K/2] (rope.rope_tables), segment_ids [B, T] -> [B, T, D]."""
        return self.forward_with_kv(x, cos, sin, segment_ids)[0]

    def attend(self, q, k, v, mask):
        """Grouped attention of q [B, T, H, K] against k, v [B, S, G, K] under mask [B, T, S] bool
        -> [B, T, D]; scores and softmax in float32."""
        cfg = self.cfg
        b, t, h, kw = q.shape
        g = k.shape[2]
        qg = q.reshape(b, t, g, h // g, kw)  # query head h = (h // (H/G), h % (H/G))
        scores = jnp.einsum("btgrk,bsgk->bgrts", qg, k, preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, None], scores * cfg.softmax_scale, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
        attn = jnp.einsum("bgrts,bsgk->btgrk", probs, v).reshape(b, t, h, kw)
        return self.out(attn)

    def decode(self, x, cos, sin, cache, layer, slot, mask):
        """x [B, T, D] at cache slots slot..slot+T-1 (cos/sin for their positions), mask [B, T, S]
        -> (y [B, T, D], cache with this layer's new keys and values written)."""
        q, k, v = self.qkv(x, cos, sin)
        cache = cache.write(layer, slot, k, v)
        k_all, v_all = cache.layer(layer)  # [B, S, G, K]
        return self.attend(q, k_all, v_all, mask), cache
