"""The optimizer: AdamW over labelled parameter groups, per-layer learning rates on stacked layers,
freezing and progressive unfreezing.

Parameters of a layer stack carry a leading layer axis, so "per layer" is a multiplier *vector* along
that axis, not a separate parameter. The update of parameter p at step t is

    -lr(t) * group_mult[g(p)] * layer_mult[l] * trainable(t)[l] * (adam(grad) + wd[g(p)] * p)

where layer_mult[l] = layer_decay^(L-1-l) over the model's L decoder layers (embeddings count as
layer -1, head, final norm and MTP as layer L-1), and trainable(t) is 0 for frozen layers: their
gradient is zeroed before Adam (no moment build-up) and their update, weight decay included, is zero.
A frozen group is optax.set_to_zero and holds no optimizer state; the train step computes no
gradient for it (r1jax.train.step.split_frozen), so neither the reported gradient norm nor the clipping
counts it (clipping leaves out frozen layers too: their gradients are zeroed before it).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax.models.common import groups
from r1jax.models.common.config import LoraConfig
from r1jax.models.common.groups import GROUPS, GroupError, path_str  # noqa: F401 - the optimizer's names
SCHEDULES = ("constant", "cosine", "linear", "wsd")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr_ratio: float = 0.1          # final LR of cosine/linear/wsd, as a fraction of lr
    wsd_decay_fraction: float = 0.2    # warmup-stable-decay: last fraction of steps decays
    weight_decay: float = 0.1
    layer_decay: float = 1.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0             # 0 disables global-norm clipping
    state_dtype: str = "float32"       # Adam moments
    group_lr: dict = dataclasses.field(default_factory=dict)    # group -> LR multiplier
    group_wd: dict = dataclasses.field(default_factory=dict)    # group -> weight decay override
    freeze_groups: tuple = ()
    freeze_layers: str = ""            # e.g. "0-9,20" (decoder layer indices, inclusive ranges)
    stages: tuple = ()                 # progressive unfreezing: ("0:40-60", "500:20-60", "1000:0-60")


class StageError(ValueError):
    """A malformed layer range or unfreezing stage; the message names the offending text."""


# Parameter groups ---------------------------------------------------------------------------------
# A variable's group and decoder-layer rows are its metadata (r1jax/models/common/groups.py).


def check_groups(c: OptimConfig, model) -> None:
    """Every group the config names (optim.group_lr, optim.group_wd, optim.freeze_groups and, when
    they are not the default, lora.targets) is one the model has: ValueError naming the key for a
    group outside GROUPS, GroupError naming the key and the model's groups for one it lacks (e.g.
    routed_experts on a model without experts)."""
    named = (("optim.group_lr", tuple(c.group_lr)), ("optim.group_wd", tuple(c.group_wd)),
             ("optim.freeze_groups", tuple(c.freeze_groups)))
    for key, names in named:
        for g in names:
            if g not in GROUPS:
                raise ValueError(f"config key {key}: optimizer group {g!r} unknown; groups are {GROUPS}")
    have = groups.present(groups.placements(model))
    for key, names in named:
        groups.check_named(key, names, have)
    lora = model.cfg.lora
    if lora.rank and lora.targets != LoraConfig().targets:  # the default adapts what the model has
        groups.check_named("lora.targets", lora.targets, have)


def parse_layers(text: str, n_layers: int) -> np.ndarray:
    """"0-9,20" -> bool [n_layers] (inclusive ranges); "" -> all False."""
    out = np.zeros(n_layers, bool)
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise StageError(f"layer range {part!r}: expected N or N-M")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not lo <= hi < n_layers:
            raise StageError(f"layer range {part!r}: must satisfy 0 <= N <= M < {n_layers}")
        out[lo:hi + 1] = True
    return out


def parse_stages(stages: Sequence[str], n_layers: int) -> list[tuple[int, np.ndarray]]:
    """("STEP:RANGES", ...) -> [(step, trainable bool [n_layers])], sorted, first at step 0."""
    out = []
    for s in stages:
        step, sep, ranges = str(s).partition(":")
        if not sep or not step.strip().isdigit():
            raise StageError(f"stage {s!r}: expected 'STEP:LAYERS', e.g. '500:20-60'")
        out.append((int(step), parse_layers(ranges, n_layers)))
    out.sort(key=lambda x: x[0])
    if out and out[0][0] != 0:
        raise StageError(f"stages must start at step 0 (first is {out[0][0]})")
    return out


# Schedules ---------------------------------------------------------------------------------------

def schedule(c: OptimConfig) -> optax.Schedule:
    """LR at step t (peak c.lr): linear warmup, then constant / cosine / linear / warmup-stable-decay."""
    if c.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={c.schedule!r}: choose one of {SCHEDULES}")
    end = c.lr * c.min_lr_ratio
    w = max(c.warmup_steps, 0)
    rest = max(c.total_steps - w, 1)
    warm = optax.linear_schedule(0.0, c.lr, w) if w else None
    if c.schedule == "constant":
        main = optax.constant_schedule(c.lr)
    elif c.schedule == "cosine":
        main = optax.cosine_decay_schedule(c.lr, rest, alpha=c.min_lr_ratio)
    elif c.schedule == "linear":
        main = optax.linear_schedule(c.lr, end, rest)
    else:
        decay = max(int(round(rest * c.wsd_decay_fraction)), 1)
        main = optax.join_schedules([optax.constant_schedule(c.lr),
                                     optax.linear_schedule(c.lr, end, decay)], [rest - decay])
    return optax.join_schedules([warm, main], [w]) if warm else main


# Transforms --------------------------------------------------------------------------------------

class CountState(NamedTuple):
    count: jnp.ndarray


def _per_param(params, fn):
    """Tree of fn(dotted name, leaf) over params."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), params)


def layer_gate(gate_at: Callable[[jnp.ndarray], jnp.ndarray], rows: dict[str, tuple[str, int]]):
    """Scales each update by its rows of gate_at(step), a float vector [L + 2] over positions: 0 is
    below the first decoder layer (embeddings), 1..L the decoder layers, L+1 above (head, final norm,
    MTP). rows[name] = ("stacked", first decoder layer) for a stacked parameter, whose [rows] factor
    broadcasts along axis 0, or ("fixed", position) for any other."""
    def init(params):
        del params
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        gate = gate_at(state.count)

        def scale(name, u):
            kind, start = rows[name]
            if kind == "stacked":
                factor = jax.lax.dynamic_slice_in_dim(gate, start + 1, u.shape[0])
                factor = factor.reshape(factor.shape + (1,) * (u.ndim - 1))
            else:
                factor = gate[start]
            return (u * factor).astype(u.dtype)
        return _per_param(updates, scale), CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


def adam_with_dtype(b1, b2, eps, dtype) -> optax.GradientTransformation:
    """optax.scale_by_adam with both moments stored in `dtype` (bf16 halves optimizer memory)."""
    dt = jnp.dtype(dtype)
    base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=dt)
    if dt == jnp.float32:
        return base

    def init(params):
        s = base.init(params)
        return s._replace(nu=jax.tree.map(lambda x: x.astype(dt), s.nu))

    def update(updates, state, params=None):
        up, s = base.update(updates, state._replace(nu=jax.tree.map(lambda x: x.astype(jnp.float32), state.nu)),
                            params)
        return up, s._replace(nu=jax.tree.map(lambda x: x.astype(dt), s.nu))

    return optax.GradientTransformation(init, update)


def make_optimizer(c: OptimConfig, model, params):
    """(optax transformation, lr_by_group(step) -> {group: lr}, stage_at(step) -> stage index).

    `model`: the nnx.Module (concrete or from nnx.eval_shape) whose variables `params` are (a params
    State or pytree of arrays, named by their paths in the model); its variables' metadata fixes
    each parameter's group and the layer rows of each stacked one (r1jax/models/common/groups.py),
    model.cfg.num_hidden_layers the layer count. Config keys naming groups the model lacks are
    errors (check_groups).
    """
    check_groups(c, model)
    n = model.cfg.num_hidden_layers
    places = groups.placements(model)
    rows = {}
    for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path_str(p)
        if name not in places:
            raise GroupError(f"parameter {name!r} is not a variable of the model")
        first = places[name].first_layer
        rows[name] = ("stacked", first) if first is not None else \
            ("fixed", 0 if places[name].group == "embeddings" else n + 1)

    frozen_layers = parse_layers(c.freeze_layers, n)
    stages = parse_stages(c.stages, n)
    # [S, L+2] trainable masks per stage; positions 0 and L+1 (embeddings, head side) always open.
    masks = np.ones((max(len(stages), 1), n + 2), np.float32)
    for i, (_, trainable) in enumerate(stages):
        masks[i, 1:n + 1] = trainable
    masks[:, 1:n + 1] *= ~frozen_layers
    starts = np.asarray([s for s, _ in stages] or [0], np.int32)
    masks_j, starts_j = jnp.asarray(masks), jnp.asarray(starts)

    def stage_at(step):
        return jnp.sum(starts_j <= step) - 1

    def trainable_at(step):
        return masks_j[stage_at(step)]

    # layer_decay^(L-1-l) for decoder layers; embeddings one step below layer 0; head side 1.
    decay = np.ones(n + 2, np.float32)
    decay[1:n + 1] = c.layer_decay ** (n - 1 - np.arange(n))
    decay[0] = c.layer_decay ** n
    decay_j = jnp.asarray(decay)
    gate_decay = lambda step: decay_j * trainable_at(step)

    lr_fn = schedule(c)

    def group_transform(group):
        if group in c.freeze_groups:
            return optax.set_to_zero()
        wd = c.group_wd.get(group, 0.0 if group == "norms" else c.weight_decay)
        mult = c.group_lr.get(group, 1.0)
        parts = [adam_with_dtype(c.b1, c.b2, c.eps, c.state_dtype)]
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.scale_by_schedule(lambda t: -lr_fn(t) * mult))
        return optax.chain(*parts)

    labels = _per_param(params, lambda name, _: places[name].group)
    used = sorted(set(jax.tree.leaves(labels)))
    tx = optax.chain(
        layer_gate(trainable_at, rows),                         # zero frozen layers' gradients
        optax.clip_by_global_norm(c.clip_norm) if c.clip_norm else optax.identity(),
        optax.multi_transform({g: group_transform(g) for g in used}, labels),
        layer_gate(gate_decay, rows),                           # per-layer LR and frozen rows
    )

    def lr_by_group(step) -> dict[str, float]:
        return {g: 0.0 if g in c.freeze_groups else float(lr_fn(step)) * c.group_lr.get(g, 1.0)
                for g in used}

    return tx, lr_by_group, stage_at
