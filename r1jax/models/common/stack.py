"""Decoder layers stacked along a leading "layers" axis and run under `jax.lax.scan`, so compile time
does not grow with depth.

Every variable of a stack gets the logical axis "layers" first and `first_layer` metadata: the
decoder-layer index of its row 0 (a model may hold several stacks, e.g. R1's dense layers then its
MoE layers), which is what per-layer optimizer rules read (r1jax/train/optim.py).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.common import lora, params

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stacked(make: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs, first_layer: int = 0):
    """n layers `make(rngs)` as one module whose every variable has a leading [n] axis named
    "layers" and `first_layer` metadata."""
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=n)
    def build(r):
        return make(r)

    layers = build(rngs)
    for _, var in nnx.iter_graph(layers):
        if isinstance(var, nnx.Variable):
            var.set_metadata("axes", ("layers",) + params.axes_of(var))
            var.set_metadata("first_layer", first_layer)
    return layers


def depth(layers: nnx.Module) -> int:
    """The number of layers of a stack."""
    return jax.tree.leaves(nnx.state(layers))[0].shape[0]


def scan_layers(layers: nnx.Module, x, call: Callable, remat: str = "none", first_layer: int = 0):
    """Runs `call(layer, h) -> (h', out)` over a stack: x -> (x', outs with a leading [L]).

    remat: a REMAT_POLICIES name, or "none". first_layer: the decoder-layer index of row 0 (each
    layer's adapter dropout masks differ: lora.layer)."""
    graphdef, state = nnx.split(layers)
    n = jax.tree.leaves(state)[0].shape[0]

    def body(h, xs):
        layer_state, index = xs
        with lora.layer(index):
            return call(nnx.merge(graphdef, layer_state), h)

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(body, x, (state, first_layer + jnp.arange(n, dtype=jnp.int32)))


def scan_with_cache(layers: nnx.Module, x, cache, call: Callable, first_layer: int = 0):
    """Runs `call(layer, h, cache, layer_index) -> (h', cache')` over a stack, threading a decode
    cache: x -> (x', cache)."""
    graphdef, state = nnx.split(layers)
    n = jax.tree.leaves(state)[0].shape[0]

    def body(carry, xs):
        h, c = carry
        layer_state, index = xs
        return call(nnx.merge(graphdef, layer_state), h, c, index), None

    (x, cache), _ = jax.lax.scan(body, (x, cache), (state, first_layer + jnp.arange(n, dtype=jnp.int32)))
    return x, cache
