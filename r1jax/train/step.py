"""The pure loss function and train step (jitted by the caller with explicit shardings).

A batch is a dict of [B, T] arrays: int32 `tokens`, `positions`, `segment_ids` (0 on padding), and
the fields of the step's objective (r1jax/train/objectives: SFT's optional `loss_mask`, 1 = training
target; GRPO's completion mask, advantages and log-probabilities). Parameters are the trained
variables: the model's nnx.Param leaves, or, in a model with adapters
(r1jax/models/common/lora.py), the adapters alone, the rest of the weights (and FP8 scales) then being
`frozen`, an input of the step that is neither differentiated, updated, donated nor saved.
Everything else (the router bias) is `rest`, state that gradients never touch.

The loss of a step is the objective's (sc.objective; SFT's mean next-token NLL by default) plus
the weighted sequence-wise balance loss of the MoE layers. The objective prepares the whole batch
first (its normalizers, e.g. the whole batch's target count), then micro-batches contribute their
shares, so k micro-batches give exactly the gradient of one batch k times larger.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from r1jax.parallel import sharding
from r1jax.models.common import lora
from r1jax.models.common import groups
from r1jax.models.common.partition import merge
from r1jax.models.common.groups import path_str
from r1jax.train.objectives.sft import SFT


@dataclasses.dataclass(frozen=True)
class StepConfig:
    grad_accum: int = 1
    aux_loss_weight: float = 0.0      # sequence-wise balance loss (DeepSeek-V3 eq. 17), per MoE layer mean
    mtp_loss_weight: float = 0.0      # lambda of the MTP loss (DeepSeek-V3 eq. 25)
    router_bias_rate: float = 0.0     # aux-loss-free balancing (DeepSeek-V3 sec. 2.1.2)
    loss_chunk: int = 0               # > 0: LM head + cross-entropy in chunks of this many positions
    frozen_groups: tuple = ()         # optimizer groups frozen for the whole run: no gradient computed
    objective: Any = SFT()            # what the step differentiates: r1jax/train/objectives


def loss_fn(params, rest, graphdef, batch, sc: StepConfig = StepConfig(), norms=None, frozen=None, key=None):
    """(value, sums): the objective's value on `batch` plus the weighted aux loss.

    norms: the objective's whole-batch normalizers (objective.prepare of the whole batch); None
    prepares `batch` itself (then SFT's value is the batch mean NLL). sums holds float32 totals
    for metrics: the objective's (SFT: nll, tokens, correct, with MTP mtp_nll, mtp_tokens,
    mtp_load [E]) and, in an MoE model, aux [L], load [L, E]. frozen: the weights under adapters
    (split_adapters); key: adapter dropout masks (None: no dropout, as in evaluation).
    """
    if norms is None:
        batch, norms = sc.objective.prepare(batch)
    with lora.dropout(key):
        return _loss(merge(graphdef, params, rest, frozen), batch, sc, norms)


def _loss(model, batch, sc, norms):
    h, stats = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
    value, sums = sc.objective.loss(model, h, batch, sc, norms)
    sums = dict(sums)
    if "load" in stats:
        sums["load"], sums["aux"] = stats["load"], stats["aux_loss"]
        value = value + sc.aux_loss_weight * stats["aux_loss"].mean()
    return value, sums


def micro_batches(batch, n: int):
    """[B, T] arrays -> [n, B/n, T]; micro-batch i takes rows i, i+n, i+2n, ...

    Strided, not contiguous: the batch's rows are laid out over the data-like mesh axes in
    contiguous blocks, so rows i::n of every block put each micro-batch on every device (contiguous
    micro-batches would run on 1/n of the devices at a time, with n times their activations).
    """
    def split(x):
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)  # [n, B/n, T]
        return sharding.constrain(x, (None, "batch", "seq"))
    return jax.tree.map(split, batch)


def _bias_update(rest, sums, rate):
    """b += rate * sign(mean_load - load) on every MoE layer's router bias (and the MTP block's)."""
    def upd(path, x):
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        if "router_bias" not in names:
            return x
        load = sums["mtp_load"] if names[0] == "mtp" else sums["load"]  # [E] or [L, E]
        return x + rate * jnp.sign(load.mean(-1, keepdims=True) - load)
    return jax.tree_util.tree_map_with_path(upd, rest)


def split_frozen(params, frozen_groups):
    """(trainable leaves, frozen leaves, whole): the params' leaves in groups (their `group`
    metadata, r1jax/models/common/groups.py: params is an nnx.State of Variables when `frozen_groups`
    is not empty) outside / inside `frozen_groups`, each a list in tree order, and
    whole(trainable, frozen) -> the params tree again. Differentiating with respect to the trainable leaves only, autodiff never
    computes the frozen ones' gradients: for frozen routed experts, 95% of R1's parameters, that is
    their weight-gradient matmuls and a float32 accumulator of their size skipped."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    places = groups.placements(params) if frozen_groups else {}
    is_frozen = [bool(frozen_groups) and places[path_str(p)].group in frozen_groups for p, _ in flat]
    trainable = [x for (_, x), f in zip(flat, is_frozen) if not f]
    frozen = [x for (_, x), f in zip(flat, is_frozen) if f]

    def whole(t, fr):
        t, fr = iter(t), iter(fr)
        return jax.tree_util.tree_unflatten(treedef, [next(fr) if f else next(t) for f in is_frozen])
    return trainable, frozen, whole


def train_step(graphdef, optimizer: optax.GradientTransformation, sc: StepConfig, params, rest,
               opt_state, batch, frozen=None, key=None):
    """One optimizer update over sc.grad_accum micro-batches: (params, rest, opt_state, metrics).

    frozen: weights under adapters (split_adapters), read only; key: this step's adapter dropout key
    (micro-batch i uses fold_in(key, i)), None without dropout.

    Non-finite loss or gradients skip the update (params, optimizer state and router bias unchanged;
    metrics["skipped"] = 1). Parameters in `sc.frozen_groups` get no gradient (zeros to the optimizer,
    whose transform for them must be optax.set_to_zero: make_optimizer's freeze_groups), so the
    gradient norm, and its clipping, are those of the trained parameters. Pure; jit with donation.
    """
    batch, norms = sc.objective.prepare(batch)
    trainable, fixed, whole = split_frozen(params, sc.frozen_groups)
    grad_fn = jax.value_and_grad(lambda t, *a: loss_fn(whole(t, fixed), *a), has_aux=True)

    def accumulate(carry, xs):
        grads, sums = carry
        mb, i = xs
        mb_key = None if key is None else jax.random.fold_in(key, i)
        (_, s), g = grad_fn(trainable, rest, graphdef, mb, sc, norms, frozen, mb_key)
        s["aux"] = s.get("aux", jnp.zeros(())) / sc.grad_accum
        return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    mbs = micro_batches(batch, sc.grad_accum)
    _, sums0 = jax.eval_shape(lambda: loss_fn(params, rest, graphdef, jax.tree.map(lambda x: x[0], mbs),
                                              sc, norms, frozen=frozen))
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums0)
    sums0.setdefault("aux", jnp.zeros(()))
    (grads, sums), _ = jax.lax.scan(accumulate, (zeros, sums0),
                                    (mbs, jnp.arange(sc.grad_accum, dtype=jnp.int32)))
    # The frozen groups' gradients are zeros that never exist in memory (a broadcast the optimizer's
    # elementwise update reads); their optimizer transform ignores them anyway.
    grads = whole(grads, jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), fixed))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

    grad_norm = optax.tree.norm(grads)
    metrics = sc.objective.metrics(sums, norms)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, new_opt = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params, opt_state = keep(new_params, params), keep(new_opt, opt_state)
    if sc.router_bias_rate and "load" in sums:
        rest = keep(_bias_update(rest, sums, sc.router_bias_rate), rest)

    metrics.update(grad_norm=grad_norm, skipped=1 - finite.astype(jnp.int32))
    if "load" in sums:
        load = sums["load"]  # [L, E] token copies
        metrics["expert_load"] = load / jnp.maximum(load.sum(-1, keepdims=True), 1.0)
        metrics["aux_loss"] = sums["aux"].mean()
    return params, rest, opt_state, metrics
