"""Training batches from a TokenStore split: shuffle, pack, batch, shard by JAX process, resume.

Axis legend: B rows of a batch (local to this process), T seq_len.

Each batch is a dict of int32 numpy arrays [B, T]:
  tokens       token ids; 0 on padding
  positions    0, 1, ... restarting at every document; 0 on padding
  segment_ids  1, 2, ... numbering the documents of a row in order; 0 on padding
  loss_mask    1 where the token is a training target (the split's mask); 0 on padding

How an epoch is laid out (all of it a pure function of the seed, the epoch number and the split's
lengths, computed identically on every process):
  1. Documents are permuted by `np.random.default_rng([seed, epoch])` (or kept in order when
     `shuffle=False`). Each epoch has its own permutation.
  2. Documents longer than `seq_len` are truncated to their first `seq_len` tokens (the rest is
     dropped, not carried into another row; `prepare` drops or truncates over-long examples before
     this, so here it is a safety net). Empty documents are skipped.
  3. Packing: streaming first-fit over the permuted documents with `PACK_OPEN_ROWS` rows open; a
     document goes into the first open row it fits in, and when it fits in none, the fullest open
     row is closed. About 99% of slots hold tokens for lengths spread over [T/80, T/2]. Without
     packing, each document is a row of its own, padded to T.
  4. Rows are cut into global batches of `batch_size` rows; the epoch's last batch is completed
     with empty rows (all padding), so every document appears exactly once per epoch and every
     batch has the same shape.

Sharding: `batch_size` is the GLOBAL batch (what an optimizer step sees); process p of n receives
rows [p * B, (p + 1) * B) of each global batch, B = batch_size / n, so processes see disjoint
documents, step the same number of times, and the global batches do not depend on n (a run can
resume on a different number of hosts with the same data order). The trainer passes its global batch
and `jax.process_index()`, `jax.process_count()`, and assembles the global array from the local rows
(e.g. `jax.make_array_from_process_local_data`).

Resume: `get_state()` is a small JSON-serializable dict {epoch, batch, fingerprint} naming the next
batch; `set_state()` on a loader built with the same data and settings continues with exactly that
batch, mid-epoch or not. The fingerprint (seed, shuffle, packing, seq_len, batch_size, split size)
guards against resuming onto different data or settings.

Grain runs the batch construction: each epoch is a `grain.MapDataset` of batches, read through
`to_iter_dataset` with background threads that prefetch `prefetch` batches ahead. Batch construction
is a vectorized gather from the memory-mapped store (no per-token Python).
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import grain
import numpy as np

from r1jax.data.token_store import TokenStore

PACK_OPEN_ROWS = 64  # open rows of first-fit packing: more rows, less padding, slower packing
STATE_VERSION = 1
FIELDS = ("tokens", "positions", "segment_ids", "loss_mask")


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which an epoch visits documents 0..n-1: int64 [n]."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def pack_first_fit(lengths: np.ndarray, order: np.ndarray, seq_len: int,
                   open_rows: int = PACK_OPEN_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Packs documents into rows of seq_len tokens, streaming first-fit with `open_rows` open rows.

    lengths: int [N] (already truncated to <= seq_len, > 0 for every document in `order`);
    order: int [M] the documents to pack, in arrival order.
    Returns (docs int64 [M], row_starts int64 [R + 1]): row r holds docs[row_starts[r]:
    row_starts[r+1]] in that order; rows are listed in the order they were closed.
    """
    lens = lengths[order].tolist()
    docs = order.tolist()
    min_len = min(lens) if lens else 0
    free: list[int] = []      # free slots of each open row
    members: list[list[int]] = []
    rows: list[list[int]] = []
    for d, n in zip(docs, lens):
        for i, f in enumerate(free):
            if n <= f:
                members[i].append(d)
                if f - n < min_len:  # nothing can join it any more
                    rows.append(members.pop(i))
                    del free[i]
                else:
                    free[i] = f - n
                break
        else:
            if len(free) == open_rows:
                j = free.index(min(free))
                rows.append(members.pop(j))
                del free[j]
            free.append(seq_len - n)
            members.append([d])
    rows.extend(members)
    counts = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    row_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    packed = np.fromiter((d for r in rows for d in r), np.int64, len(docs))
    return packed, row_starts


class Loader:
    """An iterator of this process's batches; see the module docstring. Build with `make_loader`."""

    def __init__(self, prefix: str, *, seq_len: int, batch_size: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, packing: bool = True,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 4):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a positive "
                             f"multiple of process_count {process_count}")
        if num_epochs is not None and num_epochs < 0:
            raise ValueError(f"num_epochs must be >= 0 or None (forever), got {num_epochs}")
        self.prefix = prefix
        self.store = TokenStore(prefix)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.shuffle, self.packing, self.num_epochs = shuffle, packing, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = batch_size // process_count
        self.prefetch = prefetch
        self._lengths = np.minimum(self.store.lengths(), seq_len)   # truncated lengths [N]
        self._starts = self.store.offsets[:-1]
        self._nonempty = np.flatnonzero(self._lengths > 0)
        if len(self._nonempty) == 0:
            raise ValueError(f"{prefix}: the split holds no tokens; nothing to train on")
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._epoch, self._batch = 0, 0
        self._it: Iterator | None = None

    # ---- the epoch layout ------------------------------------------------------------------

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(docs, row_starts) of `epoch` (see pack_first_fit); the last two are cached."""
        key = epoch if self.shuffle else 0
        if key not in self._plans:
            order = self._nonempty[epoch_order(len(self._nonempty), self.seed, epoch,
                                               self.shuffle)]
            if self.packing:
                plan = pack_first_fit(self._lengths, order, self.seq_len)
            else:
                plan = order, np.arange(len(order) + 1, dtype=np.int64)
            for old in sorted(self._plans)[:-1]:
                del self._plans[old]
            self._plans[key] = plan
        return self._plans[key]

    def batches_in_epoch(self, epoch: int) -> int:
        """Global batches (= steps) in `epoch`; the same on every process."""
        rows = len(self._plan(epoch)[1]) - 1
        return -(-rows // self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Steps in epoch 0. Exact for every epoch without packing or without shuffling; with both,
        later epochs differ by a few steps at most (packing depends on the order)."""
        return self.batches_in_epoch(0)

    @property
    def total_steps(self) -> int | None:
        """Steps over all `num_epochs` epochs (packs each epoch once to count); None if forever."""
        if self.num_epochs is None:
            return None
        return sum(self.batches_in_epoch(e) for e in range(self.num_epochs))

    def _make_batch(self, plan: tuple[np.ndarray, np.ndarray], b: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch b of an epoch: a dict of int32 [B, T]."""
        docs_all, row_starts = plan
        nrows, lb, t = len(row_starts) - 1, self.local_batch_size, self.seq_len
        r0 = min(b * self.batch_size + self.process_index * lb, nrows)
        r1 = min(r0 + lb, nrows)
        d0, d1 = row_starts[r0], row_starts[r1]
        docs = docs_all[d0:d1]                                   # [n_docs] in row order
        first = row_starts[r0:r1] - d0                           # first doc of each row
        per_row = np.diff(row_starts[r0:r1 + 1])
        row = np.repeat(np.arange(r1 - r0), per_row)             # row of each doc
        lens = self._lengths[docs]
        cum = np.cumsum(lens) - lens                             # tokens before each doc
        within = cum - np.repeat(cum[first], per_row)            # start of each doc in its row
        seg = np.arange(len(docs)) - np.repeat(first, per_row) + 1
        pos = np.arange(lens.sum()) - np.repeat(cum, lens)       # [n_tokens] position in doc
        src = np.repeat(self._starts[docs], lens) + pos
        dst = np.repeat(row * t + within, lens) + pos
        out = {k: np.zeros(lb * t, np.int32) for k in FIELDS}
        out["tokens"][dst] = self.store.ids[src]
        out["loss_mask"][dst] = self.store.mask[src]
        out["segment_ids"][dst] = np.repeat(seg, lens)
        out["positions"][dst] = pos
        return {k: v.reshape(lb, t) for k, v in out.items()}

    # ---- iteration and state ---------------------------------------------------------------

    def _epoch_iterator(self) -> Iterator:
        plan = self._plan(self._epoch)
        ds = grain.MapDataset.range(self._batch, self.batches_in_epoch(self._epoch))
        ds = ds.map(functools.partial(self._make_batch, plan))
        if self.prefetch <= 0:
            return iter(ds)
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                         prefetch_buffer_size=self.prefetch)))

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self.num_epochs is not None and self._epoch >= self.num_epochs:
                raise StopIteration
            if self._batch < self.batches_in_epoch(self._epoch):
                break
            self._close()
            self._epoch, self._batch = self._epoch + 1, 0
        if self._it is None:
            self._it = self._epoch_iterator()
        batch = next(self._it)
        self._batch += 1
        return batch

    def _close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None

    def _fingerprint(self) -> dict[str, Any]:
        return {"seed": self.seed, "shuffle": self.shuffle, "packing": self.packing,
                "seq_len": self.seq_len, "batch_size": self.batch_size,
                "num_examples": len(self.store), "num_tokens": int(self.store.offsets[-1])}

    def get_state(self) -> dict[str, Any]:
        """The position of the next batch, as a JSON-serializable dict."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "batch": self._batch,
                "fingerprint": self._fingerprint()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a `get_state()` result: the next batch is the one it named."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}; it was saved by another r1jax version")
        mine, saved = self._fingerprint(), state.get("fingerprint", {})
        diff = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in mine.items()
                if saved.get(k) != v]
        if diff:
            raise ValueError(f"{self.prefix}: the loader state was saved with other data or "
                             f"settings ({'; '.join(diff)}); resuming would not continue the same "
                             "batch sequence. Restore with the original settings or start afresh.")
        self._close()
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    def close(self) -> None:
        """Stops the prefetch threads (iteration may resume later from the same position)."""
        self._close()


def make_loader(prefix: str, *, seq_len: int, batch_size: int, seed: int = 0,
                shuffle: bool = True, num_epochs: int | None = None, packing: bool = True,
                process_index: int = 0, process_count: int = 1, prefetch: int = 4) -> Loader:
    """This process's batches of a TokenStore split (see the module docstring).

    prefix: the split's path prefix (`{prefix}.ids.npy` ...); seq_len: T; batch_size: the global
    batch (rows per step over all processes; this process gets batch_size / process_count);
    num_epochs: None for forever; packing: several documents per row (else one per row);
    prefetch: batches built ahead on a background thread (0: build on demand).
    For validation use shuffle=False, num_epochs=1: every example once, in order, the last batch
    completed with empty rows (segment_ids 0, so they add no loss).
    """
    return Loader(prefix, seq_len=seq_len, batch_size=batch_size, seed=seed, shuffle=shuffle,
                  num_epochs=num_epochs, packing=packing, process_index=process_index,
                  process_count=process_count, prefetch=prefetch)
