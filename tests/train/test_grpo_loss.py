"""GRPO's loss math (r1jax/train/objectives/grpo.py) against NumPy oracles written here: group
advantages, token log-probabilities, the clipped surrogate with an asymmetric clip and the k3 KL
under each normalization (value, metrics and per-token gradient), and, with one iteration per batch,
the gradient of a linear-softmax policy against REINFORCE with a group baseline derived by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.train.objectives.grpo import group_advantages, grpo_loss, sequence_logprobs

EPS_LO, EPS_HI = 0.2, 0.28
RTOL, ATOL = 2e-5, 1e-6


# ---------------------------------------------------------------- NumPy oracles (float64, loops)

def np_advantages(rewards, scale, eps):
    r = np.asarray(rewards, np.float64)
    centered = r - r.mean(axis=1, keepdims=True)
    if not scale:
        return centered
    return centered / (r.std(axis=1, keepdims=True, ddof=0) + eps)


def np_weights(mask, normalize):
    """w[b, t] of the normalization, from its definition in words (the issue's)."""
    m = np.asarray(mask != 0, np.float64)
    b, t = m.shape
    w = np.zeros((b, t))
    if normalize == "token":  # every scored token of the batch weighs the same
        if m.sum() > 0:
            w = m / m.sum()
    elif normalize == "sequence":  # mean over the sequences that have tokens of their token means
        rows = [i for i in range(b) if m[i].sum() > 0]
        for i in rows:
            w[i] = m[i] / m[i].sum() / len(rows)
    else:  # constant: the sum over tokens / (B * T_max)
        w = m / (b * t)
    return w


def np_grpo(logp, old, adv, mask, ref, beta, normalize, eps_lo=EPS_LO, eps_hi=EPS_HI):
    """Loss, metrics and d loss / d logp (old_logp held fixed), token by token in float64."""
    b, t = logp.shape
    w = np_weights(mask, normalize)
    loss, grad = 0.0, np.zeros((b, t))
    tokens, kl, clipped, low, high, ratios = 0, 0.0, 0, 0, 0, 0.0
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            r = np.exp(np.float64(logp[i, j]) - old[i, j])
            a = np.float64(adv[i])
            unclipped = r * a
            clipped_term = min(max(r, 1 - eps_lo), 1 + eps_hi) * a
            active = clipped_term < unclipped  # the min picks the clipped term, and it differs
            s = -min(unclipped, clipped_term)
            k3 = 0.0
            dk3 = 0.0
            if ref is not None:
                d = np.float64(ref[i, j]) - logp[i, j]
                k3 = np.exp(d) - d - 1
                dk3 = -np.exp(d) + 1  # d k3 / d logp
            loss += w[i, j] * (s + beta * k3)
            # d s / d logp: 0 where the constant clipped term is chosen, else -A r
            grad[i, j] = w[i, j] * ((0.0 if active else -a * r) + beta * dk3)
            tokens += 1
            kl += k3
            clipped += active
            low += active and a < 0
            high += active and a > 0
            ratios += r
    n = max(tokens, 1)
    metrics = {"kl": kl / n, "clip_fraction": clipped / n, "clip_low_fraction": low / n,
               "clip_high_fraction": high / n, "ratio_mean": ratios / n}
    return loss, metrics, grad


def np_log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ---------------------------------------------------------------- data

def _batch(seed=0, b=6, t=7):
    """Random log-probs with old/ref perturbations wide enough that ratios leave [1 - 0.2, 1 + 0.28]
    on both sides; advantages of both signs and one 0; a mask with one empty and one full row, and
    NaN/inf at every unscored position (which must not leak)."""
    rng = np.random.RandomState(seed)
    logp = np.log(rng.uniform(0.05, 0.95, (b, t)))
    old = logp + rng.normal(0, 0.4, (b, t))
    ref = logp + rng.normal(0, 0.5, (b, t))
    adv = rng.normal(0, 1, b)
    adv[2] = 0.0
    mask = (rng.uniform(size=(b, t)) < 0.6).astype(np.int32)
    mask[1] = 0
    mask[3] = 1
    mask[4, :2] = 0  # a row that starts late (prompt-like prefix)
    # by construction, whatever the draw: A > 0 with r = e^0.5 > 1 + 0.28 (clipped high), with
    # r = e^0.22 in (1 + 0.2, 1 + 0.28) (not clipped: the high side is epsilon_high's) and with
    # r = e^-0.5 < 1 - 0.2 (outside, not clipped); A < 0 with r = e^-0.5 (clipped low), with
    # r = e^-0.25 in (1 - 0.28, 1 - 0.2) (clipped: the low side is epsilon's) and with e^0.5 (not)
    adv[0], adv[5] = abs(adv[0]) + 0.1, -abs(adv[5]) - 0.1
    rows, cols = [0, 0, 0, 5, 5, 5], [0, 1, 2, 0, 1, 2]
    mask[rows, cols] = 1
    old[rows, cols] = logp[rows, cols] + np.array([-0.5, -0.22, 0.5, 0.5, 0.25, -0.5])
    for x, bad in ((logp, np.nan), (old, -np.inf), (ref, np.inf)):
        x[mask == 0] = bad
    return logp, old, ref, adv, mask


def _f32(*xs):
    return [jnp.asarray(x, jnp.float32) for x in xs]


# ---------------------------------------------------------------- advantages

@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(scale):
    """Oracle: (R - group mean) / (population std + eps) (or without the division) in NumPy float64;
    the equal group [0.1] * 3 (whose float32 mean is not exactly 0.1) gets exactly 0."""
    rng = np.random.RandomState(1)
    rewards = np.concatenate([rng.normal(0, 2, (3, 3)), np.full((1, 3), 0.1),
                              np.array([[1.0, 0.0, 0.0]])])
    got = np.asarray(group_advantages(jnp.asarray(rewards, jnp.float32), scale=scale, eps=1e-4))
    want = np_advantages(rewards.astype(np.float32), scale, 1e-4)
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-5)
    assert np.all(got[3] == 0.0)
    assert np.all(np.isfinite(got))


def test_group_advantages_degenerate_groups_are_zero():
    """Oracle: a group with one generation, or equal rewards (even with eps = 0), has no relative
    signal: exactly 0 and no NaN."""
    one = np.asarray(group_advantages(jnp.asarray([[3.0], [-1.0]])))
    assert np.all(one == 0.0)
    flat = np.asarray(group_advantages(jnp.asarray([[0.1, 0.1, 0.1], [1.0, 2.0, 3.0]]), eps=0.0))
    assert np.all(flat[0] == 0.0)
    np.testing.assert_allclose(flat[1], np.array([-1.0, 0.0, 1.0]) / np.sqrt(2 / 3), rtol=1e-6)


# ---------------------------------------------------------------- sequence log-probs

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sequence_logprobs_match_numpy(dtype):
    """Oracle: NumPy float64 log-softmax of the (dtype-rounded) logits, gathered at tokens[b, t] from
    position t's row; the result is float32 even for bfloat16 logits, and large logits stay finite."""
    rng = np.random.RandomState(2)
    logits = jnp.asarray(rng.normal(0, 30, (3, 5, 11)), dtype)
    tokens = rng.randint(0, 11, (3, 5))
    got = np.asarray(sequence_logprobs(logits, jnp.asarray(tokens)))
    ref = np_log_softmax(np.asarray(logits.astype(jnp.float32), np.float64))
    want = np.take_along_axis(ref, tokens[..., None], -1)[..., 0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-4)


# ---------------------------------------------------------------- the loss

@pytest.mark.parametrize("normalize", ["token", "sequence", "constant"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_grpo_loss_matches_numpy(normalize, beta):
    """Oracle: np_grpo, the clipped surrogate and k3 token by token in float64 with the normalization
    from its definition: loss value, the metrics and d loss / d logp (0 on clipped tokens, 0 off the
    mask). The data exercise both sides of the asymmetric clip and ratios outside the range whose
    clip is inactive (the sign of A decides)."""
    logp, old, ref, adv, mask = _batch()
    want_loss, want_metrics, want_grad = np_grpo(logp, old, adv, mask, ref, beta, normalize)
    assert want_metrics["clip_low_fraction"] > 0 and want_metrics["clip_high_fraction"] > 0
    m = mask != 0
    r = np.exp(logp - old)
    outside_inactive = m & (((adv[:, None] > 0) & (r < 1 - EPS_LO)) | ((adv[:, None] < 0) & (r > 1 + EPS_HI)))
    assert outside_inactive.any()

    lp, ol, rf, ad = _f32(logp, old, ref, adv)

    def f(x):
        return grpo_loss(x, ol, ad, jnp.asarray(mask), epsilon=EPS_LO, epsilon_high=EPS_HI, beta=beta,
                         ref_logp=rf, normalize=normalize)

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(lp)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(float(loss), want_loss, rtol=RTOL, atol=ATOL)
    for k, v in want_metrics.items():
        assert metrics[k].dtype == jnp.float32 and metrics[k].shape == (), k
        np.testing.assert_allclose(float(metrics[k]), v, rtol=RTOL, atol=ATOL, err_msg=k)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=RTOL, atol=ATOL)


def test_grpo_loss_without_ref_and_symmetric_clip():
    """Oracle: np_grpo with beta 0 and no reference (kl metric 0), epsilon_high defaulting to epsilon
    (the clip [0.8, 1.2] on both sides); under jax.jit, the hyperparameters being Python floats."""
    logp, old, _, adv, mask = _batch(seed=3)
    want_loss, want_metrics, _ = np_grpo(logp, old, adv, mask, None, 0.0, "token", 0.2, 0.2)
    loss, metrics = jax.jit(lambda *a: grpo_loss(*a, epsilon=0.2))(*_f32(logp, old, adv), jnp.asarray(mask))
    np.testing.assert_allclose(float(loss), want_loss, rtol=RTOL, atol=ATOL)
    assert float(metrics["kl"]) == 0.0
    for k, v in want_metrics.items():
        np.testing.assert_allclose(float(metrics[k]), v, rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.mark.parametrize("normalize", ["token", "sequence", "constant"])
def test_empty_mask_gives_zero_loss_and_gradient(normalize):
    """Oracle: no scored token -> loss 0, metrics 0, gradient 0 (all finite), with NaN log-probs
    everywhere; and for "sequence", appending an empty row leaves the loss unchanged."""
    logp, old, ref, adv, _ = _batch(seed=4)
    lp, ol, rf, ad = _f32(logp, old, ref, adv)
    lp, ol = lp.at[:].set(jnp.nan), ol.at[:].set(-jnp.inf)
    zero = jnp.zeros(lp.shape, jnp.int32)
    (loss, metrics), grad = jax.value_and_grad(
        lambda x: grpo_loss(x, ol, ad, zero, beta=0.1, ref_logp=rf, normalize=normalize), has_aux=True)(lp)
    assert float(loss) == 0.0
    assert all(float(v) == 0.0 for v in metrics.values())
    assert np.all(np.asarray(grad) == 0.0)

    logp, old, ref, adv, mask = _batch(seed=5)
    base = grpo_loss(*_f32(logp, old, adv), jnp.asarray(mask), normalize="sequence")[0]
    pad = lambda x, v: np.concatenate([x, np.full((1,) + x.shape[1:], v, x.dtype)])
    padded = grpo_loss(*_f32(pad(logp, 0.0), pad(old, 0.0), pad(adv, 5.0)), jnp.asarray(pad(mask, 0)),
                       normalize="sequence")[0]
    np.testing.assert_allclose(float(padded), float(base), rtol=1e-6)


# ---------------------------------------------------------------- one iteration = REINFORCE

@pytest.mark.parametrize("normalize", ["token", "sequence", "constant"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_one_iteration_is_reinforce_with_group_baseline(normalize, beta):
    """Oracle: with old_logp = stop_gradient(logp) the ratio is 1, so the loss is -sum_t w_t A_b
    (+ beta sum_t w_t k3), and its gradient w.r.t. W of a linear-softmax policy (logits = x W) is
    -sum_t w_t (A_b - beta (1 - exp(ref - logp))) x_t^T (onehot(y_t) - p_t), with p_t = softmax(x_t W)
    and the advantages from group rewards, all derived by hand in NumPy float64."""
    rng = np.random.RandomState(6)
    p_, g_, t, d, v = 2, 3, 4, 3, 5
    b = p_ * g_
    x = rng.normal(0, 1, (b, t, d))
    w_mat = rng.normal(0, 0.5, (d, v))
    y = rng.randint(0, v, (b, t))
    rewards = rng.uniform(0, 1, (p_, g_))
    mask = (rng.uniform(size=(b, t)) < 0.7).astype(np.int32)
    mask[0] = 0
    mask[1] = 1
    ref = np.log(rng.dirichlet(np.ones(v), (b, t)))
    ref_y = np.take_along_axis(ref, y[..., None], -1)[..., 0]

    adv = np_advantages(rewards, True, 1e-4).reshape(-1)
    probs = np.exp(np_log_softmax(x @ w_mat))  # [B, T, V]
    logp_y = np.log(np.take_along_axis(probs, y[..., None], -1)[..., 0])
    wts = np_weights(mask, normalize)
    want_loss, want_grad = 0.0, np.zeros((d, v))
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            dlogp_dw = np.outer(x[i, j], np.eye(v)[y[i, j]] - probs[i, j])
            dd = ref_y[i, j] - logp_y[i, j]
            want_loss += wts[i, j] * (-adv[i] + beta * (np.exp(dd) - dd - 1))
            want_grad += -wts[i, j] * (adv[i] - beta * (1 - np.exp(dd))) * dlogp_dw

    a = group_advantages(jnp.asarray(rewards, jnp.float32)).reshape(-1)
    xs, rf = _f32(x, ref_y)

    def loss_of(w):
        logp = sequence_logprobs(jnp.einsum("btd,dv->btv", xs, w), jnp.asarray(y))
        return grpo_loss(logp, jax.lax.stop_gradient(logp), a, jnp.asarray(mask), epsilon=EPS_LO,
                         epsilon_high=EPS_HI, beta=beta, ref_logp=rf if beta else None,
                         normalize=normalize)

    (loss, metrics), grad = jax.value_and_grad(loss_of, has_aux=True)(jnp.asarray(w_mat, jnp.float32))
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-5)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0


# ---------------------------------------------------------------- errors

def _args(b=2, t=3):
    z = jnp.zeros((b, t), jnp.float32)
    return dict(logp=z, old_logp=z, advantages=jnp.zeros((b,)), mask=jnp.ones((b, t), jnp.int32))


@pytest.mark.parametrize("change, name", [
    (dict(beta=0.1), "beta"),
    (dict(beta=-0.1, ref_logp=jnp.zeros((2, 3))), "beta"),
    (dict(normalize="tokens"), "normalize"),
    (dict(logp=jnp.zeros((2, 3, 1))), "logp"),
    (dict(old_logp=jnp.zeros((2, 4))), "old_logp"),
    (dict(mask=jnp.ones((3, 3))), "mask"),
    (dict(advantages=jnp.zeros((2, 1))), "advantages"),
    (dict(advantages=jnp.zeros((6,))), "advantages"),
    (dict(beta=0.1, ref_logp=jnp.zeros((2,))), "ref_logp"),
    (dict(epsilon=-0.1), "epsilon"),
    (dict(epsilon_high=-0.1), "epsilon_high"),
])
def test_grpo_loss_errors_name_the_argument(change, name):
    """Oracle: each bad argument raises ValueError whose message starts with that argument's name."""
    kw = {**_args(), **change}
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        grpo_loss(kw.pop("logp"), kw.pop("old_logp"), kw.pop("advantages"), kw.pop("mask"), **kw)


def test_shape_errors_of_advantages_and_logprobs():
    """Oracle: rewards not [P, G], logits not [B, T, V], tokens not logits' [B, T] raise ValueError
    naming the argument."""
    with pytest.raises(ValueError, match=r"^rewards\b"):
        group_advantages(jnp.zeros((6,)))
    with pytest.raises(ValueError, match=r"^logits\b"):
        sequence_logprobs(jnp.zeros((2, 5)), jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"^tokens\b"):
        sequence_logprobs(jnp.zeros((2, 5, 7)), jnp.zeros((2, 4), jnp.int32))
