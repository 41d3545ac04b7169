"""Adapters on a frozen base (r1jax/models/common/lora.py) through the model, the train step and the trainer.

Oracles: the plain model (no adapters) with the same base weights; the plain model holding weights
merged in NumPy, W + s A B computed here from the adapters' arrays; a single device for a sharded
mesh; an uninterrupted run for a resumed one.
"""
import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models import checkpoint
from r1jax.parallel import sharding
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.models.common.config import LoraConfig
from r1jax.models.common.params import Adapter
from r1jax.train.optim import OptimConfig, make_optimizer
from r1jax.train.run_config import RunConfigError, validate
from r1jax.train.step import StepConfig
from r1jax.models.common.partition import split_trained
from r1jax.train.loop import TrainingError, frozen_format, jit_train_step, opt_state_shardings, run
from r1jax.train.checkpoints import abstract_of
from train_fixtures import config as base_config, synthetic

CFG = preset("tiny", dtype="float32", vocab_size=256)
ALL = ("attention", "dense_mlp", "shared_experts", "routed_experts")
LORA = LoraConfig(rank=4, alpha=8.0, targets=ALL)


def tokens(b=2, t=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (b, t)), jnp.int32)


def pure(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model))


flat = checkpoint._flatten  # nested dict -> (path tuple, leaf) pairs


def set_base(lora_model, base_model):
    """Copies every variable of the plain model into the model with adapters (same paths)."""
    state = nnx.state(lora_model)
    tree = nnx.to_pure_dict(state)
    for path, v in flat(pure(base_model)):
        node = tree
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = v
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(lora_model, state)


def randomize_b(model, seed=1):
    state = nnx.state(model, Adapter)
    tree = nnx.to_pure_dict(state)
    rng = np.random.default_rng(seed)
    for path, v in flat(tree):
        if path[-1] == "b":
            node = tree
            for k in path[:-1]:
                node = node[k]
            node["b"] = jnp.asarray(rng.standard_normal(v.shape) * 0.05, jnp.float32)
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(model, state)


def numpy_merged(tree: dict, s: float) -> dict:
    """{path: float64 array} of the plain model's variables from a nested dict holding weights and
    their adapters: W + s A B for adapted projections, in NumPy (stack axes: L, or L and E for the
    routed experts, shared by W, A and B)."""
    merged = {}
    for path, w in flat(tree):
        if len(path) > 1 and path[-2].endswith("_lora"):
            continue
        parent = tree
        for k in path[:-1]:
            parent = parent[k]
        ad = parent.get(path[-1] + "_lora")
        w = np.asarray(w, np.float64)
        if ad is not None:
            a, b = np.asarray(ad["a"], np.float64), np.asarray(ad["b"], np.float64)
            r = a.shape[-1]
            k = 2 if path[0] == "moe_layers" and path[1] == "mlp" and len(path) == 3 else 1
            i = int(np.prod(a.shape[k:-1]))
            ab = a.reshape(a.shape[:k] + (i, r)) @ b.reshape(b.shape[:k] + (r, -1))
            w = w + s * ab.reshape(w.shape)
        merged[path] = w
    return merged


def plain_model(cfg, merged: dict):
    """A model without adapters holding `merged` ({path: array})."""
    plain = Transformer(cfg, rngs=nnx.Rngs(5))
    state = nnx.state(plain)
    target = nnx.to_pure_dict(state)
    for path, _ in flat(target):
        node = target
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = jnp.asarray(merged[path], node[path[-1]].dtype)
    nnx.replace_by_pure_dict(state, target)
    nnx.update(plain, state)
    return plain


def test_zero_b_adapters_give_the_base_logits_exactly():
    """Oracle: the plain model with the same weights; B = 0 makes every adapter add exactly 0."""
    base = Transformer(CFG, rngs=nnx.Rngs(0))
    model = Transformer(CFG.replace(lora=LORA), rngs=nnx.Rngs(1))
    set_base(model, base)
    np.testing.assert_array_equal(np.asarray(model(tokens())[0]), np.asarray(base(tokens())[0]))


def test_adapter_forward_equals_merged_weights_forward():
    """Oracle: the plain model holding W + s A B, merged here in NumPy from the arrays (the model
    keeps the product unmerged: x W + s (x A) B). float32; rslora's scale alpha / sqrt(r)."""
    lc = LoraConfig(rank=4, alpha=8.0, targets=ALL, rslora=True)
    model = Transformer(CFG.replace(lora=lc), rngs=nnx.Rngs(0))
    randomize_b(model)
    merged = numpy_merged(pure(model), 8.0 / math.sqrt(4))
    plain = plain_model(CFG, merged)
    got, want = np.asarray(model(tokens())[0]), np.asarray(plain(tokens())[0])
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max(), np.abs(got - want).max()
    assert np.abs(want - np.asarray(Transformer(CFG, rngs=nnx.Rngs(0))(tokens())[0])).max() > 1e-3


def _batches(n, b=4, t=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = rng.integers(0, 64, (b, 1))
        toks = 10 + (start + np.arange(t)[None]) % 64
        out.append({"tokens": jnp.asarray(toks, jnp.int32),
                    "positions": jnp.asarray(np.broadcast_to(np.arange(t), (b, t)), jnp.int32),
                    "segment_ids": jnp.ones((b, t), jnp.int32), "loss_mask": jnp.ones((b, t), jnp.int32)})
    return out


def _train(mesh_sizes, steps=3, optim=OptimConfig(lr=1e-2, total_steps=3), dropout=0.0):
    """`steps` LoRA steps of the trainer's jitted step on a mesh: (losses, adapters {path: array},
    frozen before, frozen after, rest after)."""
    cfg = CFG.replace(lora=LoraConfig(rank=4, alpha=8.0, targets=ALL, dropout=dropout))
    mesh = sharding.make_mesh(**{**dict(data=1, fsdp=1, expert=1, tensor=1), **mesh_sizes})
    graphdef, params, rest, frozen = split_trained(Transformer(cfg, rngs=nnx.Rngs(0)))
    shard = lambda t: sharding.variable_shardings(t, mesh)
    frozen_before = jax.tree.map(np.asarray, nnx.to_pure_dict(frozen))
    with jax.set_mesh(mesh):
        params, rest, frozen = (jax.device_put(t, shard(t)) for t in (params, rest, frozen))
        tx, _, _ = make_optimizer(optim, nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), params)
        o_sh = opt_state_shardings(jax.eval_shape(tx.init, params), params, mesh)
        opt_state = jax.jit(tx.init, out_shardings=o_sh)(params)
        step = jit_train_step(graphdef, tx, StepConfig(grad_accum=2), (shard(params), shard(rest), o_sh),
                              mesh, shard(frozen))
        data = [jax.device_put(b, sharding.batch_sharding(mesh)) for b in _batches(steps)]
        keys = [jax.random.fold_in(jax.random.key(0), i) if dropout else None for i in range(steps)]
        # as train.py: lowered with an abstract base, whose layout the compiler picks; then placed
        step = step.lower(params, rest, opt_state, data[0], abstract_of(frozen), keys[0]).compile()
        frozen = jax.device_put(frozen, frozen_format(step))
        losses = []
        for batch, key in zip(data, keys):
            params, rest, opt_state, m = step(params, rest, opt_state, batch, frozen, key)
            losses.append(float(m["loss"]))
    adapters = {".".join(map(str, p)): np.asarray(v) for p, v in flat(nnx.to_pure_dict(params))}
    return (losses, adapters, frozen_before, jax.tree.map(np.asarray, nnx.to_pure_dict(frozen)),
            jax.tree.map(np.asarray, nnx.to_pure_dict(rest)))


def test_only_adapters_train_and_frozen_layers_keep_theirs():
    """The trained tree is exactly the adapters; the base and the router bias come out unchanged
    (oracle: their values before); optim.freeze_layers applies to adapters by their layer: layer 0's
    (the dense stack) keep their initial values while every other layer's A and B move."""
    init = {".".join(map(str, p)): np.asarray(v) for p, v in flat(nnx.to_pure_dict(
        split_trained(Transformer(CFG.replace(lora=LoraConfig(rank=4, alpha=8.0, targets=ALL)),
                                  rngs=nnx.Rngs(0)))[1]))}
    losses, adapters, before, after, rest = _train({}, optim=OptimConfig(lr=1e-2, total_steps=3,
                                                                         freeze_layers="0"))
    assert all(k.endswith("_lora.a") or k.endswith("_lora.b") for k in adapters) and adapters
    for (path, b), (_, a) in zip(flat(before), flat(after)):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    assert not np.any(rest["moe_layers"]["mlp"]["router_bias"])
    for k, v in adapters.items():
        if k.startswith("dense_layers."):
            np.testing.assert_array_equal(v, init[k], err_msg=k)
        else:
            assert not np.array_equal(v, init[k]), k
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_sharded_adapters_equal_one_device():
    """fsdp 2 x expert 2 x tensor 2 (routed-expert adapters through the expert-parallel exchange,
    the fsdp gathers and the tensor partial sums) against one device, with adapter dropout on.
    Oracle: the single device. Tolerance: float32 sums in another order, as tests/parallel/test_mesh_training.py."""
    one = _train({}, dropout=0.1)
    many = _train(dict(fsdp=2, expert=2, tensor=2), dropout=0.1)
    np.testing.assert_allclose(many[0], one[0], rtol=1e-5)
    for k, v in one[1].items():
        err = np.linalg.norm(many[1][k] - v) / max(np.linalg.norm(v), 1e-12)
        assert err < 1e-5, (k, err)


# ---- the trainer ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    synthetic(d / "train.jsonl")
    return d


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two model checkpoints of the tiny preset (seeds 1 and 2), plain bf16-free float32."""
    out = []
    for seed in (1, 2):
        d = tmp_path_factory.mktemp(f"base{seed}")
        cfg = preset("tiny", param_dtype="float32")
        checkpoint.save_model(str(d), cfg, pure(Transformer(cfg, rngs=nnx.Rngs(seed))))
        out.append(d)
    return out


def lora_config(data, out, base, **over):
    defaults = dict(train__steps=6, train__seq_len=64, train__log_every=1, train__eval_every=3,
                    train__checkpoint_every=3, lora__rank=4, lora__dropout=0.1,
                    model__checkpoint=str(base), optim__lr=1e-2)
    return base_config(data, out, **{**defaults, **over})


def _state(out, step):
    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(Path(out) / "checkpoints" / str(step) / "state")
    return {".".join(p): np.asarray(v) for p, v in flat(tree["params"])}, tree


def _losses(out):
    return [(r["step"], r.get("train/loss"), r.get("val/loss"))
            for r in map(json.loads, open(Path(out) / "metrics.jsonl"))]


def test_lora_run_saves_adapters_only_resumes_exactly_and_refuses_another_base(data, bases, tmp_path):
    """A LoRA run on a model checkpoint: its checkpoints hold the adapters (no base weight), the run
    records its base; a rerun after losing the last checkpoint resumes at step 3 and ends bit-identical
    (losses and adapters; dropout on) to the uninterrupted run (the oracle); the same directory on
    another base is refused naming both."""
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    run(lora_config(data, ref, bases[0]))
    adapters, tree = _state(ref, 6)
    assert adapters and all(k.split(".")[-2].endswith("_lora") for k in adapters)
    assert set(tree) == {"params", "rest", "opt_state"}
    assert tree["params"]["dense_layers"]["attn"].keys() == {"q_a_lora", "q_b_lora", "kv_a_lora",
                                                             "kv_b_lora", "o_lora"}
    meta = json.loads((ref / "model" / "r1jax.json").read_text())
    assert meta["lora"]["rank"] == 4 and meta["base"]["path"] == str(bases[0])

    run(lora_config(data, resumed, bases[0]))
    shutil.rmtree(resumed / "checkpoints" / "6")
    summary = run(lora_config(data, resumed, bases[0]))
    assert summary["start_step"] == 3
    assert _losses(resumed) == _losses(ref)
    got, _ = _state(resumed, 6)
    for k, v in adapters.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)

    with pytest.raises(TrainingError, match=f"holds adapters trained on {bases[0]}.*not on {bases[1]}"):
        run(lora_config(data, resumed, bases[1]))


def test_lora_config_errors_name_the_key(data, tmp_path):
    """Oracle: the messages, which must name the key (and the nearest group for a typo)."""
    with pytest.raises(RunConfigError, match=r"lora.targets=.*'atention' is not a parameter group.*attention"):
        validate(lora_config(data, tmp_path, "", lora__targets="atention"))
    with pytest.raises(RunConfigError, match=r"lora.targets=.*group 'router' has no projections"):
        validate(lora_config(data, tmp_path, "", lora__targets="attention,router"))
    with pytest.raises(RunConfigError, match=r"lora.rank=-1 is out of range"):
        validate(lora_config(data, tmp_path, "", lora__rank=-1))


def test_evaluate_and_generate_apply_a_runs_adapters_to_its_base(data, bases, tmp_path):
    """r1jax.models.sources.load (what evaluate, generate and the task metrics load) on a LoRA run: its
    logits equal a plain model holding base + s A B merged in NumPy from the base checkpoint's and
    the run checkpoint's arrays (the oracle); evaluate's loss equals that model's loss."""
    from r1jax.eval import evaluate
    from r1jax.models import sources
    from r1jax.models.losses import next_token_loss_sums
    out = tmp_path / "run"
    run(lora_config(data, out, bases[0], train__steps=3, lora__targets=",".join(ALL)))
    _, tree = _state(out, 3)
    base = pure(checkpoint.load_model(str(bases[0])))
    both = base
    for path, v in flat(tree["params"]):
        node = both
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    merged = numpy_merged(both, 16.0 / 4)
    plain = plain_model(preset("tiny", dtype="float32"), merged)
    model, meta = sources.load(str(out), dtype="float32")
    assert meta == str(out / "model")
    toks = jnp.asarray(np.random.default_rng(3).integers(100, 132, (2, 24)), jnp.int32)
    got, want = np.asarray(model(toks)[0]), np.asarray(plain(toks)[0])
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"input_ids": [int(t) for t in r]}) + "\n" for r in np.asarray(toks)))
    nll, count, _ = next_token_loss_sums(plain(toks)[0], toks, jnp.ones_like(toks))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert evaluate.main(["--checkpoint", str(out), "--data", str(rows), "--dtype", "float32",
                              "--json"]) == 0
    assert json.loads(buf.getvalue().splitlines()[-1])["loss"] == pytest.approx(float(nll / count), rel=1e-5)
