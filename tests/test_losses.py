"""Next-token targets and loss sums against a NumPy reference: same-segment rule, padding, the
data pipeline's loss_mask (position t predicts tokens[t+k] only where loss_mask[t+k] == 1)."""
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.losses import next_token_loss_sums, shifted_targets


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
