"""Logical axis names -> mesh axes: the one table, and the helpers that apply it.

Every parameter carries logical axis names in its `axes` metadata (see r1jax/model/params.py), and the
main activations are constrained with `constrain`. Only this module knows mesh axis names.
Mesh axes: data, fsdp, expert, tensor.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# logical name -> mesh axis (or tuple of axes, or None for replicated). `expert` doubles as a data
# axis outside the MoE (DESIGN.md section 3).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp", "expert"),
    "seq": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "head_dim": None,
    "q_lora": None,
    "kv_lora": None,
    "mlp": "tensor",
    "moe_mlp": "tensor",
    "expert": "expert",
    "router_experts": None,
    "layers": None,
    "norm": None,
}


def logical_to_spec(axes: Sequence[str | None], rules: dict | None = None) -> P:
    """PartitionSpec for logical `axes`; a mesh axis is used at most once (first come, first kept)."""
    rules = RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for name in axes:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in r1jax.sharding.RULES")
        mesh_axes = rules[name]
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        used.update(mesh_axes)
        out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return P(*out)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is set (jax.set_mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(axes)
    spec = P(*(_keep_present(s, mesh.axis_names) for s in spec))
    return jax.lax.with_sharding_constraint(x, spec)


def _keep_present(entry, names):
    if entry is None:
        return None
    if isinstance(entry, str):
        return entry if entry in names else None
    kept = tuple(a for a in entry if a in names)
    return kept or None
