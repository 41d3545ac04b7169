"""Paths convert and export cannot use: one line naming the path, a nonzero exit, no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from bench_convert import bench_config, write_synthetic  # noqa: E402


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300)


def _one_line_error(r, *names):
    """Oracle: the CLI contract (README): exit 2, stderr's last line `error: ...` naming `names`, no
    Python traceback."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in names), last


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    hf_dir = str(tmp_path_factory.mktemp("paths") / "hf")
    write_synthetic(bench_config(2, hidden=128, experts=4, moe_inter=128), hf_dir)
    return hf_dir


@pytest.fixture
def regular_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return str(path)


def test_convert_output_under_a_regular_file(tiny_release, regular_file):
    r = run("r1jax.convert", "--hf_dir", tiny_release, "--out", os.path.join(regular_file, "ckpt"))
    _one_line_error(r, os.path.join(regular_file, "ckpt"), "Not a directory")
    assert open(regular_file).read() == "not a directory\n"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_convert_hf_dir_missing_or_a_file(tmp_path, regular_file, kind):
    hf_dir = str(tmp_path / "nowhere") if kind == "missing" else regular_file
    r = run("r1jax.convert", "--hf_dir", hf_dir, "--out", str(tmp_path / "ckpt"))
    _one_line_error(r, hf_dir, "no such directory" if kind == "missing" else "not a directory")
    assert not os.path.exists(tmp_path / "ckpt") and not os.path.exists(tmp_path / "ckpt.partial")


def test_export_output_under_a_regular_file(tiny_release, tmp_path, regular_file):
    ckpt = str(tmp_path / "ckpt")
    assert run("r1jax.convert", "--hf_dir", tiny_release, "--out", ckpt, "--workers", "1").returncode == 0
    r = run("r1jax.export", "--checkpoint", ckpt, "--out", os.path.join(regular_file, "hf"))
    _one_line_error(r, os.path.join(regular_file, "hf"), "Not a directory")
