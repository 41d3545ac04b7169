"""The training loader: well-formed packed and padded rows, every document once per epoch,
determinism by seed, exact resume from a JSON state (mid-epoch and across epochs), disjoint process
shards that together make the global batch."""
import collections
import json

import numpy as np
import pytest

from r1jax.data import token_store
from r1jax.data.loader import make_loader

T = 64          # seq_len
N_DOCS = 300
BASE = 1000     # token id = doc * BASE + position: a segment's first token names its document


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, N_DOCS)
    lengths[[3, 50, 77]] = [T, T + 1, 3 * T]       # exactly full, and two truncated
    lengths[10] = 0                                # empty: skipped
    docs = [{"input_ids": d * BASE + np.arange(n), "loss_mask": rng.integers(0, 2, n)}
            for d, n in enumerate(lengths)]
    prefix = str(tmp_path_factory.mktemp("split") / "train")
    token_store.write(prefix, docs)
    return prefix, lengths, docs


def _all(loader):
    return [b for b in loader]


def _segments(batches, lengths, docs):
    """Checks every row and returns the documents in order of appearance."""
    seen = []
    for b in batches:
        assert set(b) == {"tokens", "positions", "segment_ids", "loss_mask"}
        for v in b.values():
            assert v.dtype == np.int32 and v.shape == b["tokens"].shape and v.shape[1] == T
        for tok, pos, seg, mask in zip(b["tokens"], b["positions"], b["segment_ids"],
                                       b["loss_mask"]):
            used = int((seg > 0).sum())
            assert (seg[used:] == 0).all(), "padding only at the end of a row"
            for arr in (tok, pos, mask):
                assert (arr[used:] == 0).all(), "padding is 0 everywhere"
            ids = seg[:used]
            assert ids[0] == 1 if used else True
            assert (np.diff(ids) >= 0).all() and (np.diff(ids) <= 1).all()
            for s in range(1, int(ids.max(initial=0)) + 1):
                where = np.flatnonzero(seg == s)
                d = int(tok[where[0]]) // BASE
                n = min(int(lengths[d]), T)
                assert len(where) == n and where[-1] - where[0] == n - 1, "one contiguous document"
                np.testing.assert_array_equal(pos[where], np.arange(n))
                np.testing.assert_array_equal(tok[where], docs[d]["input_ids"][:n])
                np.testing.assert_array_equal(mask[where], docs[d]["loss_mask"][:n])
                seen.append(d)
    return seen


def _once_each(seen, lengths):
    assert collections.Counter(seen) == {d: 1 for d in np.flatnonzero(lengths > 0)}


@pytest.mark.parametrize("packing", [True, False])
def test_rows_well_formed_and_each_document_once_per_epoch(store, packing):
    prefix, lengths, docs = store
    loader = make_loader(prefix, seq_len=T, batch_size=4, seed=1, num_epochs=1, packing=packing)
    batches = _all(loader)
    assert len(batches) == loader.steps_per_epoch == loader.total_steps
    seen = _segments(batches, lengths, docs)
    _once_each(seen, lengths)
    rows = sum(len(b["tokens"]) for b in batches)
    filled = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    if packing:
        assert filled / rows / T > 0.9
    else:
        assert all(b["segment_ids"].max(axis=1).max() <= 1 for b in batches)
        assert rows == 4 * -(-int((lengths > 0).sum()) // 4)


def test_epochs_reshuffle_and_stop(store):
    prefix, lengths, docs = store
    loader = make_loader(prefix, seq_len=T, batch_size=4, seed=2, num_epochs=2)
    n0, n1 = loader.batches_in_epoch(0), loader.batches_in_epoch(1)
    batches = _all(loader)
    assert len(batches) == n0 + n1 == loader.total_steps
    e0, e1 = _segments(batches[:n0], lengths, docs), _segments(batches[n0:], lengths, docs)
    _once_each(e0, lengths)
    _once_each(e1, lengths)
    assert e0 != e1
    ordered = make_loader(prefix, seq_len=T, batch_size=4, shuffle=False, num_epochs=2)
    seen = _segments(_all(ordered), lengths, docs)
    half = len(seen) // 2
    assert seen[:half] == seen[half:]


def test_deterministic_by_seed(store):
    prefix, *_ = store

    def run(seed, prefetch=4):
        loader = make_loader(prefix, seq_len=T, batch_size=4, seed=seed, prefetch=prefetch)
        return np.stack([next(loader)["tokens"] for _ in range(6)])

    np.testing.assert_array_equal(run(5), run(5))
    np.testing.assert_array_equal(run(5), run(5, prefetch=0))  # threads change nothing
    assert not np.array_equal(run(5), run(6))


@pytest.mark.parametrize("packing", [True, False])
def test_resume_continues_with_the_exact_next_batch(store, packing):
    prefix, *_ = store
    kw = dict(seq_len=T, batch_size=4, seed=3, num_epochs=3, packing=packing)
    reference = _all(make_loader(prefix, **kw))
    n0 = make_loader(prefix, **kw).steps_per_epoch
    for k in (0, 5, n0 - 1, n0, n0 + 2, len(reference) - 1):
        first = make_loader(prefix, **kw)
        for _ in range(k):
            next(first)
        saved = json.dumps(first.get_state())
        first.close()
        resumed = make_loader(prefix, **kw)
        resumed.set_state(json.loads(saved))
        rest = _all(resumed)
        assert len(rest) == len(reference) - k, k
        for got, want in zip(rest, reference[k:]):
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"k={k} {key}")


def test_state_from_other_settings_is_refused(store):
    prefix, *_ = store
    state = make_loader(prefix, seq_len=T, batch_size=4, seed=3).get_state()
    other = make_loader(prefix, seq_len=T, batch_size=4, seed=4)
    with pytest.raises(ValueError, match="seed: saved 3, now 4"):
        other.set_state(state)


def test_process_shards_are_disjoint_and_make_the_global_batch(store):
    prefix, lengths, docs = store
    kw = dict(seq_len=T, batch_size=8, seed=7, num_epochs=1)
    whole = _all(make_loader(prefix, **kw))
    shards = [_all(make_loader(prefix, **kw, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(whole)
    assert all(b["tokens"].shape == (4, T) for s in shards for b in s)
    seen = [_segments(s, lengths, docs) for s in shards]
    assert not set(seen[0]) & set(seen[1])
    _once_each(seen[0] + seen[1], lengths)
    for g, b0, b1 in zip(whole, *shards):
        for key in g:
            np.testing.assert_array_equal(g[key], np.concatenate([b0[key], b1[key]]))
    # A state saved on 2 processes resumes on 1 (the global batches do not depend on it).
    two = make_loader(prefix, **kw, process_index=1, process_count=2)
    for _ in range(3):
        next(two)
    one = make_loader(prefix, **kw)
    one.set_state(json.loads(json.dumps(two.get_state())))
    np.testing.assert_array_equal(next(one)["tokens"], whole[3]["tokens"])


def test_bad_arguments_say_what_is_wrong(store):
    prefix, *_ = store
    with pytest.raises(ValueError, match="multiple of process_count 3"):
        make_loader(prefix, seq_len=T, batch_size=4, process_count=3)
    with pytest.raises(FileNotFoundError, match="prepare"):
        make_loader(prefix + "_missing", seq_len=T, batch_size=4)
