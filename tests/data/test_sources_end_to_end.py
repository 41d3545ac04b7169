"""Data as users have it, through `prepare`: row shapes and column maps in other containers, and
mixtures of sources that each have their own container, shape and columns.

Oracle: the JSONL file of `messages` rows written by hand for the same examples; its prepared
splits must be byte-identical (train/val JSONL and token stores). Mixture shares are counted in the
written train.jsonl against the weights."""
import collections
import gzip
import json
import os
import random

import pytest

from r1jax.data import prepare

from container_writers import write_csv, write_hf, write_jsonl, write_parquet

SPLIT_FILES = ("train.jsonl", "val.jsonl", "train.ids.npy", "train.mask.npy", "train.offsets.npy",
               "val.ids.npy", "val.mask.npy", "val.offsets.npy")
WORDS = ("river", "stone", "prime", "sum", "graph", "token", "loop", "north", "seven", "matrix", "proof", "lemma")


pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


def text(rng, n=9):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(10000)) for _ in range(n))


def split_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in SPLIT_FILES if os.path.exists(os.path.join(out, n))}


def run(out, *argv):
    return prepare.main([*map(str, argv), "--out", str(out), "--val", "0.2", "--seed", "5"])


def messages_row(system, turns, category=None):
    """The hand-written canonical row: turns = [(user, answer, reasoning or None), ...]."""
    msgs = [{"role": "system", "content": system}] if system else []
    for user, answer, reasoning in turns:
        msgs.append({"role": "user", "content": user})
        msgs.append({"role": "assistant", "content": answer} | ({"reasoning_content": reasoning} if reasoning else {}))
    return {"messages": msgs} | ({"category": category} if category else {})


def test_sharegpt_parquet_and_save_to_disk_equal_messages(tmp_path):
    """ShareGPT rows (nested list<struct> in Parquet and in a save_to_disk folder; <think> blocks in
    gpt turns, system turns in some) prepare like the hand-written messages JSONL."""
    rng = random.Random(0)
    sharegpt, twin = [], []
    for i in range(30):
        system = text(rng, 4) if i % 3 == 0 else None
        turns = [(text(rng), text(rng), text(rng, 5) if (i + t) % 2 else None) for t in range(1 + i % 2)]
        conv = [{"from": "system", "value": system}] if system else []
        for user, answer, reasoning in turns:
            conv.append({"from": "human", "value": user})
            conv.append({"from": "gpt", "value": f"<think>\n{reasoning}\n</think>\n\n{answer}" if reasoning else answer})
        sharegpt.append({"conversations": conv, "category": ("a", "b")[i % 2]})
        twin.append(messages_row(system, turns, ("a", "b")[i % 2]))
    assert run(tmp_path / "twin", "--input", write_jsonl(tmp_path / "twin.jsonl", twin)) == 0
    assert run(tmp_path / "pq", "--input", write_parquet(tmp_path / "sg.parquet", sharegpt)) == 0
    assert run(tmp_path / "hf", "--input", write_hf(tmp_path / "sg_saved", sharegpt)) == 0
    ref = split_bytes(tmp_path / "twin")
    assert split_bytes(tmp_path / "pq") == ref and split_bytes(tmp_path / "hf") == ref


def test_alpaca_csv_equals_messages(tmp_path):
    """Alpaca rows in a CSV (an empty input cell = no input) prepare like the hand-written messages
    JSONL (user = instruction, blank line, input)."""
    rng = random.Random(1)
    alpaca, twin = [], []
    for i in range(30):
        instruction, extra, output = text(rng), (text(rng, 4) if i % 2 else None), text(rng)
        alpaca.append({"instruction": instruction, "input": extra, "output": output, "category": "c" + str(i % 3)})
        user = f"{instruction}\n\n{extra}" if extra else instruction
        twin.append(messages_row(None, [(user, output, None)], "c" + str(i % 3)))
    assert run(tmp_path / "twin", "--input", write_jsonl(tmp_path / "twin.jsonl", twin)) == 0
    src = write_csv(tmp_path / "alpaca.csv", alpaca, columns=("instruction", "input", "output", "category"))
    assert run(tmp_path / "csv", "--input", src) == 0
    assert split_bytes(tmp_path / "csv") == split_bytes(tmp_path / "twin")


def column_rows(n, seed):
    """(rows with columns problem/solution/thinking/topic, the hand-written messages twin)."""
    rng = random.Random(seed)
    rows, twin = [], []
    for _ in range(n):
        problem, solution, thinking, topic = text(rng), text(rng), text(rng, 6), rng.choice(["alg", "geo"])
        rows.append({"problem": problem, "solution": solution, "thinking": thinking, "topic": topic})
        twin.append(messages_row(None, [(problem, solution, thinking)], topic))
    return rows, twin


def test_column_map_parquet_equals_messages(tmp_path, capsys):
    """--columns prompt=problem,completion=solution,reasoning=thinking,category=topic over Parquet
    prepares like the hand-written messages JSONL (the thinking column is the <think> block); a
    file without a mapped column exits 2 with one line naming the file and the column."""
    rows, twin = column_rows(30, 2)
    assert run(tmp_path / "twin", "--input", write_jsonl(tmp_path / "twin.jsonl", twin)) == 0
    src = write_parquet(tmp_path / "math.parquet", rows)
    assert run(tmp_path / "pq", "--input", src, "--columns",
               "prompt=problem,completion=solution,reasoning=thinking,category=topic") == 0
    assert split_bytes(tmp_path / "pq") == split_bytes(tmp_path / "twin")
    capsys.readouterr()
    assert run(tmp_path / "bad", "--input", src, "--columns", "prompt=question,completion=solution") == 2
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("tokenizer: ")]
    assert len(err) == 1 and "math.parquet" in err[0] and "no column 'question'" in err[0], err
    assert not os.path.exists(tmp_path / "bad")


def test_unmappable_cell_is_a_counted_malformed_row(tmp_path):
    """A list-valued cell where a string belongs is a malformed row naming its field and row; the
    other rows are kept."""
    rows, _ = column_rows(6, 3)
    rows[2]["problem"] = None
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    bad = tmp_path / "lists.jsonl"
    bad.write_text("".join(json.dumps({"problem": ["x", "y"], "solution": "s"}) + "\n" for _ in range(1)))
    assert run(tmp_path / "out", "--input", src, bad, "--columns", "prompt=problem,completion=solution") == 0
    rep = json.load(open(tmp_path / "out" / "report.json"))
    assert rep["records"]["removed"]["malformed"] == 2
    details = [e["where"] + " " + e["detail"] for e in rep["examples"]["malformed"]]
    assert any(d.startswith(f"{src}:3 ") and "'prompt' (column 'problem')" in d for d in details), details
    assert any(d.startswith(f"{bad}:1 ") and "must be a string, got list" in d for d in details), details


def test_mixture_file_of_mixed_sources(tmp_path):
    """A --mixture YAML of an Alpaca CSV (weight 1) and a column-mapped Parquet (weight 3, its own
    columns): the train split meets 25% / 75% within 1% (counted by category, which tells the
    sources apart), val keeps the natural shares (it equals the same mixture without weights), and
    the mixture reads each source as its own (same splits as --input of the two twins)."""
    rng = random.Random(4)
    alpaca = [{"instruction": text(rng), "output": text(rng), "category": "alpaca"} for _ in range(120)]
    rows, _ = column_rows(60, 5)
    write_csv(tmp_path / "a.csv", alpaca, columns=("instruction", "output", "category"))
    write_parquet(tmp_path / "b.parquet", [r | {"topic": "mapped"} for r in rows])
    source_b = "  - path: b.parquet\n    columns: {prompt: problem, completion: solution, category: topic}\n"
    (tmp_path / "mix.yaml").write_text(f"sources:\n  - path: a.csv\n    weight: 1\n{source_b}    weight: 3\n")
    (tmp_path / "plain.yaml").write_text(f"sources:\n  - path: a.csv\n{source_b}")
    assert run(tmp_path / "mix", "--mixture", tmp_path / "mix.yaml") == 0
    assert run(tmp_path / "plain", "--mixture", tmp_path / "plain.yaml") == 0
    train = [json.loads(x) for x in open(tmp_path / "mix" / "train.jsonl")]
    counts = collections.Counter(r["category"] for r in train)
    assert abs(counts["mapped"] / len(train) - 0.75) <= 0.01 and abs(counts["alpaca"] / len(train) - 0.25) <= 0.01
    assert open(tmp_path / "mix" / "val.jsonl", "rb").read() == open(tmp_path / "plain" / "val.jsonl", "rb").read()
    val = collections.Counter(json.loads(x)["category"] for x in open(tmp_path / "plain" / "val.jsonl"))
    assert val == {"alpaca": 24, "mapped": 12}                  # 20% of 120 and of 60
    resolved = json.load(open(tmp_path / "mix" / "mixture.json"))
    assert resolved["sources"][1]["columns"] == "prompt=problem,completion=solution,category=topic"


def test_strict_stops_at_a_bad_row_in_any_source(tmp_path, capsys):
    """--strict exits 2 at the first malformed row, naming it, in a gzip JSONL source of a mixture."""
    good = write_jsonl(tmp_path / "a.jsonl", [messages_row(None, [("q1 w", "a1 w", None)])])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": "q", "completion": "a"}) + "\n" + json.dumps({"prompt": ["q"]}) + "\n")
    assert run(tmp_path / "out", "--input", good, tmp_path / "b.jsonl.gz", "--weights", 1, 1, "--strict") == 2
    assert f"{tmp_path / 'b.jsonl.gz'}:2" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- the trainer

def _trainer_config(tmp_path, **data):
    from train_fixtures import config
    c = config(tmp_path, tmp_path / "run")
    for key, value in data.items():
        c.data[key] = value
    return c


def _cli_twin(tmp_path, c, *inputs):
    """`python -m r1jax.data prepare` run by hand with the options the trainer documents."""
    out = tmp_path / "cli"
    assert prepare.main([*map(str, inputs), "--out", str(out), "--val", repr(c.data.val_fraction),
                         "--seed", str(c.seed), "--max_tokens", str(c.train.seq_len), "--too_long",
                         "truncate"]) == 0
    return out


def test_trainer_mixture_file_prepares_like_the_cli(tmp_path):
    """data.mixture: the trainer's prepared train/val splits are byte-identical to the CLI's
    `prepare --mixture` with the same options, and meet the weights."""
    from r1jax.train import run_data
    rng = random.Random(6)
    write_csv(tmp_path / "a.csv", [{"instruction": text(rng), "output": text(rng), "category": "alpaca"}
                                   for _ in range(60)], columns=("instruction", "output", "category"))
    rows, _ = column_rows(60, 7)
    write_parquet(tmp_path / "b.parquet", [r | {"topic": "mapped"} for r in rows])
    mix = tmp_path / "mix.yaml"
    mix.write_text("sources:\n  - path: a.csv\n    weight: 1\n  - path: b.parquet\n    weight: 1\n"
                   "    columns: prompt=problem,completion=solution,reasoning=thinking,category=topic\n")
    c = _trainer_config(tmp_path, train="", mixture=str(mix))
    train, val = run_data.prepare_data(c, log=lambda s: None)
    cli = _cli_twin(tmp_path, c, "--mixture", mix)
    for split, prefix in (("train", train), ("val", val)):
        for suffix in (".jsonl", ".ids.npy", ".mask.npy"):
            assert open(prefix + suffix, "rb").read() == open(cli / (split + suffix), "rb").read(), (split, suffix)
    counts = collections.Counter(json.loads(x)["category"] for x in open(train + ".jsonl"))
    assert abs(counts["mapped"] / sum(counts.values()) - 0.5) <= 0.01


def test_trainer_weights_columns_and_heads(tmp_path):
    """data.train of two inputs with data.weights 1,3, data.columns and data.max_examples: each
    input gives its first max_examples rows (100 read, every kept one among them), and the train
    split meets the weights."""
    from r1jax.train import run_data
    a_rows, _ = column_rows(80, 8)
    b_rows, _ = column_rows(80, 9)
    a = write_parquet(tmp_path / "a.parquet", [r | {"topic": "a"} for r in a_rows])
    b = write_jsonl(tmp_path / "b.jsonl", [r | {"topic": "b"} for r in b_rows])
    c = _trainer_config(tmp_path, train=f"{a},{b}", weights="1,3", max_examples=50,
                        columns="prompt=problem,completion=solution,category=topic")
    train, val = run_data.prepare_data(c, log=lambda s: None)
    train_rows = [json.loads(x) for x in open(train + ".jsonl")]
    val_rows = [json.loads(x) for x in open(val + ".jsonl")]
    counts = collections.Counter(r["category"] for r in train_rows)
    assert abs(counts["b"] / len(train_rows) - 0.75) <= 0.01
    kept = {r["messages"][0]["content"] for r in train_rows + val_rows}
    assert kept <= {r["problem"] for r in a_rows[:50] + b_rows[:50]}     # a downsampled row is in neither
    assert json.load(open(os.path.join(os.path.dirname(train), "report.json")))["records"]["read"] == 100
