"""DeepSeekMoE with the released aux-loss-free routing (DeepSeek-V3 paper, sec. 2.1.2), dropless.

Axis legend: B batch, T time, D model, E routed experts, G expert groups, K experts per token,
F expert width, N tokens (B*T), M token copies (N*K).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.parallel import sharding
from r1jax.models.deepseek_v3 import expert_parallel
from r1jax.models.common import kernels, lora, params
from r1jax.models.deepseek_v3.config import ModelConfig
from r1jax.models.common.mlp import MLP, pair_columns, swiglu_pairs


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


def expert_weights(moe: "MoE", dtype) -> dict[str, jnp.ndarray]:
    """The routed experts' matrices in `dtype` for grouped_swiglu: "gate_up" [E, D, 2F]
    (`pair_columns(gate, up)`), "down" [E, F, D] and, with adapters (r1jax/models/common/lora.py),
    "a_gate_up" [E, D, 2r] (gate's A, then up's), "b_gate_up" [E, 2r, 2F] (s B, gate's rows on
    gate's columns and up's on up's, paired like gate_up), "a_down" [E, F, r], "b_down" [E, r, D]."""
    w = {"gate_up": pair_columns(lora.base_weight(moe, "gate", dtype), lora.base_weight(moe, "up", dtype)),
         "down": lora.base_weight(moe, "down", dtype)}
    ads = [lora.adapter(moe, n) for n in ("gate", "up", "down")]
    if ads[0] is None:
        return w
    (ga, gb), (ua, ub), (da, db) = ((ad.a[...].astype(dtype), (ad.scale * ad.b[...]).astype(dtype))
                                    for ad in ads)
    zero = jnp.zeros_like(gb)
    w["a_gate_up"] = jnp.concatenate([ga, ua], axis=-1)
    w["b_gate_up"] = pair_columns(jnp.concatenate([gb, zero], axis=1), jnp.concatenate([zero, ub], axis=1))
    w["a_down"], w["b_down"] = da, db
    return w


def grouped_swiglu(x_sorted, group_sizes, w: dict):
    """SwiGLU per expert on expert-sorted rows: x_sorted [M, D], group_sizes [E], w the experts'
    matrices (`expert_weights`) -> [M, D]; adapters add (x A) B to each projection.

    Gate and up are one grouped matmul: the kernel keeps its input for the backward pass, so two
    matmuls would keep two copies of x_sorted, the largest activation of the layer."""
    mm = lambda a, b: kernels.ragged_dot(a, b, group_sizes)
    h = mm(x_sorted, w["gate_up"])  # [M, 2F]
    if "a_gate_up" in w:
        h = h + mm(mm(x_sorted, w["a_gate_up"]), w["b_gate_up"])
    h = swiglu_pairs(h)  # [M, F]
    y = mm(h, w["down"])
    if "a_down" in w:
        y = y + mm(mm(h, w["a_down"]), w["b_down"])
    return y


def dropless_experts(x, routing: Routing, w: dict):
    """Every token copy goes to its expert (no capacity): sort copies by expert, grouped matmul,
    unsort, weighted sum. x [N, D], w the experts' matrices (`expert_weights`) -> [N, D] in x.dtype;
    weights applied in float32.

    Sorting and unsorting are gathers by the permutation and its inverse in both directions
    (expert_parallel.permute_rows): no float scatter, slow on GPU.
    """
    n, d = x.shape
    k = routing.experts.shape[1]
    e = w["down"].shape[0]
    flat = routing.experts.reshape(-1)  # [M] copy c = token c // K, choice c % K
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)  # copies grouped by expert
    inv = expert_parallel.inverse_permutation(order)
    group_sizes = jnp.bincount(flat, length=e).astype(jnp.int32)  # [E]
    x_sorted = expert_parallel.permute_rows(jnp.repeat(x, k, axis=0), order, inv)  # [M, D]
    y_sorted = grouped_swiglu(x_sorted, group_sizes, w)  # [M, D]
    y = expert_parallel.permute_rows(y_sorted, inv, order).reshape(n, k, d)  # [N, K, D]
    return expert_parallel.combine_copies(y, routing.weights).astype(x.dtype)


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, e, f, pd = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.param_dtype
        self.cfg = cfg
        self.router = params.normal(rngs, (d, e), ("embed", "router_experts"), pd, group="router")
        self.router_bias = params.router_bias(e)
        for name, shape, axes in (("gate", (e, d, f), ("expert", "embed", "moe_mlp")),
                                  ("up", (e, d, f), ("expert", "embed", "moe_mlp")),
                                  ("down", (e, f, d), ("expert", "moe_mlp", "embed"))):
            params.projection(self, name, rngs, shape, axes, cfg, "routed_experts")
        if cfg.n_shared_experts:
            self.shared = MLP(cfg, d, f * cfg.n_shared_experts, "shared_experts", rngs=rngs,
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
        w = expert_weights(self, dt)
        layout = expert_parallel.plan(b * t, d, cfg.n_routed_experts, cfg.moe_intermediate_size)
        if layout is None:  # no expert axis: the global token set under XLA's propagation
            y = dropless_experts(xf.astype(dt), r, w)
        else:  # routing and its stats stay global (XLA splits them by token); experts under shard_map
            y = expert_parallel.routed_experts(xf.astype(dt), r.experts, r.weights, w, grouped_swiglu,
                                               layout, chunk_tokens=cfg.moe_chunk_tokens)
        y = y.reshape(b, t, d)
        if cfg.n_shared_experts:
            y = y + self.shared(x)
        y = sharding.constrain(y, ("batch", "seq", "embed"))
        mask = token_mask.reshape(-1)
        stats = {"load": expert_load(r.experts, mask, cfg.n_routed_experts),
                 "aux_loss": sequence_aux_loss(r, mask, b, cfg)}
        return y, stats
