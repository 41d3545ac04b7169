"""`python -m r1jax.data show`: decoded examples with the trained tokens marked, on raw and prepared
files, on a terminal (reverse video) and off one (⟦...⟧)."""
import io
import json
import os
import subprocess
import sys

import pytest

from r1jax.data import prepare, show
from r1jax.data import tokenizer as tokenizer_lib

ROWS = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And 3+3?"},
                  {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n6"}], "category": "math"},
    "{not json",
    {"prompt": "Say hi\r\n", "completion": "Hi!"},
    {"text": "plain text"},
    {"input_ids": [0, 23166, 128804], "loss_mask": [0, 0, 1]},
]
FIRST = ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
         "<｜User｜>And 3+3?<｜Assistant｜><think>\n⟦Add.\n</think>\n\n6<｜end▁of▁sentence｜>⟧")


pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in ROWS), encoding="utf-8")
    return str(path)


class Tty(io.StringIO):
    def isatty(self):
        return True


def shown(path, *flags, stdout=None):
    stdout = stdout or io.StringIO()
    parser = show.argparse.ArgumentParser()
    show.add_arguments(parser)
    rc = show.run(parser.parse_args(["--input", path, *flags]), stdout=stdout)
    return rc, stdout.getvalue()


def test_raw_file_marks_trained_part(raw, capsys):
    rc, out = shown(raw, "--n", "3")
    assert rc == 0
    blocks = out.strip().split("\n\n── ")
    assert len(blocks) == 3 and FIRST in blocks[0]
    assert "<｜User｜>Say hi<｜Assistant｜><think>" in blocks[1]  # normalized: CRLF and spaces gone
    assert "⟦plain text⟧" in blocks[2]
    assert "raw.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_counts(raw, tok):
    _, out = shown(raw, "--n", "1")
    n_tok = lambda s: [int(x) for x in s.split("── ")[-1].replace(",", "").split()[:3:2]]  # noqa: E731
    tokens, trained = n_tok(out)
    ids = tokenizer_lib.encode(tok, FIRST.replace("⟦", "").replace("⟧", ""), add_bos=True)
    assert tokens == len(ids)
    assert trained == len(tokenizer_lib.encode(tok, "Add.\n</think>\n\n6<｜end▁of▁sentence｜>", add_bos=False))


def test_train_all_turns_shows_each_turn_example(raw):
    """Oracle: hand-written renderings. The two-turn first row is shown as two examples, each its
    turn's generation prompt then its trained target, and they count towards --n."""
    rc, out = shown(raw, "--n", "3", "--train_all_turns")
    assert rc == 0
    blocks = out.strip().split("\n\n── ")
    assert len(blocks) == 3
    assert blocks[0].startswith(f"── {raw}:1 turn 1 (messages, category math) ──")
    assert ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 2+2?<｜Assistant｜><think>\n"
            "⟦\n</think>\n\n4<｜end▁of▁sentence｜>⟧") in blocks[0]
    assert blocks[1].startswith(f"{raw}:1 turn 2 (messages, category math) ──") and FIRST in blocks[1]
    assert blocks[2].startswith(f"{raw}:3 (messages) ──")


def test_tty_uses_reverse_video(raw):
    _, out = shown(raw, "--n", "4", stdout=Tty())
    assert "⟦" not in out and "\x1b[7mplain text\x1b[27m" in out
    assert "<｜begin▁of▁sentence｜>Hi\x1b[7m<｜Assistant｜>\x1b[27m" in out  # the input_ids row


def test_prepared_split(raw, tmp_path):
    out = str(tmp_path / "out")
    assert prepare.main(["--input", raw, "--out", out, "--val", "0"]) == 0
    rc, text = shown(os.path.join(out, "train.jsonl"), "--n", "10")
    assert rc == 0 and text.count("\n── ") == 2 * 4 - 1 and FIRST in text


def test_cli(raw):
    proc = subprocess.run([sys.executable, "-m", "r1jax.data", "show", "--input", raw, "--n", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and FIRST in proc.stdout
