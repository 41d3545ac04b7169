"""Plan a pod without the hardware: compile the real training step ahead of time for a TPU slice.

    python -m r1jax.plan --config=configs/r1_671b.py --topology=v5p-1024 [--variant full] [--json]

The step is built as r1jax/train/loop.py builds it (make_optimizer, run_config.step_config, split_trained,
variable_shardings, train.opt_state_shardings, train.jit_train_step with donated params / router
bias / optimizer state and, with adapters, the frozen base as an undonated input, batch_sharding,
under `jax.set_mesh`), from abstract parameters
(nnx.eval_shape: no memory), on a mesh of the slice's devices as libtpu describes them
(jax.experimental.topologies), then lowered and compiled by the TPU compiler on this CPU. It reports
per-chip memory (XLA's memory analysis), FLOPs, compile time and whether the step fits the chip's
HBM with HEADROOM to spare. A step the compiler itself cannot fit is reported with the compiler's
own figure (fits = false).

GRPO (train.objective = grpo): the step's batch takes the objective's fields (batch_spec: float32
advantages, ref_logp, old_logp), and the report adds `rollout` (rollout_plan): the rollouts'
generation, r1jax/inference/generate.py's prefill and decode functions compiled for the slice on
all train.batch_size rows with their decode cache (MLA's latent cache), beside the optimizer state
and the reference policy (grpo.beta > 0). `fits` is then both verdicts: the update step with the
reference beside it, and the rollout phase, each within HEADROOM of HBM (`step_fits`: the step's own).

Slice names follow Cloud TPU accelerator types: v5p-N counts TensorCores (2 per chip, v5p-1024 =
512 chips, 8x8x8); v6e-N counts chips (v6e-256 = 16x16). A raw libtpu topology (`v5p:4x4x8`) works too.

Variants (--variant) override config keys (VARIANTS): full / bf16_state / frozen_experts fine-tune
the weights; lora / lora_experts train rank-16 adapters (lora.targets: attention, dense MLP, shared
experts; lora_experts adds the routed experts) on a frozen FP8 base, lora_bf16_base the same
adapters as lora on the config's bf16 base. A dense model (the R1-Distill presets: no experts, no
FP8 release) takes full, bf16_state and lora_bf16_base; the others are a PlanError naming the ones
that apply. A config whose model.checkpoint is not converted yet is planned from model.preset.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.train import run_config
from r1jax.parallel import sharding
from r1jax.models import registry
from r1jax.models.common import groups
from r1jax.models.common.config import ConfigError, LoraConfig
from r1jax.models.common.params import Adapter
from r1jax.train.optim import make_optimizer, path_str
from r1jax.models.common.partition import split_trained
from r1jax.inference import generate
# The trainer's own step builders (and its --config flag, which the CLI below shares).
from r1jax.train.loop import jit_train_step, opt_state_shardings, parse_flags

GIB = 1024 ** 3
# HBM per chip that the TPU compiler (libtpu 0.0.42) allocates against, read from its
# out-of-memory messages here ("exceeds available HBM (95.74G)"). Cloud TPU documentation lists
# 95 GB for v5p (cloud.google.com/tpu/docs/v5p) and 32 GB for v6e (cloud.google.com/tpu/docs/v6e).
HBM_GIB = {"v5p": 95.74, "v6e": 31.25}
# A plan fits when the compiled step needs at most this fraction of HBM: the rest is for what the
# program does not see (the runtime's collective buffers, the next batch being transferred in,
# allocator fragmentation).
HEADROOM = 0.9
# Physical shapes of the standard slices (Cloud TPU docs), by chip count.
_SHAPES = {"v5p": {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
                   256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"},
           "v6e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                   256: "16x16"}}
_CORES_PER_CHIP = {"v5p": 2, "v6e": 1}   # the accelerator type's N counts TensorCores
# The fine-tuning modes a plan can compare; each overrides only the config keys named.
_LORA = {"lora.rank": 16, "lora.targets": "attention,dense_mlp,shared_experts",
         "optim.freeze_groups": "", "optim.state_dtype": "float32"}
VARIANTS = {
    "full": {"optim.freeze_groups": "", "optim.state_dtype": "float32"},
    "bf16_state": {"optim.freeze_groups": "", "optim.state_dtype": "bfloat16"},
    "frozen_experts": {"optim.freeze_groups": "routed_experts", "optim.state_dtype": "float32"},
    # rank-16 adapters (float32, float32 Adam moments) on a frozen base, FP8 (FP8_BASE) or bf16
    "lora": _LORA,
    "lora_bf16_base": _LORA,
    "lora_experts": {**_LORA, "lora.targets": "attention,dense_mlp,shared_experts,routed_experts"},
}
# Variants whose frozen base is the release's FP8 (`python -m r1jax.convert --dtype float8_e4m3fn`).
# A plan has no checkpoint, whose r1jax.json is what sets RuntimeConfig.fp8_weights in a run, so the
# plan sets it on the preset's config itself (build_step's fp8_base): no user config key.
FP8_BASE = frozenset({"lora", "lora_experts"})


class PlanError(ValueError):
    """A slice name, variant or mesh that cannot be planned; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str            # as asked: "v5p-1024" or "v5p:8x8x8"
    generation: str      # "v5p" | "v6e"
    topology: str        # libtpu's name, "v5p:8x8x8"
    chips: int
    hbm_gib: float


def parse_slice(name: str) -> Slice:
    """A Cloud TPU accelerator type ("v5p-1024", "v6e-256") or libtpu topology ("v5p:4x4x8")."""
    m = re.fullmatch(r"(v5p|v6e)([-:])([0-9x]+)", name.strip())
    if not m:
        raise PlanError(f"--topology={name!r}: expected v5p-N, v6e-N or e.g. v5p:4x4x8 "
                        f"(generations: {sorted(HBM_GIB)})")
    gen, sep, rest = m.groups()
    if sep == ":":
        chips = math.prod(int(d) for d in rest.split("x"))
        return Slice(name, gen, f"{gen}:{rest}", chips, HBM_GIB[gen])
    n = int(rest)
    chips, odd = divmod(n, _CORES_PER_CHIP[gen])
    if odd or chips not in _SHAPES[gen]:
        sizes = sorted(c * _CORES_PER_CHIP[gen] for c in _SHAPES[gen])
        raise PlanError(f"--topology={name!r}: no standard {gen} slice of that size; sizes are "
                        f"{gen}-{sizes} (or give a shape, e.g. {gen}:{_SHAPES[gen][64]})")
    return Slice(name, gen, f"{gen}:{_SHAPES[gen][chips]}", chips, HBM_GIB[gen])


# libtpu is only a compiler here. Without these it warns that it cannot find the TPU metadata
# server, and it refuses to load while another process (a test, a second plan) holds its lock. It
# reads them when it loads (the first topology query); a real TPU VM's own values win.
_LIBTPU_ENV = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "TPU_ACCELERATOR_TYPE": "v5p-8",
               "TPU_WORKER_HOSTNAMES": "localhost", "TPU_SKIP_MDS_QUERY": "1"}


def slice_devices(s: Slice) -> list:
    """The slice's TPU devices as the compiler sees them (no TPU needed: libtpu describes them)."""
    from jax.experimental import topologies
    added = {k: v for k, v in _LIBTPU_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=s.topology).devices)
    except Exception as e:  # noqa: BLE001 - libtpu missing or the shape unknown to it
        raise PlanError(f"libtpu cannot describe {s.topology} ({e!r:.300}); is jax[tpu] installed "
                        f"(pip install -e '.[tpu]')?") from e
    finally:  # not inherited by child processes, whose JAX would take them for a TPU host
        for k in added:
            os.environ.pop(k, None)


def with_variant(c, variant: str | None):
    """A copy of config c with the variant's keys set (None: the config as written)."""
    if variant is None:
        return c
    if variant not in VARIANTS:
        raise PlanError(f"--variant={variant!r}: choose one of {sorted(VARIANTS)}")
    c = c.copy_and_resolve_references()
    with c.unlocked():
        for key, value in VARIANTS[variant].items():
            section, k = key.split(".")
            c[section][k] = value
    return c


def variant_groups(variant: str) -> tuple[str, ...]:
    """The parameter groups `variant` names: its optim.freeze_groups, and its lora.targets where
    they differ from the default targets (which adapt whatever of them a model has, as
    r1jax/train/optim.py check_groups reads them)."""
    keys = VARIANTS[variant]
    named = [g for g in keys.get("optim.freeze_groups", "").split(",") if g]
    targets = tuple(t for t in keys.get("lora.targets", "").split(",") if t)
    if keys.get("lora.rank") and targets != LoraConfig().targets:
        named += [t for t in targets if t not in named]
    return tuple(named)


def variant_problem(variant: str, model_groups, fp8_blocks: bool) -> str | None:
    """Why `variant` cannot be planned for a model with parameter groups `model_groups` whose family
    does (fp8_blocks) or does not store block-scaled FP8 projections; None when it can."""
    missing = [g for g in variant_groups(variant) if g not in model_groups]
    if missing:
        return f"names group(s) {','.join(missing)}, which the model does not have"
    if variant in FP8_BASE and not fp8_blocks:
        return "holds the frozen base as block-scaled FP8, which this model family's releases are not"
    return None


def check_variant(variant: str | None, model_cfg, model_groups) -> None:
    """PlanError naming --variant, the model and the variants that do apply, when `variant` names
    groups the model lacks (frozen_experts, lora_experts on a dense model) or an FP8 base its family
    has none of (lora on R1-Distill: lora_bf16_base is the same adapters on its bfloat16 base)."""
    if variant is None:
        return
    fp8 = registry.fp8_blocks(model_cfg)
    why = variant_problem(variant, model_groups, fp8)
    if why:
        ok = [v for v in VARIANTS if variant_problem(v, model_groups, fp8) is None]
        raise PlanError(f"--variant={variant} {why} ({model_cfg.model_type}: groups "
                        f"{','.join(model_groups)}); variants for this model: {', '.join(ok)}")


def adapter_counts(model_cfg) -> dict[str, int]:
    """{optimizer group: adapter parameters} of model_cfg's adapters (its section lora), counted
    from the abstract model (nnx.eval_shape: no memory), each adapter in its `group` metadata
    (r1jax/models/common/groups.py); {} without adapters. An MTP module carries none."""
    abstract = nnx.eval_shape(lambda: registry.build(model_cfg, nnx.Rngs(0)))
    adapters = nnx.state(abstract, Adapter)
    places = groups.placements(adapters)
    counts: dict[str, int] = {}
    for path, x in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        group = places[path_str(path)].group
        counts[group] = counts.get(group, 0) + math.prod(x.shape)
    return counts


def _abstract(tree, shardings):
    """nnx.State of ShapeDtypeStructs carrying their shardings (the arguments, without memory)."""
    return jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)),
                        tree, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


def build_step(c, mesh, fp8_base: bool = False):
    """(jitted train step, its abstract arguments, model config) as r1jax/train/loop.py builds them
    (split_trained, its opt_state_shardings and jit_train_step: state shardings kept, metrics
    replicated). The arguments are train.py's (params, rest, opt_state, batch, frozen, key): with
    adapters (section lora) params are the adapters and frozen the base weights (and FP8 scales),
    sharded by their own axes and not donated; without, frozen is None. key is the adapter-dropout
    key (None without dropout). fp8_base: the base's projections as FP8 codes + scales
    (RuntimeConfig.fp8_weights), as an FP8 checkpoint would load.

    The step must be lowered under jax.set_mesh(mesh), as train.py runs it. make_optimizer runs
    outside the mesh: its constants are host arrays, and a compile-only TPU device cannot hold them.
    """
    model_cfg = run_config.model_config(c)
    if fp8_base:
        model_cfg = model_cfg.replace(fp8_weights=True)
    abstract = nnx.eval_shape(lambda: registry.build(model_cfg, nnx.Rngs(c.seed)))
    graphdef, abs_params, abs_rest, abs_frozen = split_trained(abstract)
    p_shard = sharding.variable_shardings(abs_params, mesh)
    r_shard = sharding.variable_shardings(abs_rest, mesh)
    params, rest = _abstract(abs_params, p_shard), _abstract(abs_rest, r_shard)
    f_shard = None if abs_frozen is None else sharding.variable_shardings(abs_frozen, mesh)
    frozen = None if abs_frozen is None else _abstract(abs_frozen, f_shard)

    total_steps = c.train.steps or 1
    tx, _, _ = make_optimizer(run_config.optim_config(c, total_steps), abstract, params)
    opt_state = jax.eval_shape(tx.init, params)
    o_shard = opt_state_shardings(opt_state, params, mesh)
    opt_state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                             opt_state, o_shard)

    sc = run_config.step_config(c)
    step_fn = jit_train_step(graphdef, tx, sc, (p_shard, r_shard, o_shard), mesh, f_shard)
    rows = c.train.batch_size
    shards = math.prod(mesh.shape[a] for a in ("data", "fsdp", "expert"))
    if rows % shards:
        raise PlanError(f"config key train.batch_size={rows} does not split over the "
                        f"{shards} batch shards (data x fsdp x expert) of mesh {dict(mesh.shape)}")
    batch = batch_spec(c, sc, mesh)
    key = None
    if model_cfg.lora.rank and model_cfg.lora.dropout:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        k = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=replicated)
    return step_fn, (params, rest, opt_state, batch, frozen, key), model_cfg


# The batch fields that are token ids or masks (int32); every other field an objective reads is a
# float32 per-token value (GRPO's advantages, old_logp, ref_logp), as r1jax/train/loop.py feeds them.
INT_FIELDS = ("tokens", "positions", "segment_ids", "loss_mask")


def batch_spec(c, sc, mesh) -> dict:
    """{field: ShapeDtypeStruct [train.batch_size, train.seq_len]} of the step's batch: tokens,
    positions, segment_ids and what the objective reads (sc.objective.fields: SFT's loss_mask;
    GRPO's loss_mask, advantages, old_logp with grpo.iterations > 1, ref_logp with grpo.beta > 0),
    int32 for INT_FIELDS and float32 for the others, rows over the batch axes."""
    batch_sharding = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((c.train.batch_size, c.train.seq_len),
                                    jnp.int32 if k in INT_FIELDS else jnp.float32, sharding=batch_sharding)
            for k in ("tokens", "positions", "segment_ids", *sc.objective.fields)}


def state_bytes(args) -> dict[str, int]:
    """Global bytes of the trained params, router state, optimizer state and (with adapters) the
    frozen base: the step's inputs but the batch and key."""
    size = lambda t: sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(t))
    params, rest, opt_state, _, frozen, _ = args
    out = {"params": size(params), "rest": size(rest), "opt_state": size(opt_state)}
    if frozen is not None:
        out["frozen"] = size(frozen)
    return out


def argument_bytes_per_device(args) -> int:
    """Bytes of the step's inputs on one device, from their shardings (the largest shard per leaf)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(args))


def cache_slots(seq_len: int, max_new_tokens: int) -> int:
    """Slots of the decode cache a GRPO step's generation allocates at most: generate_ids
    (r1jax/inference/generate.py) gives it the longest prompt rounded up to PROMPT_BUCKET plus
    max_new_tokens rounded up to whole decode calls (steps_per_call, GenerationSettings' default as
    r1jax/train/rollouts.py leaves it); prompts hold at most seq_len - max_new_tokens ids (the
    rollouts' budget). Equals seq_len when both parts are already whole (4096 = 1024 + 3072)."""
    chunk = min(generate.GenerationSettings().steps_per_call, max_new_tokens)
    return _round_up(seq_len - max_new_tokens, generate.PROMPT_BUCKET) + _round_up(max_new_tokens, chunk)


def rollout_plan(c, mesh, args, model_cfg) -> dict:
    """Per-chip memory of a GRPO step's rollout phase (train.objective=grpo), before its update.

    generate_ids (r1jax/inference/generate.py) samples all train.batch_size rows in one batch
    (rounded up to the mesh's batch axes, rows over data x fsdp x expert as generate._place puts
    them): `_prefill` runs the prompts (train.seq_len - grpo.max_new_tokens ids, left-padded to
    PROMPT_BUCKET) and allocates the decode cache of cache_slots slots (the model's init_cache: MLA's
    latent + rope key, [L, B, S, C + R] in the compute dtype), then `_decode` runs
    steps_per_call steps per call on it. Both are lowered with the model's whole state as the
    trained, rest and frozen parts are sharded in the step, and compiled for the slice:

        prefill, decode   {memory_gib, per_device_memory_gib} of each compiled function (arguments:
                          the model state; the decode's cache donated); a function the compiler
                          cannot fit: its temporaries + inputs, a lower bound (compiled false)
        cache_gib         the decode cache per chip (the prefill's output shardings)
        reference_gib     grpo.beta > 0: the reference policy's (params, rest) per chip
                          (reference_global_gib: on the slice), sharded like the step's
                          (r1jax/train/loop.py _reference: with adapters the zero adapter tree,
                          else a copy of the starting params; plus a copy of rest), resident the
                          whole run; 0 without it
        opt_state_gib     the optimizer state per chip: resident, not an input of either function

    total_gib = opt_state + reference + the larger of prefill and decode. Not compiled: the
    reference (and old) log-prob pass over the batch between rollouts and update."""
    params, rest, opt_state, _, frozen, _ = args
    shards = generate._batch_multiple(mesh)
    rows = _round_up(c.train.batch_size, shards)
    prompt = _round_up(c.train.seq_len - c.grpo.max_new_tokens, generate.PROMPT_BUCKET)
    slots = cache_slots(c.train.seq_len, c.grpo.max_new_tokens)
    abstract = nnx.eval_shape(lambda: registry.build(model_cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    state = _abstract(state, sharding.variable_shardings(state, mesh))
    by_row = lambda *shape, dtype=jnp.int32: jax.ShapeDtypeStruct(  # noqa: E731 - as generate._place
        shape, dtype, sharding=jax.sharding.NamedSharding(
            mesh, sharding.logical_to_spec(("batch",) + (None,) * (len(shape) - 1))))
    one = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=jax.sharding.NamedSharding(  # noqa: E731
        mesh, jax.sharding.PartitionSpec()))
    steps = min(generate.GenerationSettings().steps_per_call, c.grpo.max_new_tokens)
    settings = generate.sampling.SamplingSettings(float(c.grpo.temperature), float(c.grpo.top_p), 0)
    out = {"rows": rows, "prompt_slots": prompt, "cache_slots": slots, "batch_shards": shards,
           "decode_steps_per_call": steps}
    with jax.set_mesh(mesh):
        inputs = (state, by_row(rows, prompt), by_row(rows), by_row(rows), by_row(rows, dtype=jnp.bool_),
                  one(jnp.int32))
        out["prefill"], prefill = _compile_memory(
            generate._prefill.lower(graphdef, *inputs, max_len=slots), inputs)
        # the decode state as the prefill hands it over (its compiled output shardings)
        d = jax.eval_shape(functools.partial(generate._prefill, graphdef, max_len=slots), *inputs)
        if prefill is not None:
            d = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                             d, prefill.output_shardings)
            eos = jax.ShapeDtypeStruct((1,), jnp.int32, sharding=one(jnp.int32).sharding)
            decode = jax.jit(generate._decode, static_argnames=("graphdef", "n", "settings"),
                             donate_argnames=("d",))   # generate._decode_fn on a TPU
            out["decode"], _ = _compile_memory(
                decode.lower(graphdef, state, d, eos, steps, settings), (state, d, eos))
    cache = d.cache
    out["cache_dtype"] = str(jnp.dtype(jax.tree.leaves(cache)[0].dtype))
    out["cache_global_gib"] = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache)) / GIB
    # per chip from the prefill's output shardings; the analytic split over the batch shards (the
    # cache's only sharded axis, generate's rows) when the prefill did not compile
    out["cache_gib"] = (argument_bytes_per_device(cache) if prefill is not None else
                        sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache)) / shards) / GIB
    out["reference"] = ("none (grpo.beta 0)" if not c.grpo.beta else
                        "the base, adapters zero" if frozen is not None else "a copy of the params")
    out["reference_gib"] = (argument_bytes_per_device((params, rest)) if c.grpo.beta > 0 else 0) / GIB
    out["reference_global_gib"] = sum(state_bytes(args)[k] for k in ("params", "rest")) / GIB \
        if c.grpo.beta > 0 else 0.0
    out["opt_state_gib"] = argument_bytes_per_device(opt_state) / GIB
    phases = [out[k]["per_device_memory_gib"] for k in ("prefill", "decode") if k in out]
    out["total_gib"] = out["opt_state_gib"] + out["reference_gib"] + max(phases)
    out["compiled"] = all(out[k]["compiled"] for k in ("prefill", "decode") if k in out) and "decode" in out
    return out


def _compile_memory(lowered, inputs) -> tuple[dict, object]:
    """({compiled, memory_gib, per_device_memory_gib}, the compiled function or None) of a lowered
    function; one the TPU compiler cannot fit: its temporaries + the shards of `inputs` (its
    abstract arguments), a lower bound."""
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler's out-of-memory is a result
        m = _OOM.search(str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        return {"compiled": False, "per_device_memory_gib": _gib(m.group(1), m.group(2))
                + argument_bytes_per_device(inputs) / GIB,
                "compiler_error": str(e).splitlines()[0][:400]}, None
    mem, total = memory_bytes(compiled)
    return {"compiled": True, "memory_gib": {k: v / GIB for k, v in mem.items()},
            "per_device_memory_gib": total / GIB}, compiled


def memory_bytes(compiled) -> tuple[dict[str, int], int]:
    """({arguments, outputs, aliased, temporaries, code}, their per-chip total) of a compiled
    function (XLA's memory analysis): arguments + outputs - aliased (donated) + temporaries + code."""
    ma = compiled.memory_analysis()
    mem = {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
           "aliased": ma.alias_size_in_bytes, "temporaries": ma.temp_size_in_bytes,
           "code": ma.generated_code_size_in_bytes}
    return mem, mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"] + mem["code"]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# What libtpu's compiler names when asked for a float32 x float32 dot (model.dtype float32).
_F32_DOT = "ALG_DOT_F32_F32_F32"
_OOM = re.compile(r"\(([0-9.]+)([KMGT])\) exceeds available HBM \(([0-9.]+)([KMGT])\)")


def _gib(value: str, unit: str) -> float:
    return float(value) * 1024 ** "KMGT".index(unit) / 1024 ** 2


def with_model_source(c):
    """(config, what the plan builds): a model.checkpoint not converted yet (no config.json there)
    is planned as model.preset, the architecture the config names; an existing checkpoint as its
    own config.json says."""
    path = c.model.checkpoint
    if not path:
        return c, f"preset {c.model.preset}"
    if os.path.exists(os.path.join(path, "config.json")):
        return c, f"checkpoint {path}"
    c = c.copy_and_resolve_references()
    c.model.checkpoint = ""
    return c, f"preset {c.model.preset} (no checkpoint at {path} yet)"


def plan(c, topology: str, variant: str | None = None) -> dict:
    """Compiles config c's train step for a TPU slice; the report dict (see module docstring)."""
    s = parse_slice(topology)
    c = with_variant(c, variant)
    run_config.validate(c)
    c, model_source = with_model_source(c)
    model_cfg = run_config.model_config(c)
    check_variant(variant, model_cfg,
                  groups.present(groups.placements(nnx.eval_shape(
                      lambda: registry.build(model_cfg.replace(lora=LoraConfig()), nnx.Rngs(0))))))
    devices = slice_devices(s)
    try:
        sizes = sharding.mesh_sizes(c.mesh, len(devices))
        mesh = sharding.make_mesh(**sizes, devices=devices)
    except (ValueError, NotImplementedError) as e:
        raise PlanError(f"mesh for {s.name} ({s.topology}, {len(devices)} chips): {e}") from e
    # train.grad_accum 0 (auto): one row per batch shard per micro-batch, as r1jax/train/loop.py runs it
    c = run_config.with_grad_accum(c, math.prod(mesh.shape[a] for a in ("data", "fsdp", "expert")))
    report = {"topology": s.name, "libtpu_topology": s.topology, "chips": len(devices),
              "variant": variant or "config", "mesh": {k: int(v) for k, v in mesh.shape.items()},
              "mesh_preset": c.mesh.preset, "model": c.model.preset, "model_source": model_source,
              "hbm_gib": s.hbm_gib,
              "headroom": HEADROOM, "batch": [c.train.batch_size, c.train.seq_len],
              "grad_accum": c.train.grad_accum, "param_dtype": c.model.param_dtype,
              "state_dtype": c.optim.state_dtype, "freeze_groups": c.optim.freeze_groups,
              "lora_rank": c.lora.rank, "lora_targets": c.lora.targets if c.lora.rank else "",
              "fp8_base": variant in FP8_BASE}
    t0 = time.perf_counter()
    step_fn, args, model_cfg = build_step(c, mesh, fp8_base=variant in FP8_BASE)
    report["fp8_base"] = model_cfg.fp8_weights   # also an FP8 checkpoint's own
    report["adapter_params"] = sum(math.prod(x.shape) for x in jax.tree.leaves(args[0])
                                   ) if args[4] is not None else 0
    with jax.set_mesh(mesh):
        lowered = step_fn.lower(*args)
        report["lower_s"] = round(time.perf_counter() - t0, 2)
        report["state_gib"] = {k: v / GIB for k, v in state_bytes(args).items()}
        tokens = c.train.batch_size * c.train.seq_len
        report["model_flops"] = registry.train_flops_per_token(model_cfg, c.train.seq_len) * tokens
    report["objective"] = c.train.objective
    if c.train.objective == "grpo":
        t1 = time.perf_counter()
        report["rollout"] = rollout_plan(c, mesh, args, model_cfg)
        report["rollout"]["plan_s"] = round(time.perf_counter() - t1, 2)
    with jax.set_mesh(mesh):
        t1 = time.perf_counter()
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - the TPU compiler's out-of-memory is a result
            if _F32_DOT in str(e):
                raise PlanError(f"config key model.dtype={c.model.dtype!r}: the TPU compiler has no "
                                f"float32 x float32 matmul ({_F32_DOT}); plan (and train on TPU) with "
                                "model.dtype=bfloat16 (float32 master weights stay possible: "
                                "model.param_dtype)") from None
            m = _OOM.search(str(e))
            if "RESOURCE_EXHAUSTED" not in str(e) or not m:
                raise
            # The compiler's figure is its temporaries; the inputs come on top (a lower bound: the
            # compiler stopped before it had placed everything).
            temps = _gib(m.group(1), m.group(2))
            report.update(compiled=False, compile_s=round(time.perf_counter() - t1, 2),
                          compiler_temporaries_gib=temps,
                          per_device_memory_gib=temps + argument_bytes_per_device(args) / GIB,
                          compiler_hbm_gib=_gib(m.group(3), m.group(4)), fits=False, flops=None,
                          compiler_error=str(e).splitlines()[0][:400])
            return _with_rollout_verdict(report)
        report["compile_s"] = round(time.perf_counter() - t1, 2)
    mem, total = memory_bytes(compiled)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    report.update(compiled=True, memory_gib={k: v / GIB for k, v in mem.items()},
                  per_device_memory_gib=total / GIB, fits=total / GIB <= HEADROOM * s.hbm_gib,
                  flops=float(cost.get("flops", 0.0)) if cost else None)
    return _with_rollout_verdict(report)


def _with_rollout_verdict(report: dict) -> dict:
    """A GRPO plan's verdicts: the step (its compiled memory + the reference, resident beside it) and
    the rollout phase, each against HEADROOM x HBM; `fits` then says both do (step_fits: the step)."""
    ro = report.get("rollout")
    if ro is None:
        return report
    limit = HEADROOM * report["hbm_gib"]
    ro["step_with_reference_gib"] = report["per_device_memory_gib"] + ro["reference_gib"]
    ro["step_fits"] = report["fits"] and ro["step_with_reference_gib"] <= limit
    ro["fits"] = ro["total_gib"] <= limit
    report["step_fits"], report["fits"] = report["fits"], ro["step_fits"] and ro["fits"]
    return report


def format_report(r: dict) -> str:
    """The human-readable table of one plan."""
    lines = [f"plan: {r['model']} ({r['variant']}) on {r['topology']} = {r['libtpu_topology']}, "
             f"{r['chips']} chips, mesh {r['mesh']}"
             + (f" (preset {r['mesh_preset']})" if r["mesh_preset"] else ""),
             f"  model: {r['model_source']}",
             f"  batch {r['batch'][0]} x {r['batch'][1]} in {r['grad_accum']} micro-batch(es); params "
             f"{r['param_dtype']}, Adam moments {r['state_dtype']}, frozen: {r['freeze_groups'] or '-'}"
             + (f"; LoRA rank {r['lora_rank']} on {r['lora_targets']}, "
                f"{'FP8' if r['fp8_base'] else r['param_dtype']} base" if r.get("lora_rank") else ""),
             "  state, whole slice (GiB): " + ", ".join(f"{k} {v:,.0f}" for k, v in r["state_gib"].items())]
    if r["compiled"]:
        m = r["memory_gib"]
        lines += [f"  per chip (GiB): arguments {m['arguments']:.2f}  outputs {m['outputs']:.2f}  "
                  f"aliased (donated) {m['aliased']:.2f}  temporaries {m['temporaries']:.2f}  "
                  f"code {m['code']:.2f}",
                  f"  per chip total {r['per_device_memory_gib']:.2f} GiB of {r['hbm_gib']} GiB HBM "
                  f"(fits when <= {r['headroom']:.0%}): "
                  f"{'FITS' if r.get('step_fits', r['fits']) else 'DOES NOT FIT'}",
                  f"  FLOPs: compiler {r['flops']:.3e} per chip and micro-batch (XLA counts the "
                  f"accumulation loop once), x {r['chips']} chips x {r['grad_accum']} = "
                  f"{r['flops'] * r['chips'] * r['grad_accum']:.3e}; model formula "
                  f"{r['model_flops']:.3e} per step"]
    else:
        lines += [f"  the TPU compiler stopped: temporaries alone need {r['compiler_temporaries_gib']:.2f} "
                  f"GiB per chip, with the inputs at least {r['per_device_memory_gib']:.2f} GiB; "
                  f"{r['compiler_hbm_gib']:.2f} GiB are available: DOES NOT FIT",
                  f"  ({r['compiler_error']})"]
    if r.get("rollout"):
        lines += _rollout_lines(r)
    lines.append(f"  lowering {r['lower_s']} s, compilation {r['compile_s']} s")
    return "\n".join(lines)


def _rollout_lines(r: dict) -> list[str]:
    """format_report's GRPO part: the rollout phase and both verdicts."""
    ro, limit = r["rollout"], r["headroom"] * r["hbm_gib"]
    verdict = lambda ok: "FITS" if ok else "DOES NOT FIT"  # noqa: E731

    def phase(name):
        p = ro.get(name)
        if p is None:
            return f"{name} not compiled (the prefill did not fit)"
        if not p["compiled"]:
            return f"{name} >= {p['per_device_memory_gib']:.2f} (compiler: out of HBM)"
        m = p["memory_gib"]
        return (f"{name} {p['per_device_memory_gib']:.2f} (arguments {m['arguments']:.2f}, outputs "
                f"{m['outputs']:.2f}, aliased {m['aliased']:.2f}, temporaries {m['temporaries']:.2f})")
    return [f"  GRPO rollouts: {ro['rows']} rows x {ro['cache_slots']} cache slots ({ro['prompt_slots']} "
            f"prompt), {ro['decode_steps_per_call']} decode steps per call; decode cache "
            f"{ro['cache_dtype']} {ro['cache_global_gib']:,.1f} GiB on the slice, {ro['cache_gib']:.2f} "
            f"per chip (rows over {ro['batch_shards']} batch shards); reference: {ro['reference']}, "
            f"{ro['reference_gib']:.2f} GiB per chip",
            f"  rollout per chip (GiB, compiled): {phase('prefill')}; {phase('decode')}",
            f"  rollout phase per chip: optimizer state {ro['opt_state_gib']:.2f} + reference "
            f"{ro['reference_gib']:.2f} + the larger of prefill and decode = {ro['total_gib']:.2f} GiB "
            f"of {limit:.2f} allowed: {verdict(ro['fits'])}",
            f"  update step per chip with the reference beside it: {ro['step_with_reference_gib']:.2f} "
            f"GiB: {verdict(ro['step_fits'])}; GRPO step (rollouts + update): {verdict(r['fits'])}"]


def main(argv) -> None:
    from absl import app, flags, logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # JAX narrates its backend search at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = _FLAGS
    if flags.FLAGS.config is None:
        raise app.UsageError("--config=configs/NAME.py is required")
    try:
        r = plan(flags.FLAGS.config, f["topology"].value, f["variant"].value)
    except (PlanError, run_config.RunConfigError, ConfigError, groups.GroupError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(r) if f["json"].value else format_report(r))


def _define_flags():  # --config is r1jax.train's flag: read the same way as the trainer reads it
    from absl import flags
    return {"topology": flags.DEFINE_string("topology", "v5p-1024", "v5p-N, v6e-N or v5p:AxBxC"),
            "variant": flags.DEFINE_enum("variant", None, sorted(VARIANTS),
                                         "fine-tuning mode; unset: the config as written"),
            "json": flags.DEFINE_bool("json", False, "print one JSON object")}


def cli() -> None:
    """`python -m r1jax.plan` (r1jax/plan.py)."""
    global _FLAGS
    from absl import app
    _FLAGS = _define_flags()
    app.run(main, flags_parser=parse_flags)
