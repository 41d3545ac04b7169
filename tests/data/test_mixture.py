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


# ------------------------------------------------------------------------------ through prepare

VOCAB = [f"w{i}" for i in range(5000)]


pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


def source_rows(tag, n, seed, categories=("x",)):
    """n distinct chat rows whose user content starts with `tag` (so a row's source is known)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(VOCAB, 12))
        rows.append({"messages": [{"role": "user", "content": f"{tag} {i} {words}"},
                                  {"role": "assistant", "content": " ".join(rng.choice(VOCAB, 12))}],
                     "category": categories[i % len(categories)]})
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def prepare_run(*argv):
    from r1jax.data import prepare
    return prepare.main([str(a) for a in argv])


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def tags(rows):
    return collections.Counter(r["messages"][0]["content"].split()[0] for r in rows)


@pytest.fixture
def two_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", source_rows("alpha", 600, 0, ("x", "y", "z")))
    b = write_jsonl(tmp_path / "b.jsonl", source_rows("beta", 200, 1, ("x", "y")))
    return a, b


def test_weights_met_and_val_test_untouched(tmp_path, two_sources):
    """Oracles: the sources' shares counted in train.jsonl against the weights (within 1%); val and
    test byte-identical to a run without weights (they keep the natural 3:1 mixture, also counted);
    an upsampled source's rows repeat whole; report.json's shares equal the counted ones."""
    a, b = two_sources
    common = ["--val", 0.1, "--test", 0.05, "--seed", 4]
    assert prepare_run("--input", a, b, "--out", tmp_path / "plain", *common) == 0
    assert prepare_run("--input", a, b, "--out", tmp_path / "mix", "--weights", 3, 7, *common) == 0
    plain, mixed = tmp_path / "plain", tmp_path / "mix"
    for split in ("val", "test"):
        assert (plain / f"{split}.jsonl").read_bytes() == (mixed / f"{split}.jsonl").read_bytes()
        natural = tags(lines(plain / f"{split}.jsonl"))
        assert abs(natural["alpha"] / sum(natural.values()) - 0.75) <= 0.01
    train_plain, train = lines(plain / "train.jsonl"), lines(mixed / "train.jsonl")
    assert len(train) == len(train_plain)                      # the training split keeps its size
    counted = tags(train)
    assert abs(counted["beta"] / len(train) - 0.7) <= 0.01 and abs(counted["alpha"] / len(train) - 0.3) <= 0.01
    beta_rows = collections.Counter(json.dumps(r) for r in train if r["messages"][0]["content"].startswith("beta"))
    beta_plain = {json.dumps(r) for r in train_plain if r["messages"][0]["content"].startswith("beta")}
    q = counted["beta"] // len(beta_plain)                  # upsampled: each row floor(t/n) or one more times
    assert set(beta_rows) == beta_plain and set(beta_rows.values()) <= {q, q + 1} and q >= 2
    rep = json.load(open(mixed / "report.json"))
    srcs = rep["mixture"]["training"]["train"]["sources"]
    assert [s["after"]["records"] for s in srcs] == [counted["alpha"], counted["beta"]]
    assert [s["before"]["records"] for s in srcs] == [tags(train_plain)["alpha"], tags(train_plain)["beta"]]
    assert rep["splits"]["train"]["examples"] == len(train)


def test_mixture_file_equals_flags_and_resolved_mixture_reruns(tmp_path, two_sources):
    """Oracles: a --mixture YAML file naming the same sources and weights prepares byte-identical
    splits to --input/--weights; DIR/mixture.json, given back as --mixture, does too."""
    a, b = two_sources
    assert prepare_run("--input", a, b, "--weights", 1, 1, "--max_per_category", 150, "--out",
                       tmp_path / "flags") == 0
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"max_per_category: 150\nsources:\n  - path: a.jsonl\n    weight: 1\n"
                   f"  - path: {b}\n    weight: 1.0\n")
    assert prepare_run("--mixture", mix, "--out", tmp_path / "file") == 0
    assert prepare_run("--mixture", tmp_path / "file" / "mixture.json", "--out", tmp_path / "again") == 0
    for name in ("train.jsonl", "val.jsonl", "train.ids.npy", "train.mask.npy"):
        ref = (tmp_path / "flags" / name).read_bytes()
        assert (tmp_path / "file" / name).read_bytes() == ref
        assert (tmp_path / "again" / name).read_bytes() == ref
    resolved = json.load(open(tmp_path / "file" / "mixture.json"))
    assert [s["path"] for s in resolved["sources"]] == [a, b] and resolved["max_per_category"] == 150


def test_max_per_category_caps_training_categories(tmp_path, two_sources):
    """Oracle: categories counted in train.jsonl: each at most the cap, each category under it kept
    whole (as in the run without a cap); val untouched."""
    a, b = two_sources
    assert prepare_run("--input", a, b, "--out", tmp_path / "plain") == 0
    assert prepare_run("--input", a, b, "--max_per_category", 150, "--out", tmp_path / "cap") == 0
    before = collections.Counter(r["category"] for r in lines(tmp_path / "plain" / "train.jsonl"))
    after = collections.Counter(r["category"] for r in lines(tmp_path / "cap" / "train.jsonl"))
    assert after == {c: min(n, 150) for c, n in before.items()} and max(before.values()) > 150
    assert (tmp_path / "plain" / "val.jsonl").read_bytes() == (tmp_path / "cap" / "val.jsonl").read_bytes()
    summary = (tmp_path / "cap" / "summary.txt").read_text()
    assert "max_per_category 150" in summary


def test_kfold_shapes_each_fold_training_part(tmp_path, two_sources):
    """Oracle: each fold's train counted against the weights (within 1%); each fold's val is the
    same as without weights."""
    a, b = two_sources
    assert prepare_run("--input", a, b, "--kfold", 3, "--out", tmp_path / "plain") == 0
    assert prepare_run("--input", a, b, "--kfold", 3, "--weights", 1, 3, "--out", tmp_path / "mix") == 0
    for k in range(3):
        fold = tmp_path / "mix" / f"fold{k}"
        counted = tags(lines(fold / "train.jsonl"))
        assert abs(counted["beta"] / sum(counted.values()) - 0.75) <= 0.01
        assert (fold / "val.jsonl").read_bytes() == (tmp_path / "plain" / f"fold{k}" / "val.jsonl").read_bytes()


@pytest.mark.parametrize("argv,message", [
    (["--weights", 1], "--weights has 1 value(s) for 2 input(s)"),
    (["--weights", 1, -2], "weight -2.0 for"),
    (["--max_per_category", 0], "--max_per_category 0: must be an integer >= 1"),
])
def test_bad_mixture_flags_exit_2_naming_them(tmp_path, two_sources, capsys, argv, message):
    a, b = two_sources
    assert prepare_run("--input", a, b, "--out", tmp_path / "out", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_inputs_and_mixture_exclude_each_other(tmp_path, two_sources, capsys):
    a, b = two_sources
    mix = tmp_path / "m.json"
    mix.write_text(json.dumps({"sources": [{"path": a}]}))
    assert prepare_run("--input", a, "--mixture", mix, "--out", tmp_path / "o") == 2
    assert prepare_run("--mixture", mix, "--weights", 1, "--out", tmp_path / "o") == 2
    assert prepare_run("--out", tmp_path / "o") == 2
    assert "one of the two" in capsys.readouterr().err


def test_weighted_source_left_empty_is_an_error(tmp_path, capsys):
    """A source whose every row is a duplicate of an earlier source's has nothing to draw from."""
    rows = source_rows("alpha", 50, 0)
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", rows)
    assert prepare_run("--input", a, b, "--weights", 1, 1, "--out", tmp_path / "o") == 2
    assert "b.jsonl has weight 1.0 but no training record" in capsys.readouterr().err


def test_mixture_columns_are_checked_when_loaded(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text("sources:\n  - path: a.parquet\n    columns: {prompt: problem, answer: solution}\n")
    with pytest.raises(MixtureError, match=r"sources\[0\].columns: --columns entry 'answer=solution': unknown field"):
        mixture.load(str(path))
