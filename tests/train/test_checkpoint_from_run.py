"""model.checkpoint naming a training run (r1jax/models/sources.py resolve, start_model, lora_base): a
second run starts where a first one ended.

Oracles, each an independent code path:
- the first run's stored arrays, restored by Orbax without a template (not through sources), equal
  the weights (and adapters) the second run starts from, bit for bit;
- a NumPy merge W + scale * A @ B (scale = alpha / rank, by hand) of the base checkpoint's and the
  adapter run's stored arrays equals the merged starting weights;
- the second run's step-0 val/loss, computed by its own trainer, equals the first run's last val/loss
  (same val split, same weights): continuing changes nothing before the first step;
- the run's model files (config.json with token ids, tokenizer, generation config), byte for byte;
- the error messages, which must name the config key and the path or both values.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import checkpoint, sources
from r1jax.models.checkpoint import CheckpointError
from r1jax.models.common.config import LoraConfig
from r1jax.models.common.partition import split_adapters
from r1jax.models.registry import preset
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.train import run_config
from r1jax.train.loop import run
from r1jax.train.run_config import RunConfigError
from train_fixtures import config as base_config, synthetic

flat = checkpoint._flatten  # nested dict -> (path tuple, leaf) pairs
RANK, ALPHA = 4, 8.0
TARGETS = ("attention", "dense_mlp", "routed_experts")  # routed experts: adapters stacked [layer, expert, ...]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    synthetic(d / "train.jsonl", n=120)
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A float32 tiny-preset model checkpoint with side files: the packaged R1 tokenizer, a
    generation config and token ids in config.json (what a run must carry on)."""
    d = tmp_path_factory.mktemp("base")
    cfg = preset("tiny", param_dtype="float32")
    checkpoint.save_model(str(d), cfg, nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(1)))))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_lib.packaged_tokenizer_dir() / name, d / name)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7], "temperature": 0.6}))
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**hf, "bos_token_id": 0, "eos_token_id": 1}))
    return d


def config(data, out, ckpt, **over):
    defaults = dict(train__steps=2, train__seq_len=64, train__batch_size=2, train__log_every=1,
                    train__eval_every=2, train__eval_batches=2, train__checkpoint_every=2,
                    model__param_dtype="float32", model__checkpoint=str(ckpt), optim__lr=1e-2)
    return base_config(data, out, **{**defaults, **over})


def lora_over(**over):
    return {"lora__rank": RANK, "lora__alpha": ALPHA, "lora__targets": ",".join(TARGETS), **over}


@pytest.fixture(scope="module")
def full_run(data, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run(config(data, out, base))
    return out


@pytest.fixture(scope="module")
def lora_run(data, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    run(config(data, out, base, **lora_over()))
    return out


def stored(out, step):
    """{"params": {dotted: array}, "rest": {...}} of RUN/checkpoints/STEP, restored by Orbax alone."""
    tree = ocp.StandardCheckpointer().restore(Path(out) / "checkpoints" / str(step) / "state")
    return {k: {".".join(map(str, p)): np.asarray(v) for p, v in flat(tree[k])} for k in ("params", "rest")}


def arrays(tree) -> dict:
    return {".".join(map(str, p)): np.asarray(v) for p, v in flat(nnx.to_pure_dict(tree))}


def val_losses(out):
    return [(r["step"], r["val/loss"]) for r in map(json.loads, open(Path(out) / "metrics.jsonl"))
            if "val/loss" in r]


@pytest.mark.slow  # trains the first run (~1 min on 2 cores)
def test_full_run_is_the_next_runs_start(data, full_run, tmp_path):
    """RUN, RUN/checkpoints/2 and RUN/best/2 all give the step's params and router bias exactly; a
    second run on RUN starts at the first one's last val/loss and carries its model files."""
    want = stored(full_run, 2)
    for named in (full_run, full_run / "checkpoints" / "2", full_run / "best" / "2"):
        c = config(data, tmp_path / "unused", named)
        model = sources.start_model(run_config.model_source(c), run_config.model_config(c))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        for part, got in (("params", arrays(params)), ("rest", arrays(rest))):
            assert got.keys() == want[part].keys()
            for k, v in want[part].items():
                np.testing.assert_array_equal(got[k], v, err_msg=f"{named}: {part}.{k}")

    second = tmp_path / "second"
    run(config(data, second, full_run, train__steps=1, train__eval_every=1))
    first_last, second_first = val_losses(full_run)[-1], val_losses(second)[0]
    assert first_last[0] == 2 and second_first[0] == 0
    assert second_first[1] == pytest.approx(first_last[1], rel=1e-5)
    kept = [n for n in ("config.json", *checkpoint.SIDE_FILES) if (full_run / "model" / n).exists()]
    assert kept == ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    assert [n for n in ("config.json", *checkpoint.SIDE_FILES) if (second / "model" / n).exists()] == kept
    for name in kept:
        assert (second / "model" / name).read_bytes() == (full_run / "model" / name).read_bytes(), name
    assert json.loads((second / "model" / "config.json").read_text())["eos_token_id"] == 1


def numpy_merge(w, a, b, scale):
    """W + scale * A @ B over the rank axis, by hand: W [stack..., in..., out...], A [stack..., in..., r],
    B [stack..., r, out...]; the stack has a.ndim + b.ndim - 2 - w.ndim axes."""
    n_stack = a.ndim + b.ndim - 2 - w.ndim
    s = int(np.prod(a.shape[:n_stack]))
    ab = np.matmul(a.reshape(s, -1, a.shape[-1]).astype(np.float64),
                   b.reshape(s, b.shape[n_stack], -1).astype(np.float64))
    return (w.astype(np.float64) + scale * ab.reshape(w.shape)).astype(np.float32)


@pytest.mark.slow  # trains the first run (~1 min on 2 cores)
def test_adapter_run_merged_into_its_base_for_full_fine_tuning(data, base, lora_run, tmp_path):
    """lora.rank 0 on a run with adapters: every adapted projection is the base's W + (alpha/rank) A B
    of the stored arrays, every other variable the base's, the router bias the run's; the second
    run's step-0 val/loss is the adapter run's last (unmerged there, merged here: float32 rounding)."""
    run_state = stored(lora_run, 2)
    w = arrays(nnx.state(checkpoint.load_model(str(base))))
    c = config(data, tmp_path / "unused", lora_run)
    cfg = run_config.model_config(c)
    assert cfg.lora.rank == 0
    got = arrays(nnx.state(sources.start_model(run_config.model_source(c), cfg)))
    assert got.keys() == w.keys()
    adapters = {k[:-len("_lora.a")] for k in run_state["params"] if k.endswith("_lora.a")}
    assert {k.split(".")[-1] for k in adapters} >= {"q_a", "q_b", "kv_a", "kv_b", "o"}
    assert any(run_state["params"][k + "_lora.a"].ndim == 4 for k in adapters)  # [layer, expert, in, r]
    for k, v in w.items():
        if k in adapters:
            want = numpy_merge(v, run_state["params"][k + "_lora.a"], run_state["params"][k + "_lora.b"],
                               ALPHA / RANK)
            assert np.abs(want - v).max() > 0, k  # the adapters trained: the merge changes W
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6, err_msg=k)
        elif k in run_state["rest"]:
            np.testing.assert_array_equal(got[k], run_state["rest"][k], err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)

    merged = tmp_path / "merged"
    run(config(data, merged, lora_run, train__steps=1, train__eval_every=1))
    assert val_losses(merged)[0][1] == pytest.approx(val_losses(lora_run)[-1][1], rel=1e-5)
    meta = json.loads((merged / "model" / "r1jax.json").read_text())
    assert "lora" not in meta and "base" not in meta


@pytest.mark.slow  # trains the first run (~1 min on 2 cores)
def test_adapter_run_continues_on_its_base(data, base, lora_run, tmp_path):
    """lora.rank > 0 with the same lora.*: the adapters start as stored, the new run records the
    first run's base (so it resumes and exports), and starts at the first run's last val/loss."""
    c = config(data, tmp_path / "unused", lora_run, **lora_over(lora__dropout=0.1))
    cfg = run_config.model_config(c)
    src = run_config.model_source(c)
    _, adapters, frozen, rest = split_adapters(sources.start_model(src, cfg))
    want = stored(lora_run, 2)
    got = arrays(adapters)
    assert got.keys() == want["params"].keys()
    for k, v in want["params"].items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    for k, v in arrays(frozen).items():
        np.testing.assert_array_equal(v, np.asarray(arrays(nnx.state(checkpoint.load_model(str(base))))[k]),
                                      err_msg=k)
    first_base = json.loads((lora_run / "model" / "r1jax.json").read_text())["base"]
    assert first_base["path"] == str(base)
    assert sources.lora_base(src, cfg, seed=123) == first_base

    second = tmp_path / "second"
    run(config(data, second, lora_run, train__steps=1, train__eval_every=1, **lora_over()))
    assert val_losses(second)[0][1] == pytest.approx(val_losses(lora_run)[-1][1], rel=1e-6)
    assert json.loads((second / "model" / "r1jax.json").read_text())["base"] == first_base


def fake_run(path, lora=None, fp8=False):
    """A run directory as the trainer lays one out, without arrays: RUN/model/r1jax.json (written by
    checkpoint.write_meta) and an empty RUN/checkpoints/2/state: what the refusals read."""
    cfg = preset("tiny", param_dtype="float32", **({"lora": lora} if lora else {}))
    checkpoint.write_meta(str(path / "model"), cfg, base=checkpoint.base_record(None, cfg, 0) if lora else None)
    if fp8:
        meta = json.loads((path / "model" / "r1jax.json").read_text())
        (path / "model" / "r1jax.json").write_text(json.dumps({**meta, "fp8_weights": True}))
    (path / "checkpoints" / "2" / "state").mkdir(parents=True)
    return path


@pytest.mark.parametrize("key,value,new,old", [
    ("rank", 8, "lora.rank=8", "lora.rank=4"),
    ("alpha", 16.0, "lora.alpha=16.0", "lora.alpha=8.0"),
    ("targets", "attention", "lora.targets=attention", "lora.targets=attention,dense_mlp,routed_experts"),
    ("rslora", True, "lora.rslora=True", "lora.rslora=False")])
def test_adapters_continue_only_with_the_same_lora_keys(data, tmp_path, key, value, new, old):
    """Oracle: the message names the new run's key and value and the run's value."""
    run_dir = fake_run(tmp_path / "run", LoraConfig(rank=RANK, alpha=ALPHA, targets=TARGETS))
    c = config(data, tmp_path, run_dir, **lora_over(**{f"lora__{key}": value}))
    with pytest.raises(RunConfigError, match=f"^config key {new}: the run named by model.checkpoint="
                                             f"{run_dir} trained its adapters with {old} "):
        run_config.model_config(c)
    # the same targets in another order are the same adapters
    cfg = run_config.model_config(config(data, tmp_path, run_dir,
                                         **lora_over(lora__targets="routed_experts,dense_mlp,attention")))
    assert (cfg.lora.rank, cfg.lora.alpha) == (RANK, ALPHA)


def test_refused_starts_name_the_key(data, tmp_path):
    """Adapters on a full fine-tuning run, and a merge into an FP8 base (a run whose r1jax.json says
    fp8_weights), are refused before any array is read."""
    full = fake_run(tmp_path / "full")
    with pytest.raises(RunConfigError, match=f"lora.rank={RANK} with model.checkpoint={full}: a full "
                                             "fine-tuning run is no base for adapters"):
        run_config.model_config(config(data, tmp_path, full, **lora_over()))
    fp8 = fake_run(tmp_path / "fp8run", LoraConfig(rank=RANK, alpha=ALPHA, targets=TARGETS), fp8=True)
    with pytest.raises(RunConfigError, match=f"model.checkpoint={fp8}: a run with adapters on an FP8 "
                                             "base.*keep lora.rank > 0"):
        run_config.model_config(config(data, tmp_path, fp8))


def test_bad_paths_name_the_key_and_what_was_expected(data, tmp_path):
    """Oracle: the messages. Nothing at the path; a directory of other files; a run without a step."""
    missing = tmp_path / "nowhere"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    (fresh / "model").mkdir()
    cases = [(missing, "no such directory; expected a model checkpoint"),
             (other, "neither a model checkpoint nor a training run; expected a model checkpoint .*"
                     r"or a training run \(RUN, RUN/checkpoints/STEP, RUN/best/STEP\)"),
             (fresh, f"a training run without any checkpoint yet \\({fresh}/checkpoints holds no step\\)")]
    for path, why in cases:
        c = config(data, tmp_path / "out", path)
        with pytest.raises(CheckpointError, match=f"^config key model.checkpoint={path}: {why}") as e:
            run_config.model_config(c)
        assert "\n" not in str(e.value)
        with pytest.raises(CheckpointError, match=f"^config key model.checkpoint={path}: {why}"):
            run(c)
