"""The pure train step: the router bias is state outside the gradient, the loss is the model's
next-token loss, and AdamW steps on a fixed batch reduce it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.models.losses import token_nll
from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.registry import preset
from r1jax.train.step import StepConfig, loss_fn, train_step
from r1jax.models.common.partition import split_model

CFG = preset("tiny", dtype="float32", vocab_size=256)


def _batch(b=2, t=24, seed=0):
    tokens = jnp.asarray(np.random.RandomState(seed).randint(0, CFG.vocab_size, (b, t)), jnp.int32)
    seg = jnp.ones((b, t), jnp.int32).at[1, 18:].set(0)  # row 1 padded
    return {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(t), (b, t)), "segment_ids": seg}


def test_router_bias_is_state_not_parameter():
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(0)))
    param_paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    rest_paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(rest)}
    assert "moe_layers.mlp.router_bias" in rest_paths
    assert not any("router_bias" in p for p in param_paths)
    assert "moe_layers.mlp.router" in param_paths


def test_loss_is_mean_nll_over_predicted_tokens():
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    graphdef, params, rest = split_model(model)
    batch = _batch()
    loss, sums = loss_fn(params, rest, graphdef, batch)
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    nll = np.asarray(token_nll(logits[:, :-1], batch["tokens"][:, 1:]))
    keep = np.ones_like(nll, bool)
    keep[1, 17:] = False  # row 1 has 18 real tokens: 17 predictions
    assert int(sums["tokens"]) == keep.sum() == 23 + 17
    np.testing.assert_allclose(float(loss), nll[keep].mean(), rtol=1e-6)


def test_loss_covers_only_loss_mask_targets():
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    graphdef, params, rest = split_model(model)
    batch = _batch()
    mask = np.zeros((2, 24), np.int32)
    mask[0, 10:20] = 1
    mask[1, 5:] = 1  # row 1's padding (18:) stays excluded by its segment ids
    loss, sums = loss_fn(params, rest, graphdef, {**batch, "loss_mask": jnp.asarray(mask)})
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    nll = np.asarray(token_nll(logits[:, :-1], batch["tokens"][:, 1:]))
    keep = mask[:, 1:].astype(bool)
    keep[1, 17:] = False
    assert int(sums["tokens"]) == keep.sum() == 10 + 13
    np.testing.assert_allclose(float(loss), nll[keep].mean(), rtol=1e-6)


def test_adamw_steps_reduce_loss_and_leave_router_bias():
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(2)))
    opt = optax.adamw(3e-3)
    opt_state = opt.init(params)
    step = jax.jit(functools.partial(train_step, graphdef, opt, StepConfig()))
    batch = _batch(seed=3)
    bias_before = np.asarray(rest["moe_layers"]["mlp"]["router_bias"][...])
    losses = []
    for _ in range(8):
        params, rest, opt_state, m = step(params, rest, opt_state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.5, losses
    assert np.isfinite(float(m["grad_norm"])) and m["expert_load"].shape == (2, CFG.n_routed_experts)
    np.testing.assert_allclose(np.asarray(m["expert_load"]).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(rest["moe_layers"]["mlp"]["router_bias"][...]), bias_before)


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_grad_accumulation_equals_one_larger_batch():
    """k micro-batches of uneven target counts give the update of one batch k times larger."""
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(4)))
    batch = _batch(b=4, seed=5)
    batch["segment_ids"] = batch["segment_ids"].at[2, 7:].set(0)  # row 2's micro-batch has fewer targets
    opt = optax.sgd(0.1)
    out = {}
    for k in (1, 2, 4):
        step = jax.jit(functools.partial(train_step, graphdef, opt, StepConfig(grad_accum=k)))
        p, _, _, m = step(params, rest, opt.init(params), batch)
        out[k] = (_flat(p), float(m["loss"]), float(m["grad_norm"]))
    for k in (2, 4):
        assert out[k][1] == pytest.approx(out[1][1], rel=1e-6)
        assert out[k][2] == pytest.approx(out[1][2], rel=1e-5)
        for name, v in out[1][0].items():
            np.testing.assert_allclose(out[k][0][name], v, rtol=1e-5, atol=1e-7, err_msg=name)


def test_micro_batches_span_every_device():
    """On a data mesh each micro-batch is spread over all devices (rows i, i+k, ...), not a block of
    rows held by a subset of them."""
    from r1jax.parallel import sharding
    from r1jax.train.step import micro_batches
    mesh = sharding.make_mesh(data=8)
    x = jax.device_put(jnp.arange(32 * 3, dtype=jnp.int32).reshape(32, 3), sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        mbs = jax.jit(lambda b: micro_batches(b, 4))({"tokens": x})["tokens"]  # [4, 8, 3]
    np.testing.assert_array_equal(np.asarray(mbs)[1], np.arange(32 * 3).reshape(32, 3)[1::4])
    # every device holds one row of each of the 4 micro-batches
    assert {sh.data.shape for sh in mbs.addressable_shards} == {(4, 1, 3)}, mbs.sharding
    assert len({sh.device for sh in mbs.addressable_shards}) == 8


def test_non_finite_step_is_skipped():
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(6)))
    params = jax.tree.map(lambda x: x, params)
    params["embed"][...] = params["embed"][...].at[3].set(jnp.nan)
    batch = _batch(seed=7)
    batch["tokens"] = batch["tokens"].at[0, 0].set(3)
    opt = optax.adamw(1e-3)
    state = opt.init(params)
    new_params, _, new_state, m = jax.jit(functools.partial(train_step, graphdef, opt, StepConfig()))(
        params, rest, state, batch)
    assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
    for name, v in _flat(params).items():
        np.testing.assert_array_equal(_flat(new_params)[name], v)
    assert int(_flat(new_state)[next(k for k in _flat(new_state) if "count" in k)]) == 0


def test_router_bias_moves_toward_balance():
    """b += rate * sign(mean_load - load): overloaded experts go down, underloaded up (NumPy check)."""
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(8)))
    rate = 0.01
    step = jax.jit(functools.partial(train_step, graphdef, optax.sgd(0.0), StepConfig(router_bias_rate=rate)))
    batch = _batch(seed=9)
    _, new_rest, _, m = step(params, rest, optax.sgd(0.0).init(params), batch)
    load = np.asarray(m["expert_load"])  # fractions; sign(mean - load) is the same as on counts
    want = np.sign(load.mean(-1, keepdims=True) - load) * rate
    got = np.asarray(new_rest["moe_layers"]["mlp"]["router_bias"][...]) - \
        np.asarray(rest["moe_layers"]["mlp"]["router_bias"][...])
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert np.any(got > 0) and np.any(got < 0)


def test_aux_and_mtp_terms_enter_the_objective():
    cfg = CFG.replace(with_mtp=True)
    graphdef, params, rest = split_model(Transformer(cfg, rngs=nnx.Rngs(10)))
    batch = _batch(seed=11)
    base, sums = loss_fn(params, rest, graphdef, batch, StepConfig())
    full, sums2 = loss_fn(params, rest, graphdef, batch, StepConfig(aux_loss_weight=0.3, mtp_loss_weight=0.5))
    model = nnx.merge(graphdef, params, rest)
    h, stats = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
    mtp_logits, _ = model.mtp_logits(h, batch["tokens"], batch["positions"], batch["segment_ids"])
    # independent MTP NLL: position t predicts token t+2 within the row's real tokens
    nll = np.asarray(token_nll(mtp_logits[:, :-2], batch["tokens"][:, 2:]))
    keep = np.ones_like(nll, bool)
    keep[1, 16:] = False
    want = float(base) + 0.3 * float(np.mean(np.asarray(stats["aux_loss"]))) + 0.5 * nll[keep].mean()
    assert float(full) == pytest.approx(want, rel=1e-5)
    assert int(sums2["mtp_tokens"]) == keep.sum()


def test_frozen_groups_get_no_gradient_and_the_same_update():
    """Frozen routed experts (StepConfig.frozen_groups, as optim.freeze_groups sets it): the trained
    parameters step exactly as when every gradient is computed and the frozen ones' discarded by the
    optimizer (clipping off: the one place the two differ), the frozen ones stay, grad_norm is the
    norm of the trained parameters' gradients by jax.grad of the loss, and the compiled step skips
    the frozen weights' gradient matmuls."""
    from r1jax.train.optim import OptimConfig, make_optimizer, path_str
    model = Transformer(CFG, rngs=nnx.Rngs(4))
    graphdef, params, rest = split_model(model)
    frozen = ("routed_experts",)
    tx, _, _ = make_optimizer(OptimConfig(lr=1e-2, schedule="constant", clip_norm=0.0, freeze_groups=frozen),
                              model, params)
    state = tx.init(params)
    batch = _batch(seed=5)

    def run(sc):
        compiled = jax.jit(functools.partial(train_step, graphdef, tx, sc)).lower(params, rest, state, batch).compile()
        return compiled(params, rest, state, batch), compiled.cost_analysis()
    (new, _, _, m), cost = run(StepConfig(frozen_groups=frozen))
    (ref, _, _, m_ref), cost_ref = run(StepConfig())
    is_frozen = {}
    for (path, a), (_, b), (_, p) in zip(*(jax.tree_util.tree_flatten_with_path(t)[0] for t in (new, ref, params))):
        name = path_str(path)
        # the routed experts by hand: the MoE stack's expert projections
        is_frozen[name] = name in ("moe_layers.mlp.gate", "moe_layers.mlp.up", "moe_layers.mlp.down")
        if is_frozen[name]:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(p), err_msg=name)
        else:
            assert not np.array_equal(np.asarray(a), np.asarray(p)), name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7, err_msg=name)
    assert any(is_frozen.values()) and not all(is_frozen.values())

    grads = jax.jit(jax.grad(lambda p: loss_fn(p, rest, graphdef, batch)[0]))(params)
    sq = {path_str(path): float(jnp.sum(g.astype(jnp.float32) ** 2))
          for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    np.testing.assert_allclose(float(m["grad_norm"]), np.sqrt(sum(v for k, v in sq.items() if not is_frozen[k])),
                               rtol=1e-5)
    np.testing.assert_allclose(float(m_ref["grad_norm"]), np.sqrt(sum(sq.values())), rtol=1e-5)
    assert cost["flops"] < cost_ref["flops"], (cost["flops"], cost_ref["flops"])
