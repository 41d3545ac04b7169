"""Next-token targets and loss sums against a NumPy reference: same-segment rule, padding, the
data pipeline's loss_mask (position t predicts tokens[t+k] only where loss_mask[t+k] == 1)."""
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models.losses import next_token_loss_sums, shifted_targets


def _reference(logits, tokens, segment_ids, k, loss_mask):
    """Loop over every (row, t): NLL sum, count, correct count."""
    b, t, _ = logits.shape
    total = count = correct = 0.0
    for i in range(b):
        for j in range(t - k):
            s = segment_ids[i, j]
            if s == 0 or segment_ids[i, j + k] != s:
                continue
            if loss_mask is not None and loss_mask[i, j + k] != 1:
                continue
            x = logits[i, j].astype(np.float64)
            lse = np.log(np.exp(x - x.max()).sum()) + x.max()
            total += lse - x[tokens[i, j + k]]
            count += 1
            correct += float(np.argmax(x) == tokens[i, j + k])
    return total, count, correct


def _case(seed=0, b=3, t=12, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, (b, t)).astype(np.int32)
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3,     # two documents, then padding
                    [1] * 12,                         # one full-row document
                    [1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 0]], np.int32)
    mask = rng.integers(0, 2, (b, t)).astype(np.int32) * (seg > 0)
    return logits, tokens, seg, mask


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("with_mask", [False, True])
def test_loss_sums_match_reference(k, with_mask):
    logits, tokens, seg, mask = _case()
    lm = mask if with_mask else None
    got = next_token_loss_sums(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(seg), k=k,
                               loss_mask=None if lm is None else jnp.asarray(lm))
    want = _reference(logits, tokens, seg, k, lm)
    np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-5)


def test_targets_and_mask_positions():
    tokens = jnp.asarray([[10, 11, 12, 13, 14, 15]], jnp.int32)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 0]], jnp.int32)
    loss_mask = jnp.asarray([[0, 0, 1, 1, 0, 0]], jnp.int32)
    targets, m = shifted_targets(tokens, seg)
    np.testing.assert_array_equal(targets, [[11, 12, 13, 14, 15, 0]])
    np.testing.assert_array_equal(m, [[1, 1, 0, 1, 0, 0]])
    _, m = shifted_targets(tokens, seg, loss_mask=loss_mask)
    np.testing.assert_array_equal(m, [[0, 1, 0, 0, 0, 0]])  # only token 12 is a target here


def test_all_ones_loss_mask_equals_no_mask():
    logits, tokens, seg, _ = _case(seed=1)
    a = next_token_loss_sums(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(seg))
    ones = jnp.ones(tokens.shape, jnp.uint8)
    b = next_token_loss_sums(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(seg),
                             loss_mask=ones)
    np.testing.assert_array_equal([float(x) for x in a], [float(x) for x in b])


def test_chunked_loss_equals_full_logits_and_saves_memory():
    """The chunked LM head + cross-entropy gives the same sums and gradients as full logits, and
    the compiled step needs less temporary memory (no [B, T, V] float32 logits)."""
    import jax
    from r1jax.models.losses import chunked_loss_sums
    rng = np.random.RandomState(0)
    b, t, d, v = 2, 96, 16, 4096
    h = jnp.asarray(rng.randn(b, t, d), jnp.float32)
    w = jnp.asarray(rng.randn(d, v) * 0.1, jnp.float32)
    tokens = jnp.asarray(rng.randint(0, v, (b, t)), jnp.int32)
    seg = jnp.ones((b, t), jnp.int32).at[1, 70:].set(0)
    lm = jnp.asarray(rng.randint(0, 2, (b, t)), jnp.int32)

    def full(h, w):
        return next_token_loss_sums(jnp.einsum("btd,dv->btv", h, w), tokens, seg, loss_mask=lm)

    def chunked(h, w):
        return chunked_loss_sums(h, w, tokens, seg, loss_mask=lm, chunk=40)  # span 20: 5 time-chunks, the last padded

    for a, b_ in zip(full(h, w), chunked(h, w)):
        np.testing.assert_allclose(float(b_), float(a), rtol=1e-6)
    g_full = jax.grad(lambda h, w: full(h, w)[0], argnums=(0, 1))(h, w)
    g_chunk = jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1))(h, w)
    for a, b_ in zip(g_full, g_chunk):
        np.testing.assert_allclose(np.asarray(b_), np.asarray(a), rtol=1e-5, atol=1e-7)
    mem = {name: jax.jit(jax.grad(lambda h, w, f=f: f(h, w)[0], argnums=(0, 1))).lower(h, w).compile()
           .memory_analysis().temp_size_in_bytes for name, f in (("full", full), ("chunked", chunked))}
    assert mem["chunked"] < mem["full"] / 2, mem
