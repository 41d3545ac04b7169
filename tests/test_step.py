"""The pure train step: the router bias is state outside the gradient, the loss is the model's
next-token loss, and AdamW steps on a fixed batch reduce it."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1jax.losses import token_nll
from r1jax.model import Transformer, preset
from r1jax.step import loss_fn, split_model, train_step

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
    loss, metrics = loss_fn(params, rest, graphdef, batch)
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    nll = np.asarray(token_nll(logits[:, :-1], batch["tokens"][:, 1:]))
    keep = np.ones_like(nll, bool)
    keep[1, 17:] = False  # row 1 has 18 real tokens: 17 predictions
    assert int(metrics["tokens"]) == keep.sum() == 23 + 17
    np.testing.assert_allclose(float(loss), nll[keep].mean(), rtol=1e-6)


def test_loss_covers_only_loss_mask_targets():
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    graphdef, params, rest = split_model(model)
    batch = _batch()
    mask = np.zeros((2, 24), np.int32)
    mask[0, 10:20] = 1
    mask[1, 5:] = 1  # row 1's padding (18:) stays excluded by its segment ids
    loss, metrics = loss_fn(params, rest, graphdef, {**batch, "loss_mask": jnp.asarray(mask)})
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    nll = np.asarray(token_nll(logits[:, :-1], batch["tokens"][:, 1:]))
    keep = mask[:, 1:].astype(bool)
    keep[1, 17:] = False
    assert int(metrics["tokens"]) == keep.sum() == 10 + 13
    np.testing.assert_allclose(float(loss), nll[keep].mean(), rtol=1e-6)


def test_adamw_steps_reduce_loss_and_leave_router_bias():
    graphdef, params, rest = split_model(Transformer(CFG, rngs=nnx.Rngs(2)))
    opt = optax.adamw(3e-3)
    opt_state = opt.init(params)
    step = jax.jit(functools.partial(train_step, graphdef, opt))
    batch = _batch(seed=3)
    bias_before = np.asarray(rest["moe_layers"]["mlp"]["router_bias"][...])
    losses = []
    for _ in range(8):
        params, opt_state, m = step(params, rest, opt_state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.5, losses
    assert np.isfinite(float(m["grad_norm"])) and m["expert_load"].shape == (2, CFG.n_routed_experts)
    np.testing.assert_array_equal(np.asarray(rest["moe_layers"]["mlp"]["router_bias"][...]), bias_before)
