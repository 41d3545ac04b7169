"""Parameter creation: every weight is an nnx Variable carrying logical axis names in `axes`.

Variable types say what a variable is, so that code splitting a model reads types, never names:
    nnx.Param    a weight (trained in full fine-tuning, the frozen base under adapters)
    Adapter      a low-rank adapter's A or B (r1jax/models/common/lora.py): what a LoRA run trains
    Fp8Scale     the block scales of a weight held as FP8 codes (r1jax/models/common/quantized.py)
    RouterBias   the aux-loss-free routing bias: state, never a gradient parameter

Every variable also records its optimizer group (r1jax/models/common/groups.py GROUPS) in `group`
metadata where it is created, so that optimizer rules, freezing and adapters read groups, never names.

A projection (a weight x -> y of a decoder layer) is laid out [stack..., in..., out...] and records
how many of its axes are inputs and outputs in `projection` = (fan_in, fan_out) metadata; leading
axes beyond those are stacks (layers, experts). With ModelConfig.fp8_weights it holds e4m3 codes and
gets a sibling Fp8Scale `NAME_scale`; with adapters on its group, a sibling `NAME_lora`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # the release's initializer_range


class RouterBias(nnx.Variable):
    """The aux-loss-free routing bias `e_score_correction_bias`: state, never a gradient parameter."""


class Adapter(nnx.Param):
    """A low-rank adapter's A or B matrix: the only variables a LoRA run trains."""


class Fp8Scale(nnx.Variable):
    """scale_inv [stack..., ceil(In/128), ceil(Out/128)] float32 of a projection held as FP8 codes."""


def _group_meta(group: str | None) -> dict:
    return {} if group is None else {"group": group}


def normal(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str], dtype, *,
           group: str | None = None) -> nnx.Param:
    """N(0, 0.02) weight of `shape` with logical `axes` (one name per dim) in optimizer `group`."""
    assert len(shape) == len(axes), (shape, axes)
    value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
    return nnx.Param(value.astype(dtype), axes=tuple(axes), **_group_meta(group))


def ones(shape: Sequence[int], axes: Sequence[str], dtype, *, group: str | None = None) -> nnx.Param:
    return nnx.Param(jnp.ones(tuple(shape), dtype), axes=tuple(axes), **_group_meta(group))


def router_bias(n_experts: int, *, group: str = "router") -> RouterBias:
    # float32 always: the release stores it in float32 and updates are ~1e-3 steps.
    return RouterBias(jnp.zeros((n_experts,), jnp.float32), axes=("router_experts",), group=group)


def set_group(module: nnx.Module, group: str) -> None:
    """Puts every variable under `module` in optimizer `group` (e.g. a whole MTP module in "mtp")."""
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Variable):
            var.set_metadata("group", group)


def axes_of(var: nnx.Variable) -> tuple[str, ...]:
    return tuple(var.get_metadata().get("axes", ()))


def fans(var: nnx.Variable) -> tuple[int, int]:
    """(fan_in, fan_out) axis counts of a projection weight (its `projection` metadata)."""
    return tuple(var.get_metadata()["projection"])


def split_dims(shape: Sequence[int], fan_in: int, fan_out: int) -> tuple[tuple, int, int]:
    """shape [stack..., in..., out...] -> (stack shape, In = prod(in), Out = prod(out))."""
    n_stack = len(shape) - fan_in - fan_out
    return (tuple(shape[:n_stack]), math.prod(shape[n_stack:n_stack + fan_in]),
            math.prod(shape[n_stack + fan_in:]))


def projection(owner: nnx.Module, name: str, rngs: nnx.Rngs, shape: Sequence[int],
               axes: Sequence[str], cfg, group: str, fan_in: int = 1) -> None:
    """Creates owner.NAME, a projection weight N(0, 0.02) of `shape` [stack..., in..., out...] with
    `fan_in` input axes (the rest after the stack axes, which are the leading ones not named in
    `axes` by an input or output: pass them first), and its siblings:
      - cfg.fp8_weights: NAME holds e4m3 codes, NAME_scale their Fp8Scale (quantized.quantize);
      - cfg.lora.on(group): NAME_lora, a lora.LoRA pair (A random, B zero).
    `group` is the optimizer group (r1jax/models/common/groups.py) of the weight and its siblings."""
    from r1jax.models.common import lora, quantized  # noqa: PLC0415 - both build on this module
    n_stack = 1 if axes[0] == "expert" else 0
    meta = dict(axes=tuple(axes), projection=(fan_in, len(shape) - n_stack - fan_in), group=group)
    w = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
    if cfg.fp8_weights:
        codes, scale = quantized.quantize(w, *meta["projection"])
        setattr(owner, name, nnx.Param(codes, **meta))
        setattr(owner, name + "_scale", Fp8Scale(scale, axes=tuple(axes[:n_stack]) + (None, None),
                                                group=group))
    else:
        setattr(owner, name, nnx.Param(w.astype(cfg.param_dtype), **meta))
    if cfg.lora.on(group):
        setattr(owner, name + "_lora", lora.LoRA(tuple(shape), tuple(axes), meta["projection"], cfg,
                                                 rngs, group=group))
