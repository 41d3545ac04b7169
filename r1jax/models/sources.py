"""What a `--checkpoint` argument names, resolved in one place, and the model it holds loaded.

    CKPT                       a model checkpoint (python -m r1jax.convert; r1jax/models/checkpoint.py)
    RUN                        a training run: its newest RUN/checkpoints/STEP
    RUN/checkpoints/STEP       one training checkpoint; RUN/best/STEP likewise

A run's model config and side files are RUN/model. A full fine-tuning run's checkpoints hold the
weights; a run with adapters (section lora) holds only the adapters and the router bias, and
RUN/model/r1jax.json names its base ({"path", "digest"}: a model checkpoint, or "" for the
random-init base of a seed), which is loaded under them; the adapters are applied unmerged, as in
training. `evaluate`, `generate`, the task metrics and `export` all resolve through here.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from r1jax.models import checkpoint
from r1jax.parallel import sharding
from r1jax.models import registry
from r1jax.models.common.config import LoraConfig, RuntimeConfig
from r1jax.models.common.params import Fp8Scale
from r1jax.models.common.partition import split_trained


def training_step_dir(path: str) -> str | None:
    """The Orbax step directory of a training checkpoint named by `path` (RUN/checkpoints/STEP,
    RUN/best/STEP, or RUN itself for its latest step), or None when `path` is not one."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return path
    steps = os.path.join(path, "checkpoints")
    if os.path.isdir(steps):
        done = [int(d) for d in os.listdir(steps) if d.isdigit()]
        if done:
            return os.path.join(steps, str(max(done)))
    return None


def meta_dir(path: str) -> str:
    """The directory holding the config and side files of what `path` names (RUN/model for runs)."""
    step_dir = training_step_dir(path)
    return os.path.join(os.path.dirname(os.path.dirname(step_dir)), "model") if step_dir else path


def _placements(model, mesh):
    """Nested dict of shardings for every variable of (abstract) `model`: variable_shardings on
    `mesh`, or the default device."""
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda _: dev, nnx.to_pure_dict(nnx.state(model)))
    return nnx.to_pure_dict(sharding.variable_shardings(nnx.state(model), mesh))


def base_model(run_meta: str, cfg: RuntimeConfig, mesh=None) -> nnx.Module:
    """The base a run's adapters sit on (RUN/model/r1jax.json "base"), as a model without adapters;
    CheckpointError when it is missing or is no longer what the run was trained on."""
    base = checkpoint.read_meta(run_meta).get("base")
    plain = cfg.replace(lora=LoraConfig())
    if base is None:
        raise checkpoint.CheckpointError(f"{run_meta}/{checkpoint.META_NAME}: a run with adapters "
                                         "must name its base (\"base\"); it does not")
    if not base["path"]:
        # a random-init base is its seed's initialization, made again
        return jax.jit(lambda: registry.build(plain, nnx.Rngs(base["seed"])))()
    now = checkpoint.base_record(base["path"], plain, 0)
    if not os.path.isdir(base["path"]) or now["digest"] != base["digest"]:
        raise checkpoint.CheckpointError(
            f"{run_meta}: the adapters were trained on {base['path']} (digest {base['digest']}), which "
            f"{'is gone' if not os.path.isdir(base['path']) else 'has changed since (digest ' + now['digest'] + ')'}")
    return checkpoint.load_model(base["path"], plain, _placements(checkpoint.abstract_model(plain), mesh))


def load(path: str, dtype: str = "bfloat16", mesh=None) -> tuple[nnx.Module, str]:
    """(model, directory of its config and side files) from what `path` names (module docstring);
    params are placed by r1jax.parallel.sharding.variable_shardings on `mesh` (None: the default device)."""
    step_dir = training_step_dir(path)
    meta = meta_dir(path)
    cfg = checkpoint.read_config(meta, dtype=dtype)
    abstract = checkpoint.abstract_model(cfg)
    if step_dir is None:
        return checkpoint.load_model(path, cfg, _placements(abstract, mesh)), meta
    # A trainer's state item is {"params", "rest", "opt_state"}: its trained variables (weights, or
    # adapters over a base) and state, split as r1jax/models/common/partition.py splits them, in nested dicts.
    graphdef, params, rest, frozen = split_trained(abstract)
    shard = _placements(abstract, mesh)
    target = {k: jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              nnx.to_pure_dict(part), _select(shard, nnx.to_pure_dict(part)))
              for k, part in (("params", params), ("rest", rest))}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
    except Exception as e:  # orbax raises many types; all mean the same to a user
        raise checkpoint.CheckpointError(f"{step_dir}/state: cannot restore: "
                                         f"{type(e).__name__}: {e}") from None
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(rest, restored["rest"])
    if frozen is None:
        return nnx.merge(graphdef, params, rest), meta
    _, weights, _ = nnx.split(base_model(meta, cfg, mesh), (nnx.Param, Fp8Scale), ...)  # its router bias: the run's
    return nnx.merge(graphdef, weights, params, rest), meta


def _select(full: dict, like: dict) -> dict:
    """The entries of nested dict `full` at the paths of nested dict `like`."""
    return {k: _select(full[k], v) if isinstance(v, dict) else full[k] for k, v in like.items()}
