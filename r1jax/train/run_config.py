"""The training run's configuration: every key, its type and default, and validation.

Config files (`configs/*.py`) start from `defaults()` and change what they need; the command line
overrides with `--config.section.key=value`. `validate` rejects keys that do not exist here, values
of the wrong type and numbers outside the key's range (one table, RANGES), naming the key, before
anything runs; `check_overrides` does the same for the command line's key names before the flags
are parsed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os

import ml_collections

from r1jax.data import prompt_set
from r1jax.data.formats import FORMATS, MAPPABLE, DataError, parse_columns
from r1jax.data.mixture import MixtureError, check_weights
from r1jax.data.readers import INPUT_FORMATS
from r1jax.models.common.config import ADAPTABLE_GROUPS, LoraConfig, RuntimeConfig
from r1jax.models.registry import preset
from r1jax.train.optim import OptimConfig
from r1jax.parallel.sharding import MESH_PRESETS
from r1jax.train.objectives.grpo import GRPO
from r1jax.train.objectives.sft import SFT
from r1jax.train.step import StepConfig


class RunConfigError(ValueError):
    """A configuration key that is unknown, mistyped or out of range; the message names it."""


def defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.output_dir = "runs/default"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "small"           # a preset of any family (r1jax.models.registry.preset), or the checkpoint's own config
    c.model.checkpoint = ""            # r1jax model checkpoint (python -m r1jax.convert), or a training run (RUN,
                                       # RUN/checkpoints/STEP, RUN/best/STEP): its weights (adapters: merged at
                                       # lora.rank 0, continued with the same lora.*), config and tokenizer
                                       # (r1jax/models/sources.py); "" = random init
    c.model.dtype = "bfloat16"         # compute dtype
    c.model.param_dtype = "float32"    # master parameter dtype
    c.model.remat = "none"             # none | full | dots | dots_no_batch
    c.model.moe_chunk_tokens = 0       # routed experts over a device's tokens this many at a time; 0 = all
    c.model.attention_mask = "dense"   # dense | ranges: how packed attention is masked (r1jax/models/common/masks.py)
    c.model.with_mtp = False

    c.lora = ml_collections.ConfigDict()  # adapters on a frozen base (r1jax/models/common/lora.py)
    lc = LoraConfig()
    c.lora.rank = lc.rank              # 0 = off (full fine-tuning); > 0: train only adapters of this rank
    c.lora.alpha = lc.alpha            # scale alpha / rank (alpha / sqrt(rank) with rslora)
    c.lora.dropout = lc.dropout        # on the adapters' inputs while training (not routed experts')
    c.lora.targets = ",".join(lc.targets)  # groups whose projections get adapters: ADAPTABLE_GROUPS
    c.lora.rslora = lc.rslora

    c.data = ml_collections.ConfigDict()
    c.data.train = ""                  # input(s), comma-separated: files, globs, dirs (JSONL, JSON, Parquet,
                                       # CSV/TSV, Arrow, save_to_disk; .gz/.zst); "" = the bundled code dataset
    c.data.val = ""                    # one input of the same kinds; "" = a split of data.train (data.val_fraction)
    c.data.format = "auto"             # row shape: r1jax.data.formats.FORMATS
    c.data.input_format = "auto"       # container: r1jax.data.readers.INPUT_FORMATS
    c.data.columns = ""                # column map, e.g. "prompt=problem,completion=solution,reasoning=thinking"
    c.data.weights = ""                # one weight per data.train input, comma-separated: its share of training
    c.data.max_per_category = 0        # 0 = no cap; else at most N training records per category
    c.data.mixture = ""                # a mixture file (r1jax/data/mixture.py) instead of data.train
    c.data.val_fraction = 0.05
    c.data.train_all_turns = False
    c.data.packing = True
    c.data.max_examples = 0            # 0 = all; else the first N rows of each input (quick runs)
    c.data.cache_dir = ""              # prepared data goes here; "" = OUTPUT_DIR/data

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000               # optimizer steps; 0 = train.epochs epochs
    c.train.epochs = 0
    c.train.batch_size = 8             # global batch in sequences (tokens/step = batch * seq * accum)
    c.train.seq_len = 1024
    c.train.grad_accum = 1             # micro-batches per step, inside the jitted step; 0 = auto:
                                       # batch_size / the mesh's batch shards (resolved_grad_accum)
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
    c.train.objective = "sft"          # sft (next-token loss on the data) | grpo (section grpo: RL on prompts)

    c.grpo = ml_collections.ConfigDict()   # train.objective="grpo": r1jax/train/rollouts.py, objectives/grpo.py
    c.grpo.prompts_per_step = 8        # prompts per step; train.batch_size = prompts_per_step * num_generations
    c.grpo.num_generations = 8         # sampled completions per prompt (a group), >= 2
    c.grpo.temperature = 1.0           # rollout sampling; log-probabilities are taken at it too
    c.grpo.top_p = 1.0
    c.grpo.max_new_tokens = 256        # completion budget; prompts get train.seq_len - this
    c.grpo.rewards = "boxed:1.0,format:0.2"  # NAME[@BUDGET][:WEIGHT],...: r1jax/eval/rewards.py
    c.grpo.scale_rewards = True        # advantages over the group std (False: Dr. GRPO, centred only)
    c.grpo.epsilon = 0.2               # clip 1 - epsilon below
    c.grpo.epsilon_high = 0.2          # clip 1 + epsilon_high above (DAPO's clip-higher: 0.28)
    c.grpo.beta = 0.0                  # k3 KL penalty to the reference; 0 = no reference model
    c.grpo.iterations = 1              # optimizer updates per batch of rollouts
    c.grpo.normalize = "token"         # token | sequence | constant: objectives/grpo.py
    c.grpo.val_temperature = 0.6       # validation sampling (top_p 0.95)
    c.grpo.val_samples = 1             # samples per val prompt
    c.grpo.workers = 0                 # reward processes (code_tests, user functions); 0 = CPU count

    c.task = ml_collections.ConfigDict()   # task metrics during training: r1jax/eval/task_eval.py
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
    c.mesh.preset = ""                 # r1jax.parallel.sharding.MESH_PRESETS; set: its sizes replace the four above

    c.dist = ml_collections.ConfigDict()  # several processes (r1jax/parallel/distributed.py); unset = detected
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


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric key may take: finite numbers from lo to hi (open ends where said), plus
    the sentinel values in `special` (value -> what it means)."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    special: tuple = ()                # ((value, meaning), ...)

    def allows(self, v) -> bool:
        if any(v == value for value, _ in self.special):
            return True
        if not math.isfinite(v):
            return False
        return (self.lo < v if self.lo_open else self.lo <= v) and \
            (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        """"[0, 1)", "> 0", "-1 (the rest) or >= 1"."""
        if math.isinf(self.hi):
            text = f"{'>' if self.lo_open else '>='} {self.lo:g}"
        else:
            text = f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        specials = " or ".join(f"{value:g} ({meaning})" for value, meaning in self.special)
        return f"{specials} or {text}" if specials else text


_NON_NEGATIVE, _POSITIVE, _FRACTION = Range(0), Range(0, lo_open=True), Range(0, 1)
_MESH_AXIS = Range(1, special=((-1, "the devices the other axes leave"),))
# Every numeric key of defaults() and the values it may take (what the code that reads it means).
RANGES: dict[str, Range] = {
    "seed": _NON_NEGATIVE,
    "model.moe_chunk_tokens": Range(1, special=((0, "all of a device's tokens at once"),)),
    "lora.rank": Range(0),
    "lora.alpha": _POSITIVE,
    "lora.dropout": Range(0, 1, hi_open=True),
    "data.val_fraction": Range(0, 1, hi_open=True),
    "data.max_examples": Range(1, special=((0, "all"),)),
    "data.max_per_category": Range(1, special=((0, "no cap"),)),
    "train.steps": Range(1, special=((0, "train.epochs epochs"),)),
    "train.epochs": _NON_NEGATIVE,
    "train.batch_size": Range(1),
    "train.seq_len": Range(2),                  # one input and its next-token target at least
    "train.grad_accum": Range(1, special=((0, "auto"),)),
    "train.log_every": Range(1),
    "train.eval_every": Range(1),
    "train.eval_batches": Range(1, special=((0, "the whole val split"),)),
    "train.checkpoint_every": Range(1),
    "train.keep_checkpoints": Range(1),
    "train.early_stop_patience": Range(1, special=((0, "never"),)),
    "train.max_nonfinite": Range(1),
    "train.aux_loss_weight": _NON_NEGATIVE,
    "train.mtp_loss_weight": _NON_NEGATIVE,
    "train.router_bias_rate": _NON_NEGATIVE,
    "train.loss_chunk": Range(1, special=((0, "all positions at once"),)),
    "train.task_eval_every": Range(1, special=((0, "off"),)),
    "grpo.prompts_per_step": Range(1),
    "grpo.num_generations": Range(2),
    "grpo.temperature": _POSITIVE,
    "grpo.top_p": Range(0, 1, lo_open=True),
    "grpo.max_new_tokens": Range(1),
    "grpo.epsilon": Range(0, 1),
    "grpo.epsilon_high": _NON_NEGATIVE,
    "grpo.beta": _NON_NEGATIVE,
    "grpo.iterations": Range(1),
    "grpo.val_temperature": _POSITIVE,
    "grpo.val_samples": Range(1),
    "grpo.workers": Range(1, special=((0, "CPU count"),)),
    "task.limit": Range(1, special=((0, "all"),)),
    "task.n_samples": Range(1),
    "task.temperature": _NON_NEGATIVE,
    "task.top_p": Range(0, 1, lo_open=True),
    "task.max_new_tokens": Range(1),
    "task.timeout_s": _POSITIVE,
    "task.workers": Range(1, special=((0, "CPU count"),)),
    "optim.lr": _NON_NEGATIVE,
    "optim.warmup_steps": _NON_NEGATIVE,
    "optim.min_lr_ratio": _FRACTION,
    "optim.wsd_decay_fraction": _FRACTION,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.layer_decay": Range(0, 1, lo_open=True),
    "optim.b1": Range(0, 1, hi_open=True),
    "optim.b2": Range(0, 1, hi_open=True),
    "optim.eps": _POSITIVE,
    "optim.clip_norm": Range(0, lo_open=True, special=((0, "no clipping"),)),
    "mesh.data": _MESH_AXIS,
    "mesh.fsdp": _MESH_AXIS,
    "mesh.expert": _MESH_AXIS,
    "mesh.tensor": _MESH_AXIS,
    "dist.num_processes": Range(1, special=((0, "from the launcher"),)),
    "dist.process_id": Range(0, special=((-1, "from the launcher"),)),
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _suggest(key: str, known) -> str:
    """' (did you mean "train.steps"?)' for a near miss among the known keys, else ''."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _sections(keys) -> set[str]:
    return {k.rsplit(".", 1)[0] for k in keys if "." in k}


def check_overrides(argv: list[str], flag: str = "config") -> None:
    """Every `--config.KEY=...` in argv names a key of defaults() (or a section); else a
    RunConfigError naming the flag and the nearest key. Run before the flags are parsed: the flag
    library reports an unknown override as a traceback."""
    known = dict(_walk(defaults()))
    for arg in argv:
        if arg == "--":  # the end of the flags
            break
        name = arg.lstrip("-").split("=", 1)[0]
        name = name[2:] if name.startswith("no" + flag + ".") else name  # --noconfig.KEY (a bool)
        if not arg.startswith("-") or not name.startswith(flag + "."):
            continue
        key = name[len(flag) + 1:]
        if key not in known and key not in _sections(known):
            raise RunConfigError(f"unknown config key {key} (--{name}){_suggest(key, known)}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Unknown keys, wrong types and impossible values raise RunConfigError naming the key."""
    ref = dict(_walk(defaults()))
    got = dict(_walk(c))
    unknown = sorted(set(got) - set(ref))
    if unknown:
        raise RunConfigError("unknown config key(s): "
                             + ", ".join(k + _suggest(k, ref) for k in unknown))
    missing = sorted(set(ref) - set(got))
    if missing:
        raise RunConfigError(f"config is missing key(s): {', '.join(missing)} (start from "
                             "r1jax.train.run_config.defaults())")
    for key, want in ref.items():
        v = got[key]
        ok = isinstance(v, type(want)) and not (isinstance(v, bool) and not isinstance(want, bool))
        if isinstance(want, float) and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            raise RunConfigError(f"config key {key}={v!r}: expected {type(want).__name__}")
    for key, v in got.items():
        if _is_number(v) and key in RANGES and not RANGES[key].allows(v):
            raise RunConfigError(f"config key {key}={v!r} is out of range: allowed "
                                 f"{RANGES[key].describe()}")
    _validate_task(got)
    _validate_lora(got)
    _validate_data(got)
    _validate_grpo(got)
    if got["train.steps"] <= 0 and got["train.epochs"] <= 0:
        raise RunConfigError("config keys train.steps and train.epochs: one must be > 0")
    if got["train.grad_accum"] and got["train.batch_size"] % got["train.grad_accum"]:
        raise RunConfigError(f"config key train.grad_accum={got['train.grad_accum']} must divide "
                             f"train.batch_size={got['train.batch_size']}")
    if got["train.mtp_loss_weight"] and not got["model.with_mtp"]:
        raise RunConfigError("config key train.mtp_loss_weight > 0 needs model.with_mtp=True")
    if got["mesh.preset"] and got["mesh.preset"] not in MESH_PRESETS:
        raise RunConfigError(f"config key mesh.preset={got['mesh.preset']!r}: choose one of {MESH_PRESETS}")
    if 0 < got["dist.num_processes"] <= got["dist.process_id"]:
        raise RunConfigError(f"config key dist.process_id={got['dist.process_id']} must be < "
                             f"dist.num_processes={got['dist.num_processes']}")
    host, _, port = got["dist.coordinator"].rpartition(":")
    if got["dist.coordinator"] and not (host and port.isdigit()):
        raise RunConfigError(f"config key dist.coordinator={got['dist.coordinator']!r}: expected HOST:PORT")


def resolved_grad_accum(batch_size: int, grad_accum: int, batch_shards: int) -> int:
    """train.grad_accum as a run uses it on a mesh with `batch_shards` row shards (data x fsdp x
    expert; the chip count when tensor = 1): as written when > 0; 0 (auto) = batch_size /
    batch_shards, so every micro-batch gives each batch shard one whole sequence (the pod plans in
    BUILD.md). Raises RunConfigError when auto has no whole number to give."""
    if grad_accum:
        return grad_accum
    if batch_size % batch_shards:
        raise RunConfigError(f"config key train.grad_accum=0 (auto): train.batch_size={batch_size} "
                             f"is not a multiple of the mesh's {batch_shards} batch shards "
                             "(data x fsdp x expert); set train.grad_accum or the batch size")
    return batch_size // batch_shards


def with_grad_accum(c: ml_collections.ConfigDict, batch_shards: int) -> ml_collections.ConfigDict:
    """A copy of config c with train.grad_accum resolved for the mesh (resolved_grad_accum)."""
    accum = resolved_grad_accum(c.train.batch_size, c.train.grad_accum, batch_shards)
    c = c.copy_and_resolve_references()
    c.train.grad_accum = accum
    return c


def make_config_dir(path: str, key: str) -> str:
    """Creates directory `path` (and its parents), named by config key `key`; an OSError (a parent
    that is a regular file, no permission) becomes a RunConfigError naming the key and the path."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in _ancestors(path) if os.path.exists(p) and not os.path.isdir(p)), None)
        why = f"{blocker} is a file, not a directory" if blocker else (e.strerror or str(e))
        raise RunConfigError(f"{path}: cannot create the directory (config key {key}): {why}") from None
    return path


def _ancestors(path: str) -> list[str]:
    """path and its parents, outermost first: "a/b/c" -> ["a", "a/b", "a/b/c"]."""
    out, p = [], os.path.normpath(path)
    while p and p not in out:
        out.append(p)
        p = os.path.dirname(p)
    return out[::-1]


def lora_config(c: ml_collections.ConfigDict) -> LoraConfig:
    """The run's adapters (section lora) as the model takes them."""
    return LoraConfig(rank=c.lora.rank, alpha=float(c.lora.alpha), dropout=float(c.lora.dropout),
                      targets=_names(c.lora.targets), rslora=c.lora.rslora)


def _names(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (t.strip() for t in text.split(","))))


def data_weights(text: str) -> list[float] | None:
    """data.weights as numbers ("7,3" -> [7.0, 3.0]); None when empty. Raises RunConfigError."""
    try:
        return [float(w) for w in text.split(",")] if text.strip() else None
    except ValueError:
        raise RunConfigError(f"config key data.weights={text!r}: expected comma-separated numbers, "
                             "one per data.train input") from None


def _validate_data(got: dict) -> None:
    """The data section's choices, column map and mixture keys, each error naming its key."""
    grpo = got["train.objective"] == "grpo"  # prompt rows (r1jax/data/prompt_set.py), not examples
    row_formats, fields = (prompt_set.FORMATS, prompt_set.MAPPABLE) if grpo else (FORMATS, MAPPABLE)
    for key, choices in (("data.format", row_formats), ("data.input_format", INPUT_FORMATS)):
        if got[key] not in choices:
            raise RunConfigError(f"config key {key}={got[key]!r}: choose one of {', '.join(choices)}"
                                 f"{' (train.objective=grpo reads prompt rows)' if grpo else ''}")
    if got["data.columns"]:
        try:
            parse_columns(got["data.columns"], fields)
        except DataError as e:
            raise RunConfigError(f"config key data.columns: {e}") from None
    if got["data.mixture"]:
        for key in ("data.train", "data.weights", "data.max_per_category"):
            if got[key]:
                raise RunConfigError(f"config key {key} and data.mixture exclude each other: the mixture "
                                     "file names the sources, their weights and max_per_category")
    weights = data_weights(got["data.weights"])
    if weights is not None:
        names = [p.strip() for p in got["data.train"].split(",") if p.strip()] or ["the bundled code dataset"]
        try:
            check_weights(weights, names, "data.weights")
        except MixtureError as e:
            raise RunConfigError(f"config key {e}") from None


OBJECTIVES = ("sft", "grpo")


def _validate_grpo(got: dict) -> None:
    """train.objective, and for grpo the batch, sequence and reward keys, each error naming its key."""
    if got["train.objective"] not in OBJECTIVES:
        raise RunConfigError(f"config key train.objective={got['train.objective']!r}: choose one of "
                             f"{', '.join(OBJECTIVES)}")
    from r1jax.train.objectives.grpo import NORMALIZATIONS  # noqa: PLC0415
    if got["grpo.normalize"] not in NORMALIZATIONS:
        raise RunConfigError(f"config key grpo.normalize={got['grpo.normalize']!r}: choose one of "
                             f"{', '.join(NORMALIZATIONS)}")
    if got["train.objective"] != "grpo":
        return
    from r1jax.eval.rewards import RewardError, parse_rewards  # noqa: PLC0415 - imports user functions
    try:
        parse_rewards(got["grpo.rewards"])
    except RewardError as e:
        raise RunConfigError(f"config key grpo.rewards: {e}") from None
    rows = got["grpo.prompts_per_step"] * got["grpo.num_generations"]
    if got["train.batch_size"] != rows:
        raise RunConfigError(f"config key train.batch_size={got['train.batch_size']}: with train.objective="
                             f"grpo it must equal grpo.prompts_per_step * grpo.num_generations = "
                             f"{got['grpo.prompts_per_step']} * {got['grpo.num_generations']} = {rows}")
    if got["train.seq_len"] <= got["grpo.max_new_tokens"]:
        raise RunConfigError(f"config key train.seq_len={got['train.seq_len']} must exceed "
                             f"grpo.max_new_tokens={got['grpo.max_new_tokens']}: a row holds the prompt "
                             "and the completion")
    for key in ("data.weights", "data.max_per_category", "data.mixture"):
        if got[key]:
            raise RunConfigError(f"config key {key}: mixtures are for train.objective=sft; GRPO reads "
                                 "the prompt rows of data.train")
    if got["train.mtp_loss_weight"]:
        raise RunConfigError("config key train.mtp_loss_weight: the MTP loss is an SFT term; set it to 0 "
                             "with train.objective=grpo")


def _validate_lora(got: dict) -> None:
    targets = _names(got["lora.targets"])
    from r1jax.train.optim import GROUPS  # noqa: PLC0415 - the optimizer's groups name the targets
    for t in targets:
        if t not in GROUPS:
            raise RunConfigError(f"config key lora.targets={got['lora.targets']!r}: {t!r} is not a "
                                 f"parameter group{_suggest(t, GROUPS)}; adaptable groups are "
                                 f"{','.join(ADAPTABLE_GROUPS)}")
        if t not in ADAPTABLE_GROUPS:
            raise RunConfigError(f"config key lora.targets={got['lora.targets']!r}: group {t!r} has no "
                                 f"projections to adapt; adaptable groups are {','.join(ADAPTABLE_GROUPS)}")
    if got["lora.rank"] and not targets:
        raise RunConfigError("config key lora.targets is empty with lora.rank > 0")
    if got["lora.rank"] and got["optim.freeze_groups"]:
        raise RunConfigError("config key optim.freeze_groups: with lora.rank > 0 every weight is "
                             "frozen and only adapters train; leave optim.freeze_groups empty")


def _validate_task(got: dict) -> None:
    from r1jax.eval.tasks.runner import TASKS
    if got["task.name"] not in TASKS:
        raise RunConfigError(f"config key task.name={got['task.name']!r}: one of {', '.join(TASKS)}")
    if got["task.name"] != "humaneval" and got["train.task_eval_every"] and not got["task.data"]:
        raise RunConfigError(f"config key task.data: task {got['task.name']} needs a JSONL of prompts "
                             "and references")
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


def objective(c: ml_collections.ConfigDict):
    """The step's objective (r1jax/train/objectives) of train.objective and section grpo."""
    if c.train.objective == "sft":
        return SFT()
    g = c.grpo
    return GRPO(epsilon=float(g.epsilon), epsilon_high=float(g.epsilon_high), beta=float(g.beta),
                normalize=g.normalize, temperature=float(g.temperature), on_policy=g.iterations == 1,
                budget=g.max_new_tokens, completion_start=c.train.seq_len - g.max_new_tokens)


def rollout_settings(c: ml_collections.ConfigDict):
    """Section grpo as r1jax/train/rollouts.py takes it."""
    from r1jax.train.rollouts import RolloutSettings  # noqa: PLC0415 - generation; GRPO runs only
    g = c.grpo
    return RolloutSettings(prompts_per_step=g.prompts_per_step, num_generations=g.num_generations,
                           temperature=float(g.temperature), top_p=float(g.top_p),
                           max_new_tokens=g.max_new_tokens, rewards=g.rewards, scale_rewards=g.scale_rewards,
                           beta=float(g.beta), iterations=g.iterations,
                           val_temperature=float(g.val_temperature), val_samples=g.val_samples,
                           workers=g.workers)


def step_config(c: ml_collections.ConfigDict) -> StepConfig:
    """The train step's options (objective, loss terms, accumulation, chunking, groups without gradients)."""
    return StepConfig(grad_accum=c.train.grad_accum, aux_loss_weight=c.train.aux_loss_weight,
                      mtp_loss_weight=c.train.mtp_loss_weight, router_bias_rate=c.train.router_bias_rate,
                      loss_chunk=c.train.loss_chunk, frozen_groups=optim_config(c, 1).freeze_groups,
                      objective=objective(c))


def model_source(c: ml_collections.ConfigDict):
    """What model.checkpoint names (r1jax.models.sources.resolve: a model checkpoint or a training
    run), None when it is empty; CheckpointError naming the key for a path that is neither."""
    if not c.model.checkpoint:
        return None
    from r1jax.models import sources  # reads files; imported only when a checkpoint is named
    return sources.resolve(c.model.checkpoint, "model.checkpoint")


def model_dir(c: ml_collections.ConfigDict) -> str:
    """The directory of model.checkpoint's config and side files (tokenizer, generation config,
    token ids): the checkpoint itself, or RUN/model for a training run; "" when it is empty."""
    if not c.model.checkpoint:
        return ""
    from r1jax.models import sources
    return sources.meta_dir(c.model.checkpoint)


def model_config(c: ml_collections.ConfigDict) -> RuntimeConfig:
    """The run's model: the checkpoint's own architecture (model.checkpoint; a training run's
    RUN/model) or the preset's, with the run's numerics (dtype, param_dtype, remat,
    moe_chunk_tokens, attention_mask) and adapters (section lora); an FP8 checkpoint's projections
    stay FP8 (its r1jax.json). Adapters named by a run are checked against section lora
    (`check_run_adapters`)."""
    m = c.model
    numerics = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                    moe_chunk_tokens=m.moe_chunk_tokens, attention_mask=m.attention_mask,
                    lora=lora_config(c))
    if m.checkpoint:
        from r1jax.models import checkpoint  # reads files; imported only when a checkpoint is named
        src = model_source(c)
        if src.step_dir is not None:
            check_run_adapters(src, checkpoint.read_meta(src.meta), numerics["lora"])
        return checkpoint.read_config(src.meta, **numerics)
    return preset(m.preset, with_mtp=m.with_mtp, **numerics)


_CONTINUED = ("rank", "alpha", "targets", "rslora")  # the lora.* keys a run's adapters continue with


def check_run_adapters(src, meta: dict, new: LoraConfig) -> None:
    """A training run as model.checkpoint (`src`, its RUN/model/r1jax.json `meta`) under the new
    run's adapters `new`; RunConfigError naming the key for what cannot start from it: adapters on a
    full fine-tuning run (no base record to put them on), a run's adapters merged into an FP8 base
    (lora.rank 0), or continued with another lora.rank, alpha, targets or rslora."""
    where = f"model.checkpoint={src.path}"
    if not src.adapters:
        if new.rank:
            raise RunConfigError(f"config key lora.rank={new.rank} with {where}: a full fine-tuning run "
                                 "is no base for adapters (they sit on a model checkpoint); set lora.rank=0, "
                                 "or export the run (python -m r1jax.export) and convert it (python -m "
                                 "r1jax.convert) as a base")
        return
    old = meta["lora"]
    if not new.rank:
        if meta.get("fp8_weights"):
            raise RunConfigError(f"config key {where}: a run with adapters on an FP8 base; its adapters "
                                 "cannot be merged into FP8 weights for full fine-tuning: keep lora.rank > 0 "
                                 f"(lora.rank={old.get('rank')}) to continue them")
        return
    shown = {"targets": lambda t: ",".join(t)}
    for key in _CONTINUED:
        a, b = getattr(new, key), old.get(key)
        same = set(a) == set(b or ()) if key == "targets" else a == b
        if not same:
            show = shown.get(key, repr)
            raise RunConfigError(f"config key lora.{key}={show(a)}: the run named by {where} trained its "
                                 f"adapters with lora.{key}={show(b)} ({src.meta}/r1jax.json); continuing "
                                 f"them needs the same {', '.join('lora.' + k for k in _CONTINUED)}")
