"""The DeepSeek-V3/R1 decoder: embeddings, scanned stacks of dense and MoE blocks, final norm, head.

Axis legend: B batch, T time, D model, V vocab, L layers (of one stack), E routed experts.

Layers are stacked (r1jax/models/common/stack.py): every parameter of a stack has a leading L axis
(logical name "layers") and the stack runs under `jax.lax.scan`, so compile time does not grow with
depth. The first
`first_k_dense_replace` layers form the dense stack, the rest the MoE stack.

Generation: `prefill` runs left-padded prompts through the training forward and fills MLA's latent
cache (r1jax/models/deepseek_v3/latent_cache.py); `decode` runs the next tokens against it (MLA.decode).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.common import left_padded, params, stack
from r1jax.models.common.causal_lm import CausalLM, packed_layout
from r1jax.models.deepseek_v3.config import ModelConfig
from r1jax.models.deepseek_v3.latent_cache import LatentCache, init_cache
from r1jax.models.deepseek_v3.mla import MLA
from r1jax.models.common.mlp import MLP
from r1jax.models.deepseek_v3.moe import MoE
from r1jax.models.common.norm import RMSNorm
from r1jax.models.deepseek_v3.rope import rope_tables


class Block(nnx.Module):
    """Pre-norm decoder layer: x + MLA(norm(x)), then h + MLP-or-MoE(norm(h))."""

    def __init__(self, cfg: ModelConfig, moe: bool, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.attn = MLA(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        if moe:
            self.mlp = MoE(cfg, rngs=rngs)
        else:
            self.mlp = MLP(cfg, cfg.hidden_size, cfg.intermediate_size, "dense_mlp", rngs=rngs)
        self.moe = moe

    def __call__(self, x, cos, sin, segment_ids):
        """x [B, T, D] -> (x' [B, T, D], stats: {} or MoE stats)."""
        h = x + self.attn(self.attn_norm(x), cos, sin, segment_ids)
        return self.feed_forward(h, segment_ids > 0)

    def feed_forward(self, h, token_mask):
        """The second half: h [B, T, D] after attention -> (h + MLP-or-MoE(norm(h)), stats)."""
        h = sharding.constrain(h, ("batch", "seq", "embed"))
        if self.moe:
            y, stats = self.mlp(self.mlp_norm(h), token_mask)
        else:
            y, stats = self.mlp(self.mlp_norm(h)), {}
        return sharding.constrain(h + y, ("batch", "seq", "embed")), stats

    def prefill(self, x, cos, sin, segment_ids):
        """The training forward, also returning this layer's decode-cache entries:
        x [B, T, D] -> (x' [B, T, D], (latent [B, T, C], k_rope [B, T, R]))."""
        a, latent, k_rope = self.attn.forward_with_latent(self.attn_norm(x), cos, sin, segment_ids)
        x, _ = self.feed_forward(x + a, segment_ids > 0)
        return x, (latent, k_rope)

    def decode(self, x, cos, sin, cache, layer, slot, mask):
        """x [B, T, D] at cache slots slot..slot+T-1 -> (x' [B, T, D], cache with layer `layer`
        written); attention against the latent cache (MLA.decode), mask [B, T, S]."""
        a, cache = self.attn.decode(self.attn_norm(x), cos, sin, cache, layer, slot, mask)
        x, _ = self.feed_forward(x + a, jnp.ones(x.shape[:2], bool))
        return x, cache


class Transformer(CausalLM):
    """DeepseekV3ForCausalLM in Flax NNX (plus the MTP module when cfg.with_mtp); the embedding,
    head and logits are CausalLM's (r1jax/models/common/causal_lm.py)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, v, pd = cfg.hidden_size, cfg.vocab_size, cfg.param_dtype
        self.cfg = cfg
        self.embed = params.normal(rngs, (v, d), ("vocab", "embed"), pd, group="embeddings")
        if cfg.first_k_dense_replace:
            self.dense_layers = stack.stacked(lambda r: Block(cfg, False, rngs=r),
                                              cfg.first_k_dense_replace, rngs)
        if cfg.num_moe_layers:
            self.moe_layers = stack.stacked(lambda r: Block(cfg, True, rngs=r), cfg.num_moe_layers,
                                            rngs, first_layer=cfg.first_k_dense_replace)
        self.final_norm = RMSNorm(d, cfg.rms_norm_eps, pd)
        self.lm_head = params.normal(rngs, (d, v), ("embed", "vocab"), pd, group="head")
        if cfg.with_mtp:
            from r1jax.models.deepseek_v3.mtp import MTP  # the MTP block is a Block: import here to avoid a cycle
            self.mtp = MTP(cfg, rngs=rngs)

    def hidden_states(self, tokens, positions=None, segment_ids=None):
        """Final-normed hidden states [B, T, D] and stats {"load": [L_moe, E], "aux_loss": [L_moe]}.

        tokens [B, T] int; positions [B, T] int (default 0..T-1); segment_ids [B, T] int, 0 for
        padding (default all 1). Tokens attend causally within their segment only.
        """
        cfg = self.cfg
        positions, segment_ids = packed_layout(tokens, positions, segment_ids)
        cos, sin = rope_tables(cfg, positions)
        x = self.embed_tokens(tokens)
        layer_call = lambda block, h: block(h, cos, sin, segment_ids)  # noqa: E731
        stats: dict[str, Any] = {}
        if cfg.first_k_dense_replace:
            x, _ = stack.scan_layers(self.dense_layers, x, layer_call, cfg.remat)
        if cfg.num_moe_layers:
            x, stats = stack.scan_layers(self.moe_layers, x, layer_call, cfg.remat,
                                         cfg.first_k_dense_replace)
        return self.final_norm(x), stats

    def init_cache(self, batch: int, max_len: int, start) -> LatentCache:
        """An empty decode cache of max_len slots for `batch` rows whose real tokens begin at
        start [B] (left padding): MLA's latent cache."""
        return init_cache(self.cfg, batch, max_len, start)

    def prefill(self, tokens, cache: LatentCache):
        """Runs LEFT-padded prompts tokens [B, T] (row b real from slot cache.start[b]) through the
        training forward, filling cache slots 0..T-1: -> (float32 logits [B, V] at the last slot,
        cache). Padding is its own segment, so it never reaches a real token."""
        cfg = self.cfg
        segment_ids, positions = left_padded.prompt_layout(tokens.shape[1], cache.start)
        cos, sin = rope_tables(cfg, positions)
        x = self.embed_tokens(tokens)
        layer_call = lambda block, h: block.prefill(h, cos, sin, segment_ids)  # noqa: E731
        if cfg.first_k_dense_replace:
            x, (latent, k_rope) = stack.scan_layers(self.dense_layers, x, layer_call)
            cache = cache.write_layers(0, latent, k_rope)
        if cfg.num_moe_layers:
            x, (latent, k_rope) = stack.scan_layers(self.moe_layers, x, layer_call)
            cache = cache.write_layers(cfg.first_k_dense_replace, latent, k_rope)
        return self.logits(self.final_norm(x[:, -1:]))[:, 0], cache

    def decode(self, tokens, slot, cache: LatentCache):
        """tokens [B, T] at cache slots slot..slot+T-1 (every row's next tokens) -> (float32 logits
        [B, T, V], cache with them written). T is 1 for a decode step."""
        cfg, t = self.cfg, tokens.shape[1]
        slot = jnp.asarray(slot, jnp.int32)
        cos, sin = rope_tables(cfg, cache.positions(slot, t))
        mask = cache.key_mask(slot, t)
        x = self.embed_tokens(tokens)
        layer_call = lambda block, h, c, layer: block.decode(h, cos, sin, c, layer, slot, mask)  # noqa: E731
        if cfg.first_k_dense_replace:
            x, cache = stack.scan_with_cache(self.dense_layers, x, cache, layer_call)
        if cfg.num_moe_layers:
            x, cache = stack.scan_with_cache(self.moe_layers, x, cache, layer_call, cfg.first_k_dense_replace)
        return self.logits(self.final_norm(x)), cache

    def mtp_logits(self, h, tokens, positions=None, segment_ids=None):
        """The MTP module's float32 logits [B, T, V] (position t predicts tokens[t+2]) and its MoE
        stats, from the main model's final-normed hidden states h [B, T, D] (hidden_states)."""
        if not self.cfg.with_mtp:
            raise ValueError("this model has no MTP module; build it with with_mtp=True")
        positions, segment_ids = packed_layout(tokens, positions, segment_ids)
        cos, sin = rope_tables(self.cfg, positions)
        return self.mtp(h, tokens, cos, sin, segment_ids)
