"""train.objective="grpo" end to end on CPU (r1jax/train/loop.py with r1jax/train/rollouts.py).

Oracles: the advantages in RUN/rollouts/STEP.jsonl equal NumPy's group formula on the recorded
rewards; the logged reward/* metrics equal NumPy means of the recorded per-rollout rewards; a user
reward's value is recomputed from the recorded completion (its own definition: n_tokens / 12); a
resumed run (2 steps, then 2 more) writes the same rollouts, rewards, losses and final weights as
an uninterrupted 4-step run (a second code path through the checkpoints); config and data errors
name their key or row.
"""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from r1jax.train import run_config
from r1jax.train.loop import run
from r1jax.eval.rewards import RewardDataError
from train_fixtures import config as base_config

P, G, NEW = 2, 4, 12
REWARDS = "grpo_test_rewards.hashed:1.0,grpo_test_rewards.flaky:0.5,contains:0.1"


def hashed(text: str) -> float:
    """The test's user reward, recomputed here from the recorded text: a value in {0, .1, ..., 1}."""
    return (sum(map(ord, text)) % 11) / 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo_data")
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in zip(range(1, 13), range(20, 32))]
    rows.append({"prompt": "What is nothing?"})  # no reference: removed by prepare, counted
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "grpo_test_rewards.py").write_text(textwrap.dedent("""
        def hashed(prompt, completion, row):
            return (sum(map(ord, completion.text)) % 11) / 10

        def flaky(prompt, completion, row):
            if sum(map(ord, completion.text)) % 3 == 0:
                raise ValueError("no reward for multiples of three")
            return "not a number" if sum(map(ord, completion.text)) % 3 == 1 else 1.0
    """))
    return d


@pytest.fixture(autouse=True)
def rewards_importable(data, monkeypatch):
    monkeypatch.syspath_prepend(str(data))


def config(data, out, **over):
    defaults = dict(train__objective="grpo", train__steps=4, train__batch_size=P * G, train__seq_len=48,
                    train__log_every=1, train__eval_every=2, train__checkpoint_every=2,
                    data__val_fraction=0.25, data__cache_dir=str(Path(out) / "prompts"),
                    grpo__prompts_per_step=P, grpo__num_generations=G, grpo__max_new_tokens=NEW,
                    grpo__rewards=REWARDS, grpo__beta=0.05, grpo__iterations=2, grpo__workers=1,
                    optim__lr=1e-3, optim__schedule="constant")  # steps=2 then 4 share one schedule
    return base_config(data, out, **{**defaults, **over})


def records(out, sub="metrics.jsonl"):
    return [json.loads(line) for line in open(Path(out) / sub)]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_straight")
    import sys
    sys.path.insert(0, str(data))
    try:
        summary = run(config(data, out))
    finally:
        sys.path.remove(str(data))
    return out, summary


def test_metrics_rollouts_and_validation(straight):
    out, summary = straight
    recs = records(out)
    train = {r["step"]: r for r in recs if "reward/mean" in r}
    val = {r["step"]: r for r in recs if "val/reward" in r}
    assert sorted(train) == [1, 2, 3, 4] and sorted(val) == [0, 2, 4]
    for name in ("reward/mean", "reward/std", "reward/contains", "reward/zero_std_groups", "kl",
                 "clip_fraction", "entropy", "completion/length", "completion/truncated", "train/loss",
                 "time/rollout_s", "time/score_s", "time/update_s"):
        assert all(name in r for r in train.values()), name
    assert all("val/pass_rate" in r and "val/completion/length" in r for r in val.values())
    assert summary["first_val_reward"] == val[0]["val/reward"] and summary["step"] == 4
    assert (out / "reward.png").is_file()

    for step, rec in train.items():
        rolls = records(out, f"rollouts/{step}.jsonl")
        assert len(rolls) == P * G
        rewards = np.array([r["reward"] for r in rolls])
        np.testing.assert_allclose(rec["reward/mean"], rewards.mean(), rtol=1e-9)
        np.testing.assert_allclose(rec["reward/std"], rewards.std(), rtol=1e-9, atol=1e-12)
        groups = rewards.reshape(P, G)
        centred = groups - groups.mean(1, keepdims=True)
        std = np.sqrt((centred ** 2).mean(1, keepdims=True))
        want = np.where(std > 0, centred / (std + 1e-4), 0.0).reshape(-1)
        np.testing.assert_allclose([r["advantage"] for r in rolls], want, rtol=1e-5, atol=1e-6)
        for r in rolls:
            assert r["rewards"]["grpo_test_rewards.hashed"] == pytest.approx(hashed(r["completion"]))
            assert r["truncated"] == (r["n_tokens"] == NEW)
        # the flaky reward raised (sum % 3 == 0) or returned a string (sum % 3 == 1): counted, scored 0
        bad = sum(sum(map(ord, r["completion"])) % 3 != 2 for r in rolls)
        assert rec.get("reward/problems/grpo_test_rewards.flaky", 0) == bad
        np.testing.assert_allclose(rec["completion/length"], np.mean([r["n_tokens"] for r in rolls]))
    assert len(records(out, "rollouts/val/0.jsonl")) == 3  # 3 val prompts x 1 sample

    assert any(r["advantage"] != 0 for step in train for r in records(out, f"rollouts/{step}.jsonl"))
    assert any(train[s]["kl"] > 0 for s in (2, 3, 4))  # the policy moved away from the reference
    report = json.loads(next((out / "prompts").glob("*/report.json")).read_text())
    assert "no_reference" in json.dumps(report)


@pytest.mark.slow
def test_resume_is_exact(straight, data, tmp_path):
    out, _ = straight
    first = config(data, tmp_path)
    first.train.steps = 2
    run(first)
    run(config(data, tmp_path))  # resumes at step 2, runs steps 3 and 4
    for step in (3, 4):
        a, b = records(out, f"rollouts/{step}.jsonl"), records(tmp_path, f"rollouts/{step}.jsonl")
        assert [r["completion"] for r in a] == [r["completion"] for r in b]
        assert [r["reward"] for r in a] == [r["reward"] for r in b]
    la = {r["step"]: r["train/loss"] for r in records(out) if "reward/mean" in r}
    lb = {r["step"]: r["train/loss"] for r in records(tmp_path) if "reward/mean" in r}
    assert la == pytest.approx(lb, rel=1e-6, abs=1e-9)


def test_config_errors_name_their_keys(data, tmp_path):
    c = config(data, tmp_path, grpo__num_generations=1, train__batch_size=P)
    with pytest.raises(run_config.RunConfigError, match="grpo.num_generations"):
        run_config.validate(c)
    c = config(data, tmp_path, grpo__rewards="boxed,nonsense:2")
    with pytest.raises(run_config.RunConfigError, match="grpo.rewards.*nonsense"):
        run_config.validate(c)
    c = config(data, tmp_path, train__batch_size=6)
    with pytest.raises(run_config.RunConfigError, match="train.batch_size=6.*prompts_per_step"):
        run_config.validate(c)
    c = config(data, tmp_path, train__seq_len=NEW)
    with pytest.raises(run_config.RunConfigError, match="train.seq_len"):
        run_config.validate(c)


def test_rows_without_what_a_reward_reads_are_named(tmp_path):
    from r1jax.train.rollouts import check_rows
    rows = [{"messages": [{"role": "user", "content": "q"}], "answer": "1", "source": "a.jsonl:1"},
            {"messages": [{"role": "user", "content": "q"}], "tests": "assert True", "source": "a.jsonl:2"}]
    check_rows(rows[:1], "boxed,format")
    with pytest.raises(RewardDataError, match=r"a.jsonl:2: field 'answer'.*boxed"):
        check_rows(rows, "boxed,format")
    with pytest.raises(RewardDataError, match=r"a.jsonl:1: field 'tests'.*code_tests"):
        check_rows(rows, "code_tests")


def test_adapters_reference_is_the_base(data, tmp_path):
    """With adapters the reference is the base (every adapter zero): at step 1 the policy's adapters
    are fresh (B = 0), so the policy is the base and the KL is 0; after updates it is not."""
    c = config(data, tmp_path, train__steps=3, train__eval_every=100, lora__rank=4, lora__alpha=8.0, grpo__iterations=1,
               optim__lr=1e-2)
    run(c)
    kl = {r["step"]: r["kl"] for r in records(tmp_path) if "kl" in r}
    assert kl[1] == pytest.approx(0.0, abs=1e-7)
    assert kl[3] > 1e-6


def test_demo_configs_chain():
    """configs/grpo_math.py validates and starts from a checkpoint configs/grpo_math_sft.py keeps, on the files
    `python -m r1jax.data toy_math --out runs/toy_math` writes (its docstring's commands)."""
    import importlib.util
    root = Path(__file__).resolve().parents[2]

    def load(name):
        spec = importlib.util.spec_from_file_location(name, root / "configs" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()

    sft, grpo = load("grpo_math_sft"), load("grpo_math")
    run_config.validate(grpo)
    run, _, step = grpo.model.checkpoint.rpartition("/checkpoints/")
    assert run == sft.output_dir and grpo.train.objective == "grpo"
    # the SFT run saves that step and still keeps it when it ends
    every, last = sft.train.checkpoint_every, sft.train.steps
    assert int(step) % every == 0 and int(step) < last and (last - int(step)) // every < sft.train.keep_checkpoints
    assert grpo.data.val == sft.task.data == "runs/toy_math/val.jsonl"
    assert grpo.data.train == "runs/toy_math/rl.jsonl"  # prompts SFT never saw, like val's
