"""The run configuration's validation (r1jax/train/run_config.py) and the one-line errors of the trainer's
and the data preparer's command lines for bad keys, values and paths.

The command-line tests start the real CLIs in a subprocess; each fails before anything compiles.
"""
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1jax.train import run_config

ROOT = Path(__file__).resolve().parents[2]

# An independent, hand-written list: for every numeric key of defaults(), one value the code that
# reads the key cannot mean (from the key's comment in defaults() and its use), so that a new
# numeric key without a range rule in run_config fails test_every_numeric_key_refuses_out_of_range.
OUT_OF_RANGE = {
    "seed": -1,
    "model.moe_chunk_tokens": -1,
    "lora.rank": -1,                   # 0 is off; a negative rank means nothing
    "lora.alpha": 0.0,                 # the adapters' scale alpha / rank must be > 0
    "lora.dropout": 1.0,               # a rate of 1 drops every input
    "data.val_fraction": 1.0,
    "data.max_examples": -1,
    "data.max_per_category": -1,       # 0 is no cap; a negative cap means nothing
    "train.steps": -1,
    "train.epochs": -1,
    "train.batch_size": 0,
    "train.seq_len": 1,
    "train.grad_accum": -1,
    "train.log_every": 0,
    "train.eval_every": 0,
    "train.eval_batches": -1,
    "train.checkpoint_every": 0,
    "train.keep_checkpoints": 0,
    "train.early_stop_patience": -1,
    "train.max_nonfinite": 0,
    "train.aux_loss_weight": -0.5,
    "train.mtp_loss_weight": -1.0,
    "train.router_bias_rate": -1e-3,
    "train.loss_chunk": -1,
    "train.task_eval_every": -1,
    "task.limit": -1,
    "task.n_samples": 0,
    "task.temperature": -0.1,
    "task.top_p": 1.5,
    "task.max_new_tokens": 0,
    "task.timeout_s": 0.0,
    "task.workers": -1,
    "grpo.prompts_per_step": 0,
    "grpo.num_generations": 1,         # a group of one has no relative advantage
    "grpo.temperature": 0.0,           # log-probabilities at temperature 0 are undefined
    "grpo.top_p": 0.0,
    "grpo.max_new_tokens": 0,
    "grpo.epsilon": 1.5,               # a ratio clipped below at 1 - epsilon < 0 means nothing
    "grpo.epsilon_high": -0.1,
    "grpo.beta": -0.01,
    "grpo.iterations": 0,
    "grpo.val_temperature": 0.0,
    "grpo.val_samples": 0,
    "grpo.workers": -1,
    "optim.lr": -1.0,
    "optim.warmup_steps": -1,
    "optim.min_lr_ratio": 1.5,
    "optim.wsd_decay_fraction": -0.1,
    "optim.weight_decay": -0.1,
    "optim.layer_decay": 0.0,
    "optim.b1": 1.0,
    "optim.b2": -0.1,
    "optim.eps": 0.0,
    "optim.clip_norm": -1.0,
    "mesh.data": 0,
    "mesh.fsdp": -2,
    "mesh.expert": 0,
    "mesh.tensor": 0,
    "dist.num_processes": -1,
    "dist.process_id": -2,
}


def _numeric_keys() -> set[str]:
    return {k for k, v in run_config._walk(run_config.defaults())
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _with(key: str, value):
    c = run_config.defaults()
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
    return c


# Values at the edges that are meant (defaults()' comments, r1jax/train/optim.py): 0 = off / auto / all,
# -1 = the rest / from the launcher, and the closed ends of [0, 1) and (0, 1].
ACCEPTED = {"optim.clip_norm": 0.0, "train.grad_accum": 0, "mesh.fsdp": -1, "dist.process_id": -1,
            "optim.lr": 0.0, "optim.b1": 0.0, "task.top_p": 1.0, "optim.min_lr_ratio": 1.0,
            "data.val_fraction": 0.0, "train.loss_chunk": 0, "model.moe_chunk_tokens": 0,
            "lora.rank": 0, "lora.dropout": 0.0, "grpo.top_p": 1.0, "grpo.beta": 0.0, "grpo.epsilon": 0.0}


def test_every_numeric_key_refuses_out_of_range():
    """Oracle: OUT_OF_RANGE above, written from each key's meaning, not from run_config.RANGES;
    it must cover every numeric key of defaults(). Each value is refused with a message naming the
    key and the value; defaults() and the meant edge values (ACCEPTED) pass."""
    assert set(OUT_OF_RANGE) == _numeric_keys(), "a numeric config key without an out-of-range case"
    run_config.validate(run_config.defaults())
    for key, value in ACCEPTED.items():
        c = _with(key, value)
        c.mesh.data = 1                   # mesh.fsdp=-1 leaves the other axes explicit
        run_config.validate(c)
    for key, value in OUT_OF_RANGE.items():
        with pytest.raises(run_config.RunConfigError) as e:
            run_config.validate(_with(key, value))
        assert f"{key}={value!r}" in str(e.value), (key, str(e.value))
        assert "allowed" in str(e.value), str(e.value)


@pytest.mark.parametrize("keys,message", [
    ({"data.format": "chatml"}, "data.format='chatml': choose one of auto, messages, sharegpt"),
    ({"data.input_format": "xlsx"}, "data.input_format='xlsx': choose one of auto, jsonl"),
    ({"data.columns": "prompt=problem,answer=solution"}, "data.columns: --columns entry 'answer=solution'"),
    ({"data.train": "a.jsonl,b.parquet", "data.weights": "1"}, "data.weights has 1 value(s) for 2 input(s)"),
    ({"data.train": "a.jsonl,b.parquet", "data.weights": "1,-1"}, "weight -1.0 for b.parquet"),
    ({"data.train": "a.jsonl", "data.weights": "heavy"}, "data.weights='heavy': expected comma-separated"),
    ({"data.mixture": "mix.yaml", "data.train": "a.jsonl"}, "data.train and data.mixture exclude each other"),
    ({"data.mixture": "mix.yaml", "data.max_per_category": 5}, "data.max_per_category and data.mixture"),
])
def test_data_keys_are_validated_naming_the_key(keys, message):
    """Oracle: the hand-written message of each bad data key (r1jax/data's choices and rules)."""
    c = run_config.defaults()
    for key, value in keys.items():
        c.data[key.split(".")[1]] = value
    with pytest.raises(run_config.RunConfigError, match=re.escape(message)):
        run_config.validate(c)


def test_negative_and_non_finite_learning_rates_are_refused():
    """The issue's case: optim.lr=-1 was accepted (and trained). NaN and infinity are no rate
    either; 0 (no update) is allowed. The message gives the allowed range."""
    for lr in (-1.0, -1e-9, math.nan, math.inf):
        with pytest.raises(run_config.RunConfigError, match=r"optim\.lr=.*allowed >= 0"):
            run_config.validate(_with("optim.lr", lr))
    run_config.validate(_with("optim.lr", 0.0))


def _run(args: list[str], cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def _one_line_error(p: subprocess.CompletedProcess, *must_name: str) -> str:
    assert p.returncode != 0, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, p.stderr[-2000:]
    for word in must_name:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def _train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(["-m", "r1jax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
                 f"--config.output_dir={tmp_path / 'run'}", *extra])


@pytest.fixture
def jsonl(tmp_path) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text('{"prompt": "1 + 1 =", "completion": "2"}\n')
    return p


def test_train_output_dir_under_a_regular_file(tmp_path):
    """Expectation: the error names the key, the path asked for and the file in the way."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = _one_line_error(_train(tmp_path, f"--config.output_dir={blocker / 'run'}"),
                           "output_dir", str(blocker / "run"), f"{blocker} is a file")
    assert blocker.read_text() == "not a directory", line


def test_train_unknown_key_is_one_line_with_did_you_mean(tmp_path):
    _one_line_error(_train(tmp_path, "--config.train.stepz=3"), "train.stepz", 'did you mean "train.steps"')


def test_train_out_of_range_value_is_one_line(tmp_path):
    _one_line_error(_train(tmp_path, "--config.optim.lr=-1"), "optim.lr=-1.0", "allowed >= 0")


def test_train_missing_data_file_names_file_and_key(tmp_path, jsonl):
    missing = tmp_path / "missing.jsonl"
    _one_line_error(_train(tmp_path, f"--config.data.train={jsonl},{missing}"),
                    str(missing), "no such file", "data.train")
    _one_line_error(_train(tmp_path, f"--config.data.train={jsonl}", f"--config.data.val={missing}"),
                    str(missing), "no such file", "data.val")


def _no_data_dir(tmp_path):
    """A directory holding no file of a container r1jax reads."""
    d = tmp_path / "notes"
    d.mkdir()
    (d / "readme.txt").write_text("no data here")
    return d


def test_train_data_directory_without_data_files(tmp_path):
    d = _no_data_dir(tmp_path)
    _one_line_error(_train(tmp_path, f"--config.data.train={d}"),
                    str(d), "a directory with no file of a known extension", "data.train")


def test_data_prepare_input_directory_and_missing_file(tmp_path, jsonl):
    out = tmp_path / "prepared"
    d = _no_data_dir(tmp_path)
    _one_line_error(_run(["-m", "r1jax.data", "prepare", "--input", str(d), "--out", str(out)]),
                    str(d), "a directory with no file of a known extension")
    missing = tmp_path / "missing.jsonl"
    _one_line_error(_run(["-m", "r1jax.data", "prepare", "--input", str(jsonl), str(missing),
                          "--out", str(out)]), str(missing), "no such file")
    assert not out.exists()


def test_train_resolves_auto_grad_accum_on_its_mesh(tmp_path):
    """train.grad_accum 0 (auto) is resolved by r1jax.train on the mesh it built (8 CPU devices,
    data 8): 12 rows cannot be 8-row micro-batches, and the error says so before any data or
    compile. Oracle: 12 % 8 != 0 (hand arithmetic)."""
    import importlib.util
    from r1jax.train import loop as train
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    c = tiny.get_config()
    c.output_dir = str(tmp_path / "run")
    c.mesh.data, c.train.batch_size, c.train.grad_accum = -1, 12, 0
    with pytest.raises(run_config.RunConfigError, match=r"grad_accum=0 \(auto\).*batch_size=12.*8 batch"):
        train.run(c)
    assert not (tmp_path / "run" / "data").exists()
