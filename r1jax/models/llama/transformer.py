"""The dense decoder (LlamaForCausalLM / Qwen2ForCausalLM): embeddings, one scanned stack of
pre-norm layers, final norm, head (the embeddings' transpose when tied).

Axis legend: B batch, T time, D model, V vocab, L layers.

Layers are stacked (r1jax/models/common/stack.py): every parameter of the stack has a leading L axis
(logical name "layers") and the stack runs under `jax.lax.scan` with cfg.remat's policy.

Generation: `prefill` runs left-padded prompts through the training forward and fills the K/V cache
(r1jax/models/llama/kv_cache.py); `decode` runs the next tokens against it (Attention.decode).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.common import left_padded, params, stack
from r1jax.models.common.causal_lm import CausalLM, packed_layout
from r1jax.models.common.mlp import MLP
from r1jax.models.common.norm import RMSNorm
from r1jax.models.llama.attention import Attention
from r1jax.models.llama.config import DenseConfig
from r1jax.models.llama.kv_cache import KVCache, init_cache
from r1jax.models.llama.rope import rope_tables

_ACTS = ("batch", "seq", "embed")


class Block(nnx.Module):
    """Pre-norm decoder layer: h = x + attn(norm(x)), then h + MLP(norm(h))."""

    def __init__(self, cfg: DenseConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.mlp = MLP(cfg, cfg.hidden_size, cfg.intermediate_size, "dense_mlp", rngs=rngs)

    def feed_forward(self, h):
        """h [B, T, D] after attention -> h + MLP(norm(h))."""
        h = sharding.constrain(h, _ACTS)
        return sharding.constrain(h + self.mlp(self.mlp_norm(h)), _ACTS)

    def __call__(self, x, cos, sin, segment_ids):
        """x [B, T, D] -> (x' [B, T, D], {}): no per-layer stats in a dense model."""
        return self.feed_forward(x + self.attn(self.attn_norm(x), cos, sin, segment_ids)), {}

    def prefill(self, x, cos, sin, segment_ids):
        """The training forward, also returning this layer's cache entries:
        x [B, T, D] -> (x' [B, T, D], (k, v [B, T, G, K]))."""
        a, k, v = self.attn.forward_with_kv(self.attn_norm(x), cos, sin, segment_ids)
        return self.feed_forward(x + a), (k, v)

    def decode(self, x, cos, sin, cache, layer, slot, mask):
        """x [B, T, D] at cache slots slot..slot+T-1, mask [B, T, S] -> (x', cache with layer
        `layer` written)."""
        a, cache = self.attn.decode(self.attn_norm(x), cos, sin, cache, layer, slot, mask)
        return self.feed_forward(x + a), cache


class Transformer(CausalLM):
    """LlamaForCausalLM / Qwen2ForCausalLM in Flax NNX (the interface of r1jax/models/family.py); the
    embedding, head (tied or not) and logits are CausalLM's (r1jax/models/common/causal_lm.py)."""

    def __init__(self, cfg: DenseConfig, *, rngs: nnx.Rngs):
        d, v, pd = cfg.hidden_size, cfg.vocab_size, cfg.param_dtype
        self.cfg = cfg
        self.embed = params.normal(rngs, (v, d), ("vocab", "embed"), pd, group="embeddings")
        self.layers = stack.stacked(lambda r: Block(cfg, rngs=r), cfg.num_hidden_layers, rngs)
        self.final_norm = RMSNorm(d, cfg.rms_norm_eps, pd)
        if not cfg.tie_word_embeddings:
            self.lm_head = params.normal(rngs, (d, v), ("embed", "vocab"), pd, group="head")

    def hidden_states(self, tokens, positions=None, segment_ids=None):
        """Final-normed hidden states [B, T, D] and stats {} (no routed experts).

        tokens [B, T] int; positions [B, T] int (default 0..T-1); segment_ids [B, T] int, 0 for
        padding (default all 1). Tokens attend causally within their segment only.
        """
        cfg = self.cfg
        positions, segment_ids = packed_layout(tokens, positions, segment_ids)
        cos, sin = rope_tables(cfg, positions)
        layer_call = lambda block, h: block(h, cos, sin, segment_ids)  # noqa: E731
        x, _ = stack.scan_layers(self.layers, self.embed_tokens(tokens), layer_call, cfg.remat)
        return self.final_norm(x), {}

    def init_cache(self, batch: int, max_len: int, start) -> KVCache:
        """An empty decode cache of max_len slots for `batch` rows whose real tokens begin at
        start [B] (left padding)."""
        return init_cache(self.cfg, batch, max_len, start)

    def prefill(self, tokens, cache: KVCache):
        """Runs LEFT-padded prompts tokens [B, T] (row b real from slot cache.start[b]) through the
        training forward, filling cache slots 0..T-1: -> (float32 logits [B, V] at the last slot,
        cache). Padding is its own segment, so it never reaches a real token."""
        segment_ids, positions = left_padded.prompt_layout(tokens.shape[1], cache.start)
        cos, sin = rope_tables(self.cfg, positions)
        layer_call = lambda block, h: block.prefill(h, cos, sin, segment_ids)  # noqa: E731
        x, (k, v) = stack.scan_layers(self.layers, self.embed_tokens(tokens), layer_call)
        cache = cache.write_layers(0, k, v)
        return self.logits(self.final_norm(x[:, -1:]))[:, 0], cache

    def decode(self, tokens, slot, cache: KVCache):
        """tokens [B, T] at cache slots slot..slot+T-1 (every row's next tokens) -> (float32 logits
        [B, T, V], cache with them written). T is 1 for a decode step."""
        t = tokens.shape[1]
        slot = jnp.asarray(slot, jnp.int32)
        cos, sin = rope_tables(self.cfg, cache.positions(slot, t))
        mask = cache.key_mask(slot, t)
        layer_call = lambda block, h, c, layer: block.decode(h, cos, sin, c, layer, slot, mask)  # noqa: E731
        x, cache = stack.scan_with_cache(self.layers, self.embed_tokens(tokens), cache, layer_call)
        return self.logits(self.final_norm(x)), cache
