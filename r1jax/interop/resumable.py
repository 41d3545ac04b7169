"""A resumable output directory: built in `<out>.partial`, renamed to `<out>` only when complete.

`<out>` never holds a half-written result. The partial directory carries a manifest (what is being
built, with which options) and a journal (one line per finished task with a digest of its source
files). `--resume` continues only a job with the same manifest, and trusts a finished task only while
the digest of its sources is unchanged. A journal line is written only after the task's data is on
disk (the job's files fsynced in a background thread), so a resume after a crash of the machine, not
only of the process, is sound.

The same thread keeps the job's footprint in the page cache bounded: every SYNC_BYTES of finished work
it syncs the files written since and drops their pages. A conversion writes twice the release's size;
left to the kernel, that would evict everything else cached on the machine, and dirty pages would be
written back in bursts that stall the job.
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
SYNC_EVERY_S = 30.0  # the journal catches up at least this often
SYNC_BYTES = 64 << 20  # ... and whenever this many bytes of tasks have finished since the last sync
SYNC_TASKS = 4096  # ... or this many tasks (small tensors: journal lines waiting stay few)
RECENT_NS = 10**9  # a file modified this recently may change again within its mtime's resolution


class JobError(ValueError):
    """An output directory that cannot be (re)started as asked; the message says what to do."""


def digest(*parts: str) -> str:
    """A short stable fingerprint of some strings (options, file identities, task lists)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _differences(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys)


def fsync_path(path: str, drop: bool = False) -> None:
    """fsync; with `drop`, then also evicts the (now clean) pages of the file from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if drop and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class SyncedTree:
    """Syncs the files of a directory tree that changed since the previous call, and drops their pages.

    write_once: directories (relative to root) whose files never change once they appear under their
    name (an OCDBT database's d/, which tensorstore fills by renaming finished files into place):
    those are synced once and never looked at again, so a sync costs what changed, not what exists.
    """

    def __init__(self, root: str, write_once: tuple[str, ...] = ()):
        self.root = root
        self.write_once = {os.path.normpath(w) for w in write_once}
        self._seen: dict[str, tuple[int, int] | None] = {}  # path -> (size, mtime) when last synced
        # write-once dir -> names synced there: only the name, as a job's database grows one file per
        # commit (tens of thousands for a release), each kept to the end
        self._settled: dict[str, set[str]] = {}

    def sync(self) -> None:
        for d, _, files in os.walk(self.root):
            once = os.path.relpath(d, self.root) in self.write_once
            settled = self._settled.setdefault(d, set()) if once else ()
            for path in [os.path.join(d, f) for f in files if f not in settled] + [d]:
                try:
                    st = os.stat(path)
                    key = (st.st_size, st.st_mtime_ns)
                    if self._seen.get(path) != key:
                        fsync_path(path, drop=path != d)
                except FileNotFoundError:  # a temporary file renamed meanwhile: its new name is seen
                    continue
                if once and path != d:
                    settled.add(os.path.basename(path))
                    continue
                # A write in the same tick of the clock as this stat would leave the key unchanged:
                # a file modified this recently is synced again next time.
                recent = st.st_mtime_ns >= time.time_ns() - RECENT_NS
                self._seen[path] = None if recent else key


class OutputDir:
    """The partial output directory of one job, its manifest and its journal.

    spec: JSON-able description of the job (kind, options, layout digest); a resumed job must match it.
    write_once: directories of the output whose files are never modified once in place (SyncedTree).
    After construction `path` exists; `resumed` says whether it holds earlier work. Call `mark_ready`
    once the directory's skeleton is complete, `record` after each finished task, `commit` at the end.
    """

    def __init__(self, out: str, spec: dict, *, resume: bool, log: Callable[[str], None],
                 write_once: tuple[str, ...] = ()):
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
            try:
                os.makedirs(self.path)
                self._write_manifest(ready=False)
            except OSError as e:  # e.g. a parent is a regular file, or not writable
                raise JobError(f"{out}: cannot create {e.filename or self.path}: {e.strerror}") from None
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._tree = SyncedTree(self.path, write_once)
        self._lock = threading.Lock()
        self._journal_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
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
        self._tree.sync()
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

    def record(self, task: str, digest: str, nbytes: int = 0) -> None:
        """Notes a finished task that wrote `nbytes`; its journal line follows the next sync of the
        data to disk, which starts once SYNC_BYTES or SYNC_TASKS have finished (or SYNC_EVERY_S have
        passed)."""
        with self._lock:
            self._pending.append(json.dumps({"task": task, "source": digest}))
            self._pending_bytes += nbytes
            if self._pending_bytes >= SYNC_BYTES or len(self._pending) >= SYNC_TASKS:
                self._wake.set()

    def flush(self) -> None:
        """Syncs written data to disk, then journals the tasks that had finished before the sync."""
        with self._journal_lock:
            with self._lock:
                lines, self._pending, self._pending_bytes = self._pending, [], 0
            if not lines:
                return
            self._tree.sync()
            with open(os.path.join(self.path, JOURNAL_NAME), "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())

    def _sync_loop(self) -> None:
        while True:
            self._wake.wait(SYNC_EVERY_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.flush()

    def close(self) -> None:
        """Stops the background sync, journaling what finished (on success and on failure alike)."""
        self._stop.set()
        self._wake.set()
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
        self._tree.sync()
        os.rename(self.path, self.out)
        fsync_path(os.path.dirname(self.out))  # the rename itself
