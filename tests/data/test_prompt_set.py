"""`python -m r1jax.data prepare --prompts` (r1jax/data/prompt_set.py), `prompt_set.read_prompts` and
the trainer's `run_data.prepare_prompts`.

Oracle: the expected output rows, removal counts with their FILE:LINE, and split sizes are written by
hand in each test from the rules in the module docstring (normalization, the final assistant turn
dropped, a number answer as its string, the stratified split's rounding); prompt lengths in tokens
come from a second code path, `chat.prompt_ids` (what generation feeds the model), not from the
batched encoding prepare uses. prepare runs in-process through `prepare.main(argv)` with the session
tokenizer (tests/data/conftest.py)."""
import json
import os

import pytest
from container_writers import write_jsonl, write_parquet

from r1jax.data import prepare, prompt_set
from r1jax.data.chat import prompt_ids
from r1jax.data.formats import DataError, parse_row

pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


def run(tmp_path, rows, *flags, name="in.jsonl", out="out"):
    """(exit status, output dir, report or None, input path) of prepare --prompts over JSONL rows
    (a str row is written as the line itself)."""
    src = tmp_path / name
    with open(src, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    out = str(tmp_path / out)
    rc = prepare.main(["--prompts", "--input", str(src), "--out", out, *map(str, flags)])
    rep = os.path.join(out, "report.json")
    return rc, out, json.load(open(rep)) if os.path.exists(rep) else None, str(src)


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def n_tokens(messages, tok):
    """Tokens of the generation prompt of a conversation, by `chat.prompt_ids` (the turn to
    generate appended, as prompt_ids drops the final turn)."""
    ex = parse_row({"messages": messages + [{"role": "assistant", "content": "x"}]}, "t")
    return len(prompt_ids(ex, tok))


def test_prompt_shapes_and_fields(tmp_path, tok):
    """prompt + system, messages (final assistant turn dropped, an earlier one's <think> block not
    kept), a top-level system before messages, a number answer, other fields kept, input `source`
    renamed: each output row written out by hand."""
    rows = [
        {"prompt": " What is 2+2?\r\n", "system": "Be brief.", "answer": 4, "category": "math", "id": "a"},
        {"messages": [{"role": "user", "content": "Q1"},
                      {"role": "assistant", "content": "<think>hmm</think>A1"},
                      {"role": "user", "content": "Cafe\u0301?"},
                      {"role": "assistant", "content": "the old answer"}],
         "tests": "assert f() == 1", "source": "web", "extra": [1, {"k": None}]},
        {"messages": [{"role": "user", "content": "Half of one?"}], "system": "Sys", "answer": 0.5},
    ]
    rc, out, rep, src = run(tmp_path, rows, "--val", 0)
    assert rc == 0
    want = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
         "source": f"{src}:1", "answer": "4", "category": "math", "id": "a"},
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                      {"role": "user", "content": "Caf\u00e9?"}],
         "source": f"{src}:2", "tests": "assert f() == 1", "input_source": "web", "extra": [1, {"k": None}]},
        {"messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Half of one?"}],
         "source": f"{src}:3", "answer": "0.5"},
    ]
    got = lines(os.path.join(out, "train.jsonl"))
    assert got == want
    assert [list(r) for r in got] == [list(r) for r in want]        # messages, source, then the row's order
    assert prompt_set.read_prompts(os.path.join(out, "train.jsonl")) == want
    assert not os.path.exists(os.path.join(out, "val.jsonl"))
    assert rep["kind"] == "prompts"
    assert rep["records"] == {"read": 3, "kept": 3, "removed": dict.fromkeys(prompt_set.REASONS, 0)}
    lengths = [n_tokens(r["messages"], tok) for r in want]
    assert rep["splits"]["train"]["tokens"] == sum(lengths)
    assert (rep["splits"]["train"]["length"]["min"], rep["splits"]["train"]["length"]["max"]) == (
        min(lengths), max(lengths))
    assert rep["splits"]["train"]["categories"] == {"(none)": 2, "math": 1}
    assert open(os.path.join(out, "summary.txt")).read().startswith("prompts: read 3, kept 3\n")


def test_column_map_over_parquet(tmp_path):
    """--columns prompt=problem,answer=solution,tests=test_code,category=topic over a Parquet file:
    mapped fields under their names, unmapped columns kept, a null cell absent, rows named FILE:row N."""
    rows = [{"problem": "Add 1 and 2.", "solution": "3", "test_code": None, "topic": "math", "uid": 7},
            {"problem": "Write f.", "solution": None, "test_code": "assert f()", "topic": "code", "uid": 8},
            {"problem": "Nothing to check.", "solution": None, "test_code": None, "topic": "code", "uid": 9}]
    src = write_parquet(tmp_path / "p.parquet", rows)
    out = str(tmp_path / "out")
    cols = "prompt=problem,answer=solution,tests=test_code,category=topic"
    assert prepare.main(["--prompts", "--input", src, "--out", out, "--val", "0", "--columns", cols]) == 0
    assert lines(os.path.join(out, "train.jsonl")) == [
        {"messages": [{"role": "user", "content": "Add 1 and 2."}], "source": f"{src}:row 1",
         "uid": 7, "answer": "3", "category": "math"},
        {"messages": [{"role": "user", "content": "Write f."}], "source": f"{src}:row 2",
         "uid": 8, "tests": "assert f()", "category": "code"}]
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["records"]["removed"]["no_reference"] == 1
    assert rep["examples"]["no_reference"][0]["where"] == f"{src}:row 3"


def test_column_fields_per_mode(tmp_path, capsys):
    """answer/tests are mappable only with --prompts, completion only without; a mapped column the
    file lacks stops prepare naming it."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"q": "x", "a": "y"}])
    base = ["--input", src, "--out", str(tmp_path / "out")]
    assert prepare.main(base + ["--columns", "prompt=q,answer=a"]) == 2
    assert "unknown field 'answer'" in capsys.readouterr().err
    assert prepare.main(["--prompts", *base, "--columns", "prompt=q,completion=a"]) == 2
    assert "unknown field 'completion'" in capsys.readouterr().err
    pq = write_parquet(tmp_path / "p.parquet", [{"q": "x", "a": "y"}])
    assert prepare.main(["--prompts", "--input", pq, "--out", str(tmp_path / "o2"), "--columns", "prompt=q,answer=sol"]) == 2
    err = capsys.readouterr().err
    assert "no column 'sol'" in err and "answer=sol" in err


def test_each_removal_reason_with_its_line(tmp_path, tok):
    """Every rule removes its rows, in rule order, each counted with its FILE:LINE."""
    eval_q = "compute the number of ways to choose five items out of sixteen distinct items please now"
    write_jsonl(tmp_path / "eval.jsonl", [{"question": eval_q, "answer": "4368"}])
    long_prompt = " ".join(f"word{i}" for i in range(60))
    rows = [
        {"prompt": "Keep me.", "answer": "1"},                                               # 1 kept
        "[1, 2]",                                                                            # 2 malformed: not an object
        "{\"prompt\": ",                                                                     # 3 malformed: bad JSON
        {"prompt": ["x"], "answer": "1"},                                                    # 4 malformed: prompt type
        {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "answer": "1"},      # 5 malformed: both shapes
        {"question": "x", "answer": "1"},                                                    # 6 malformed: no prompt
        {"prompt": "x", "answer": [1]},                                                      # 7 malformed: answer type
        {"prompt": "x", "tests": 3},                                                         # 8 malformed: tests type
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"},
                      {"role": "assistant", "content": "b"}], "answer": "1"},                # 9 malformed: two assistants
        {"messages": [{"role": "robot", "content": "x"}], "answer": "1"},                    # 10 malformed: role
        {"prompt": " \r\n\x00", "answer": "1"},                                             # 11 empty
        {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
         "answer": "1"},                                                                     # 12 empty: no user
        {"prompt": "No reference here."},                                                    # 13 no_reference
        {"prompt": "Blank reference.", "answer": "  ", "tests": None},                       # 14 no_reference
        {"prompt": f"Quiz: {eval_q}?", "answer": "4368"},                                    # 15 contaminated
        {"prompt": long_prompt, "answer": "1"},                                              # 16 too_long_tokens
        {"prompt": "Keep me.\r\n", "answer": "2"},                                           # 17 duplicate of 1
        {"messages": [{"role": "user", "content": "Keep me."}], "tests": "assert 1"},        # 18 duplicate of 1
        {"prompt": long_prompt + " ", "answer": "2"},                                        # 19 too long, not dup
        {"prompt": "Also kept.", "tests": "assert 2"},                                       # 20 kept
    ]
    limit = 30
    assert n_tokens([{"role": "user", "content": "Keep me."}], tok) <= limit < n_tokens(
        [{"role": "user", "content": long_prompt}], tok)
    rc, out, rep, src = run(tmp_path, rows, "--val", 0, "--max_tokens", limit,
                            "--decontaminate", tmp_path / "eval.jsonl")
    assert rc == 0
    where = {r: [e["where"] for e in rep["examples"][r]] for r in prompt_set.REASONS}
    at = lambda *ns: [f"{src}:{n}" for n in ns]  # noqa: E731
    assert rep["records"]["removed"] == {"malformed": 9, "empty": 2, "no_reference": 2, "contaminated": 1,
                                         "too_long_tokens": 2, "duplicate": 2}
    assert (rep["records"]["read"], rep["records"]["kept"]) == (20, 2)
    assert where["malformed"] == at(2, 3, 4, 5, 6)                   # the first 5 of each reason are listed
    assert where["empty"] == at(11, 12) and where["no_reference"] == at(13, 14)
    assert where["contaminated"] == at(15) and where["too_long_tokens"] == at(16, 19)
    assert where["duplicate"] == at(17, 18)
    detail = {r: [e["detail"] for e in rep["examples"][r]] for r in prompt_set.REASONS}
    assert "field 'prompt' must be a string" in detail["malformed"][2]
    assert detail["duplicate"] == [f"same prompt as {src}:1"] * 2
    assert f"{tmp_path / 'eval.jsonl'}:1" in detail["contaminated"][0]
    assert detail["too_long_tokens"][0].endswith(f"> --max_tokens {limit}")
    assert [r["source"] for r in lines(os.path.join(out, "train.jsonl"))] == at(1, 20)


def test_max_tokens_boundary(tmp_path, tok):
    """A prompt of exactly N generation-prompt tokens (counted by chat.prompt_ids) is kept at
    --max_tokens N and removed at N - 1."""
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Spell 'tokenizer'."}]
    n = n_tokens(msgs, tok)
    row = {"messages": msgs, "answer": "t-o-k"}
    assert run(tmp_path, [row], "--val", 0, "--max_tokens", n, out="a")[2]["records"]["kept"] == 1
    rc, _, rep, _ = run(tmp_path, [row], "--val", 0, "--max_tokens", n - 1, out="b")
    assert rc == 1 and rep["records"]["removed"]["too_long_tokens"] == 1
    assert rep["examples"]["too_long_tokens"][0]["detail"] == f"{n} prompt tokens > --max_tokens {n - 1}"


def test_strict_stops_at_the_first_malformed_row(tmp_path, capsys):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b"}, {"prompt": 5, "answer": "1"}, "[]"]
    rc, out, rep, src = run(tmp_path, rows, "--strict")
    assert rc == 2 and rep is None and not os.path.exists(os.path.join(out, "train.jsonl"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"{src}:3: field 'prompt' must be a string, got int"     # row 2 (no reference) passes


def test_splits_stratified_disjoint_in_input_order(tmp_path):
    """100 prompts, 60 of category a and 40 of b, --val 0.1 --test 0.2: test takes 12 a + 8 b, val
    6 a + 4 b, train the other 42 + 28; the splits are disjoint, cover every prompt, keep input order,
    and depend on the seed."""
    rows = [{"prompt": f"Question number {i}.", "answer": str(i), "category": "a" if i % 5 < 3 else "b"}
            for i in range(100)]
    rc, out, rep, _ = run(tmp_path, rows, "--val", 0.1, "--test", 0.2, "--seed", 3)
    assert rc == 0
    got = {s: lines(os.path.join(out, f"{s}.jsonl")) for s in ("train", "val", "test")}
    counts = {s: {c: sum(r["category"] == c for r in rs) for c in "ab"} for s, rs in got.items()}
    assert counts == {"train": {"a": 42, "b": 28}, "val": {"a": 6, "b": 4}, "test": {"a": 12, "b": 8}}
    answers = {s: [int(r["answer"]) for r in rs] for s, rs in got.items()}
    assert sorted(sum(answers.values(), [])) == list(range(100))
    assert all(a == sorted(a) for a in answers.values())
    assert {s: v["examples"] for s, v in rep["splits"].items()} == {"train": 70, "val": 10, "test": 20}
    _, out2, _, _ = run(tmp_path, rows, "--val", 0.1, "--test", 0.2, "--seed", 4, out="seed4")
    assert [r["answer"] for r in lines(os.path.join(out2, "val.jsonl"))] != [r["answer"] for r in got["val"]]


@pytest.mark.parametrize("flags, named", [
    (["--train_all_turns"], "--train_all_turns"), (["--kfold", "2"], "--kfold"),
    (["--weights", "1"], "--weights"), (["--max_per_category", "1"], "--max_per_category"),
    (["--near_dup_threshold", "0.9"], "--near_dup_threshold"),
    (["--max_tokens", "9", "--too_long", "drop"], "--too_long"),
    (["--format", "prompt_completion"], "--format prompt_completion")])
def test_flags_that_do_not_apply_exit_2(tmp_path, capsys, flags, named):
    rc, out, _, _ = run(tmp_path, [{"prompt": "a", "answer": "1"}], *flags)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {named}") and "\n" not in err
    assert not os.path.exists(out)


def test_format_prompt_only_with_prompts_and_required(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "completion": "b"}])
    assert prepare.main(["--input", src, "--out", str(tmp_path / "o"), "--format", "prompt"]) == 2
    assert "--format prompt: only with --prompts" in capsys.readouterr().err
    rows = [{"prompt": "a", "answer": "1"}, {"messages": [{"role": "user", "content": "b"}], "answer": "1"}]
    rc, out, rep, src = run(tmp_path, rows, "--format", "prompt", "--val", 0)
    assert rc == 0 and rep["records"]["removed"]["malformed"] == 1
    assert rep["examples"]["malformed"] == [{"where": f"{src}:2", "detail": "missing field 'prompt' (--format prompt)"}]


@pytest.mark.parametrize("row, message", [
    ({"answer": "1"}, "no 'messages' field"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "1"},
     "the last message is the assistant's"),
    ({"messages": [{"role": "user", "content": " "}], "answer": "1"}, "messages[0] (user) has empty content"),
    ({"messages": [{"role": "user", "content": "q"}], "answer": 4}, "field 'answer' must be a string, got int"),
    ({"messages": [{"role": "user", "content": "q"}], "tests": " "}, "no reference"),
    ({"messages": "q", "answer": "1"}, "'messages' must be a non-empty list"),
])
def test_read_prompts_errors_name_the_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "ok"}], "answer": "1"},
                                                  row])
    with pytest.raises(DataError) as e:
        prompt_set.read_prompts(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_read_prompts_bad_json_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "ok"}], "answer": "1"}\n{"messages": [\n')
    with pytest.raises(DataError, match=f"^{path}:2: "):
        prompt_set.read_prompts(str(path))


# ----------------------------------------------------------------------------------- the trainer

def _config(tmp_path, **data):
    from train_fixtures import config
    c = config(tmp_path, tmp_path / "run")
    c.data.cache_dir = ""
    for key, value in data.items():
        c.data[key] = value
    return c


def _prompt_rows(n, start=0):
    return [{"prompt": f"Prompt {i}: what is {i} squared?", "answer": str(i * i)} for i in range(start, start + n)]


def test_prepare_prompts_reuses_and_prepares_again_on_change(tmp_path, monkeypatch):
    from r1jax.train import run_data
    calls = []
    real = prepare.main
    monkeypatch.setattr(prepare, "main", lambda argv: calls.append(argv) or real(argv))
    src = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(40))
    c = _config(tmp_path, train=src, val_fraction=0.25)
    train, val = run_data.prepare_prompts(c, log=lambda s: None, max_tokens=64)
    assert os.path.dirname(train).startswith(str(tmp_path / "run" / "data_prompts"))
    assert (len(prompt_set.read_prompts(train)), len(prompt_set.read_prompts(val))) == (30, 10)
    assert len(calls) == 1 and "--prompts" in calls[0] and calls[0][calls[0].index("--max_tokens") + 1] == "64"
    logs = []
    assert run_data.prepare_prompts(c, log=logs.append, max_tokens=64) == (train, val)
    assert len(calls) == 1 and any("reusing" in line for line in logs)
    train2, _ = run_data.prepare_prompts(c, log=lambda s: None, max_tokens=128)        # a changed option
    assert len(calls) == 2 and train2 != train
    write_jsonl(src, _prompt_rows(41))                                                # a changed input
    run_data.prepare_prompts(c, log=lambda s: None, max_tokens=64)
    assert len(calls) == 3


def test_prepare_prompts_val_file_and_heads(tmp_path):
    """data.val names the validation prompts (all of them), data.max_examples takes the first rows."""
    from r1jax.train import run_data
    src = write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(20))
    held = write_jsonl(tmp_path / "held.jsonl", _prompt_rows(5, start=100))
    c = _config(tmp_path, train=src, val=held, max_examples=12)
    train, val = run_data.prepare_prompts(c, log=lambda s: None)
    assert [r["answer"] for r in prompt_set.read_prompts(train)] == [str(i * i) for i in range(12)]
    assert [r["answer"] for r in prompt_set.read_prompts(val)] == [str(i * i) for i in range(100, 105)]


@pytest.mark.parametrize("data, key", [({"train": ""}, "data.train"), ({"weights": "1"}, "data.weights"),
                                       ({"train_all_turns": True}, "data.train_all_turns")])
def test_prepare_prompts_config_errors(tmp_path, data, key):
    from r1jax.train import run_data
    c = _config(tmp_path, **({"train": write_jsonl(tmp_path / "p.jsonl", _prompt_rows(3))} | data))
    with pytest.raises(DataError, match=f"config key {key}"):
        run_data.prepare_prompts(c, log=lambda s: None)
