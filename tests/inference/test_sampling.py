"""Sampling against NumPy references: greedy limit, top-p's smallest set, top-k, seeds, stop strings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.inference.sampling import SamplingSettings, cut_at_stop, filter_logits, row_keys, sample

# A known distribution, shuffled so that vocab order is not probability order.
PROBS = np.array([0.05, 0.4, 0.1, 0.03, 0.25, 0.02, 0.15])


def top_p_set(probs: np.ndarray, p: float) -> set[int]:
    """NumPy reference: the smallest set of most likely tokens whose mass is >= p."""
    order = np.argsort(-probs, kind="stable")
    mass = np.cumsum(probs[order])
    k = int(np.searchsorted(mass, p - 1e-12)) + 1  # first prefix reaching p
    return set(order[:min(k, len(probs))].tolist())


def kept(logits: np.ndarray) -> set[int]:
    return set(np.flatnonzero(np.isfinite(logits)).tolist())


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7, 0.85, 0.93, 0.99, 1.0])
def test_top_p_keeps_smallest_set_reaching_p(p):
    out = np.asarray(filter_logits(jnp.log(jnp.asarray(PROBS, jnp.float32))[None], 1.0, 0, p))[0]
    want = top_p_set(PROBS, p)
    assert kept(out) == want
    # the kept tokens keep their relative probabilities (renormalized)
    got = np.asarray(jax.nn.softmax(jnp.asarray(out)))
    ref = np.where(np.isin(np.arange(len(PROBS)), list(want)), PROBS, 0.0)
    np.testing.assert_allclose(got, ref / ref.sum(), atol=1e-6)


@pytest.mark.parametrize("spread", [6.0, 0.05])
def test_top_p_over_a_large_vocabulary(spread):
    """A peaked distribution (nucleus of tens) and a flat one (nucleus of thousands) over 3,000
    tokens keep the NumPy reference's set."""
    v = 3000
    logits = np.asarray(jax.random.normal(jax.random.key(2), (2, v)), np.float64) * spread
    out = np.asarray(filter_logits(jnp.asarray(logits, jnp.float32), 1.0, 0, 0.9))
    for row in range(2):
        probs = np.exp(logits[row] - logits[row].max())
        want = top_p_set(probs / probs.sum(), 0.9)
        assert (len(want) < 100) == (spread > 1)
        assert kept(out[row]) == want


def test_top_k_then_top_p_on_renormalized_mass():
    logits = jnp.log(jnp.asarray(PROBS, jnp.float32))[None]
    assert kept(np.asarray(filter_logits(logits, 1.0, 3, 1.0))[0]) == {1, 4, 6}  # 0.4, 0.25, 0.15
    # after top-3 the mass is 0.4/0.8, 0.25/0.8, 0.15/0.8: p=0.8 needs all three (0.5+0.3125 >= 0.8)
    top3 = np.zeros_like(PROBS)
    top3[[1, 4, 6]] = PROBS[[1, 4, 6]]
    for p in (0.45, 0.7, 0.85):
        assert kept(np.asarray(filter_logits(logits, 1.0, 3, p))[0]) == top_p_set(top3 / top3.sum(), p)


def test_temperature_to_zero_equals_greedy():
    logits = jax.random.normal(jax.random.key(1), (64, 300)) * 3
    keys = row_keys(0, jnp.arange(64), 0)
    greedy = np.asarray(sample(logits, keys, SamplingSettings(temperature=0.0)))
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), -1))
    cold = np.asarray(sample(logits, keys, SamplingSettings(temperature=1e-6, top_p=1.0)))
    np.testing.assert_array_equal(cold, greedy)


def test_samples_follow_the_filtered_distribution():
    """20,000 draws at temperature 2, top-p 0.8: frequencies match the NumPy distribution."""
    n, t, p = 20000, 2.0, 0.8
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, len(PROBS)))
    toks = np.asarray(sample(logits, row_keys(3, jnp.arange(n), 0), SamplingSettings(t, p, 0)))
    warm = PROBS ** (1 / t) / (PROBS ** (1 / t)).sum()
    keep = np.isin(np.arange(len(PROBS)), list(top_p_set(warm, p)))
    want = np.where(keep, warm, 0) / warm[keep].sum()
    freq = np.bincount(toks, minlength=len(PROBS)) / n
    np.testing.assert_allclose(freq, want, atol=0.012)  # ~4 standard errors
    assert freq[~keep].sum() == 0


def test_fixed_seed_reproduces_and_rows_are_independent():
    logits = jnp.zeros((8, 5000))  # uniform: any change of key shows
    s = SamplingSettings(1.0, 1.0, 0)
    a = np.asarray(sample(logits, row_keys(5, jnp.arange(8), 3), s))
    np.testing.assert_array_equal(a, np.asarray(sample(logits, row_keys(5, jnp.arange(8), 3), s)))
    assert (a != np.asarray(sample(logits, row_keys(6, jnp.arange(8), 3), s))).sum() >= 6
    assert (a != np.asarray(sample(logits, row_keys(5, jnp.arange(8), 4), s))).sum() >= 6
    # a prompt's draw depends on its index, not on the batch around it
    alone = np.asarray(sample(logits[:1], row_keys(5, jnp.asarray([6]), 3), s))
    assert alone[0] == a[6]


def test_stop_strings_cut_the_text():
    assert cut_at_stop("def f():\n    return 1\ndef g():", ["\ndef ", "\nclass "]) == \
        ("def f():\n    return 1", True)
    assert cut_at_stop("a STOP b END c", ["END", "STOP"]) == ("a ", True)  # the earliest wins
    assert cut_at_stop("no stop here", ["END"]) == ("no stop here", False)


def test_bad_settings_are_named():
    for kw, word in ((dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
                     (dict(top_k=-2), "top_k")):
        with pytest.raises(ValueError, match=word):
            SamplingSettings(**kw)
