"""The run's JSON files (r1jax/train/run_json.py, r1jax/train/monitor.py): strict JSON out, a torn last line of
metrics.jsonl tolerated on the way in. Oracles: files written by hand, and a strict parser
(parse_constant raising on NaN/Infinity, as RFC 8259 readers do)."""
import json
import math

import pytest

from r1jax.train.monitor import Monitor
from r1jax.train.run_json import JsonlError, dumps, read_jsonl


def strict(line: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(line, parse_constant=refuse)


def test_non_finite_floats_are_written_as_null(tmp_path):
    m = Monitor(str(tmp_path), total_steps=3)
    m.write({"step": 1, "train/loss": float("nan"), "grad_norm": float("inf"),
             "moe/expert_load": [[0.5, float("-inf")]], "tokens_per_s": 2.5})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert strict(line) == {"step": 1, "train/loss": None, "grad_norm": None,
                            "moe/expert_load": [[0.5, None]], "tokens_per_s": 2.5}
    assert strict(dumps({"a": (1.0, math.nan)})) == {"a": [1.0, None]}


def test_torn_last_line_is_dropped_with_a_warning_and_the_file_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "val/loss": 11.7}\n{"step": 1, "train/loss": NaN}\n{"step": 2, "train/lo')
    warned = []
    m = Monitor(str(tmp_path), total_steps=3)
    m.log = warned.append
    m.truncate_after(5)  # a resume at step 5: nothing to drop but the torn line
    assert len(warned) == 1 and f"{path}:3" in warned[0] and "partial last line" in warned[0], warned
    m.write({"step": 2, "train/loss": 1.5})  # appended on a line of its own
    assert [strict(line) for line in path.read_text().splitlines()] == [
        {"step": 0, "val/loss": 11.7}, {"step": 1, "train/loss": None}, {"step": 2, "train/loss": 1.5}]
    m.plot()  # the plots read the file back, null values and all
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}')
    assert read_jsonl(str(path), warn=pytest.fail) == [{"step": 0}, {"step": 1}]


def test_a_malformed_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "train/lo\n{"step": 2}\n')
    with pytest.raises(JsonlError, match=f"^{path}:2: not a JSON line"):
        Monitor(str(tmp_path), total_steps=3).truncate_after(5)
    assert path.read_text() == '{"step": 0}\n{"step": 1, "train/lo\n{"step": 2}\n'  # nothing lost
