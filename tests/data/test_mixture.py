"""Mixture rules (r1jax/data/mixture.py): targets, category caps, resampling and mixture files.

Oracles: shares counted by hand from the returned indices against w_s / sum(w) (the rule's
definition), hand-computed largest-remainder roundings, and files written in the test."""
import collections
import json
import os

import numpy as np
import pytest

from r1jax.data import mixture
from r1jax.data.mixture import MixtureError


@pytest.mark.parametrize("total,weights,expected", [
    (10, [7, 3], [7, 3]),
    (10, [1, 1, 1], [4, 3, 3]),           # remainders tie: the earliest source gets the extra record
    (7, [0.5, 0.25, 0.25], [3, 2, 2]),    # exact 3.5, 1.75, 1.75: floors 3, 1, 1; the .75s get the 2 left
    (5, [0, 1], [0, 5]),
])
def test_targets_largest_remainder(total, weights, expected):
    """Oracle: the rounding worked by hand (floor of each exact share, then one each to the largest
    remainders)."""
    assert mixture.targets(total, weights) == expected


@pytest.mark.parametrize("weights", [[7, 3], [1, 1, 2], [0.2, 0.0, 0.8], [5, 1, 1]])
def test_resample_meets_weights_and_repeats_whole_records(weights):
    """Oracle: each source's share of the result against w_s / sum(w) (within 1/N); a downsampled
    source has no repeats, an upsampled one repeats each record floor(t/n) or floor(t/n)+1 times."""
    rng = np.random.default_rng(0)
    origins = list(rng.integers(0, len(weights), 3000))
    train = sorted(rng.choice(3000, 2400, replace=False).tolist())
    out = mixture.resample(train, origins, weights, seed=3, names=[f"s{i}" for i in range(len(weights))])
    assert len(out) == len(train) and out == sorted(out) and set(out) <= set(train)
    counts = collections.Counter(origins[i] for i in out)
    for s, w in enumerate(weights):
        assert abs(counts[s] / len(out) - w / sum(weights)) <= 1 / len(out)
        available = [i for i in train if origins[i] == s]
        reps = collections.Counter(i for i in out if origins[i] == s)
        if counts[s] <= len(available):
            assert all(r == 1 for r in reps.values())
        else:
            q = counts[s] // len(available)
            assert set(reps) == set(available) and set(reps.values()) <= {q, q + 1}


def test_resample_is_seeded():
    """Oracle: the same seed gives the same draw, another seed another one."""
    origins = [i % 2 for i in range(100)]
    a = mixture.resample(range(100), origins, [1, 3], seed=0, names=["a", "b"])
    assert a == mixture.resample(range(100), origins, [1, 3], seed=0, names=["a", "b"])
    assert a != mixture.resample(range(100), origins, [1, 3], seed=1, names=["a", "b"])


def test_resample_source_without_records_is_named():
    with pytest.raises(MixtureError, match="b.jsonl has weight 1.0 but no training record"):
        mixture.resample([0, 1], [0, 0, 1], [1.0, 1.0], 0, ["a.jsonl", "b.jsonl"])


def test_cap_categories():
    """Oracle: each category keeps min(its count, cap) of its own records; uncategorized records
    form one category."""
    cats = ["a"] * 10 + ["b"] * 3 + [None] * 6
    kept = mixture.cap_categories(range(len(cats)), cats, 4, seed=0)
    by = collections.Counter(cats[i] for i in kept)
    assert by == {"a": 4, "b": 3, None: 4}
    assert kept == sorted(set(kept))
    assert mixture.cap_categories(range(5), cats, None, 0) == list(range(5))


@pytest.mark.parametrize("weights,match", [
    ([1.0], "has 1 value\\(s\\) for 2 input\\(s\\)"),
    ([1.0, -0.5], "weight -0.5 for b.parquet must be a finite number >= 0"),
    ([0.0, 0.0], "every weight is 0"),
    ([1.0, float("nan")], "weight nan for b.parquet"),
])
def test_weight_errors(weights, match):
    with pytest.raises(MixtureError, match=match):
        mixture.from_args(["a.jsonl", "b.parquet"], weights, None)


def test_strata_keep_one_source_as_categories():
    """Oracle: with one source the strata are the categories themselves (splits as without a
    mixture); with two, records of different sources never share a stratum."""
    assert mixture.strata([0, 0], ["x", None], 1) == ["x", None]
    s = mixture.strata([0, 1, 0, 1], ["x", "x", None, None], 2)
    assert len(set(s)) == 4 and s[0] != s[1]


def test_load_yaml_and_json(tmp_path):
    """Oracle: the file's fields, paths resolved against the file's folder."""
    yml = tmp_path / "mix.yaml"
    yml.write_text("max_per_category: 50\nsources:\n"
                   "  - path: data/*.parquet\n    weight: 0.7\n    columns: {prompt: problem, completion: solution}\n"
                   "    input_format: parquet\n"
                   "  - path: /abs/traces.jsonl\n    weight: 0.3\n    columns: prompt=q,completion=a\n")
    m = mixture.load(str(yml))
    assert m.max_per_category == 50 and m.weights == [0.7, 0.3]
    assert m.sources[0] == mixture.Source(os.path.join(str(tmp_path), "data/*.parquet"), 0.7,
                                          "prompt=problem,completion=solution", "parquet", None)
    assert m.sources[1].path == "/abs/traces.jsonl" and m.sources[1].columns == "prompt=q,completion=a"
    js = tmp_path / "mix.json"
    js.write_text(json.dumps({"sources": [{"path": "a.jsonl"}, {"path": "b.jsonl"}]}))
    m = mixture.load(str(js))
    assert m.weights is None and m.max_per_category is None and len(m.sources) == 2


@pytest.mark.parametrize("content,match", [
    ("sources: []\n", "'sources' must be a non-empty list"),
    ("sources:\n  - path: a.jsonl\n    wieght: 1\n", r"sources\[0\].wieght: unknown key"),
    ("sources:\n  - path: a.jsonl\n    weight: 1\n  - path: b.jsonl\n", r"sources\[1\].weight is missing"),
    ("sources:\n  - path: a.jsonl\n    weight: -1\n", "weight -1.0 for sources\\[0\\]"),
    ("sources:\n  - weight: 1\n", r"sources\[0\].path: missing"),
    ("sources:\n  - path: a.jsonl\n    weight: heavy\n", r"sources\[0\].weight: 'heavy' is not a number"),
    ("sources:\n  - path: a.jsonl\n    columns: [prompt]\n", r"sources\[0\].columns: must map"),
    ("max_per_category: 0\nsources:\n  - path: a.jsonl\n", "max_per_category 0: must be an integer >= 1"),
    ("srcs:\n  - path: a.jsonl\n", "unknown key 'srcs'"),
    ("sources: [\n", "not valid YAML"),
])
def test_load_errors_name_the_key(tmp_path, content, match):
    path = tmp_path / "mix.yaml"
    path.write_text(content)
    with pytest.raises(MixtureError, match=match) as e:
        mixture.load(str(path))
    assert str(path) in str(e.value)
