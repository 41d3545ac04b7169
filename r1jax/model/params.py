"""Parameter creation: every weight is an nnx.Param carrying logical axis names in `axes`."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # the release's initializer_range


class RouterBias(nnx.Variable):
    """The aux-loss-free routing bias `e_score_correction_bias`: state, never a gradient parameter."""


def normal(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str], dtype) -> nnx.Param:
    """N(0, 0.02) weight of `shape` with logical `axes` (one name per dim)."""
    assert len(shape) == len(axes), (shape, axes)
    value = INIT_STD * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
    return nnx.Param(value.astype(dtype), axes=tuple(axes))


def ones(shape: Sequence[int], axes: Sequence[str], dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(tuple(shape), dtype), axes=tuple(axes))


def router_bias(n_experts: int) -> RouterBias:
    # float32 always: the release stores it in float32 and updates are ~1e-3 steps.
    return RouterBias(jnp.zeros((n_experts,), jnp.float32), axes=("router_experts",))


def axes_of(var: nnx.Variable) -> tuple[str, ...]:
    return tuple(var.get_metadata().get("axes", ()))
