"""What a `--checkpoint` argument names, resolved in one place, and the model it holds loaded.

    CKPT                       a model checkpoint (python -m r1jax.convert; r1jax/models/checkpoint.py)
    RUN                        a training run: its newest RUN/checkpoints/STEP
    RUN/checkpoints/STEP       one training checkpoint; RUN/best/STEP likewise

A run's model config and side files are RUN/model. A full fine-tuning run's checkpoints hold the
weights; a run with adapters (section lora) holds only the adapters and the router bias, and
RUN/model/r1jax.json names its base ({"path", "digest"}: a model checkpoint, or "" for the
random-init base of a seed), which is loaded under them; the adapters are applied unmerged, as in
training. `evaluate`, `generate`, the task metrics, `export` and the trainer's model.checkpoint all
resolve through here (`resolve`).

The trainer starts a new run from what model.checkpoint names (`start_model`, `lora_base`):
    CKPT                       its weights; adapters (lora.rank > 0) start fresh on it as their base
    a full fine-tuning run     the step's weights and router bias, with the run's config, tokenizer
                               and side files (RUN/model); adapters cannot sit on it (no base record)
    a run with adapters        lora.rank 0: the adapters merged into the base, W + s A B
                               (r1jax/models/common/lora.py merged_state; not on an FP8 base);
                               lora.rank > 0: the adapters continue on the run's base, which the new
                               run records as its own (same rank, alpha, targets and rslora)
The optimizer always starts fresh: a new run in a new output_dir.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from r1jax.models import checkpoint
from r1jax.parallel import sharding
from r1jax.models import registry
from r1jax.models.common import lora
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


@dataclasses.dataclass(frozen=True)
class Source:
    """What a checkpoint argument names (module docstring), resolved.

    path: as named. meta: the directory of its config and side files (CKPT itself, RUN/model).
    step_dir: the Orbax step directory of a training checkpoint; None for a model checkpoint.
    adapters: a run with adapters (its r1jax.json has "lora"); base: its "base" record then."""
    path: str
    meta: str
    step_dir: str | None = None
    adapters: bool = False
    base: dict | None = None


def resolve(path: str, key: str | None = None) -> Source:
    """The Source `path` names; CheckpointError naming config key `key` (when given) and the path
    for a path that is no directory, a run without any checkpoint yet, or a directory that is
    neither a model checkpoint nor a run. (A directory with some of a model checkpoint's files is
    returned as one: reading it names what is missing.)"""
    where = f"config key {key}={path}" if key else path
    expected = ("expected a model checkpoint (python -m r1jax.convert: config.json, r1jax.json, params/) "
                "or a training run (RUN, RUN/checkpoints/STEP, RUN/best/STEP)")
    if not os.path.isdir(path):
        raise checkpoint.CheckpointError(f"{where}: no such directory; {expected}")
    step_dir = training_step_dir(path)
    if step_dir is None:
        if os.path.isdir(os.path.join(path, "checkpoints")):
            raise checkpoint.CheckpointError(f"{where}: a training run without any checkpoint yet "
                                             f"({os.path.join(path, 'checkpoints')} holds no step)")
        if not any(os.path.exists(os.path.join(path, n)) for n in ("config.json", checkpoint.META_NAME)):
            raise checkpoint.CheckpointError(f"{where}: neither a model checkpoint nor a training run; {expected}")
        return Source(path, path)
    meta = meta_dir(step_dir)
    if not os.path.isfile(os.path.join(meta, checkpoint.META_NAME)):
        raise checkpoint.CheckpointError(f"{where}: the training checkpoint {step_dir} has no run "
                                         f"model directory ({meta}/{checkpoint.META_NAME} missing)")
    info = checkpoint.read_meta(meta)
    return Source(path, meta, step_dir, adapters="lora" in info, base=info.get("base"))


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
    src = resolve(path)
    cfg = checkpoint.read_config(src.meta, dtype=dtype)
    if src.step_dir is None:
        return checkpoint.load_model(path, cfg, _placements(checkpoint.abstract_model(cfg), mesh)), src.meta
    return _restore(src, cfg, mesh), src.meta


def _restore(src: Source, cfg: RuntimeConfig, mesh) -> nnx.Module:
    """The model of `cfg` (its adapters, when it has them, the run's) from training checkpoint `src`."""
    abstract = checkpoint.abstract_model(cfg)
    # A trainer's state item is {"params", "rest", "opt_state"}: its trained variables (weights, or
    # adapters over a base) and state, split as r1jax/models/common/partition.py splits them, in nested dicts.
    graphdef, params, rest, frozen = split_trained(abstract)
    shard = _placements(abstract, mesh)
    target = {k: jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              nnx.to_pure_dict(part), _select(shard, nnx.to_pure_dict(part)))
              for k, part in (("params", params), ("rest", rest))}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.join(src.step_dir, "state"), args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
    except Exception as e:  # orbax raises many types; all mean the same to a user
        raise checkpoint.CheckpointError(f"{src.step_dir}/state: cannot restore: "
                                         f"{type(e).__name__}: {e}") from None
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(rest, restored["rest"])
    if frozen is None:
        return nnx.merge(graphdef, params, rest)
    _, weights, _ = nnx.split(base_model(src.meta, cfg, mesh), (nnx.Param, Fp8Scale), ...)  # its router bias: the run's
    return nnx.merge(graphdef, weights, params, rest)


def start_model(src: Source, cfg: RuntimeConfig, mesh=None) -> nnx.Module:
    """The model a trainer of `cfg` starts from when model.checkpoint names `src` (module docstring),
    placed like load's: a model checkpoint's or full fine-tuning step's weights (a plain model);
    a run's adapters on its base when `cfg` has adapters; else those adapters merged into the base
    (lora.merged_state: W + s A B in float32, then cfg.param_dtype), a plain model. The combinations
    run_config.model_config refuses (adapters on a full fine-tuning run, a merge into FP8) are not
    checked again here."""
    plain = cfg.replace(lora=LoraConfig())
    if src.step_dir is None:
        return checkpoint.load_model(src.path, plain, _placements(checkpoint.abstract_model(plain), mesh))
    if not src.adapters or cfg.lora.rank:
        return _restore(src, cfg, mesh)
    run_cfg = cfg.replace(lora=checkpoint.read_config(src.meta).lora)
    graphdef, state = nnx.split(_restore(src, run_cfg, mesh))
    abstract = checkpoint.abstract_model(plain)
    dtypes = nnx.to_pure_dict(nnx.state(abstract))  # each variable's, as the plain model holds it
    merged = jax.jit(lambda st: jax.tree.map(lambda x, a: x.astype(a.dtype), lora.merged_state(
        nnx.merge(graphdef, st), plain.param_dtype), dtypes), out_shardings=_placements(abstract, mesh))(state)
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, merged)
    return nnx.merge(graphdef, state)


def lora_base(src: Source | None, cfg: RuntimeConfig, seed: int) -> dict:
    """The base record (checkpoint.base_record) of a trainer's adapters when model.checkpoint names
    `src`: the model checkpoint's, a run with adapters' own base (its adapters continue there), or
    for none the random-init base of `seed`."""
    if src is not None and src.adapters:
        return src.base
    return checkpoint.base_record(src.path if src else None, cfg, seed)


def _select(full: dict, like: dict) -> dict:
    """The entries of nested dict `full` at the paths of nested dict `like`."""
    return {k: _select(full[k], v) if isinstance(v, dict) else full[k] for k, v in like.items()}
