"""python -m r1jax.train end to end on CPU: learning, exact resume after SIGTERM, SIGKILL during async
saves, a corrupt latest checkpoint, config errors, one trainer per run directory, a diverged run."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from r1jax.train import run_config  # noqa: E402
from r1jax.train.run_lock import LOCK_NAME  # noqa: E402
from r1jax.train.loop import TrainingError, _check_finite, run  # noqa: E402
from r1jax.train.checkpoints import ERRORS_LOG, RunCheckpoints  # noqa: E402
from train_fixtures import config as base_config, synthetic  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    synthetic(d / "train.jsonl")
    return d


def config(data, out, **over):
    defaults = dict(train__steps=STEPS, train__seq_len=64, train__log_every=1, train__eval_every=4,
                    train__checkpoint_every=4)
    return base_config(data, out, **{**defaults, **over})


def records(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


def losses(out):
    return {r["step"]: (r.get("train/loss"), r.get("val/loss")) for r in records(out)}


def final_params(out):
    """The last checkpoint's params as {path: array}, restored without a template."""
    import orbax.checkpoint as ocp
    d = Path(out) / "checkpoints"
    step = max(int(p.name) for p in d.iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().restore(d / str(step) / "state")
    flat = {}

    def walk(t, prefix):
        if isinstance(t, dict):
            for k, v in t.items():
                walk(v, f"{prefix}.{k}")
        elif isinstance(t, (list, tuple)):
            for i, v in enumerate(t):
                walk(v, f"{prefix}.{i}")
        else:
            flat[prefix] = np.asarray(t)
    walk(tree["params"], "params")
    walk(tree["rest"], "rest")
    return step, flat


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    summary = run(config(data, out))
    return out, summary


def test_learns_synthetic_task(data, tmp_path):
    """Also: the task metric (train.task_eval_every) at step 0 and every 20 steps, its per-sample
    records equal to generating from the saved final checkpoint."""
    with open(tmp_path / "qa.jsonl", "w") as f:
        for i, ref in enumerate("etaoinsr"):
            f.write(json.dumps({"prompt": f"Question {i}: say {ref}", "reference": ref}) + "\n")
    summary = run(config(data, tmp_path, train__steps=40, train__eval_every=20, train__checkpoint_every=40,
                         optim__lr=1e-2, train__task_eval_every=20, task__name="contains",
                         task__data=str(tmp_path / "qa.jsonl"), task__limit=4, task__max_new_tokens=12))
    assert summary["last_val_loss"] < 2.0 < summary["first_val_loss"], summary
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "expert_load.png").exists()
    rec = records(tmp_path)
    assert rec[0]["step"] == 0 and "val/loss" in rec[0]  # the baseline eval before training
    first_train = next(r for r in rec if "train/loss" in r)
    assert {"grad_norm", "tokens_per_s", "model_tflops", "lr/attention", "moe/expert_load",
            "step_time_s"} <= set(first_train)
    assert any("val/perplexity" in r and "train_val_gap" in r for r in rec)
    assert list((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 40

    task = {r["step"]: r for r in rec if "task/contains_accuracy" in r}
    assert sorted(task) == [0, 20, 40]
    logged = [json.loads(line) for line in open(tmp_path / "task_eval" / "40.jsonl")]
    assert [r["reference"] for r in logged] == ["e", "a", "i", "s"]  # an even spread of 4 of 8
    assert task[40]["task/contains_accuracy"] == sum(r["passed"] for r in logged) / 4
    # the same items generated from the final checkpoint by the generate CLI's loader
    from r1jax.inference import generate
    from r1jax.data import load_tokenizer
    model, _ = generate.load(str(tmp_path), dtype="float32")
    settings = generate.GenerationSettings(temperature=0.6, top_p=0.95, max_new_tokens=12, seed=0)
    again = generate.generate_texts(model, load_tokenizer(), [f"Question {i}: say {r}" for i, r in
                                                              zip((0, 2, 4, 6), "eais")], settings)
    assert [(o["reasoning"], o["answer"]) for o in again] == [(r["reasoning"], r["answer"]) for r in logged]


def _cli(data, out, *extra):
    args = [sys.executable, "-m", "r1jax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
            f"--config.output_dir={out}", f"--config.data.train={data / 'train.jsonl'}",
            f"--config.data.cache_dir={data / 'cache'}", "--config.data.max_examples=0",
            f"--config.train.steps={STEPS}", "--config.train.seq_len=64", "--config.train.log_every=1",
            "--config.train.eval_every=4", "--config.train.checkpoint_every=4", *extra]
    return args


def _wait_for_step(proc, out, step, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        p = Path(out) / "metrics.jsonl"
        if p.exists() and any(r.get("step", 0) >= step for r in records(out)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("trainer did not reach the step in time")


def _assert_same_run(out, ref):
    assert losses(out) == losses(ref)  # every logged train and val loss, bit for bit
    step, got = final_params(out)
    ref_step, want = final_params(ref)
    assert step == ref_step == STEPS
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_sigterm_then_rerun_equals_uninterrupted(data, reference, tmp_path):
    ref, _ = reference
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(_cli(data, tmp_path), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    _wait_for_step(proc, tmp_path, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGTERM at step" in err, err[-2000:]
    stopped = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped < STEPS
    r = subprocess.run(_cli(data, tmp_path), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and f"resumed from {tmp_path}/checkpoints/{stopped}" in r.stderr, r.stderr[-2000:]
    _assert_same_run(tmp_path, ref)


def test_sigkill_during_async_saves_resumes_from_last_complete(data, reference, tmp_path):
    ref, _ = reference
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # A checkpoint every step: an async save is in flight almost all the time.
    proc = subprocess.Popen(_cli(data, tmp_path, "--config.train.checkpoint_every=1"),
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    _wait_for_step(proc, tmp_path, 4)
    proc.kill()
    proc.wait()
    complete = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    r = subprocess.run(_cli(data, tmp_path, "--config.train.checkpoint_every=1"), capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    if complete:
        assert f"resumed from {tmp_path}/checkpoints/{max(complete)}" in r.stderr, r.stderr[-2000:]
    assert not list((tmp_path / "checkpoints").glob("*tmp*"))  # partial saves cleaned up
    _assert_same_run(tmp_path, ref)


def test_corrupt_latest_checkpoint_is_reported_and_previous_used(data, reference, tmp_path):
    """The newest checkpoint's array files cut short (a torn write): the run says so in one console
    line, moves it aside, resumes from the one before and ends equal to the uninterrupted reference
    run (the oracle); Orbax's tracebacks (one per array read) go to RUN/checkpoint_errors.log."""
    ref, _ = reference
    shutil.copytree(ref, tmp_path / "run")
    out = tmp_path / "run"
    for f in (out / "checkpoints" / str(STEPS) / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the OCDBT data files
            f.write_bytes(f.read_bytes()[:100])
    r = subprocess.run(_cli(data, out), capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    console = r.stderr.splitlines()
    assert "Traceback" not in r.stderr and len(console) < 40, r.stderr[-3000:]
    about = [line for line in console if "checkpoint" in line and "resumed" not in line]
    assert len(about) == 1, about[:20]
    assert f"checkpoints/{STEPS} cannot be restored" in about[0] and f"{out / ERRORS_LOG}" in about[0]
    assert f"resumed from {out}/checkpoints/4" in r.stderr
    assert len(list((out / "checkpoints").glob(f"{STEPS}.corrupt-*"))) == 1  # kept, not deleted
    details = (out / ERRORS_LOG).read_text()
    assert f"checkpoints/{STEPS} (step {STEPS}) cannot be restored" in details and "Traceback" in details
    _assert_same_run(out, ref)


def test_a_second_trainer_on_the_same_dir_is_refused(data, reference, tmp_path):
    """A stale lock (a dead pid of this host) is taken over by the first trainer; a second one started
    while the first runs exits non-zero with one line naming the directory and the first's host and
    pid (the oracle: Popen's pid); the first ends equal to the reference run, each record once."""
    ref, _ = reference
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-01"}))
    first = subprocess.Popen(_cli(data, tmp_path), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        t0 = time.time()
        while not (lock.exists() and f'"pid": {first.pid},' in lock.read_text()):
            assert first.poll() is None and time.time() - t0 < 120, "the first trainer did not lock"
            time.sleep(0.05)
        second = subprocess.run(_cli(data, tmp_path), capture_output=True, text=True, env=env, timeout=120)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode != 0 and len(errors) == 1, second.stderr[-2000:]
    assert f"{tmp_path}: in use by another r1jax.train run (host {socket.gethostname()}, pid {first.pid}," \
        in errors[0]
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err[-2000:]
    assert f"stale lock of a process that is no longer running (host {socket.gethostname()}, pid {dead.pid}" in err
    assert not lock.exists()  # released at exit
    assert [r["step"] for r in records(tmp_path)] == [r["step"] for r in records(ref)]
    _assert_same_run(tmp_path, ref)


def test_rerun_with_no_checkpoint_rewrites_metrics_from_the_start(data, reference, tmp_path):
    """A trainer killed before its first save left records for steps 0-3 and a line cut short; the
    rerun restores nothing and starts at step 0: its metrics.jsonl equals the reference run's, each
    step once (the oracle), the earlier attempt's records gone."""
    ref, _ = reference
    earlier = [{"step": 0, "val/loss": 99.0}] + [{"step": i, "train/loss": 99.0} for i in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier) +
                                            '{"step": 4, "train/lo')
    run(config(data, tmp_path))
    assert [r["step"] for r in records(tmp_path)] == [r["step"] for r in records(ref)]
    _assert_same_run(tmp_path, ref)


def _strict(line):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def test_diverged_run_stops_naming_its_last_checkpoint_and_writes_strict_json(data, tmp_path):
    """An enormous learning rate makes the gradients non-finite; after train.max_nonfinite skipped steps the
    run stops naming the newest checkpoint on disk (the oracle: the directory listing). Every line
    of metrics.jsonl passes a strict JSON parser; the diverged values are null."""
    c = config(data, tmp_path, optim__lr=1e30, train__max_nonfinite=2, train__checkpoint_every=2,
               train__eval_every=2)
    with pytest.raises(TrainingError) as e:
        run(c)
    saved = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert str(e.value).endswith(f"the last good checkpoint is {tmp_path}/checkpoints/{saved} "
                                 f"(step {saved})"), str(e.value)
    recs = [_strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("grad_norm" in r and r["grad_norm"] is None for r in recs), recs  # an infinite gradient
    for meta in (tmp_path / "checkpoints").glob("*/meta/metadata"):  # the checkpoints' JSON too
        _strict(meta.read_text())


def test_nonfinite_stop_without_a_checkpoint_says_there_is_none(data, tmp_path):
    """Oracle: an empty run directory has no checkpoint; the message must not point into it as if."""
    c = config(data, tmp_path, train__max_nonfinite=1)
    ckpts = RunCheckpoints(str(tmp_path), 2, log=lambda s: None)
    try:
        with pytest.raises(TrainingError, match=f"there is no checkpoint to go back to in {tmp_path}/checkpoints"):
            _check_finite({"step": 3, "skipped": 1}, {"nonfinite": 0}, c, lambda s: None, ckpts)
    finally:
        ckpts.close()


def test_unknown_and_mistyped_keys_fail_naming_them(data, tmp_path):
    r = subprocess.run(_cli(data, tmp_path, "--config.train.stepz=3"), capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
    assert r.returncode != 0 and "stepz" in r.stderr
    c = config(data, tmp_path)
    with pytest.raises(run_config.RunConfigError, match="train.grad_accum"):
        c.train.grad_accum = 3
        run(c)


def test_trained_run_exports_to_transformers(data, reference, tmp_path):
    """The run's latest checkpoint exported (bf16) loads in transformers and gives r1jax's loss."""
    import torch
    import transformers
    from r1jax.models import checkpoint
    from r1jax.interop import export
    from r1jax.models.losses import next_token_loss_sums
    ref, _ = reference
    assert export.main(["--checkpoint", str(ref), "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    ids = np.asarray([[100 + (5 + i) % 32 for i in range(40)]])
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor(ids)).logits
    ref_loss = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(ids[0, 1:])).item()
    cfg = checkpoint.read_config(str(ref / "model"), dtype="float32")
    _, flat = final_params(ref)
    import jax.numpy as jnp
    from flax import nnx
    from r1jax.models.deepseek_v3.transformer import Transformer
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)

    def fill(tree, prefix):
        for k, v in tree.items():
            name = f"{prefix}.{k}"
            key = f"params{name}" if f"params{name}" in flat else f"rest{name}"
            tree[k] = fill(v, name) if isinstance(v, dict) else jnp.asarray(flat[key])
        return tree
    nnx.replace_by_pure_dict(state, fill(pure, ""))
    ours, _ = nnx.merge(graphdef, state)(jnp.asarray(ids))
    total, count, _ = next_token_loss_sums(ours, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
    assert abs(float(total / count) - ref_loss) < 2e-2 * ref_loss  # exported in bf16


def test_orbax_log_lines_held_during_a_restore_attempt_and_replayed_after_a_good_one(caplog):
    """Oracle: records logged through absl inside the block reach no handler there, and reach the
    root logger's handlers (caplog) exactly once after replay."""
    from absl import logging as absl_logging
    from r1jax.train.checkpoints import _orbax_logs
    with caplog.at_level("WARNING"):
        with _orbax_logs() as held:
            absl_logging.warning("metadata of step %d missing", 4)
        assert [r.getMessage() for r in held.records] == ["metadata of step 4 missing"]
        assert "metadata of step 4 missing" not in caplog.text
        assert "metadata of step 4 missing" in held.text()
        held.replay()
    assert caplog.text.count("metadata of step 4 missing") == 1
