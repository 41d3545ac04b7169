"""The training run's configuration: every key, its type and default, and validation.

Config files (`configs/*.py`) start from `defaults()` and change what they need; the command line
overrides with `--config.section.key=value`. `validate` rejects keys that do not exist here and values
of the wrong type, naming the key, before anything runs.
"""
from __future__ import annotations

import ml_collections

from r1jax.model.config import ModelConfig, preset
from r1jax.optim import OptimConfig
from r1jax.sharding import MESH_PRESETS
from r1jax.step import StepConfig


class RunConfigError(ValueError):
    """A configuration key that is unknown, mistyped or out of range; the message names it."""


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/default"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "small"           # r1jax.model.config.PRESETS, or the checkpoint's own config
    c.model.checkpoint = ""            # r1jax model checkpoint (python -m r1jax.convert); "" = random init
    c.model.dtype = "bfloat16"         # compute dtype
    c.model.param_dtype = "float32"    # master parameter dtype
    c.model.remat = "none"             # none | full | dots | dots_no_batch
    c.model.moe_chunk_tokens = 0       # routed experts over a device's tokens this many at a time; 0 = all
    c.model.attention_mask = "dense"   # dense | ranges: how packed attention is masked (r1jax/model/mla.py)
    c.model.with_mtp = False

    c.data = ml_collections.ConfigDict()
    c.data.train = ""                  # JSONL file(s), comma-separated; "" = the bundled code dataset
    c.data.val = ""                    # JSONL; "" = a split of data.train (data.val_fraction)
    c.data.format = "auto"             # r1jax.data.formats.FORMATS
    c.data.val_fraction = 0.05
    c.data.train_all_turns = False
    c.data.packing = True
    c.data.max_examples = 0            # 0 = all; else the first N input rows (quick runs)
    c.data.cache_dir = ""              # prepared data goes here; "" = OUTPUT_DIR/data

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000               # optimizer steps; 0 = train.epochs epochs
    c.train.epochs = 0
    c.train.batch_size = 8             # global batch in sequences (tokens/step = batch * seq * accum)
    c.train.seq_len = 1024
    c.train.grad_accum = 1             # micro-batches per step, inside the jitted step
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 0           # 0 = the whole val split
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2       # plus the best by val/loss
    c.train.early_stop_patience = 0    # evals without val improvement before stopping; 0 = never
    c.train.max_nonfinite = 5          # consecutive skipped (non-finite) steps before stopping
    c.train.aux_loss_weight = 0.0      # sequence-wise balance loss (DeepSeek-V3 eq. 17)
    c.train.mtp_loss_weight = 0.0      # needs model.with_mtp
    c.train.router_bias_rate = 0.0     # aux-loss-free balancing: b += rate * sign(mean_load - load)
    c.train.loss_chunk = 4096          # LM head + cross-entropy over this many positions at a time; 0 = all
    c.train.task_eval_every = 0        # task metric every N steps (section task: task_eval.py); 0 = off

    c.task = ml_collections.ConfigDict()   # task metrics during training: r1jax/task_eval.py
    c.task.name = "humaneval"          # humaneval | exact_match | contains | boxed
    c.task.data = ""                   # JSONL prompts + references; "" = bundled HumanEval (humaneval only)
    c.task.limit = 16                  # held-out items (an even spread); 0 = all
    c.task.n_samples = 1
    c.task.k = "1"                     # pass@k, comma-separated, each <= n_samples
    c.task.temperature = 0.6
    c.task.top_p = 0.95
    c.task.max_new_tokens = 512
    c.task.timeout_s = 10.0            # per HumanEval program in the sandbox
    c.task.workers = 0                 # sandbox processes at once; 0 = CPU count

    c.optim = ml_collections.ConfigDict()
    o = OptimConfig()
    c.optim.lr = o.lr
    c.optim.schedule = o.schedule
    c.optim.warmup_steps = o.warmup_steps
    c.optim.min_lr_ratio = o.min_lr_ratio
    c.optim.wsd_decay_fraction = o.wsd_decay_fraction
    c.optim.weight_decay = o.weight_decay
    c.optim.layer_decay = o.layer_decay
    c.optim.b1 = o.b1
    c.optim.b2 = o.b2
    c.optim.eps = o.eps
    c.optim.clip_norm = o.clip_norm
    c.optim.state_dtype = o.state_dtype
    c.optim.group_lr = ""              # "router=0.5,head=2"
    c.optim.group_wd = ""              # "embeddings=0"
    c.optim.freeze_groups = ""         # "routed_experts,embeddings"
    c.optim.freeze_layers = ""         # "0-9"
    c.optim.stages = ""                # progressive unfreezing "0:40-60;500:20-60;1000:0-60"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                   # -1 takes the devices the other axes leave
    c.mesh.fsdp = 1
    c.mesh.expert = 1
    c.mesh.tensor = 1
    c.mesh.preset = ""                 # r1jax.sharding.MESH_PRESETS; set: its sizes replace the four above

    c.dist = ml_collections.ConfigDict()  # several processes (r1jax/distributed.py); unset = detected
    c.dist.coordinator = ""            # "HOST:PORT" of process 0; "" = from the launcher (SLURM, TPU pod)
    c.dist.num_processes = 0           # 0 = from the launcher (one process when there is none)
    c.dist.process_id = -1             # -1 = from the launcher
    return c


def _walk(c, prefix=""):
    for k, v in c.items():
        key = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            yield from _walk(v, key + ".")
        else:
            yield key, v


def validate(c: ml_collections.ConfigDict) -> None:
    """Unknown keys, wrong types and impossible values raise RunConfigError naming the key."""
    ref = dict(_walk(defaults()))
    got = dict(_walk(c))
    unknown = sorted(set(got) - set(ref))
    if unknown:
        raise RunConfigError(f"unknown config key(s): {', '.join(unknown)}")
    missing = sorted(set(ref) - set(got))
    if missing:
        raise RunConfigError(f"config is missing key(s): {', '.join(missing)} (start from "
                             "r1jax.run_config.defaults())")
    for key, want in ref.items():
        v = got[key]
        ok = isinstance(v, type(want)) and not (isinstance(v, bool) and not isinstance(want, bool))
        if isinstance(want, float) and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            raise RunConfigError(f"config key {key}={v!r}: expected {type(want).__name__}")
    positive = ("train.batch_size", "train.seq_len", "train.grad_accum", "train.log_every",
                "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
                "train.max_nonfinite")
    for key in positive:
        if got[key] <= 0:
            raise RunConfigError(f"config key {key}={got[key]}: must be > 0")
    _validate_task(got)
    if got["train.steps"] <= 0 and got["train.epochs"] <= 0:
        raise RunConfigError("config keys train.steps and train.epochs: one must be > 0")
    if got["train.batch_size"] % got["train.grad_accum"]:
        raise RunConfigError(f"config key train.grad_accum={got['train.grad_accum']} must divide "
                             f"train.batch_size={got['train.batch_size']}")
    if not 0 <= got["data.val_fraction"] < 1:
        raise RunConfigError(f"config key data.val_fraction={got['data.val_fraction']}: must be in [0, 1)")
    if got["model.moe_chunk_tokens"] < 0:
        raise RunConfigError(f"config key model.moe_chunk_tokens={got['model.moe_chunk_tokens']}: "
                             "must be >= 0 (0 = all of a device's tokens at once)")
    if got["train.loss_chunk"] < 0:
        raise RunConfigError(f"config key train.loss_chunk={got['train.loss_chunk']}: must be >= 0")
    if got["train.mtp_loss_weight"] and not got["model.with_mtp"]:
        raise RunConfigError("config key train.mtp_loss_weight > 0 needs model.with_mtp=True")
    if got["mesh.preset"] and got["mesh.preset"] not in MESH_PRESETS:
        raise RunConfigError(f"config key mesh.preset={got['mesh.preset']!r}: choose one of {MESH_PRESETS}")
    if got["dist.num_processes"] < 0 or got["dist.process_id"] < -1:
        raise RunConfigError(f"config keys dist.num_processes={got['dist.num_processes']} (>= 0) / "
                             f"dist.process_id={got['dist.process_id']} (>= -1) out of range")
    if 0 < got["dist.num_processes"] <= got["dist.process_id"]:
        raise RunConfigError(f"config key dist.process_id={got['dist.process_id']} must be < "
                             f"dist.num_processes={got['dist.num_processes']}")
    host, _, port = got["dist.coordinator"].rpartition(":")
    if got["dist.coordinator"] and not (host and port.isdigit()):
        raise RunConfigError(f"config key dist.coordinator={got['dist.coordinator']!r}: expected HOST:PORT")


def _validate_task(got: dict) -> None:
    from r1jax.tasks.runner import TASKS
    if got["train.task_eval_every"] < 0:
        raise RunConfigError(f"config key train.task_eval_every={got['train.task_eval_every']}: must be >= 0")
    if got["task.name"] not in TASKS:
        raise RunConfigError(f"config key task.name={got['task.name']!r}: one of {', '.join(TASKS)}")
    if got["task.name"] != "humaneval" and got["train.task_eval_every"] and not got["task.data"]:
        raise RunConfigError(f"config key task.data: task {got['task.name']} needs a JSONL of prompts "
                             "and references")
    for key in ("task.n_samples", "task.max_new_tokens", "task.timeout_s"):
        if got[key] <= 0:
            raise RunConfigError(f"config key {key}={got[key]}: must be > 0")
    if got["task.limit"] < 0 or got["task.workers"] < 0 or got["task.temperature"] < 0:
        raise RunConfigError("config keys task.limit, task.workers, task.temperature: must be >= 0")
    if not 0 < got["task.top_p"] <= 1:
        raise RunConfigError(f"config key task.top_p={got['task.top_p']}: must be in (0, 1]")
    ks = [k.strip() for k in got["task.k"].split(",") if k.strip()]
    if not ks or not all(k.isdigit() and 1 <= int(k) <= got["task.n_samples"] for k in ks):
        raise RunConfigError(f"config key task.k={got['task.k']!r}: integers in 1..task.n_samples="
                             f"{got['task.n_samples']}, comma-separated")


def _pairs(text: str, key: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise RunConfigError(f"config key {key}: {part!r} is not NAME=NUMBER") from None
        if not sep:
            raise RunConfigError(f"config key {key}: {part!r} is not NAME=NUMBER")
    return out


def optim_config(c: ml_collections.ConfigDict, total_steps: int) -> OptimConfig:
    o = c.optim
    return OptimConfig(
        lr=o.lr, schedule=o.schedule, warmup_steps=o.warmup_steps, total_steps=total_steps,
        min_lr_ratio=o.min_lr_ratio, wsd_decay_fraction=o.wsd_decay_fraction,
        weight_decay=o.weight_decay, layer_decay=o.layer_decay, b1=o.b1, b2=o.b2, eps=o.eps,
        clip_norm=o.clip_norm, state_dtype=o.state_dtype,
        group_lr=_pairs(o.group_lr, "optim.group_lr"), group_wd=_pairs(o.group_wd, "optim.group_wd"),
        freeze_groups=tuple(filter(None, (g.strip() for g in o.freeze_groups.split(",")))),
        freeze_layers=o.freeze_layers,
        stages=tuple(filter(None, (s.strip() for s in o.stages.split(";")))))


def step_config(c: ml_collections.ConfigDict) -> StepConfig:
    """The train step's options (loss terms, accumulation, chunking, groups without gradients)."""
    return StepConfig(grad_accum=c.train.grad_accum, aux_loss_weight=c.train.aux_loss_weight,
                      mtp_loss_weight=c.train.mtp_loss_weight, router_bias_rate=c.train.router_bias_rate,
                      loss_chunk=c.train.loss_chunk, frozen_groups=optim_config(c, 1).freeze_groups)


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
    """The run's model: the checkpoint's own architecture (model.checkpoint) or the preset's, with
    the run's numerics (dtype, param_dtype, remat, moe_chunk_tokens, attention_mask)."""
    m = c.model
    numerics = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                    moe_chunk_tokens=m.moe_chunk_tokens, attention_mask=m.attention_mask)
    if m.checkpoint:
        from r1jax import checkpoint  # reads files; imported only when a checkpoint is named
        return checkpoint.read_config(m.checkpoint, **numerics)
    return preset(m.preset, with_mtp=m.with_mtp, **numerics)
