"""How a model splits into what a train step differentiates, what it carries, and what stays frozen,
by variable type (r1jax/models/common/params.py): the nnx.Param leaves are trained, or, in a model
with adapters (r1jax/models/common/lora.py), the params.Adapter leaves alone, the weights and FP8
scales under them then being frozen; everything else (the router bias) is state gradients never
touch. Training, plans and the checkpoint resolver split models this one way.
"""
from __future__ import annotations

from flax import nnx

from r1jax.models.common import lora
from r1jax.models.common.params import Adapter, Fp8Scale


def split_model(model):
    """(graphdef, params, rest): trainable nnx.Param state and everything else."""
    return nnx.split(model, nnx.Param, ...)


def split_adapters(model):
    """(graphdef, adapters, frozen, rest) of a model with adapters: the params.Adapter variables
    (trained), the weights and FP8 scales under them (frozen), and the state (router bias)."""
    return nnx.split(model, Adapter, (nnx.Param, Fp8Scale), ...)


def split_trained(model):
    """(graphdef, params, rest, frozen): the adapters as params and the weights under them as
    frozen in a model with adapters (split_adapters); else split_model's parts and None."""
    if lora.has_adapters(model):
        graphdef, adapters, frozen, rest = split_adapters(model)
        return graphdef, adapters, rest, frozen
    return (*split_model(model), None)


def merge(graphdef, params, rest, frozen=None):
    """The model from split_model's or split_adapters' parts."""
    return nnx.merge(graphdef, params, rest, *(() if frozen is None else (frozen,)))
