"""`python -m r1jax.data prepare`: normalization, duplicates and near-duplicates, required fields,
length limits, stratified splits and k-fold, strict and lenient bad lines, the token store, the
report, and untouched inputs. prepare runs in-process through `prepare.main(argv)`."""
import argparse
import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from datasketch import MinHash

from r1jax.data import batch_tokenize, clean, prepare, split
from r1jax.data import report as report_lib
from r1jax.data import chat as chat_lib
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.chat import tokenize_example, turn_examples
from r1jax.data.formats import parse_row
from r1jax.data.token_store import TokenStore

VOCAB = [f"w{i}" for i in range(5000)]


pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


def words(rng, n):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def chat(user, answer, reasoning=None, category=None):
    a = {"role": "assistant", "content": answer}
    if reasoning is not None:
        a["reasoning_content"] = reasoning
    row = {"messages": [{"role": "user", "content": user}, a]}
    if category is not None:
        row["category"] = category
    return row


def distinct_rows(n, seed=0, categories=None):
    rng = random.Random(seed)
    return [chat(words(rng, 12), words(rng, 12), category=categories[i] if categories else None)
            for i in range(n)]


def write_input(path, rows):
    with open(path, "wb") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode("utf-8") + b"\n")
    return str(path)


def run_prepare(tmp_path, rows, *flags, name="in.jsonl", out="out"):
    src = write_input(tmp_path / name, rows)
    out = str(tmp_path / out)
    rc = prepare.main(["--input", src, "--out", out, *flags])
    report = os.path.join(out, "report.json")
    return rc, out, json.load(open(report)) if os.path.exists(report) else None


def read_rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def contents(rows):
    return [r["messages"][0]["content"] + "|" + r["messages"][-1]["content"] for r in rows]


def test_normalize_text():
    assert clean.normalize_text("  e\u0301\r\nx\ry\u2028z \x00a\x07\x1b\ufeffb\tc\n\n ") == "\u00e9\nx\ny\nz ab\tc"
    ex = clean.normalize_example(parse_row(
        {"messages": [{"role": "system", "content": " \r\n "},
                      {"role": "user", "content": "Cafe\u0301\r\n"},
                      {"role": "assistant", "content": "ok\x00", "reasoning_content": " \x07 "}],
         "category": " math "}, "f:1"))
    assert [(m.role, m.content, m.reasoning) for m in ex.messages] == [
        ("user", "Caf\u00e9", None), ("assistant", "ok", None)]  # empty system dropped, empty reasoning None
    assert ex.category == "math"


def test_normalization_reaches_outputs(tmp_path):
    rows = [chat("Cafe\u0301 \x07menu\r\nplease  ", "  Voila\x00\tici\r\n", reasoning="think\x1b\r\nhard"),
            {"prompt": "p\u2028q", "completion": "r"}]
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0")
    assert rc == 0
    got = read_rows(os.path.join(out, "train.jsonl"))
    assert got[0]["messages"] == [{"role": "user", "content": "Caf\u00e9 menu\nplease"},
                                  {"role": "assistant", "content": "Voila\tici", "reasoning_content": "think\nhard"}]
    assert got[1]["messages"][0]["content"] == "p\nq"


def test_duplicates_and_near_duplicates_keep_the_first(tmp_path):
    rng = random.Random(1)
    long_answer = words(rng, 150).split()
    near = list(long_answer)
    near[75] = "changed"
    rows = [
        chat("Hello there", "General Kenobi"),
        chat("Hello there\r\n", "General Kenobi  "),            # exact after normalization
        chat("Write an essay", " ".join(long_answer)),
        chat("Other question", "Other answer"),
        chat("Write an essay", " ".join(near)),                 # one word of 150 changed
        chat("Hello   there", "General Kenobi"),                # same words, other spacing: near
        chat("Write an essay", words(rng, 150)),                # same prompt, unrelated answer: kept
    ]
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0")
    assert rc == 0
    removed = rep["records"]["removed"]
    assert (removed["duplicate"], removed["near_duplicate"]) == (1, 2)
    ex = {r: [(e["where"].rsplit(":", 1)[1], e["detail"]) for e in rep["examples"][r]]
          for r in ("duplicate", "near_duplicate")}
    assert ex["duplicate"] == [("2", "same content as " + str(tmp_path / "in.jsonl") + ":1")]
    assert [w for w, _ in ex["near_duplicate"]] == ["5", "6"]
    assert "in.jsonl:3" in ex["near_duplicate"][0][1] and "in.jsonl:1" in ex["near_duplicate"][1][1]
    kept = read_rows(os.path.join(out, "train.jsonl"))
    assert [r["messages"][-1]["content"] for r in kept[:3]] == [
        "General Kenobi", " ".join(long_answer), "Other answer"]  # the first occurrences
    assert len(kept) == 4


def test_signatures_equal_datasketch_minhash():
    index = clean.NearDuplicateIndex(0.85)
    exs = [parse_row({"text": t}, "x") for t in ("a b c d e f g h", "one two", "x " * 3 + "y z w v")]
    exs.append(parse_row({"input_ids": list(range(40))}, "x"))
    hashes = [index.shingle_hashes(e) for e in exs]
    for h, sig in zip(hashes, index.signatures(hashes)):
        m = MinHash(num_perm=clean.NUM_PERM, seed=clean.MINHASH_SEED, hashfunc=int)
        m.update_batch(h.tolist())
        np.testing.assert_array_equal(sig, m.hashvalues)


def test_empty_fields_removed(tmp_path):
    rows = [chat("q", "a"),
            chat("", "answer"),
            chat("question", "", reasoning="only thinking"),
            {"text": " \t\r\n"},
            {"input_ids": [5, 6], "loss_mask": [0, 0]},
            {"messages": [{"role": "system", "content": "  "}, {"role": "user", "content": "q2"},
                          {"role": "assistant", "content": "a2"}]}]
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0")
    assert rc == 0 and rep["records"]["removed"]["empty"] == 4
    details = [e["detail"] for e in rep["examples"]["empty"]]
    assert "messages[1] (assistant) has empty content (it has reasoning only)" in details
    assert read_rows(os.path.join(out, "train.jsonl"))[1]["messages"][0] == {"role": "user", "content": "q2"}


def test_splits_disjoint_and_sized(tmp_path):
    rows = distinct_rows(100)
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0.1", "--test", "0.2", "--seed", "3")
    assert rc == 0
    got = {s: contents(read_rows(os.path.join(out, f"{s}.jsonl"))) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in got.items()} == {"train": 70, "val": 10, "test": 20}
    assert sorted(sum(got.values(), [])) == sorted(contents(rows))  # disjoint and complete
    # Same seed, same splits; another seed, other splits.
    _, out2, _ = run_prepare(tmp_path, rows, "--val", "0.1", "--test", "0.2", "--seed", "3", out="again")
    assert contents(read_rows(os.path.join(out2, "val.jsonl"))) == got["val"]
    _, out3, _ = run_prepare(tmp_path, rows, "--val", "0.1", "--test", "0.2", "--seed", "4", out="other")
    assert contents(read_rows(os.path.join(out3, "val.jsonl"))) != got["val"]


def test_stratified_counts(tmp_path):
    cats = ["algebra"] * 53 + ["code"] * 31 + ["chat"] * 9 + [None] * 7
    random.Random(0).shuffle(cats)
    rows = distinct_rows(100, categories=cats)
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0.15", "--test", "0.1")
    assert rc == 0
    n = {c: cats.count(c) for c in set(cats)}
    for s, frac in (("val", 0.15), ("test", 0.1)):
        got = read_rows(os.path.join(out, f"{s}.jsonl"))
        assert len(got) == round(100 * frac)
        for c in n:
            count = sum(r.get("category") == c for r in got)
            assert abs(count - n[c] * frac) < 1, (s, c, count)
        assert rep["splits"][s]["categories"] == {
            (c or "(none)"): sum(r.get("category") == c for r in got) for c in n
            if any(r.get("category") == c for r in got)}


def test_allocation_respects_capacity():
    parts = split.split(["a"] + ["b"] * 9, 0.45, 0.45, 0)
    assert sum(len(v) for v in parts.values()) == 10
    assert len(set(sum(parts.values(), []))) == 10


def test_kfold(tmp_path):
    cats = ["a"] * 20 + ["b"] * 10 + [None] * 5
    rows = distinct_rows(35, categories=cats)
    rc, out, rep = run_prepare(tmp_path, rows, "--kfold", "4", "--test", "0.2")
    assert rc == 0
    test = contents(read_rows(os.path.join(out, "test.jsonl")))
    assert len(test) == 7
    val_folds = []
    for k in range(4):
        tr = contents(read_rows(os.path.join(out, f"fold{k}", "train.jsonl")))
        va = contents(read_rows(os.path.join(out, f"fold{k}", "val.jsonl")))
        assert not set(tr) & set(va) and not (set(tr) | set(va)) & set(test)
        assert sorted(tr + va + test) == sorted(contents(rows))
        assert len(TokenStore(os.path.join(out, f"fold{k}", "val"))) == len(va)
        val_folds += va
    assert sorted(val_folds + test) == sorted(contents(rows))  # each example in exactly one val fold
    assert sorted(len(read_rows(os.path.join(out, f"fold{k}", "val.jsonl"))) for k in range(4)) == [7, 7, 7, 7]
    assert set(rep["splits"]) == {"test"} | {f"fold{k}/{s}" for k in range(4) for s in ("train", "val")}
    assert not os.path.exists(os.path.join(out, "train.jsonl"))


BAD_LINES = ['{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
             '{"prompt": "p", "completion": ',
             '[1, 2]',
             '',
             '{"messages": [{"role": "robot", "content": "x"}]}',
             '{"prompt": "only a prompt"}',
             '{"prompt": "p2", "completion": "c2"}']


def test_strict_stops_at_first_bad_line(tmp_path, capsys):
    rc, out, rep = run_prepare(tmp_path, BAD_LINES, "--strict")
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in.jsonl'}:2: invalid JSON" in err
    assert not os.path.exists(out) and rep is None


def test_lenient_counts_bad_lines(tmp_path):
    rc, out, rep = run_prepare(tmp_path, BAD_LINES, "--val", "0")
    assert rc == 0
    assert rep["records"]["read"] == 6 and rep["records"]["removed"]["malformed"] == 4
    where = [e["where"].rsplit(":", 1)[1] for e in rep["examples"]["malformed"]]
    assert where == ["2", "3", "5", "6"]
    assert all(e["where"].startswith(str(tmp_path / "in.jsonl")) for e in rep["examples"]["malformed"])
    assert "missing field 'completion'" in rep["examples"]["malformed"][3]["detail"]
    assert len(read_rows(os.path.join(out, "train.jsonl"))) == 2


def test_too_long_drop_and_truncate(tmp_path, tok):
    rng = random.Random(2)
    short = chat("short question", "short answer")
    long = chat("a question", words(rng, 100), reasoning=words(rng, 50))
    huge_prompt = chat(words(rng, 200), "answer")
    rows = [short, long, huge_prompt]
    full = tokenize_example(long, tok)
    prompt_len = clean.last_target_start(full["loss_mask"])
    limit = prompt_len + 20
    assert tokenize_example(short, tok)["input_ids"].__len__() <= limit < len(full["input_ids"])
    assert clean.last_target_start(tokenize_example(huge_prompt, tok)["loss_mask"]) >= limit

    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0", "--max_tokens", str(limit))
    assert rc == 0 and rep["records"]["removed"]["too_long"] == 2 and rep["records"]["kept"] == 1

    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0", "--max_tokens", str(limit),
                               "--too_long", "truncate", out="trunc")
    assert rc == 0 and rep["records"]["removed"]["too_long"] == 1 and rep["records"]["truncated"] == 1
    assert "prompt alone" in rep["examples"]["too_long"][0]["detail"]
    store = TokenStore(os.path.join(out, "train"))
    ids, mask = store[1]
    assert len(ids) == limit
    assert ids.tolist() == full["input_ids"][:limit]                # prompt intact, tail cut
    assert mask[:prompt_len].sum() == 0 and mask[prompt_len:].all()
    row = read_rows(os.path.join(out, "train.jsonl"))[1]
    assert row == {"input_ids": ids.tolist(), "loss_mask": mask.tolist()}


@pytest.mark.parametrize("all_turns", [False, True])
def test_token_store_matches_tokenize_example(tmp_path, tok, all_turns):
    rng = random.Random(5)
    rows = distinct_rows(12, seed=4) + [
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": words(rng, 8)},
                      {"role": "assistant", "content": "<think>r1</think>" + words(rng, 8)},
                      {"role": "user", "content": words(rng, 8)},
                      {"role": "assistant", "content": words(rng, 8), "reasoning_content": "r2"}]},
        {"text": words(rng, 20)}, {"input_ids": [3, 4, 5, 6]}, {"input_ids": [7, 8, 9], "loss_mask": [0, 1, 1]},
        {"input": "in " + words(rng, 5), "output": "out", "category": "io"}]
    flags = ["--val", "0.25"] + (["--train_all_turns"] if all_turns else [])
    rc, out, rep = run_prepare(tmp_path, rows, *flags)
    assert rc == 0 and rep["records"]["kept"] == len(rows)
    # With --train_all_turns the two-turn conversation is two rows, its prefix first.
    assert rep["records"]["training_examples"]["kept"] == len(rows) + all_turns
    for s in ("train", "val"):
        store = TokenStore(os.path.join(out, s))
        got = read_rows(os.path.join(out, f"{s}.jsonl"))
        assert len(store) == len(got) == rep["splits"][s]["examples"]
        for i, row in enumerate(got):
            want = tokenize_example(row, tok)
            ids, mask = store[i]
            assert ids.tolist() == want["input_ids"] and mask.tolist() == want["loss_mask"]
        assert rep["splits"][s]["tokens"] == len(store.ids)
        assert rep["splits"][s]["trained_tokens"] == int(store.mask.sum())


TRICKY = [
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},  # no reasoning
    {"messages": [{"role": "user", "content": "Größe? 日本語 🙂"},
                  {"role": "assistant", "content": "ünïcode 🙂 answer", "reasoning_content": "\n\nthink 日本\n"}]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "1"},
                  {"role": "assistant", "content": "x\n\n"}, {"role": "user", "content": "2"},
                  {"role": "assistant", "content": "</think>\n\ny", "reasoning_content": None}]},
    {"text": "<｜begin▁of▁sentence｜>already has BOS"}, {"text": "no BOS 🙂"},
    {"input_ids": [9, 8, 7]}, {"input_ids": [9, 8, 7], "loss_mask": [1, 0, 1]},
]


def test_tokenize_batch_equals_tokenize_example(tok):
    rng = random.Random(7)
    rows = TRICKY + distinct_rows(20, seed=9) + [chat(words(rng, 30), words(rng, 30), words(rng, 30))]
    exs = [t for i, r in enumerate(rows) for t in turn_examples(parse_row(r, f"t:{i}"))]  # with prefixes
    for ex, (ids, mask) in zip(exs, batch_tokenize.tokenize_batch(exs, tok), strict=True):
        want = tokenize_example(ex, tok)
        assert (ids.tolist(), mask.tolist()) == (want["input_ids"], want["loss_mask"]), ex.source


def test_report_and_inputs_unchanged(tmp_path, capsys):
    rows = distinct_rows(30, categories=["x", "y", "z"] * 10) + [rows for rows in BAD_LINES if rows]
    rows.append(distinct_rows(1)[0])  # duplicate of the first
    src = write_input(tmp_path / "in.jsonl", rows)
    other = write_input(tmp_path / "more.jsonl", ['{"text": "from a second file"}', '{"text": ""}'])
    digest = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (src, other)}
    out = str(tmp_path / "out")
    assert prepare.main(["--input", src, other, "--out", out, "--val", "0.2"]) == 0
    assert {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (src, other)} == digest

    rep = json.load(open(os.path.join(out, "report.json")))
    rec = rep["records"]
    assert set(rec["removed"]) == set(clean.REASONS)
    assert rec["read"] == rec["kept"] + sum(rec["removed"].values()) == 39
    assert rec["removed"]["duplicate"] == 1 and rec["removed"]["empty"] == 1
    assert rep["examples"]["empty"][0]["where"] == f"{other}:2"
    assert sum(s["examples"] for s in rep["splits"].values()) == rec["kept"]
    assert sum(c["examples"] for c in rep["categories"].values()) == rec["kept"]
    for s in rep["splits"].values():
        ln = s["length"]
        assert ln["min"] <= ln["p50"] <= ln["p90"] <= ln["p99"] <= ln["max"] and s["trained_tokens"] <= s["tokens"]
    assert set(rep["categories"]) == {"x", "y", "z", "(none)"}
    summary = open(os.path.join(out, "summary.txt"), encoding="utf-8").read()
    assert summary in capsys.readouterr().out and "records: read 39" in summary
    with open(os.path.join(out, "token_lengths.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_existing_output_and_overwrite(tmp_path, capsys):
    rows = distinct_rows(20)
    rc, out, _ = run_prepare(tmp_path, rows, "--val", "0.2", "--test", "0.2")
    assert rc == 0 and os.path.exists(os.path.join(out, "test.jsonl"))
    rc, _, _ = run_prepare(tmp_path, rows, "--val", "0.2")
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    rc, _, rep = run_prepare(tmp_path, rows, "--val", "0.2", "--overwrite")
    assert rc == 0 and set(rep["splits"]) == {"train", "val"}
    assert not any(os.path.exists(os.path.join(out, "test" + x))
                   for x in (".jsonl", ".ids.npy", ".mask.npy", ".offsets.npy"))  # stale split removed
    # An input inside the output directory is never overwritten.
    train = os.path.join(out, "train.jsonl")
    before = open(train, "rb").read()
    assert prepare.main(["--input", train, "--out", out, "--overwrite"]) == 2
    assert open(train, "rb").read() == before


@pytest.mark.parametrize("flags", [["--kfold", "3", "--val", "0.1"], ["--val", "0.6", "--test", "0.5"],
                                   ["--too_long", "truncate"], ["--near_dup_threshold", "0"],
                                   ["--kfold", "1"]])
def test_bad_options(tmp_path, capsys, flags):
    rc, out, _ = run_prepare(tmp_path, distinct_rows(5), *flags)
    assert rc == 2 and capsys.readouterr().err.startswith("error: ")
    assert not os.path.exists(out)


def test_kfold_above_examples_and_nothing_kept(tmp_path, capsys):
    rc, out, _ = run_prepare(tmp_path, distinct_rows(3), "--kfold", "5")
    assert rc == 2 and "--kfold 5" in capsys.readouterr().err and not os.path.exists(out)
    rc, out, rep = run_prepare(tmp_path, ['{"text": ""}', "nonsense"], out="none")
    assert rc == 1 and "no example left" in capsys.readouterr().err
    assert rep["records"] == {"read": 2, "kept": 0, "truncated": 0,
                              "removed": {"malformed": 1, "empty": 1, "contaminated": 0, "duplicate": 0,
                                          "near_duplicate": 0, "too_long": 0, "too_long_chars": 0, "too_long_line": 0},
                              "training_examples": {"kept": 0, "removed": {"duplicate": 0, "too_long": 0,
                                                                           "too_long_chars": 0}}}


# ---- the token format version ----------------------------------------------------------------

def _rewrite_meta(prefix, text):
    """Makes the split look prepared by another r1jax: `text` as its meta file, None for none."""
    meta = prefix + ".meta.json"
    os.remove(meta)
    if text is not None:
        with open(meta, "w") as f:
            f.write(text)


@pytest.mark.parametrize("meta", [None, '{"format_version": 1}', "not json"])
def test_split_of_another_format_version_is_refused(tmp_path, meta):
    """Oracle: the hand-written rule that a split without this version's meta file is refused with a
    one-line DataError naming the split and the prepare command, by the store and the loader alike;
    prepare --overwrite then makes it readable again."""
    from r1jax.data import token_store
    from r1jax.data.formats import DataError
    from r1jax.data.loader import make_loader
    rows = distinct_rows(8)
    rc, out, _ = run_prepare(tmp_path, rows, "--val", "0.25")
    prefix = os.path.join(out, "train")
    assert rc == 0 and json.load(open(prefix + ".meta.json")) == {"format_version": token_store.FORMAT_VERSION}
    _rewrite_meta(prefix, meta)
    for load in (TokenStore, lambda p: make_loader(p, seq_len=64, batch_size=2)):
        with pytest.raises(DataError) as err:
            load(prefix)
        msg = str(err.value)
        assert msg.startswith(f"{prefix}: this split was prepared ") and "\n" not in msg
        assert "python -m r1jax.data prepare" in msg and "--overwrite" in msg
    rc, _, _ = run_prepare(tmp_path, rows, "--val", "0.25", "--overwrite")
    assert rc == 0 and len(TokenStore(prefix)) == 6


def test_train_prepares_again_under_a_new_format_version(tmp_path, monkeypatch):
    """Oracle: directory identity. The trainer's cached preparation is reused while the token format
    version stays (the same directory); under another version the old one is refused and a new one
    is prepared into another directory, readable under that version."""
    import sys
    from pathlib import Path

    from r1jax.train import run_data as train_data
    from r1jax.data import token_store
    from r1jax.data.formats import DataError
    sys.path.insert(0, str(Path(__file__).parent))
    from train_fixtures import config
    write_input(tmp_path / "train.jsonl", distinct_rows(20))
    c = config(tmp_path, tmp_path / "run")
    first, _ = train_data.prepare_data(c, log=lambda s: None)
    assert train_data.prepare_data(c, log=lambda s: None)[0] == first
    monkeypatch.setattr(token_store, "FORMAT_VERSION", token_store.FORMAT_VERSION + 1)
    with pytest.raises(DataError, match="prepare it again"):
        TokenStore(first)
    new, _ = train_data.prepare_data(c, log=lambda s: None)
    assert os.path.dirname(new) != os.path.dirname(first)
    assert len(TokenStore(new)) == 18


def _tiny_tokenizer(**parts):
    """A PreTrainedTokenizerFast over a 3-token BPE ("a", "b", "ab"), with the given backend parts."""
    import tokenizers
    import transformers
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={"a": 0, "b": 1, "ab": 2, "<unk>": 3}, merges=[("a", "b")], **parts.pop("model", {})))
    for name, value in parts.items():
        setattr(backend, name, value)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend)


def test_max_token_chars(tok):
    """Oracle: by hand. R1's longest vocabulary pieces are 128 spaces and 128 dots, each one token,
    so 3 x 128 of either encode to exactly 3 tokens: a characters-per-token bound below 128 would
    call fitting rows too long. A tokenizer that can fold or drop characters (a normalizer, a fused
    unknown token, a pre-tokenizer that removes whitespace) gets no bound."""
    import tokenizers
    assert clean.max_token_chars(tok) == 128
    for piece in (" " * 128, "." * 128):
        assert len(tok.encode(piece * 3, add_special_tokens=False)) == 3
    assert clean.max_token_chars(_tiny_tokenizer()) == len("<unk>")
    assert clean.max_token_chars(_tiny_tokenizer(normalizer=tokenizers.normalizers.NFC())) is None
    assert clean.max_token_chars(_tiny_tokenizer(pre_tokenizer=tokenizers.pre_tokenizers.Whitespace())) is None
    assert clean.max_token_chars(_tiny_tokenizer(model={"unk_token": "<unk>", "fuse_unk": True})) is None
    assert clean.max_token_chars(_tiny_tokenizer(
        pre_tokenizer=tokenizers.pre_tokenizers.Sequence([tokenizers.pre_tokenizers.Digits(),
                                                          tokenizers.pre_tokenizers.ByteLevel()]))) == 5


def test_too_long_chars_dropped_before_tokenizing(tmp_path, tok, monkeypatch):
    """--max_tokens 16: rows over 16 x 128 = 2048 characters are dropped untokenized (too_long_chars),
    lines over 16 x (12 x 128 + 128) = 26624 bytes unread (too_long_line); the rest go on as before.
    Oracle: the counts by hand, and tokenize_example (the tokenizing path) says every removed row
    has more than 16 tokens while the row of 15 x 128 dots, just under the bound, fits exactly."""
    rng = random.Random(11)
    long_chat = chat("q", words(rng, 500))
    rows = [chat("short question", "short answer"),                          # 1 kept
            {"text": "." * (128 * 15)},                                       # 2 kept: BOS + 15 tokens
            {"text": "." * 2049},                                             # 3 too_long_chars
            long_chat,                                                        # 4 too_long_chars
            long_chat,                                                        # 5 too_long_chars, not duplicate
            {"text": "." * 2048},                                             # 6 at the bound: too_long
            {"messages": [{"role": "user", "content": "q"},                   # 7 kept: history reasoning
                          {"role": "assistant", "content": "a", "reasoning_content": "r " * 1500},
                          {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
            {"text": "x " * 14000}]                                           # 8 too_long_line
    lengths = [len(tokenize_example(r, tok)["input_ids"]) for r in rows]
    assert lengths[1] == 16 and lengths[6] == 16 and all(lengths[i] > 16 for i in (2, 3, 4, 5, 7))
    tokenized = []
    real = batch_tokenize.tokenize_batch
    monkeypatch.setattr(batch_tokenize, "tokenize_batch",
                        lambda exs, *a: tokenized.extend(e.source for e in exs) or real(exs, *a))
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0", "--max_tokens", "16")
    assert rc == 0
    assert rep["records"]["read"] == 8 and rep["records"]["kept"] == 3
    assert {r: n for r, n in rep["records"]["removed"].items() if n} == {
        "too_long_chars": 3, "too_long": 1, "too_long_line": 1}
    src = str(tmp_path / "in.jsonl")
    assert [e["where"] for e in rep["examples"]["too_long_chars"]] == [f"{src}:3", f"{src}:4", f"{src}:5"]
    assert rep["examples"]["too_long_chars"][0]["detail"].startswith("2049 characters > --max_tokens 16 x 128")
    assert rep["examples"]["too_long_line"] == [{"where": f"{src}:8", "detail": "line of 28012 bytes > 26624 for "
                                                 "--max_tokens 16: skipped unread"}]
    assert sorted(int(s.rsplit(":", 1)[1]) for s in tokenized) == [1, 2, 6, 7]  # the others untokenized
    store = TokenStore(os.path.join(out, "train"))
    for i, row in zip(range(3), (rows[0], rows[1], rows[6])):
        assert store[i][0].tolist() == tokenize_example(row, tok)["input_ids"]
    summary = open(os.path.join(out, "summary.txt"), encoding="utf-8").read()
    assert "too_long_chars 3, too_long_line 1" in summary


def test_too_long_chars_truncate_cuts_before_tokenizing(tmp_path, tok):
    """--max_tokens 16 --too_long truncate: a row over 2048 characters is cut to 17 x 128 characters of
    its trained tail, then tokenized and truncated. Oracle: the old path, tokenize_example of the
    uncut row cut to 16 tokens (`clean.fit_length`), gives the same ids and mask; a prompt over
    17 x 128 characters is dropped (too_long_chars), as the old path drops it (prompt >= 16)."""
    rng = random.Random(12)
    rows = [chat("a question", words(rng, 300), reasoning=words(rng, 300)),   # kept, cut in the reasoning
            chat("another question", words(rng, 600)),                         # kept, cut in the answer
            {"text": words(rng, 900)},                                         # kept, cut
            chat("q " * 1089, "answer"),                                       # too_long_chars: prompt
            chat("p " * 1088, words(rng, 100))]                                # too_long (tokens): prompt
    # Prompts of 2177 and 2175 characters once trimmed, either side of 17 x 128.
    assert [len(clean.normalize_text(r["messages"][0]["content"])) for r in rows[3:]] == [2177, 2175]
    rc, out, rep = run_prepare(tmp_path, rows, "--val", "0", "--max_tokens", "16", "--too_long", "truncate")
    assert rc == 0 and rep["records"]["kept"] == 3 and rep["records"]["truncated"] == 3
    assert {r: n for r, n in rep["records"]["removed"].items() if n} == {"too_long_chars": 1, "too_long": 1}
    assert "prompt alone" in rep["examples"]["too_long_chars"][0]["detail"]
    assert "prompt alone" in rep["examples"]["too_long"][0]["detail"]
    store = TokenStore(os.path.join(out, "train"))
    for i, row in enumerate(rows[:3]):
        full = tokenize_example(row, tok)
        want = clean.fit_length(np.asarray(full["input_ids"]), np.asarray(full["loss_mask"]), 16, "truncate")
        assert store[i][0].tolist() == want[0].tolist() and store[i][1].tolist() == want[1].tolist()
    for row in rows[3:]:
        full = tokenize_example(row, tok)
        assert isinstance(clean.fit_length(np.asarray(full["input_ids"]), np.asarray(full["loss_mask"]), 16,
                                           "truncate"), str)


_PEAK_RSS_CHILD = """
import json, resource, sys
from r1jax.data import prepare
from r1jax.data.tokenizer import load_tokenizer
small, big, out = sys.argv[1:4]
tok = load_tokenizer()
prepare.load_tokenizer = lambda path=None: tok  # one tokenizer: a second one would grow the heap too
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
# Two warm-up runs: the second still grows the heap by some 20 MB, later ones do not.
runs = [("warm0", small, "16384"), ("warm", small, "64"), ("line", big, "64"), ("chars", big, "16384")]
peaks = {}
for name, path, max_tokens in runs:
    assert prepare.main(["--input", path, "--out", f"{out}/{name}", "--val", "0", "--max_tokens", max_tokens]) == 0
    peaks[name] = peak()
print(json.dumps(peaks))
"""


def test_huge_line_bounded_memory(tmp_path):
    """A 20 MB line (a 20M-character completion) is removed without tokenizing, in bounded memory:
    with --max_tokens 64 its line is over the 106496-byte bound and skipped unread; with 16384 it
    is parsed (the line bound is 27 MB) and dropped for its characters (over 2097152). Oracle: the
    counts by hand; the peak RSS of the process (getrusage, in a subprocess, after warm-up runs of
    the same options on the two short rows) grows by under 1/4 of the line when skipping and under
    4 lines when parsing (measured: 0 and 2.4). Before, the line was tokenized whole: 25M tokens,
    12 GB and minutes for 50 MB."""
    line_bytes = 20 * 2**20
    short = [json.dumps({"prompt": "hello", "completion": "short answer"}),
             json.dumps({"prompt": "again", "completion": "another answer"})]
    small = write_input(tmp_path / "small.jsonl", short)
    filler = "w1 w22 w333 w4444 "
    huge = json.dumps({"prompt": "a lot", "completion": filler * (line_bytes // len(filler))})
    big = write_input(tmp_path / "big.jsonl", [short[0], huge, short[1]])
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, small, big, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    reps = {n: json.load(open(tmp_path / n / "report.json")) for n in ("line", "chars")}
    for name, reason in (("line", "too_long_line"), ("chars", "too_long_chars")):
        rec = reps[name]["records"]
        assert (rec["read"], rec["kept"]) == (3, 2)
        assert {r: n for r, n in rec["removed"].items() if n} == {reason: 1}
        assert reps[name]["examples"][reason][0]["where"] == f"{big}:2"
    assert peaks["line"] - peaks["warm"] < line_bytes / 4, peaks
    assert peaks["chars"] - peaks["warm"] < 4 * line_bytes, peaks


# ---- --train_all_turns: one example per assistant turn, split by conversation ---------------------

BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"


def turns_row(system, *turns):
    """A conversation row from (user, answer, reasoning or None) turns."""
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a, r in turns:
        msgs.append({"role": "user", "content": q})
        msgs.append({"role": "assistant", "content": a} | ({"reasoning_content": r} if r is not None else {}))
    return {"messages": msgs}


def test_train_all_turns_one_example_per_turn(tmp_path, tok):
    """Oracle: for each turn j, the R1 generation prompt for the history before it, written out by
    hand (earlier answers only, ending `<｜Assistant｜><think>\\n`) and encoded whole as generation
    does, then the hand-written target encoded alone; the rows written are the conversation's
    prefixes. The first user message is long, so every prefix is a near-duplicate of its
    conversation: screening whole conversations keeps them all."""
    rng = random.Random(21)
    long_q = words(rng, 120)
    a = turns_row("Be exact.", (long_q, "four", "Two plus two."), ("and " + words(rng, 3), "six", None),
                  ("then " + words(rng, 3), "seven", "Prime."))
    b = turns_row(None, (words(rng, 10), "x1", None), (words(rng, 4), "x2", None), (words(rng, 4), "x3", None))
    m = [x["content"] for x in a["messages"]]
    n = [x["content"] for x in b["messages"]]
    want = [  # (prompt, target) per training example, in order
        (f"{BOS}Be exact.{USER}{m[1]}{ASSISTANT}<think>\n", f"Two plus two.\n</think>\n\nfour{EOS}"),
        (f"{BOS}Be exact.{USER}{m[1]}{ASSISTANT}four{EOS}{USER}{m[3]}{ASSISTANT}<think>\n",
         f"\n</think>\n\nsix{EOS}"),
        (f"{BOS}Be exact.{USER}{m[1]}{ASSISTANT}four{EOS}{USER}{m[3]}{ASSISTANT}six{EOS}{USER}{m[5]}"
         f"{ASSISTANT}<think>\n", f"Prime.\n</think>\n\nseven{EOS}"),
        (f"{BOS}{USER}{n[0]}{ASSISTANT}<think>\n", f"\n</think>\n\nx1{EOS}"),
        (f"{BOS}{USER}{n[0]}{ASSISTANT}x1{EOS}{USER}{n[2]}{ASSISTANT}<think>\n", f"\n</think>\n\nx2{EOS}"),
        (f"{BOS}{USER}{n[0]}{ASSISTANT}x1{EOS}{USER}{n[2]}{ASSISTANT}x2{EOS}{USER}{n[4]}{ASSISTANT}<think>\n",
         f"\n</think>\n\nx3{EOS}"),
    ]
    rc, out, rep = run_prepare(tmp_path, [a, b], "--val", "0", "--train_all_turns")
    assert rc == 0 and rep["records"]["read"] == rep["records"]["kept"] == 2
    assert rep["records"]["training_examples"] == {"kept": 6, "removed": {"duplicate": 0, "too_long": 0,
                                                                         "too_long_chars": 0}}
    assert rep["splits"]["train"]["examples"] == 6
    assert "training examples: 6" in open(os.path.join(out, "summary.txt"), encoding="utf-8").read()
    store = TokenStore(os.path.join(out, "train"))
    assert len(store) == 6
    for i, (prompt, target) in enumerate(want):
        ids, mask = store[i]
        p, t = tokenizer_lib.encode(tok, prompt, add_bos=True), tokenizer_lib.encode(tok, target, add_bos=False)
        assert ids.tolist() == p + t, i
        assert mask.tolist() == [0] * len(p) + [1] * len(t), i
    prefixes = [{"messages": r["messages"][:end]} for r in (a, b) for end in (len(r["messages"]) - 4,
                                                                                len(r["messages"]) - 2, None)]
    assert read_rows(os.path.join(out, "train.jsonl")) == prefixes


def test_train_all_turns_keeps_each_conversation_in_one_split(tmp_path):
    """Oracle: by hand. Ten three-turn conversations with --val 0.5 (and with --kfold 2): each split
    holds five whole conversations, all three turn examples of each, consecutive and in turn order."""
    rng = random.Random(22)
    rows = [turns_row(None, *[(words(rng, 8), words(rng, 6), None) for _ in range(3)]) for _ in range(10)]
    first_q = {r["messages"][0]["content"]: i for i, r in enumerate(rows)}
    for flags, names in ((["--val", "0.5"], ("train", "val")),
                         (["--kfold", "2"], ("fold0/train", "fold0/val", "fold1/train", "fold1/val"))):
        rc, out, rep = run_prepare(tmp_path, rows, *flags, "--train_all_turns", "--overwrite")
        assert rc == 0 and rep["records"]["kept"] == 10 and rep["records"]["training_examples"]["kept"] == 30
        for fold in range(0, len(names), 2):
            owners = {}
            for name in names[fold:fold + 2]:
                got = read_rows(os.path.join(out, f"{name}.jsonl"))
                assert len(got) == 15 == len(TokenStore(os.path.join(out, name)))
                convs = [first_q[r["messages"][0]["content"]] for r in got]
                assert convs == [c for c in convs[::3] for _ in range(3)]  # whole, consecutive
                assert [len(r["messages"]) for r in got] == [2, 4, 6] * 5  # turn order
                assert [r["messages"] for r in got[2::3]] == [rows[c]["messages"] for c in convs[::3]]
                owners.update({c: name for c in convs})
            assert len(owners) == 10  # no conversation in both sides


def test_train_all_turns_length_and_duplicates_per_turn(tmp_path, tok):
    """--max_tokens 64: a turn too long is dropped (or truncated) alone, the conversation's other turns
    kept; a turn equal to one kept earlier (a conversation opening like another) is dropped; a
    conversation none of whose turns fits is removed whole. Oracle: counts and rows by hand, with
    token lengths checked on tokenize_example of the hand-made prefixes."""
    rng = random.Random(23)
    a = turns_row(None, ("open " + words(rng, 5), "first", None), (words(rng, 5), "second", None),
                  (words(rng, 5), words(rng, 150), "long"))
    b = turns_row(None, (a["messages"][0]["content"], "first", None), (words(rng, 5), words(rng, 5), None))
    c = turns_row(None, (words(rng, 80), "ok", None), (words(rng, 5), "ok2", None))
    length = lambda row, end: len(tokenize_example({"messages": row["messages"][:end]}, tok)["input_ids"])  # noqa: E731
    assert length(a, 4) <= 64 < length(a, 6) and length(b, 4) <= 64 and 64 < length(c, 2)
    prompt_a3 = len(tokenizer_lib.encode(tok, chat_lib.generation_prompt(parse_row(a, "a:1")), add_bos=True))
    assert prompt_a3 < 64  # room for a truncated target
    src = str(tmp_path / "in.jsonl")
    for mode, kept_a in (("drop", 2), ("truncate", 3)):
        rc, out, rep = run_prepare(tmp_path, [a, b, c], "--val", "0", "--train_all_turns", "--max_tokens", "64",
                                   "--too_long", mode, "--overwrite")
        assert rc == 0
        rec = rep["records"]
        assert (rec["read"], rec["kept"], rec["removed"]["too_long"]) == (3, 2, 1)
        assert rec["truncated"] == (mode == "truncate")
        assert rec["training_examples"] == {"kept": kept_a + 1, "removed": {
            "duplicate": 1, "too_long": int(mode == "drop"), "too_long_chars": 0}}
        where = {e["where"]: e["detail"] for r in ("too_long", "duplicate") for e in rep["examples"][r]}
        assert where[f"{src}:2 turn 1"] == f"same content as {src}:1 turn 1"
        assert where[f"{src}:3"].startswith("none of its 2 turns kept")
        assert (f"{src}:1 turn 3" in where) == (mode == "drop")
        got = read_rows(os.path.join(out, "train.jsonl"))
        assert got[:2] == [{"messages": a["messages"][:2]}, {"messages": a["messages"][:4]}]
        assert got[kept_a:] == [b]
        store = TokenStore(os.path.join(out, "train"))
        assert store.lengths().tolist()[:kept_a] == [length(a, 2), length(a, 4), 64][:kept_a]


# ---- inputs in any container (r1jax.data.readers; more in test_readers.py) ----------------------------

def test_records_carry_their_input_index_and_report_each_file(tmp_path, tok):
    """Oracle: the hand-written layout: --input a.jsonl 'p_*.parquet' gives records from argument 0
    then argument 1 (both Parquet files of the glob, in sorted order), and the report lists the three
    files with their bytes and containers; a record's `where` in a Parquet file is `file:row N`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = distinct_rows(7)
    a = write_input(tmp_path / "a.jsonl", rows[:3])
    for name, part in (("p_1.parquet", rows[3:5]), ("p_2.parquet", rows[5:])):
        pq.write_table(pa.Table.from_pylist(part), str(tmp_path / name))
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    args = parser.parse_args(["--input", a, str(tmp_path / "p_*.parquet"), "--out", str(tmp_path / "out")])
    mix = prepare.sources(args)
    records = prepare.clean_stream(args, mix, tok, report_lib.Tally(), {"tokenize": 0.0, "near_duplicates": 0.0})
    assert [r.origin for r in records] == [0, 0, 0, 1, 1, 1, 1]
    assert [r.example.source for r in records][3:] == [f"{tmp_path / 'p_1.parquet'}:row 1",
                                                        f"{tmp_path / 'p_1.parquet'}:row 2",
                                                        f"{tmp_path / 'p_2.parquet'}:row 1",
                                                        f"{tmp_path / 'p_2.parquet'}:row 2"]
    assert prepare.main(["--input", a, str(tmp_path / "p_*.parquet"), "--out", str(tmp_path / "out")]) == 0
    rep = json.load(open(tmp_path / "out" / "report.json"))
    assert rep["inputs"] == [{"path": p, "bytes": os.path.getsize(p), "container": c} for p, c in
                             ((a, "jsonl"), (str(tmp_path / "p_1.parquet"), "parquet"),
                              (str(tmp_path / "p_2.parquet"), "parquet"))]


def test_where_of_row_errors_splits_file_and_row():
    """Oracle: hand-written DataError messages of both kinds of `where`."""
    assert prepare._WHERE.match("d/a.csv:row 12: 1 fields where the header has 2").groups() == (
        "d/a.csv:row 12", "1 fields where the header has 2")
    assert prepare._WHERE.match("d/a.jsonl:3: invalid JSON: x").groups() == ("d/a.jsonl:3", "invalid JSON: x")
