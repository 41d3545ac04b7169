"""The optimizer against closed-form AdamW first steps: per-layer LR on stacked layers, group LR and
weight decay, freezing (layers and groups), progressive unfreezing stages, schedules."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.models.common import groups
from r1jax.train.optim import OptimConfig, make_optimizer, parse_stages, path_str, schedule, StageError
from r1jax.train.step import loss_fn
from r1jax.models.common.partition import split_model

CFG = preset("tiny", dtype="float32", vocab_size=128, num_hidden_layers=4, first_k_dense_replace=1)
EPS = 1e-8


_SETUP = {}


def _setup():
    """Params and a jitted gradient function, built once for the module (compiles are the cost)."""
    if not _SETUP:
        model = Transformer(CFG, rngs=nnx.Rngs(0))
        graphdef, params, rest = split_model(model)
        t = 16
        toks = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (2, t)), jnp.int32)
        batch = {"tokens": toks, "positions": jnp.broadcast_to(jnp.arange(t), (2, t)),
                 "segment_ids": jnp.ones((2, t), jnp.int32)}
        _SETUP["v"] = params, jax.jit(jax.grad(lambda p: loss_fn(p, rest, graphdef, batch)[0]))
        _SETUP["model"] = nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))
    return _SETUP["v"]


def _flat(tree):
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _steps(c, n=1):
    """Parameter deltas after n optimizer steps (one batch), and the gradients of each step."""
    params, grad_fn = _setup()
    tx, lr_by_group, stage_at = make_optimizer(c, _SETUP["model"], params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    p0, grads = params, []
    for _ in range(n):
        g = grad_fn(params)
        grads.append(_flat(g))
        up, state = update(g, state, params)
        params = optax.apply_updates(params, up)
    d = {k: v - _flat(p0)[k] for k, v in _flat(params).items()}
    return d, grads, _flat(p0), state


def _adam_first(g):
    return g / (np.abs(g) + EPS)  # bias-corrected first Adam step


def test_layer_decay_and_group_lr_on_stacked_layers():
    lr, decay = 1e-3, 0.5
    c = OptimConfig(lr=lr, schedule="constant", weight_decay=0.0, layer_decay=decay, clip_norm=0.0,
                    group_lr={"router": 3.0}, eps=EPS)
    d, (g,), _, _ = _steps(c)
    L, k = CFG.num_hidden_layers, CFG.first_k_dense_replace
    for name in ("moe_layers.attn.q_b", "moe_layers.mlp.gate", "dense_layers.mlp.up", "moe_layers.mlp.router"):
        off = 0 if name.startswith("dense") else k
        mult = 3.0 if name.endswith("router") else 1.0
        for row in range(d[name].shape[0]):
            want = -lr * mult * decay ** (L - 1 - (off + row)) * _adam_first(g[name][row])
            np.testing.assert_allclose(d[name][row], want, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(d["embed"], -lr * decay ** L * _adam_first(g["embed"]), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(d["lm_head"], -lr * _adam_first(g["lm_head"]), rtol=1e-4, atol=1e-9)


def test_weight_decay_skips_norms():
    lr, wd = 1e-3, 0.1
    c = OptimConfig(lr=lr, schedule="constant", weight_decay=wd, clip_norm=0.0, eps=EPS)
    d, (g,), p0, _ = _steps(c)
    name = "moe_layers.attn.kv_b"
    np.testing.assert_allclose(d[name], -lr * (_adam_first(g[name]) + wd * p0[name]), rtol=1e-4, atol=1e-9)
    name = "moe_layers.attn_norm.scale"
    np.testing.assert_allclose(d[name], -lr * _adam_first(g[name]), rtol=1e-4, atol=1e-9)


def test_frozen_layers_and_groups_get_exactly_zero_updates():
    c = OptimConfig(lr=1e-3, schedule="constant", weight_decay=0.1, clip_norm=1.0,
                    freeze_layers="0,2", freeze_groups=("routed_experts",))
    d, _, _, state = _steps(c, n=2)
    k = CFG.first_k_dense_replace
    assert np.all(d["dense_layers.attn.q_a"] == 0)                     # layer 0
    assert np.all(d["moe_layers.attn.q_a"][2 - k] == 0)                 # layer 2
    assert np.all(d["moe_layers.attn.q_a"][1 - k] != 0)                 # layer 1 trains
    assert np.all(d["moe_layers.mlp.up"] == 0) and np.all(d["moe_layers.mlp.down"] == 0)
    assert np.any(d["moe_layers.mlp.router"] != 0) and np.any(d["embed"] != 0)
    # The frozen group holds no optimizer state (set_to_zero); others hold Adam moments.
    inner = state[2].inner_states
    assert jax.tree.leaves(inner["routed_experts"]) == []
    assert len(jax.tree.leaves(inner["attention"])) > 0


def test_progressive_stages_unfreeze_on_schedule():
    params, grad_fn = _setup()
    c = OptimConfig(lr=1e-3, schedule="constant", clip_norm=0.0, stages=("0:3", "2:1-3", "4:0-3"))
    tx, _, stage_at = make_optimizer(c, _SETUP["model"], params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    changed = []
    for step in range(5):
        before = _flat(params)
        up, state = update(grad_fn(params), state, params)
        params = optax.apply_updates(params, up)
        after = _flat(params)
        rows = [bool(np.any(after["dense_layers.attn.o"][0] != before["dense_layers.attn.o"][0]))]
        rows += [bool(np.any(after["moe_layers.attn.o"][i] != before["moe_layers.attn.o"][i])) for i in range(3)]
        changed.append(rows)
        assert int(stage_at(step)) == [0, 0, 1, 1, 2][step]
    assert changed == [[False, False, False, True]] * 2 + [[False, True, True, True]] * 2 + [[True] * 4]


def test_stage_errors_name_the_text():
    with pytest.raises(StageError, match="'5-2'"):
        parse_stages(["0:5-2"], 8)
    with pytest.raises(StageError, match="start at step 0"):
        parse_stages(["10:0-3"], 8)
    with pytest.raises(StageError, match="'abc'"):
        parse_stages(["abc"], 8)


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear", "wsd"])
def test_schedules_match_closed_forms(kind):
    lr, w, total, r = 2e-4, 10, 110, 0.1
    c = OptimConfig(lr=lr, schedule=kind, warmup_steps=w, total_steps=total, min_lr_ratio=r,
                    wsd_decay_fraction=0.2)
    f = schedule(c)
    for t in (0, 5, 10, 30, 60, 95, 110):
        if t < w:
            want = lr * t / w
        else:
            u = (t - w) / (total - w)
            want = {"constant": lr,
                    "cosine": lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * u))),
                    "linear": lr + (lr * r - lr) * u,
                    "wsd": lr if t - w < 80 else lr + (lr * r - lr) * (t - w - 80) / 20}[kind]
        assert float(f(t)) == pytest.approx(want, rel=1e-5, abs=1e-12), t


def test_every_parameter_has_a_group():
    model = Transformer(CFG.replace(with_mtp=True), rngs=nnx.Rngs(0))
    _, params, _ = split_model(model)
    assert set(groups.present(groups.placements(params))) == {"embeddings", "attention", "dense_mlp", "routed_experts", "shared_experts",
                      "router", "norms", "head", "mtp"}
