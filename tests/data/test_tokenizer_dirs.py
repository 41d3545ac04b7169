"""Tokenizers read from a checkpoint directory: R1-Distill-like layouts (the R1 chat markers under
other ids), a tokenizer lacking a marker, which tokenizer prepare / the trainer's data step use, and
the vocabulary-fits-the-model check.

Each tokenizer here is a small byte-level BPE with the R1 markers at R1-Distill-like ids, built in a
tmp dir by tests/tokenizer_dirs.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from r1jax.data import batch_tokenize, prepare
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.chat import marker_ids, prompt_ids, tokenize_example
from r1jax.data.formats import DataError, parse_row
from r1jax.data.token_store import TokenStore
from tokenizer_dirs import (ASSISTANT, BOS, EOS, LLAMA_LIKE, NO_ASSISTANT, QWEN_LIKE, THINK, UNTHINK, USER,
                            hand_ids, make_tokenizer_dir)

CHAT_ROW = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Say hi."},
                         {"role": "assistant", "reasoning_content": "The user wants hi.", "content": "hi"}]}
TEXT_ROW = {"text": "The lazy dog says hi."}

PROMPT_PIECES = [BOS, "Be brief.", USER, "Say hi.", ASSISTANT, THINK, "\n"]
TARGET_PIECES = ["The user wants hi.\n", UNTHINK, "\n\nhi", EOS]


@pytest.fixture(scope="module")
def r1():
    return tokenizer_lib.load_tokenizer()


@pytest.mark.parametrize("layout", [QWEN_LIKE, LLAMA_LIKE], ids=["qwen_like", "llama_like"])
def test_chat_row_uses_the_tokenizers_marker_ids(tmp_path, r1, layout):
    """Oracle: `hand_ids` of the rendered pieces (markers by token_to_id, plain text encoded alone),
    the mask 0 over the prompt's pieces and 1 over the target's, counted by hand; and the R1
    tokenizer's row decodes to the same text as this one's. The marker ids the chat format checks
    are the raw tokenizer's token_to_id of each marker."""
    d = make_tokenizer_dir(tmp_path / "tok", layout)
    tok = tokenizer_lib.load_tokenizer(str(d))
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert marker_ids(tok) == {m: raw.token_to_id(m) for m in (BOS, USER, ASSISTANT, THINK, UNTHINK, EOS)}
    got = tokenize_example(CHAT_ROW, tok)
    prompt, target = hand_ids(d, PROMPT_PIECES), hand_ids(d, TARGET_PIECES)
    assert got["input_ids"] == prompt + target
    assert got["loss_mask"] == [0] * len(prompt) + [1] * len(target)
    # The markers sit where the pieces put them, with this tokenizer's ids (not R1's 0/1/128798...).
    assert got["input_ids"][0] == raw.token_to_id(BOS) == tok.bos_token_id
    assert got["input_ids"][-1] == raw.token_to_id(EOS) == tok.eos_token_id
    assert max(got["input_ids"]) < raw.get_vocab_size()
    r1_ids = tokenize_example(CHAT_ROW, r1)["input_ids"]
    text = "".join(PROMPT_PIECES + TARGET_PIECES)
    assert tok.decode(got["input_ids"]) == r1.decode(r1_ids) == text
    # The generation prompt is the row's prompt part; the batched path gives the same row.
    assert prompt_ids(parse_row(CHAT_ROW, "row"), tok) == prompt
    ids, mask = batch_tokenize.tokenize_batch([parse_row(CHAT_ROW, "row")], tok)[0]
    assert ids.tolist() == prompt + target and mask.tolist() == got["loss_mask"]


def test_generation_eos_comes_from_the_tokenizer_directory(tmp_path):
    """Oracle: the ids written by hand into generation_config.json (a list) plus the EOS id by
    token_to_id; a checkpoint config.json's R1 `eos_token_id: 1` is not an EOS of this tokenizer."""
    from r1jax.inference.generate import eos_ids_of
    d = make_tokenizer_dir(tmp_path / "tok", QWEN_LIKE)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    eos, eot = raw.token_to_id(EOS), raw.token_to_id("<|EOT|>")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, eot]}))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 1}))  # what to_hf_dict writes
    tok = tokenizer_lib.load_tokenizer(str(d))
    assert eos_ids_of(tok) == tuple(sorted({eos, eot}))
    assert eos_ids_of(tok, str(d)) == tuple(sorted({eos, eot}))


def test_tokenizer_without_a_marker_refuses_chat_rows_only(tmp_path):
    """Oracle: the message names the missing marker and the tokenizer's directory; a text row's ids
    are BOS (token_to_id) then the text encoded alone by the raw tokenizer."""
    d = make_tokenizer_dir(tmp_path / "tok", NO_ASSISTANT)
    tok = tokenizer_lib.load_tokenizer(str(d))
    for tokenize in (lambda: tokenize_example(CHAT_ROW, tok, where="data.jsonl:3"),
                     lambda: batch_tokenize.tokenize_batch([parse_row(CHAT_ROW, "data.jsonl:3")], tok)):
        with pytest.raises(DataError) as e:
            tokenize()
        assert "data.jsonl:3" in str(e.value) and ASSISTANT in str(e.value) and str(d) in str(e.value)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    expected = [raw.token_to_id(BOS)] + raw.encode(TEXT_ROW["text"], add_special_tokens=False).ids
    got = tokenize_example(TEXT_ROW, tok)
    assert got["input_ids"] == expected and got["loss_mask"] == [0] + [1] * (len(expected) - 1)
    assert tokenize_example({"input_ids": [5, 6, 7]}, tok)["input_ids"] == [5, 6, 7]


def test_prepare_cli_with_a_tokenizer_lacking_a_marker(tmp_path):
    """Oracle: exit status and message by hand: chat data stops with status 2 naming the marker and
    the tokenizer; a text file prepares (status 0) with ids below this tokenizer's size."""
    d = make_tokenizer_dir(tmp_path / "tok", NO_ASSISTANT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p)}
    for name, row in (("chat", CHAT_ROW), ("text", TEXT_ROW)):
        src = tmp_path / f"{name}.jsonl"
        src.write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in range(1)), encoding="utf-8")
    run = lambda name: subprocess.run(
        [sys.executable, "-m", "r1jax.data", "prepare", "--input", str(tmp_path / f"{name}.jsonl"),
         "--out", str(tmp_path / name), "--val", "0", "--tokenizer", str(d)],
        capture_output=True, text=True, env=env)
    chat = run("chat")
    assert chat.returncode == 2, chat.stderr
    assert ASSISTANT in chat.stderr and str(d) in chat.stderr and "Traceback" not in chat.stderr
    text = run("text")
    assert text.returncode == 0, text.stderr
    assert f"tokenizer: {d}" in text.stderr
    ids = TokenStore(str(tmp_path / "text" / "train")).ids
    assert int(ids.max()) < Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size()


def test_trainer_data_step_uses_the_checkpoint_tokenizer(tmp_path):
    """Oracle: the prepared rows hold this tokenizer's marker ids (token_to_id), never one at or
    above its size (R1's would be 128,000+); with no checkpoint the packaged tokenizer is used, in
    another prepared directory (R1's BOS id 0 first)."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from train_fixtures import config

    from r1jax.train import run_data
    d = make_tokenizer_dir(tmp_path / "ckpt", LLAMA_LIKE)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    rows = [{"messages": [{"role": "user", "content": f"Say hi {i}."},
                          {"role": "assistant", "content": f"hi {i}"}]} for i in range(20)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    c = config(tmp_path, tmp_path / "run", model__checkpoint=str(d))
    assert run_data.run_tokenizer_dir(c) == str(d)
    train, _ = run_data.prepare_data(c, log=lambda s: None)
    store = TokenStore(train)
    assert int(store.ids.max()) < raw.get_vocab_size()
    for i in range(len(store)):
        ids = store[i][0].tolist()
        assert ids[0] == raw.token_to_id(BOS)
        assert ids.count(raw.token_to_id(ASSISTANT)) == 1 and ids[-1] == raw.token_to_id(EOS)
    report = json.loads((Path(train).parent / "report.json").read_text())
    assert report["options"]["tokenizer"] == str(d)
    c.model.checkpoint = ""
    packaged, _ = run_data.prepare_data(c, log=lambda s: None)
    assert os.path.dirname(packaged) != os.path.dirname(train)
    assert int(TokenStore(packaged).ids[0]) == 0  # R1's BOS


def test_tokenizer_must_fit_the_model_vocabulary(tmp_path):
    """Oracle: the largest id by hand (the last added token's, by token_to_id); vocab_size at it
    is an error naming the tokenizer's directory, the id, the vocab_size and the model; above passes."""
    d = make_tokenizer_dir(tmp_path / "tok", QWEN_LIKE)
    tok = tokenizer_lib.load_tokenizer(str(d))
    top = Tokenizer.from_file(str(d / "tokenizer.json")).token_to_id(UNTHINK)
    assert top == len(tok) - 1
    with pytest.raises(DataError) as e:
        tokenizer_lib.check_fits(tok, top, "ckpts/tiny")
    for part in (str(d), f"token id {top}", f"vocab_size {top}", "ckpts/tiny"):
        assert part in str(e.value)
    tokenizer_lib.check_fits(tok, top + 1, "ckpts/tiny")


def test_trainer_copies_the_checkpoint_tokenizer_into_the_run(tmp_path):
    """Oracle: file bytes. The run's model directory gets the checkpoint's tokenizer files, so
    generate / evaluate of the run read them; a file the checkpoint lacks is not left from before."""
    from r1jax.train.loop import _copy_side_files
    d = make_tokenizer_dir(tmp_path / "ckpt", QWEN_LIKE, generation_eos=[1, 2])
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    (model / "special_tokens_map.json").write_text("{}")  # from an earlier run
    _copy_side_files(str(d), str(model))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (model / name).read_bytes() == (d / name).read_bytes()
    assert not (model / "special_tokens_map.json").exists()
    assert tokenizer_lib.checkpoint_tokenizer_dir(str(model)) == str(model)
    _copy_side_files("", str(model))  # a preset's run: the packaged tokenizer, no stale copy
    assert tokenizer_lib.checkpoint_tokenizer_dir(str(model)) is None


def test_prepare_logs_and_records_the_tokenizer_it_used(tmp_path, capsys):
    """Oracle: the directories by hand (the one given; with none, the packaged one) in one stderr
    line and in report.json, and the ids this tokenizer's (`hand_ids`)."""
    d = make_tokenizer_dir(tmp_path / "tok", QWEN_LIKE)
    (tmp_path / "in.jsonl").write_text(json.dumps(CHAT_ROW) + "\n", encoding="utf-8")
    for name, flags, where in (("own", ["--tokenizer", str(d)], str(d)),
                               ("packaged", [], str(tokenizer_lib.packaged_tokenizer_dir()))):
        out = tmp_path / name
        assert prepare.main(["--input", str(tmp_path / "in.jsonl"), "--out", str(out), "--val", "0", *flags]) == 0
        logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tokenizer: ")]
        assert len(logged) == 1 and logged[0].startswith(f"tokenizer: {where} (")
        assert ("packaged" in logged[0]) == (name == "packaged")
        assert json.loads((out / "report.json").read_text())["options"]["tokenizer"] == where
    assert TokenStore(str(tmp_path / "own" / "train")).ids.tolist() == hand_ids(d, PROMPT_PIECES + TARGET_PIECES)


def test_evaluate_refuses_a_checkpoint_tokenizer_larger_than_the_model(tmp_path, capsys):
    """Oracle: the numbers by hand: a checkpoint of vocab_size 300 whose tokenizer.json reaches the
    id of its last added token (`</think>`, by token_to_id: above 300) stops `python -m
    r1jax.evaluate` with status 2 and one line naming the tokenizer's directory, that id and the
    vocab_size, before any weights are read."""
    from r1jax.eval import evaluate
    from r1jax.models import checkpoint
    from r1jax.models.registry import preset
    ckpt = make_tokenizer_dir(tmp_path / "ckpt", QWEN_LIKE)
    top = Tokenizer.from_file(str(ckpt / "tokenizer.json")).token_to_id(UNTHINK)
    assert top >= 300
    checkpoint.write_meta(str(ckpt), preset("tiny", vocab_size=300))  # config only: no params/
    (tmp_path / "eval.jsonl").write_text(json.dumps(TEXT_ROW) + "\n", encoding="utf-8")
    assert evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp_path / "eval.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: tokenizer ") and "Traceback" not in err
    for part in (str(ckpt), f"token id {top}", "vocab_size 300"):
        assert part in err
