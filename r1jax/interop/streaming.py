"""Streamed jobs (convert, export): tasks over the HF layout (whole tensors, or blocks of rows of the
largest), worker threads, read-ahead, a bound on writes in flight, a progress line, bounded memory.

The output directory they fill, and its resume journal, is r1jax/interop/resumable.py.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np

from r1jax.interop import fp8, resumable
from r1jax.models import hf_layout

BLOCK_BYTES = 64 << 20  # a tensor bigger than this (as output) is streamed in blocks of rows
IN_FLIGHT_PER_WORKER = 16 << 20  # written but not yet committed, per worker (see InFlight)
TRIM_EVERY_S = 1.0  # see release_freed_memory
MMAP_THRESHOLD_BYTES = 4 << 20  # see fix_mmap_threshold


def release_freed_memory() -> None:
    """Returns the C heap's free pages to the OS (glibc's malloc_trim; a no-op elsewhere).

    Streaming allocates and frees tensor-sized buffers from several threads; glibc keeps freed heap
    memory in its arenas, so without this peak RSS grows with the amount converted, not with what is
    live. Trimming every second costs a few page faults; a fixed mmap threshold would cost them on
    every buffer."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> None:
    """Makes the C heap serve blocks of `nbytes` and more with their own mmap, returned to the OS when
    freed (glibc's mallopt(M_MMAP_THRESHOLD); a no-op elsewhere).

    glibc's threshold is dynamic by default: each freed mmapped block raises it to that block's size,
    so once tensorstore has freed one chunk-sized buffer, every later one is carved from the heaps of
    its threads, where they fragment around long-lived small allocations. A conversion's resident
    memory then grew with every chunk written (~40 KB per 2 MB chunk measured, BUILD.md); a fixed
    threshold stops it. 4 MiB, not glibc's initial 128 KiB: smaller buffers stay cheap to reuse (at
    128 KiB the page faults halved conversion throughput)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux's VmHWM counts this program only, where
    getrusage's ru_maxrss also counts the memory of the parent it was forked from."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class BufferPool:
    """Buffers for tensor-sized results, handed out again once nothing references them (thread-safe).

    Fresh memory costs a page fault and a zeroed page per 4 KiB, which for a job that streams
    terabytes through tensor-sized arrays costs more than the copies into them. An array from `array`
    is a view of a pooled buffer; the buffer is reused once no array made from it is alive (its
    reference count, which every numpy view of it holds, is back to the pool's own), so a writer may
    keep referencing one (tensorstore until commit) without a copy. Sizes are rounded up to powers of
    two of at least MIN_BYTES; at most `keep` buffers are retained (more are allocated when all are
    busy, and freed as usual).
    """
    MIN_BYTES = 1 << 20

    def __init__(self, keep: int):
        self.keep = keep
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def _idle(self, i: int) -> bool:
        return sys.getrefcount(self._buffers[i]) == 2  # the list's reference and the argument's

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialized C-contiguous array of `shape` and `dtype`, backed by a reused buffer."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = max(self.MIN_BYTES, 1 << max(nbytes - 1, 0).bit_length())
        with self._lock:
            found = next((i for i in range(len(self._buffers))
                          if self._buffers[i].nbytes == size and self._idle(i)), None)
            if found is None:
                if len(self._buffers) >= self.keep:  # make room: forget an idle buffer of another size
                    idle = next((i for i in range(len(self._buffers)) if self._idle(i)), None)
                    if idle is not None:
                        self._buffers.pop(idle)
                buf = np.empty(size, np.uint8)
                if len(self._buffers) < self.keep:
                    self._buffers.append(buf)
            else:
                buf = self._buffers[found]
        return buf[:nbytes].view(dtype).reshape(shape)


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """One unit of streamed work: an HF tensor, or the block `rows` of its axis 0."""
    tensor: hf_layout.HFTensor
    rows: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return self.tensor.name if self.rows is None else f"{self.tensor.name}[{self.rows[0]}:{self.rows[1]}]"

    def bounds(self) -> tuple[int, int]:
        return self.rows or (0, self.tensor.shape[0])

    def target_index(self, slot: hf_layout.Slot) -> tuple:
        """Index of the full target array that this task writes through `slot`."""
        if self.rows is None:
            return slot.index
        return slot.index + slot.block(*self.rows, len(self.tensor.shape))

    @property
    def scale_rows(self) -> tuple[int, int] | None:
        """Rows lo:hi of the HF scale_inv's axis 0 that go with the rows this task moves (None: all)."""
        if self.rows is None:
            return None
        rows = fp8.scale_rows(*self.rows, len(self.tensor.shape))
        return rows.start, rows.stop

    def scale_index(self, slot: hf_layout.Slot) -> tuple:
        """Index of the full PATH_scale array (hf_layout.scale_slot) that this task writes or reads for
        `slot`, a path held as FP8 codes."""
        if self.rows is None:
            return slot.index
        return slot.index + slot.block(*self.scale_rows, len(self.tensor.shape))


def block_rows(t: hf_layout.HFTensor, row_bytes: int, fp8_rows: bool, block_bytes: int) -> int | None:
    """Rows of axis 0 per block for `t` (row_bytes: bytes one row becomes), or None for one piece:
    small tensors and those whose rows do not land in one box. FP8 matrices keep whole 128-row bands."""
    n = t.shape[0]
    if len(t.shape) < 2 or n * row_bytes <= block_bytes or any(
            s.block(0, 1, len(t.shape)) is None for s in t.slots):
        return None
    rows = max(1, block_bytes // row_bytes)
    if fp8_rows:
        rows = max(fp8.BLOCK, rows // fp8.BLOCK * fp8.BLOCK)
    return rows if rows < n else None


def make_tasks(expected, shapes: dict, block_bytes: int, fp8_names=frozenset()) -> list[Task]:
    """The tasks that together write every slot of `expected` once.

    shapes: {path: (shape, dtype)} of the output; fp8_names: tensors whose rows move in 128-row bands.
    """
    tasks = []
    for t in expected:
        row_bytes = int(np.prod(t.shape[1:], dtype=np.int64)) * shapes[t.slots[0].path][1].itemsize
        rows = block_rows(t, row_bytes, t.name in fp8_names and len(t.shape) == 2, block_bytes)
        if rows is None:
            tasks.append(Task(t))
        else:
            tasks += [Task(t, (lo, min(lo + rows, t.shape[0]))) for lo in range(0, t.shape[0], rows)]
    return tasks


class ReadAhead:
    """Keeps the kernel reading about `window` bytes ahead of the tasks being worked on, so that disk
    reads overlap compute instead of stalling it page by page.

    tasks, sizes: in the order workers take them; fetch(task): starts reading one (prefetch hints,
    no memory of ours). Call `advance` as each task starts."""

    def __init__(self, tasks: list, sizes: list[int], fetch: Callable, window: int):
        self.tasks, self.sizes, self.fetch, self.window = tasks, sizes, fetch, window
        self.started = self.fetched = 0  # tasks started by workers / handed to fetch
        self.ahead = 0  # bytes fetched but not yet started
        self._lock = threading.Lock()

    def advance(self) -> None:
        with self._lock:
            if self.started < self.fetched:
                self.ahead -= self.sizes[self.started]
            self.started += 1
            self.fetched = max(self.fetched, self.started)
            while self.fetched < len(self.tasks) and self.ahead < self.window:
                self.fetch(self.tasks[self.fetched])
                self.ahead += self.sizes[self.fetched]
                self.fetched += 1


def run_tasks(tasks: Iterable, fn: Callable, workers: int) -> None:
    """Runs fn(task) for every task on `workers` threads, taking tasks in order. The first exception
    stops the taking of new tasks; running ones finish; then it is raised (Ctrl-C likewise)."""
    if workers <= 1:
        for t in tasks:
            fn(t)
        return
    source, lock, stop, errors = iter(tasks), threading.Lock(), threading.Event(), []

    def worker():
        while not stop.is_set():
            with lock:
                t = next(source, None)
            if t is None:
                return
            try:
                fn(t)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                errors.append(e)
                stop.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.1)  # a timed join lets Ctrl-C reach the main thread
    except KeyboardInterrupt:
        stop.set()
        for th in threads:
            th.join()
        raise
    if errors:
        raise errors[0]


def execute(job: resumable.OutputDir, tasks: list[Task], step: Callable, digests: dict[str, str], workers: int,
            progress: "Progress", release: Callable[[Task], None] | None = None) -> None:
    """Runs step(task) -> (tensorstore write futures, bytes they hold, bytes to count as progress)
    for every task on `workers` threads, and journals each task once all its writes are committed;
    then `release(task)`, if given, lets go of what the task read (e.g. its input's cached pages)."""
    in_flight = InFlight(workers * IN_FLIGHT_PER_WORKER)
    trimmed = [time.time()]
    fix_mmap_threshold()

    def work(task: Task) -> None:
        futures, held, done_bytes = step(task)
        if time.time() - trimmed[0] > TRIM_EVERY_S:
            trimmed[0] = time.time()
            release_freed_memory()

        def committed() -> None:
            job.record(task.key, digests[task.key], held)
            progress.advance(done_bytes)
            if release is not None:
                release(task)
        in_flight.submit(futures, held, committed)

    # Each task makes a few short-lived objects; the collections they trigger would rescan the large
    # heap of an importer of JAX each time (a tenth of the run's CPU): frozen objects are skipped.
    gc.collect()
    gc.freeze()
    try:
        run_tasks(tasks, work, workers)
    finally:
        in_flight.wait()
        gc.unfreeze()
    progress.close()


class InFlight:
    """Writes handed to tensorstore but not yet committed, at most `limit_bytes` of them.

    Waiting for each write's commit would serialize the OCDBT database's manifest updates; letting
    commits overlap lets it batch them, and the bound keeps the copies tensorstore holds small.
    `submit` blocks while the budget is spent; `on_commit` runs once all of a task's writes are on
    disk's page cache; `wait` returns when none is left and raises the first failure.
    """

    def __init__(self, limit_bytes: int):
        self.limit, self.used = limit_bytes, 0
        self._cond = threading.Condition()
        self._errors: list[BaseException] = []

    def submit(self, futures: list, nbytes: int, on_commit: Callable[[], None]) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit)
            self.used += nbytes
        pending = [len(futures)]

        def release(error: BaseException | None) -> None:
            if error is None and not self._errors:
                try:
                    on_commit()
                except BaseException as e:  # noqa: BLE001 - raised by wait()
                    error = e
            with self._cond:
                if error is not None:
                    self._errors.append(error)
                self.used -= nbytes
                self._cond.notify_all()

        def done(future) -> None:
            error = future.exception()
            with self._cond:
                pending[0] -= 1
                last = pending[0] == 0
                if error is not None:
                    self._errors.append(error)
            if last:
                release(None)

        if not futures:  # written synchronously: already committed
            release(None)
            return
        try:
            for f in futures:
                f.commit.add_done_callback(done)
        except BaseException as e:
            release(e)  # the callbacks registered so far cannot complete the count
            raise

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0)
        if self._errors:
            raise self._errors[0]


class Progress:
    """A progress bar line (tasks and bytes done, rate, ETA), handed to `log` every `every` seconds
    and once at the end: plain lines, which read the same on a terminal and in a log file."""

    def __init__(self, label: str, total: int, total_bytes: int, log: Callable[[str], None],
                 unit: str = "tensors", every: float = 10.0):
        self.label, self.total, self.total_bytes, self.unit = label, total, total_bytes, unit
        self.log, self.every = log, every
        self.done = self.bytes = 0
        self.start = self.last = time.time()
        self._lock = threading.Lock()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += 1
            self.bytes += nbytes
            now = time.time()
            if now - self.last >= self.every:
                self.last = now
                self.log(self.line())

    def line(self) -> str:
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.bytes / elapsed
        left = max(self.total_bytes - self.bytes, 0) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 1e7 else "--:--:--"
        frac = min(self.bytes / self.total_bytes, 1.0) if self.total_bytes else 1.0
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        return (f"{self.label} [{bar}] {self.done}/{self.total} {self.unit}  "
                f"{self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB  {rate / 1e9:.2f} GB/s  "
                f"ETA {eta}")

    def close(self) -> None:
        with self._lock:
            self.log(self.line())
