"""The toy arithmetic task (r1jax/data/toy_math.py) and its `python -m r1jax.data toy_math` command.

Oracles, independent of the generator's own arithmetic: every row's numbers are read back from its
text with regular expressions and recomputed with Python's `+`/`-` (the boxed answer, every
reasoning line); the chat example a row parses into is compared with the R1 layout written out by
hand from r1jax/data/chat.py's docstring; the problem counts of `space_size` with a brute-force
enumeration of every operand/operation tuple; reproducibility and disjointness by comparing files.
"""
import importlib.util
import itertools
import json
import os
import re

import pytest

from r1jax.data import parse_row, tokenize_example, toy_math
from r1jax.data.__main__ import main
from r1jax.data.formats import Message
from r1jax.data.tokenizer import BOS_TOKEN, EOS_TOKEN
from r1jax.eval import rewards
from r1jax.eval.tasks import runner
from r1jax.train import run_config

PROMPT = re.compile(r"What is (\d+(?: [+-] \d+)+)\?")
LINE = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")
BOXED = re.compile(r"\\boxed\{(\d+)\}")


def evaluate(expression: str) -> tuple[list[int], list[str], int]:
    """(operands, ops, value) of "7 + 5 - 3", evaluated left to right with Python's arithmetic."""
    tokens = expression.split(" ")
    operands, ops = [int(t) for t in tokens[0::2]], tokens[1::2]
    value = operands[0]
    for op, x in zip(ops, operands[1:]):
        value = value + x if op == "+" else value - x
    return operands, ops, value


def generate(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["toy_math", "--out", str(out), *args]) == 0
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
            for s in ("sft", "rl", "val")}, out


def test_counts_reproducible_disjoint(tmp_path):
    a, out = generate(tmp_path, "a", "--n_sft", "50", "--n_rl", "20", "--n_val", "10", "--seed", "3")
    b, _ = generate(tmp_path, "b", "--n_sft", "50", "--n_rl", "20", "--n_val", "10", "--seed", "3")
    c, _ = generate(tmp_path, "c", "--n_sft", "50", "--n_rl", "20", "--n_val", "10", "--seed", "4")
    assert [len(a[s]) for s in ("sft", "rl", "val")] == [50, 20, 10]
    assert a == b and a != c
    prompts = {s: [r["prompt"] for r in a[s]] for s in a}
    for s in prompts:
        assert len(set(prompts[s])) == len(prompts[s]), s
    assert not set(prompts["sft"]) & set(prompts["rl"])
    assert not set(prompts["sft"]) & set(prompts["val"])
    assert not set(prompts["rl"]) & set(prompts["val"])
    assert set(a["sft"][0]) == {"prompt", "reasoning", "completion", "answer", "category"}
    assert all(set(r) == {"prompt", "answer", "category"} for r in a["rl"] + a["val"])
    info = json.loads((out / "toy_math.json").read_text())
    assert (info["n_sft"], info["n_rl"], info["n_val"], info["seed"]) == (50, 20, 10, 3)
    # val depends on the seed and difficulty only: more sft rows leave it as it was
    d, _ = generate(tmp_path, "d", "--n_sft", "80", "--n_rl", "5", "--n_val", "10", "--seed", "3")
    assert d["val"] == a["val"]


def test_defaults_fill_the_default_difficulty(tmp_path):
    """The defaults (configs/grpo_math_sft.py's data): add3_small, 3 operands in 0..5, all 216
    problems (6 ** 3) used once."""
    got, _ = generate(tmp_path, "x")
    assert [len(got[s]) for s in ("sft", "rl", "val")] == [140, 40, 36]
    every = {tuple(evaluate(PROMPT.fullmatch(r["prompt"]).group(1))[0]) for s in got for r in got[s]}
    assert every == set(itertools.product(range(6), repeat=3))


@pytest.mark.parametrize("knobs, terms, top, allowed", [
    (["--difficulty", "add3"], 3, 9, {"+"}),
    (["--difficulty", "addsub4"], 4, 9, {"+", "-"}),
    (["--terms", "5", "--max_operand", "20", "--ops=-+"], 5, 20, {"+", "-"}),
])
def test_every_row_is_correct_by_python_arithmetic(tmp_path, knobs, terms, top, allowed):
    got, _ = generate(tmp_path, "x", "--n_sft", "200", "--n_rl", "30", "--n_val", "30", *knobs)
    assert "-" not in allowed or any("-" in r["prompt"] for r in got["sft"])
    for split, rows in got.items():
        for r in rows:
            operands, ops, value = evaluate(PROMPT.fullmatch(r["prompt"]).group(1))
            assert len(operands) == terms and all(0 <= x <= top for x in operands)
            assert set(ops) <= allowed and r["category"] == "".join(ops)
            assert r["answer"] == str(value)
            if split != "sft":
                continue
            assert BOXED.findall(r["completion"]) == [str(value)]
            lines = r["reasoning"].split("\n")
            assert len(lines) == terms - 1
            total = operands[0]
            for line, op, x in zip(lines, ops, operands[1:]):
                a, o, b, c = LINE.fullmatch(line).groups()
                assert (int(a), o, int(b)) == (total, op, x)
                total = total + x if op == "+" else total - x
                assert int(c) == total >= 0        # no running total below zero
            assert total == value


def test_rows_parse_into_the_r1_chat_example(tmp_path, tok):
    got, out = generate(tmp_path, "x", "--n_sft", "5", "--n_rl", "2", "--n_val", "2")
    row = got["sft"][0]
    ex = parse_row(row, "sft.jsonl:1")
    assert ex.category == row["category"]
    assert ex.messages == (Message("user", row["prompt"]),
                           Message("assistant", row["completion"], reasoning=row["reasoning"]))
    enc = tokenize_example(ex, tok)
    trained = [t for t, m in zip(enc["input_ids"], enc["loss_mask"]) if m]
    prompt = [t for t, m in zip(enc["input_ids"], enc["loss_mask"]) if not m]
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert dec(prompt) == f"{BOS_TOKEN}<｜User｜>{row['prompt']}<｜Assistant｜><think>\n"
    assert dec(trained) == f"{row['reasoning']}\n</think>\n\n{row['completion']}{EOS_TOKEN}"
    # what a model trained on it writes after `<think>\n` earns the format and boxed rewards
    written = rewards.Completion(dec(trained))
    assert rewards.well_formed(written, row) == 1.0 and rewards.boxed(written, row) == 1.0
    # the val file is a task file of the boxed task
    items = runner.read_reference_rows(str(out / "val.jsonl"))
    assert [(i["prompt"], i["reference"]) for i in items] == [(r["prompt"], r["answer"]) for r in got["val"]]


def brute_force_count(d: toy_math.Difficulty) -> int:
    n = 0
    for operands in itertools.product(range(d.max_operand + 1), repeat=d.terms):
        for ops in itertools.product(d.ops, repeat=d.terms - 1):
            total, ok = operands[0], True
            for op, x in zip(ops, operands[1:]):
                total = total + x if op == "+" else total - x
                ok = ok and total >= 0
            n += ok
    return n


@pytest.mark.parametrize("d", [toy_math.Difficulty(2, 9, "+"), toy_math.Difficulty(3, 4, "+-"),
                               toy_math.Difficulty(4, 3, "-")])
def test_space_size_and_exhausting_it(d):
    n = brute_force_count(d)
    assert toy_math.space_size(d) == n
    every = toy_math.distinct_problems(n, d, seed=0)
    assert len(set(every)) == n
    with pytest.raises(ValueError, match=f"allow only {n}"):
        toy_math.distinct_problems(n + 1, d, seed=0)


@pytest.mark.parametrize("args, message", [
    (["--difficulty", "add3", "--n_sft", "990", "--n_rl", "10", "--n_val", "1"],
     "1001 distinct problems asked, but --terms 3 --max_operand 9 --ops + allow only 1000"),
    (["--terms", "1"], "--terms 1: a problem needs at least 2 operands"),
    (["--ops", "*"], "--ops '*'"),
    (["--max_operand", "0"], "--max_operand 0"),
    (["--n_rl", "-1"], "--n_rl -1"),
])
def test_bad_options_are_named(tmp_path, capsys, args, message):
    assert main(["toy_math", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_sft_config_fits_its_data(tmp_path, tok):
    """configs/grpo_math_sft.py validates, reads the files the command in its docstring writes, and
    its seq_len holds every default SFT example whole (the chat tokenization's own length)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "grpo_math_sft.py")
    spec = importlib.util.spec_from_file_location("grpo_math_sft", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    run_config.validate(c)
    assert "toy_math --out runs/toy_math" in module.__doc__
    assert (c.data.train, c.task.data, c.task.name) == ("runs/toy_math/sft.jsonl", "runs/toy_math/val.jsonl",
                                                       "boxed")
    got, _ = generate(tmp_path, "x")
    lengths = [len(tokenize_example(parse_row(r, "sft"), tok)["input_ids"]) for r in got["sft"]]
    assert max(lengths) <= c.train.seq_len
