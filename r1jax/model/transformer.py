"""The DeepSeek-V3/R1 decoder: embeddings, scanned stacks of dense and MoE blocks, final norm, head.

Axis legend: B batch, T time, D model, V vocab, L layers (of one stack), E routed experts.

Layers are stacked: every parameter of a stack has a leading L axis (logical name "layers") and the
stack runs under `jax.lax.scan`, so compile time does not grow with depth. The first
`first_k_dense_replace` layers form the dense stack, the rest the MoE stack.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax import sharding
from r1jax.model import params
from r1jax.model.config import ModelConfig
from r1jax.model.mla import MLA
from r1jax.model.mlp import MLP
from r1jax.model.moe import MoE
from r1jax.model.norm import RMSNorm
from r1jax.model.rope import rope_tables

_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nnx.Module):
    """Pre-norm decoder layer: x + MLA(norm(x)), then h + MLP-or-MoE(norm(h))."""

    def __init__(self, cfg: ModelConfig, moe: bool, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.attn = MLA(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        if moe:
            self.mlp = MoE(cfg, rngs=rngs)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, rngs=rngs)
        self.moe = moe

    def __call__(self, x, cos, sin, segment_ids):
        """x [B, T, D] -> (x' [B, T, D], stats: {} or MoE stats)."""
        h = x + self.attn(self.attn_norm(x), cos, sin, segment_ids)
        h = sharding.constrain(h, ("batch", "seq", "embed"))
        if self.moe:
            y, stats = self.mlp(self.mlp_norm(h), segment_ids > 0)
        else:
            y, stats = self.mlp(self.mlp_norm(h)), {}
        return sharding.constrain(h + y, ("batch", "seq", "embed")), stats


def stacked_blocks(cfg: ModelConfig, n: int, moe: bool, rngs: nnx.Rngs) -> Block:
    """n Blocks as one Block whose every variable has a leading [n] axis named "layers"."""
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=n)
    def make(r):
        return Block(cfg, moe, rngs=r)

    blocks = make(rngs)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Variable):
            var.set_metadata("axes", ("layers",) + params.axes_of(var))
    return blocks


def scan_blocks(blocks: Block, x, cos, sin, segment_ids, remat: str):
    """Runs a stacked Block over its layer axis: x [B, T, D] -> (x', stats with a leading [L])."""
    graphdef, state = nnx.split(blocks)

    def body(h, layer_state):
        return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids)

    if remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(body, x, state)


def default_positions(tokens: jnp.ndarray) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


class Transformer(nnx.Module):
    """DeepseekV3ForCausalLM in Flax NNX (plus the MTP module when cfg.with_mtp)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, v, pd = cfg.hidden_size, cfg.vocab_size, cfg.param_dtype
        self.cfg = cfg
        self.embed = params.normal(rngs, (v, d), ("vocab", "embed"), pd)
        if cfg.first_k_dense_replace:
            self.dense_layers = stacked_blocks(cfg, cfg.first_k_dense_replace, False, rngs)
        if cfg.num_moe_layers:
            self.moe_layers = stacked_blocks(cfg, cfg.num_moe_layers, True, rngs)
        self.final_norm = RMSNorm(d, cfg.rms_norm_eps, pd)
        self.lm_head = params.normal(rngs, (d, v), ("embed", "vocab"), pd)
        if cfg.with_mtp:
            from r1jax.model.mtp import MTP  # the MTP block is a Block: import here to avoid a cycle
            self.mtp = MTP(cfg, rngs=rngs)

    def embed_tokens(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """tokens [B, T] int -> [B, T, D] in the compute dtype."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.dtype)
        return sharding.constrain(x, ("batch", "seq", "embed"))

    def hidden_states(self, tokens, positions=None, segment_ids=None):
        """Final-normed hidden states [B, T, D] and stats {"load": [L_moe, E], "aux_loss": [L_moe]}.

        tokens [B, T] int; positions [B, T] int (default 0..T-1); segment_ids [B, T] int, 0 for
        padding (default all 1). Tokens attend causally within their segment only.
        """
        cfg = self.cfg
        positions = default_positions(tokens) if positions is None else positions
        segment_ids = jnp.ones_like(tokens, jnp.int32) if segment_ids is None else segment_ids
        cos, sin = rope_tables(cfg, positions)
        x = self.embed_tokens(tokens)
        stats: dict[str, Any] = {}
        if cfg.first_k_dense_replace:
            x, _ = scan_blocks(self.dense_layers, x, cos, sin, segment_ids, cfg.remat)
        if cfg.num_moe_layers:
            x, stats = scan_blocks(self.moe_layers, x, cos, sin, segment_ids, cfg.remat)
        return self.final_norm(x), stats

    def logits(self, h: jnp.ndarray) -> jnp.ndarray:
        """h [B, T, D] -> float32 logits [B, T, V]."""
        out = jnp.einsum("btd,dv->btv", h, self.lm_head[...].astype(h.dtype),
                         preferred_element_type=jnp.float32)
        return sharding.constrain(out, ("batch", "seq", "vocab"))

    def __call__(self, tokens, positions=None, segment_ids=None):
        """tokens [B, T] -> (float32 logits [B, T, V], stats)."""
        h, stats = self.hidden_states(tokens, positions, segment_ids)
        return self.logits(h), stats

    def mtp_logits(self, h, tokens, positions=None, segment_ids=None):
        """The MTP module's float32 logits [B, T, V] (position t predicts tokens[t+2]) and its MoE
        stats, from the main model's final-normed hidden states h [B, T, D] (hidden_states)."""
        if not self.cfg.with_mtp:
            raise ValueError("this model has no MTP module; build it with with_mtp=True")
        positions = default_positions(tokens) if positions is None else positions
        segment_ids = jnp.ones_like(tokens, jnp.int32) if segment_ids is None else segment_ids
        cos, sin = rope_tables(self.cfg, positions)
        return self.mtp(h, tokens, cos, sin, segment_ids)
