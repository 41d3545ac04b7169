"""Logical axis names -> mesh axes: the one table, and the helpers that apply it.

Every parameter carries logical axis names in its `axes` metadata (see r1jax/models/common/params.py), and the
main activations are constrained with `constrain`. Only this module knows mesh axis names.
Mesh axes: data, fsdp, expert, tensor.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# logical name -> mesh axis (or tuple of axes, or None for replicated). `expert` doubles as a data
# axis outside the MoE.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp", "expert"),
    "seq": None,
    # FSDP splits parameters over fsdp and, outside the routed experts (whose expert axis takes it),
    # over expert too: every parameter over all chips of the (fsdp, expert) plane.
    "embed": ("fsdp", "expert"),
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",            # K/V heads of grouped-query attention (r1jax/models/llama/)
    "head_dim": None,
    "q_lora": ("fsdp", "expert"),    # q_b / kv_b have no embed dim: split along their LoRA rank
    "kv_lora": ("fsdp", "expert"),
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
            raise KeyError(f"logical axis {name!r} has no rule in r1jax.parallel.sharding.RULES")
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


def make_mesh(data: int = -1, fsdp: int = 1, expert: int = 1, tensor: int = 1,
              devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, expert, tensor) mesh over all devices of all processes; one size may be -1
    (it takes what the others leave). Explicit sizes whose product is smaller than the device count
    use the first devices only."""
    devices = jax.devices() if devices is None else devices
    sizes = [data, fsdp, expert, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = 1
    for s in sizes:
        known *= s if s != -1 else 1
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are not "
                             f"divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    total = 1
    for s in sizes:
        total *= s
    if total > len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {total} devices, "
                         f"{len(devices)} are present")
    devices = devices[:total]  # a smaller explicit mesh runs on the first devices (e.g. data=1)
    # Auto axes: shardings are propagated by XLA from our constraints, not carried in types.
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def variable_shardings(state, mesh: jax.sharding.Mesh):
    """NamedSharding for every nnx.Variable of an (abstract) nnx.State, from its `axes` metadata.

    A dimension whose size does not divide by its mesh axes is split over the longest leading part of
    them that it divides (("fsdp", "expert") -> "fsdp"), else left replicated.
    """
    from flax import nnx

    def one(v):
        axes = tuple(v.get_metadata().get("axes", ()))
        spec = logical_to_spec(axes) if axes else P()
        shape = v.shape if hasattr(v, "shape") else v[...].shape
        fixed = []
        for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
            names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
            while names and dim % math.prod(mesh.shape[n] for n in names):
                names = names[:-1]
            fixed.append(None if not names else names[0] if len(names) == 1 else names)
        return jax.sharding.NamedSharding(mesh, P(*fixed))
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """[B, T] batches: rows over the data-like axes (data, fsdp, expert)."""
    return jax.sharding.NamedSharding(mesh, logical_to_spec(("batch", "seq")))


# Mesh presets --------------------------------------------------------------------------------------
# (data, fsdp, expert, tensor) for the 671B by hardware and device count. Why these sizes:
# - tensor 1: FSDP all-gathers a layer's weights once per micro-batch, while tensor parallelism
#   all-reduces activations twice per layer; at one or more 4K sequences per chip FSDP moves fewer
#   bytes, and MLA's 128 heads need no splitting to fit.
# - expert: the routed experts are 97% of the 671B. Splitting them over `expert` (each shard owns
#   256 / expert whole experts) replaces most of their per-layer FSDP all-gather by moving token
#   copies. The dropless receive buffer of expert parallelism (r1jax/models/deepseek_v3/expert_parallel.py) grows
#   with the degree, so it is the smallest degree >= 8 that divides the 256 experts and that the
#   slice's physical torus can form: on a TPU a mesh axis must be a product of whole physical axes
#   (jax.make_mesh), and v5p 4x4x4 or v6e 16x16 cannot form 8.
# - fsdp: everything left, so every parameter and optimizer state is split over all chips.
# - data 1: the batch is split over (data, fsdp, expert) anyway; a separate data axis only adds
#   replicas of the parameters.
# GPU hosts: expert parallelism inside the 8-GPU NVLink domain, FSDP across hosts.
# Small slices (8-32 chips) hold the model only as a frozen base under adapters (LoRA; BUILD.md,
# "Pod plans"); the same rule gives 8 where the torus has a whole 8 (2x2x2, 2x(2x4) of 2x2x4,
# 2x4 of 2x4x4 or 4x8) and all 16 chips of a 4x4.
TPU_EXPERT_DEGREE = {
    "r1-671b-v5p": {8: 8, 16: 8, 32: 8, 64: 16, 128: 8, 256: 8, 512: 8, 1024: 8},
    # 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, 4x8x8, 8x8x8, 8x8x16
    "r1-671b-v6e": {8: 8, 16: 16, 32: 8, 64: 8, 128: 8, 256: 16},
    # 2x4, 4x4, 4x8, 8x8, 8x16, 16x16
}
MESH_PRESETS = (*TPU_EXPERT_DEGREE, "r1-671b-gpu")


def mesh_preset(name: str, n_devices: int) -> dict[str, int]:
    """{data, fsdp, expert, tensor} sizes of preset `name` on n_devices (TPU chips or GPUs)."""
    if name == "r1-671b-gpu":
        if n_devices % 8:
            raise ValueError(f"mesh preset {name!r}: {n_devices} GPUs are not whole 8-GPU hosts")
        return {"data": 1, "fsdp": n_devices // 8, "expert": 8, "tensor": 1}
    if name not in TPU_EXPERT_DEGREE:
        raise ValueError(f"mesh preset {name!r} unknown; presets are {MESH_PRESETS}")
    degrees = TPU_EXPERT_DEGREE[name]
    if n_devices not in degrees:
        raise ValueError(f"mesh preset {name!r} covers {sorted(degrees)} chips, not {n_devices}; "
                         "set mesh.data/fsdp/expert/tensor instead")
    return {"data": 1, "fsdp": n_devices // degrees[n_devices], "expert": degrees[n_devices], "tensor": 1}


def mesh_sizes(mesh_cfg, n_devices: int) -> dict[str, int]:
    """A run config's `mesh` section -> {data, fsdp, expert, tensor}: its preset's sizes for
    n_devices when mesh.preset is set, else mesh.data/fsdp/expert/tensor as written."""
    if mesh_cfg.preset:
        return mesh_preset(mesh_cfg.preset, n_devices)
    return {a: mesh_cfg[a] for a in MESH_AXES}
