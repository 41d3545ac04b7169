"""DeepSeekMoE with the released aux-loss-free routing (DeepSeek-V3 paper, sec. 2.1.2), dropless.

Axis legend: B batch, T time, D model, E routed experts, G expert groups, K experts per token,
F expert width, N tokens (B*T), M token copies (N*K).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax import sharding
from r1jax.model import expert_parallel, kernels, params
from r1jax.model.config import ModelConfig
from r1jax.model.mlp import MLP, pair_columns, swiglu_pairs


class Routing(NamedTuple):
    weights: jnp.ndarray   # [N, K] float32, gathered from the unbiased scores
    experts: jnp.ndarray   # [N, K] int32
    scores: jnp.ndarray    # [N, E] float32 sigmoid scores (for the sequence-wise aux loss)


@jax.checkpoint
def router_logits(x: jnp.ndarray, router: jnp.ndarray) -> jnp.ndarray:
    """x [N, D] (compute dtype) @ router [D, E] in float32 -> [N, E] float32. Recomputed in the
    backward pass from x: autodiff would otherwise keep x's float32 copy, twice its bf16 bytes."""
    return x.astype(jnp.float32) @ router.astype(jnp.float32)


def route(logits: jnp.ndarray, bias: jnp.ndarray, cfg: ModelConfig) -> Routing:
    """Group-limited top-k on biased sigmoid scores; weights from unbiased scores.

    logits [N, E] float32, bias [E] float32. Group score = sum of the top-2 biased scores in each of
    `n_group` groups; the `topk_group` best groups are kept, the rest masked to -inf (DeepSeek's
    reference; transformers >= 5 does the same); top-k experts of the kept ones. Weights are the
    unbiased scores of the chosen experts, divided by their sum (+1e-20) when `norm_topk_prob`, times
    `routed_scaling_factor`.
    """
    n, e = logits.shape
    scores = jax.nn.sigmoid(logits.astype(jnp.float32))
    choice = scores + bias.astype(jnp.float32)
    grouped = choice.reshape(n, cfg.n_group, e // cfg.n_group)  # [N, G, E/G]
    group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)  # [N, G]
    _, top_groups = jax.lax.top_k(group_scores, cfg.topk_group)  # [N, topk_group]
    group_keep = jnp.zeros((n, cfg.n_group), bool).at[jnp.arange(n)[:, None], top_groups].set(True)
    keep = jnp.repeat(group_keep, e // cfg.n_group, axis=1)  # [N, E]
    _, experts = jax.lax.top_k(jnp.where(keep, choice, -jnp.inf), cfg.num_experts_per_tok)
    weights = jnp.take_along_axis(scores, experts, axis=1)  # [N, K]
    if cfg.norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return Routing(weights * cfg.routed_scaling_factor, experts.astype(jnp.int32), scores)


def expert_load(experts: jnp.ndarray, token_mask: jnp.ndarray, n_experts: int) -> jnp.ndarray:
    """Token copies per expert [E] float32 over real tokens; experts [N, K], token_mask [N] bool."""
    w = jnp.broadcast_to(token_mask[:, None], experts.shape).astype(jnp.float32)
    return jnp.zeros((n_experts,), jnp.float32).at[experts.reshape(-1)].add(w.reshape(-1))


def sequence_aux_loss(r: Routing, token_mask: jnp.ndarray, batch: int, cfg: ModelConfig) -> jnp.ndarray:
    """Complementary sequence-wise balance loss, DeepSeek-V3 eqs. 17-20 (without the alpha weight).

    Per sequence: f_i = E/(K T) * #tokens routed to i, P_i = mean_t s_i,t / sum_j s_j,t; loss =
    sum_i f_i P_i, averaged over the sequences that have real tokens. token_mask [N] excludes
    padding from T.
    """
    e, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    m = token_mask.reshape(batch, -1).astype(jnp.float32)  # [B, T]
    has_tokens = (m.sum(-1) > 0).astype(jnp.float32)  # [B]
    t = jnp.maximum(m.sum(-1), 1.0)  # [B]
    onehot = jax.nn.one_hot(r.experts, e, dtype=jnp.float32).sum(1).reshape(batch, -1, e)  # [B, T, E]
    f = (onehot * m[..., None]).sum(1) * (e / (k * t[:, None]))  # [B, E]
    s = r.scores / r.scores.sum(-1, keepdims=True)
    p = (s.reshape(batch, -1, e) * m[..., None]).sum(1) / t[:, None]  # [B, E]
    return (f * p).sum(-1).sum() / jnp.maximum(has_tokens.sum(), 1.0)


def grouped_swiglu(x_sorted, group_sizes, gate_up, down):
    """SwiGLU per expert on expert-sorted rows: x_sorted [M, D], group_sizes [E], gate_up [E, D, 2F]
    (`pair_columns(gate, up)`), down [E, F, D] -> [M, D].

    Gate and up are one grouped matmul: the kernel keeps its input for the backward pass, so two
    matmuls would keep two copies of x_sorted, the largest activation of the layer."""
    h = swiglu_pairs(kernels.ragged_dot(x_sorted, gate_up, group_sizes))  # [M, F]
    return kernels.ragged_dot(h, down, group_sizes)


def dropless_experts(x, routing: Routing, gate, up, down):
    """Every token copy goes to its expert (no capacity): sort copies by expert, grouped matmul,
    unsort, weighted sum. x [N, D] -> [N, D] in x.dtype; weights applied in float32.

    Sorting and unsorting are gathers by the permutation and its inverse in both directions
    (expert_parallel.permute_rows): no float scatter, slow on GPU.
    """
    n, d = x.shape
    k = routing.experts.shape[1]
    e = gate.shape[0]
    flat = routing.experts.reshape(-1)  # [M] copy c = token c // K, choice c % K
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)  # copies grouped by expert
    inv = expert_parallel.inverse_permutation(order)
    group_sizes = jnp.bincount(flat, length=e).astype(jnp.int32)  # [E]
    x_sorted = expert_parallel.permute_rows(jnp.repeat(x, k, axis=0), order, inv)  # [M, D]
    y_sorted = grouped_swiglu(x_sorted, group_sizes, pair_columns(gate, up), down)  # [M, D]
    y = expert_parallel.permute_rows(y_sorted, inv, order).reshape(n, k, d)  # [N, K, D]
    return expert_parallel.combine_copies(y, routing.weights).astype(x.dtype)


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, e, f, pd = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.param_dtype
        self.cfg = cfg
        self.router = params.normal(rngs, (d, e), ("embed", "router_experts"), pd)
        self.router_bias = params.router_bias(e)
        self.gate = params.normal(rngs, (e, d, f), ("expert", "embed", "moe_mlp"), pd)
        self.up = params.normal(rngs, (e, d, f), ("expert", "embed", "moe_mlp"), pd)
        self.down = params.normal(rngs, (e, f, d), ("expert", "moe_mlp", "embed"), pd)
        if cfg.n_shared_experts:
            self.shared = MLP(d, f * cfg.n_shared_experts, dtype=cfg.dtype, param_dtype=pd, rngs=rngs,
                              width_axis="moe_mlp")

    def __call__(self, x, token_mask):
        """x [B, T, D], token_mask [B, T] bool (real tokens) -> (y [B, T, D], stats).

        stats: `load` [E] token copies per expert over real tokens, `aux_loss` () sequence-wise
        balance loss (unweighted).
        """
        cfg, dt = self.cfg, self.cfg.dtype
        b, t, d = x.shape
        xf = x.reshape(b * t, d)  # [N, D]
        logits = router_logits(xf, self.router[...])  # [N, E]
        r = route(logits, self.router_bias[...], cfg)
        c = lambda p: p[...].astype(dt)
        gate, up, down = c(self.gate), c(self.up), c(self.down)
        layout = expert_parallel.plan(b * t, d, cfg.n_routed_experts, cfg.moe_intermediate_size)
        if layout is None:  # no expert axis: the global token set under XLA's propagation
            y = dropless_experts(xf.astype(dt), r, gate, up, down)
        else:  # routing and its stats stay global (XLA splits them by token); experts under shard_map
            y = expert_parallel.routed_experts(xf.astype(dt), r.experts, r.weights, gate, up, down,
                                               grouped_swiglu, layout,
                                               chunk_tokens=cfg.moe_chunk_tokens)
        y = y.reshape(b, t, d)
        if cfg.n_shared_experts:
            y = y + self.shared(x)
        y = sharding.constrain(y, ("batch", "seq", "embed"))
        mask = token_mask.reshape(-1)
        stats = {"load": expert_load(r.experts, mask, cfg.n_routed_experts),
                 "aux_loss": sequence_aux_loss(r, mask, b, cfg)}
        return y, stats
