"""The GRPO objective inside the training step (r1jax/train/objectives/grpo.py GRPO, r1jax/train/step.py).

Oracles: (1) a second code path: the model's full logits (model(tokens), no chunking), tempered,
log-softmaxed and fed to `grpo_loss` (itself checked against NumPy in test_grpo_loss.py) give the
step's loss and gradient; (2) NumPy's log-softmax and entropy formula for `token_logprobs`;
(3) one batch equals k micro-batches (the whole-batch normalization) for every normalization, an
SGD update being linear in the gradient.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from r1jax.models.deepseek_v3.transformer import Transformer
from r1jax.models.losses import token_logprobs
from r1jax.models.registry import preset
from r1jax.models.common.partition import split_model
from r1jax.train.objectives.grpo import GRPO, NORMALIZATIONS, grpo_loss, policy_logprobs, sequence_logprobs
from r1jax.train.step import StepConfig, loss_fn, train_step

CFG = preset("tiny", dtype="float32", vocab_size=256)
B, T = 8, 20


def _rollouts(seed=0):
    """8 rollouts: prompt lengths 3..6, completions of 0..12 tokens, right-padded; advantages and
    old / reference log-probabilities at the target positions (t scores tokens[t + 1])."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, CFG.vocab_size, (B, T)).astype(np.int32)
    seg, mask = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for b in range(B):
        p, c = 3 + b % 4, [12, 0, 5, 9, 1, 12, 7, 3][b]
        seg[b, :p + c] = 1
        mask[b, p:p + c] = 1
    tokens = np.where(seg > 0, tokens, 0)
    adv = np.repeat(rng.randn(B).astype(np.float32)[:, None], T, 1)
    return {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(np.broadcast_to(np.arange(T), (B, T))),
            "segment_ids": jnp.asarray(seg), "loss_mask": jnp.asarray(mask), "advantages": jnp.asarray(adv),
            "old_logp": jnp.asarray(rng.uniform(-7.0, -4.0, (B, T)).astype(np.float32)),
            "ref_logp": jnp.asarray(rng.uniform(-7.0, -4.0, (B, T)).astype(np.float32))}


def _left_padded(seed=0, start=6):
    """The rollouts' own layout (r1jax/train/rollouts.py): prompts of 3..6 tokens left-padded so that
    every completion (0..14 tokens) starts at column `start`."""
    batch = {k: np.asarray(v).copy() for k, v in _rollouts(seed).items()}
    tokens, seg, mask, pos = (np.zeros((B, T), np.int32) for _ in range(4))
    for b in range(B):
        p, c = 3 + b % 4, [12, 0, 5, 9, 1, 14, 7, 3][b]
        tokens[b, start - p:start + c] = batch["tokens"][b, :p + c]
        seg[b, start - p:start + c] = 1
        pos[b, start - p:start + c] = np.arange(p + c)
        mask[b, start:start + c] = 1
    return {**{k: jnp.asarray(v) for k, v in batch.items()}, "tokens": jnp.asarray(tokens),
            "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(pos), "loss_mask": jnp.asarray(mask)}


def _reference_loss(model, batch, obj: GRPO):
    """The second path: full logits -> tempered log-probs of tokens[:, 1:] -> grpo_loss."""
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    logp = sequence_logprobs(logits[:, :-1] / obj.temperature, batch["tokens"][:, 1:])
    seg, lm = batch["segment_ids"], batch["loss_mask"]
    mask = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0) & (lm[:, 1:] > 0)
    old = jax.lax.stop_gradient(logp) if obj.on_policy else batch["old_logp"][:, :-1]
    return grpo_loss(logp, old, batch["advantages"][:, 0], mask, epsilon=obj.epsilon,
                     epsilon_high=obj.epsilon_high, beta=obj.beta,
                     ref_logp=batch["ref_logp"][:, :-1] if obj.beta > 0 else None, normalize=obj.normalize)


@pytest.mark.parametrize("obj,chunk", [
    (GRPO(), 16),                                                        # on-policy: r = 1
    (GRPO(epsilon=0.1, epsilon_high=0.3, beta=0.05, normalize="sequence", temperature=0.7, on_policy=False), 0),
    (GRPO(beta=0.1, normalize="constant", temperature=1.3, on_policy=False, budget=T - 1), 16),  # grpo_loss's T
    (GRPO(beta=0.05, normalize="sequence", on_policy=False, budget=T - 6, completion_start=6), 0),
], ids=["on_policy_token_chunked", "clipped_kl_sequence", "kl_constant_chunked", "completion_window"])
def test_objective_equals_grpo_loss_on_full_logits(obj, chunk):
    """The completion window (the head on the completion columns only) gives what the full logits do."""
    model = Transformer(CFG, rngs=nnx.Rngs(3))
    graphdef, params, rest = split_model(model)
    batch = _left_padded() if obj.completion_start else _rollouts()
    sc = StepConfig(objective=obj, loss_chunk=chunk)

    (value, sums), grads = jax.value_and_grad(lambda p: loss_fn(p, rest, graphdef, batch, sc), has_aux=True)(params)
    (ref, ref_metrics), ref_grads = jax.value_and_grad(
        lambda p: _reference_loss(nnx.merge(graphdef, p, rest), batch, obj), has_aux=True)(params)
    np.testing.assert_allclose(float(value), float(ref), rtol=1e-5, atol=1e-7)
    metrics = obj.metrics(sums, None)
    for k in ("clip_fraction", "ratio_mean") + (("kl",) if obj.beta else ()):
        np.testing.assert_allclose(float(metrics[k]), float(ref_metrics[k]), rtol=1e-5, atol=1e-7)
    if not obj.on_policy:  # the old log-probs are far from the policy's: some tokens are clipped
        assert 0 < float(metrics["clip_fraction"]) < 1
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):  # float32 sums in two orders
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-4, atol=1e-4 * np.abs(r).max() + 1e-12)


def test_token_logprobs_and_entropy_equal_numpy():
    rng = np.random.RandomState(0)
    h = rng.randn(3, 11, 8).astype(np.float32)
    kernel = rng.randn(8, 50).astype(np.float32)
    targets = rng.randint(0, 50, (3, 11)).astype(np.int32)
    z = h.astype(np.float64) @ kernel.astype(np.float64) / 0.6
    z = z - z.max(-1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want_logp = np.take_along_axis(logq, targets[..., None], -1)[..., 0]
    want_ent = -(np.exp(logq) * logq).sum(-1)
    for chunk in (0, 6, 100):
        logp, ent = token_logprobs(jnp.asarray(h), jnp.asarray(kernel), jnp.asarray(targets), 0.6, chunk)
        np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=2e-5)


def test_policy_logprobs_align_with_the_objective():
    """policy_logprobs at the policy itself as old_logp gives r = 1 on every token."""
    model = Transformer(CFG, rngs=nnx.Rngs(4))
    graphdef, params, rest = split_model(model)
    batch = _rollouts(1)
    obj = GRPO(on_policy=False, temperature=0.8, epsilon=0.0, epsilon_high=0.0)
    old = policy_logprobs(model, batch, 0.8)
    _, sums = loss_fn(params, rest, graphdef, {**batch, "old_logp": old}, StepConfig(objective=obj))
    metrics = obj.metrics(sums, None)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), 1.0, rtol=1e-5)
    assert float(metrics["clip_fraction"]) == 0.0
    # in the rollouts' layout, over the completion window only: the same values there, 0 elsewhere
    left = _left_padded(1)
    windowed = GRPO(budget=T - 6, completion_start=6)
    got = np.asarray(policy_logprobs(model, left, 0.8, window=windowed.window(T)))
    full = np.asarray(policy_logprobs(model, left, 0.8))
    np.testing.assert_allclose(got[:, 5:T - 1], full[:, 5:T - 1], rtol=1e-5, atol=1e-6)
    assert not got[:, :5].any() and np.abs(full[:, :5]).sum() > 0


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_micro_batches_give_the_whole_batch_update(normalize):
    model = Transformer(CFG, rngs=nnx.Rngs(5))
    graphdef, params, rest = split_model(model)
    batch = _rollouts(2)
    obj = GRPO(beta=0.05, normalize=normalize, on_policy=False, epsilon_high=0.28)
    out = {}
    for k in (1, 4):
        step = jax.jit(functools.partial(train_step, graphdef, optax.sgd(1.0), StepConfig(grad_accum=k, objective=obj)))
        p = jax.tree.map(jnp.copy, params)
        new, _, _, m = step(p, rest, optax.sgd(1.0).init(p), batch)
        out[k] = (new, m)
        assert int(m["skipped"]) == 0
    np.testing.assert_allclose(float(out[4][1]["loss"]), float(out[1][1]["loss"]), rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(out[4][0]), jax.tree.leaves(out[1][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
