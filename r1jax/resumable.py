"""A resumable output directory: built in `<out>.partial`, renamed to `<out>` only when complete.

`<out>` never holds a half-written result. The partial directory carries a manifest (what is being
built, with which options) and a journal (one line per finished task with a digest of its source
files). `--resume` continues only a job with the same manifest, and trusts a finished task only while
the digest of its sources is unchanged. A journal line is written only after the task's data is on
disk (the job's files fsynced in a background thread), so a resume after a crash of the machine, not
only of the process, is sound.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable

PARTIAL_SUFFIX = ".partial"
MANIFEST_NAME = "r1jax-job.json"
JOURNAL_NAME = "r1jax-job.log"
SYNC_EVERY_S = 30.0


class JobError(ValueError):
    """An output directory that cannot be (re)started as asked; the message says what to do."""


def digest(*parts: str) -> str:
    """A short stable fingerprint of some strings (options, file identities, task lists)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _differences(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys)


def sync_tree(root: str, since_ns: int = 0) -> None:
    """fsyncs every file and directory under `root` modified at or after `since_ns` (ns since the
    epoch): our own writes only, where os.sync would wait for every dirty page of the machine."""
    for d, _, files in os.walk(root):
        for path in [os.path.join(d, f) for f in files] + [d]:
            try:
                if os.stat(path).st_mtime_ns >= since_ns:
                    fsync_path(path)
            except FileNotFoundError:  # a temporary file renamed meanwhile: its new name is seen
                pass


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputDir:
    """The partial output directory of one job, its manifest and its journal.

    spec: JSON-able description of the job (kind, options, layout digest); a resumed job must match it.
    After construction `path` exists; `resumed` says whether it holds earlier work. Call `mark_ready`
    once the directory's skeleton is complete, `record` after each finished task, `commit` at the end.
    """

    def __init__(self, out: str, spec: dict, *, resume: bool, log: Callable[[str], None]):
        self.out = os.path.abspath(out)
        self.path = self.out + PARTIAL_SUFFIX
        self._spec = spec
        if os.path.exists(self.out):
            raise JobError(f"{out}: already exists; choose a new --out or remove it")
        if os.path.exists(self.path) and not resume:
            raise JobError(f"{self.path}: left by an interrupted run; pass --resume to continue it, "
                           "or remove it to start again")
        manifest = self._read(MANIFEST_NAME)
        if os.path.exists(self.path) and manifest is None:
            raise JobError(f"{self.path}: exists but was not made by r1jax (no {MANIFEST_NAME}); "
                           "remove it or choose another --out")
        manifest = manifest or {}
        self.resumed = bool(manifest.get("ready"))  # else it died while laying out: start again
        if self.resumed and manifest.get("spec") != spec:
            raise JobError(f"{self.path}: was started with other options ("
                           f"{_differences(manifest['spec'], spec)}); rerun with those, or remove "
                           "it to start again")
        if not self.resumed:
            if resume:
                log(f"resume: no finished work in {self.path}; starting from the beginning")
            shutil.rmtree(self.path, ignore_errors=True)
            os.makedirs(self.path)
            self._write_manifest(ready=False)
        self._pending: list[str] = []
        self._synced_ns = 0  # when the last sync of the job's files began
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, daemon=True)
        self._syncer.start()

    def _read(self, name: str):
        try:
            with open(os.path.join(self.path, name)) as f:
                return json.load(f) if name.endswith(".json") else f.read()
        except (OSError, json.JSONDecodeError):
            return None

    def _write_manifest(self, ready: bool) -> None:
        tmp = os.path.join(self.path, MANIFEST_NAME + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"spec": self._spec, "ready": ready}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, MANIFEST_NAME))

    def mark_ready(self) -> None:
        """The skeleton (metadata, empty arrays, file headers) is complete: a resume keeps it."""
        self._synced_ns = time.time_ns()
        sync_tree(self.path)
        self._write_manifest(ready=True)

    def finished(self, digests: dict[str, str]) -> set[str]:
        """Tasks of `digests` ({task key: digest of its sources now}) that the journal lists as
        finished from sources with the same digest."""
        done = set()
        for line in (self._read(JOURNAL_NAME) or "").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: that task is redone
                continue
            if digests.get(entry.get("task")) == entry.get("source"):
                done.add(entry["task"])
        return done

    def record(self, task: str, digest: str) -> None:
        """Notes a finished task; its journal line follows the next sync of the data to disk."""
        with self._lock:
            self._pending.append(json.dumps({"task": task, "source": digest}))

    def flush(self) -> None:
        """Syncs written data to disk, then journals the tasks that had finished before the sync."""
        with self._journal_lock:
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            # Files modified since the last sync began (coarse mtimes: a second of slack).
            since, self._synced_ns = self._synced_ns - 10**9, time.time_ns()
            sync_tree(self.path, since)
            with open(os.path.join(self.path, JOURNAL_NAME), "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())

    def _sync_loop(self) -> None:
        while not self._stop.wait(SYNC_EVERY_S):
            self.flush()

    def close(self) -> None:
        """Stops the background sync, journaling what finished (on success and on failure alike)."""
        self._stop.set()
        self._syncer.join()
        self.flush()

    @contextlib.contextmanager
    def keeping_work(self, label: str, log: Callable[[str], None]):
        """On any failure inside, journals what finished and says how to continue, then re-raises."""
        try:
            yield
        except BaseException:
            self.close()
            log(f"{label}: stopped; {self.path} keeps the finished tensors: rerun with --resume to "
                "continue, or remove it")
            raise

    def commit(self) -> None:
        """Renames the complete output into place, without the job's bookkeeping files."""
        self.close()
        for name in (MANIFEST_NAME, JOURNAL_NAME):
            if os.path.exists(os.path.join(self.path, name)):
                os.remove(os.path.join(self.path, name))
        sync_tree(self.path, self._synced_ns - 10**9)
        os.rename(self.path, self.out)
        fsync_path(os.path.dirname(self.out))  # the rename itself
