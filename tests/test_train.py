"""python -m r1jax.train end to end on CPU: learning, exact resume after SIGTERM, SIGKILL during async
saves, a corrupt latest checkpoint, config errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

from r1jax import run_config  # noqa: E402
from r1jax.train import run  # noqa: E402
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
    from r1jax import generate
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
    import shutil
    ref, _ = reference
    shutil.copytree(ref, tmp_path / "run")
    out = tmp_path / "run"
    for f in (out / "checkpoints" / str(STEPS) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0" * 16)  # garbage over every file of the newest checkpoint
    c = config(data, out, train__steps=STEPS)
    lines = []
    import r1jax.train as train_mod
    orig = train_mod.RunCheckpoints

    class Spy(orig):
        def __init__(self, output_dir, keep, log=print):
            super().__init__(output_dir, keep, lambda s: (lines.append(s), log(s)))
    train_mod.RunCheckpoints = Spy
    try:
        summary = run(c)
    finally:
        train_mod.RunCheckpoints = orig
    assert any(f"checkpoints/{STEPS} cannot be restored" in s for s in lines), lines
    assert summary["start_step"] == 4  # resumed from the previous checkpoint
    assert len(list((out / "checkpoints").glob(f"{STEPS}.corrupt-*"))) == 1  # kept, not deleted
    _assert_same_run(out, ref)


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
    from r1jax import checkpoint, export
    from r1jax.losses import next_token_loss_sums
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
    from r1jax.model import Transformer
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
