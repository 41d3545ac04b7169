"""r1jax/train/run_lock.py: one trainer per run directory. Oracles: the lock file's JSON written by hand
(a holder on this host with a pid known dead, one on another host), this process's own host and pid,
and the file's presence after a child process ends in each way."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1jax.train.run_lock import LOCK_NAME, RunLock, RunLockError, held

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(d: Path, host: str, pid: int) -> None:
    (d / LOCK_NAME).write_text(json.dumps({"host": host, "pid": pid, "started": "2026-01-01T00:00:00Z"}))


def test_second_lock_on_a_held_dir_is_refused_naming_the_holder(tmp_path):
    first = RunLock(str(tmp_path))
    first.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockError) as e:
        RunLock(str(tmp_path)).acquire()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in msg
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = _dead_pid()
    _plant(tmp_path, socket.gethostname(), dead)
    warnings = []
    RunLock(str(tmp_path), warnings.append).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and "stale" in warnings[0] and f"pid {dead}" in warnings[0], warnings


def test_lock_from_another_host_is_not_second_guessed(tmp_path):
    _plant(tmp_path, "some-other-host", _dead_pid())  # its pid says nothing about that host
    with pytest.raises(RunLockError, match=f"host some-other-host.*remove {tmp_path / LOCK_NAME}"):
        RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "some-other-host"  # untouched


def test_one_winner_when_several_take_over_the_same_stale_lock(tmp_path):
    """Eight threads race for one stale lock: exactly one gets it (the others see it held)."""
    for _ in range(5):
        _plant(tmp_path, socket.gethostname(), _dead_pid())
        won, lost, go = [], [], threading.Barrier(8)

        def take():
            lock = RunLock(str(tmp_path), lambda s: None)
            go.wait()
            try:
                lock.acquire()
                won.append(lock)
            except RunLockError:
                lost.append(1)
        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (len(won), len(lost)) == (1, 7)
        won[0].release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(str(tmp_path))
    lock.acquire()
    _plant(tmp_path, "some-other-host", 1)  # e.g. removed by hand and taken by another run
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "some-other-host"


HOLD = """
import sys, time
from r1jax.train.run_lock import held
with held(sys.argv[1]):
    print("held", flush=True)
    if sys.argv[2] == "raise":
        sys.stdin.readline()  # once the test has seen the lock
        raise ValueError("boom")
    time.sleep(60)
"""


@pytest.mark.parametrize("end", ["raise", "sigterm"])
def test_lock_released_when_the_holder_fails_or_is_terminated(tmp_path, end):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), end], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline() == "held\n"
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid
    if end == "sigterm":
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
    p.communicate("go\n", timeout=30)
    assert p.returncode != 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_processes_other_than_0_follow_process_0(tmp_path):
    """Multi-host: a process that does not hold the lock refuses when process 0 could not take it."""
    with pytest.raises(RunLockError, match="process 0"):
        with held(str(tmp_path), hold=False, agree=lambda ok: False):
            pass
    with held(str(tmp_path), hold=False, agree=lambda ok: True):
        assert not (tmp_path / LOCK_NAME).exists()  # only process 0 writes the lock
