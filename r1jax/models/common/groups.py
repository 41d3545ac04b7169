"""Optimizer groups and decoder-layer rows of a model's variables, read from their metadata.

Every variable records its group in `group` metadata where it is created
(r1jax/models/common/params.py) and, in a layer stack, the decoder-layer index of its row 0 in
`first_layer` (r1jax/models/common/stack.py). Optimizer rules, freezing, adapters and plans read
these, never parameter names, so that they hold for every model family.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import jax
from flax import nnx

# Every optimizer group a family may use; a model has a subset (a dense one no experts or router).
GROUPS = ("embeddings", "attention", "dense_mlp", "routed_experts", "shared_experts", "router",
          "norms", "head", "mtp")


class GroupError(ValueError):
    """A variable without a group, or a config key naming a group the model does not have; the
    message names the path or the key."""


class Placement(NamedTuple):
    group: str                  # one of GROUPS
    first_layer: int | None     # decoder-layer index of row 0 of a stacked variable; None if unstacked


def path_str(path) -> str:
    """Dotted name of a pytree path of a State (the trailing `.value` dropped), e.g.
    "layers.attn.q"."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    return ".".join(str(k) for k in keys if k != "value")


def placements(tree) -> dict[str, Placement]:
    """{dotted path: Placement} of every variable of `tree`: an nnx.Module (concrete or from
    nnx.eval_shape) or an nnx.State of Variables (nnx.split / nnx.state), as their metadata says.
    GroupError naming the path of a variable without `group` metadata."""
    state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    for path, var in leaves:
        name = path_str(path)
        meta = var.get_metadata() if isinstance(var, nnx.Variable) else {}
        if "group" not in meta:
            raise GroupError(f"variable {name!r} has no optimizer group: create it with a `group` "
                             "(r1jax/models/common/params.py)")
        out[name] = Placement(meta["group"], meta.get("first_layer"))
    return out


def present(places: Mapping[str, Placement]) -> tuple[str, ...]:
    """The groups that occur in `places`, in GROUPS order."""
    have = {p.group for p in places.values()}
    return tuple(g for g in GROUPS if g in have)


def check_named(key: str, names: Iterable[str], have: Iterable[str], what: str = "the model") -> None:
    """GroupError naming config `key` and the groups in `have` for the first of `names` that is
    not among them (e.g. optim.group_lr routed_experts on a model without experts)."""
    have = tuple(have)
    for g in names:
        if g not in have:
            raise GroupError(f"config key {key}: group {g!r} is not in {what}, whose groups are "
                             f"{','.join(have) or '(none)'}")
