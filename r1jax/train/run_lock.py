"""One writer per run directory: OUTPUT_DIR/r1jax.lock, held by the trainer for its whole run.

The lock file is created atomically (O_CREAT | O_EXCL, which shared filesystems honour across hosts)
and holds one JSON object naming its holder:

    {"host": "node-3", "pid": 4242, "started": "2026-12-03T11:02:03Z"}

A second trainer on the same directory is refused (RunLockError, one line naming the directory and
the holder). A lock left behind by a process that died without releasing it (SIGKILL, a machine
crash) is *stale* when its host is this host and its pid is not running: it is taken over with a
warning. A lock held from another host is never second-guessed; the message says how to remove it
when its holder is known to be dead. Taking over is serialized by an flock on the old lock file, so
two trainers finding the same stale lock cannot both win.

Multi-host runs: only process 0 holds the lock (r1jax/train/loop.py); the others follow its verdict.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

LOCK_NAME = "r1jax.lock"


class RunLockError(RuntimeError):
    """The run directory is held by another trainer (or its lock is unreadable); names the path."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: the host name, the process id and when it took the lock (UTC, ISO 8601)."""
    host: str
    pid: int
    started: str

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.started}"


def this_holder() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def parse_holder(text: str) -> Holder | None:
    """The Holder of a lock file's text, or None when it is not a complete holder record (a lock
    being written this instant, or a file truncated by a crash)."""
    try:
        d = json.loads(text)
        return Holder(str(d["host"]), int(d["pid"]), str(d["started"]))
    except (ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: Holder, host: str) -> bool:
    """A lock is stale when it was taken on `host` (this one) by a process that no longer runs."""
    return holder.host == host and not pid_alive(holder.pid)


# A lock file with no complete holder record is being written, unless it is older than this.
_WRITING_GRACE_S = 10.0


class RunLock:
    """The lock of one run directory. `acquire` takes it or raises RunLockError; `release` removes
    the file if it is still this process's lock."""

    def __init__(self, output_dir: str, log: Callable[[str], None] = print):
        self.dir = os.path.abspath(output_dir)
        self.path = os.path.join(self.dir, LOCK_NAME)
        self.log = log
        self.holder: Holder | None = None

    def _refuse(self, holder: Holder) -> RunLockError:
        how = (f"if that process is dead, remove {self.path} and rerun" if holder.host != socket.gethostname()
               else "wait for it to finish, stop it, or choose another output_dir")
        return RunLockError(f"{self.dir}: in use by another r1jax.train run ({holder.describe()}); {how}")

    def acquire(self) -> Holder:
        os.makedirs(self.dir, exist_ok=True)
        me = this_holder()
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me.host)  # raises when held; else the file is gone: retry
                continue
            try:
                os.write(fd, (json.dumps(me.__dict__) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.holder = me
            return me
        raise RunLockError(f"{self.path}: could not be created (another process keeps recreating it)")

    def _take_over_if_stale(self, host: str) -> None:
        """Removes the existing lock file when it is stale (with a warning); raises RunLockError when
        it is held. Returns quietly when the file vanished meanwhile."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one taker-over at a time
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    return  # another process removed or replaced it meanwhile: look again
            except FileNotFoundError:
                return
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            holder = parse_holder(text)
            if holder is None:
                age = time.time() - os.fstat(fd).st_mtime
                if age < _WRITING_GRACE_S:
                    time.sleep(0.1)  # its holder is writing it: read it again
                    return
                raise RunLockError(f"{self.path}: a lock file without a holder record ({text[:80]!r}); "
                                   f"if no trainer uses {self.dir}, remove it and rerun")
            if not is_stale(holder, host):
                raise self._refuse(holder)
            self.log(f"warning: {self.path}: stale lock of a process that is no longer running "
                     f"({holder.describe()}); taking it over")
            os.unlink(self.path)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Removes the lock file if it still names this process (never another trainer's lock)."""
        if self.holder is None:
            return
        try:
            with open(self.path) as f:
                mine = parse_holder(f.read()) == self.holder
            if mine:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.holder = None


@contextlib.contextmanager
def held(output_dir: str, log: Callable[[str], None] = print, *, hold: bool = True,
         agree: Callable[[bool], bool] | None = None) -> Iterator[RunLock]:
    """Holds the run directory's lock for the body and releases it on the way out, however the body
    ends. While held, a SIGTERM that nobody else handles raises SystemExit, so that the lock is
    released then too (the training loop installs its own handler, which saves first).

    hold: whether this process takes the lock (in a multi-host run, process 0 only).
    agree: given whether this process got the lock (True when it does not take one), returns
    process 0's answer on every process; the others then refuse along with it."""
    lock, error = RunLock(output_dir, log), None
    if hold:
        try:
            lock.acquire()
        except RunLockError as e:
            error = e
    if agree is not None and not agree(error is None) and error is None:
        error = RunLockError(f"{lock.dir}: process 0 of this run could not lock it (its log says why)")
    if error is not None:
        raise error
    restore = None
    if hold and threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):
            def on_sigterm(signum, frame):
                raise SystemExit(128 + signum)
            signal.signal(signal.SIGTERM, on_sigterm)
            restore = previous
    try:
        yield lock
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        lock.release()
