"""HF safetensors checkpoints tensor by tensor: memory-mapped reads, streamed writes, errors naming files.

A checkpoint directory holds `model.safetensors` or shards listed by `model.safetensors.index.json`.
We parse the safetensors header ourselves (8-byte little-endian length, JSON, then raw data) so that
bf16 and float8_e4m3fn map onto ml_dtypes without a framework, a truncated shard is caught before
any tensor is used, and nothing is read until a tensor is asked for. Writing is the mirror image: a
shard's header is fixed first, so every tensor has a known byte range that any thread can fill.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointFormatError(ValueError):
    """An HF checkpoint that cannot be read as it claims to be; the message names the file."""


@dataclasses.dataclass(frozen=True, slots=True)
class TensorInfo:
    """Where one tensor's bytes lie. A release has ~95,000 tensors and a job keeps every info until it
    ends, so an info holds no per-instance dict, and equal shapes share one tuple: about 250 bytes
    with its name."""
    name: str
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int
    file_size: int  # of `file` when indexed: a shard that changes while it is read is caught


def read_header(path: str) -> dict[str, TensorInfo]:
    """Tensor infos of one safetensors file; checks that every tensor's bytes lie inside the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointFormatError(f"{path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointFormatError(f"{path}: truncated (header of {n} bytes, file of {size})")
            meta = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointFormatError(f"{path}: cannot read: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointFormatError(f"{path}: corrupt safetensors header") from None
    base = 8 + n
    out = {}
    shapes: dict[tuple, tuple] = {}
    for name, m in meta.items():
        if name == "__metadata__":
            continue
        if m.get("dtype") not in DTYPES:
            raise CheckpointFormatError(f"{path}: tensor {name}: unsupported dtype {m.get('dtype')!r}")
        dtype, shape = DTYPES[m["dtype"]], tuple(m["shape"])
        shape = shapes.setdefault(shape, shape)
        start, end = m["data_offsets"]
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointFormatError(f"{path}: tensor {name}: {end - start} bytes for shape {shape}")
        if base + end > size:
            raise CheckpointFormatError(f"{path}: truncated: tensor {name} ends at byte {base + end}, "
                                        f"file has {size}")
        out[name] = TensorInfo(name, path, dtype, shape, base + start, end - start, size)
    return out


def index_checkpoint(hf_dir: str) -> dict[str, TensorInfo]:
    """All tensors of an HF checkpoint dir (sharded with an index json, or a single file)."""
    if not os.path.isdir(hf_dir):
        why = "a file, not a directory" if os.path.exists(hf_dir) else "no such directory"
        raise CheckpointFormatError(f"{hf_dir}: {why}; give the directory of an HF checkpoint")
    index_path = os.path.join(hf_dir, INDEX_NAME)
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointFormatError(f"{index_path}: not a valid index (needs a weight_map)") from None
        files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(hf_dir, SINGLE_NAME)):
        weight_map, files = None, [SINGLE_NAME]
    else:
        raise CheckpointFormatError(f"{hf_dir}: neither {INDEX_NAME} nor {SINGLE_NAME} found")
    tensors: dict[str, TensorInfo] = {}
    for fname in files:
        path = os.path.join(hf_dir, fname)
        if not os.path.exists(path):
            raise CheckpointFormatError(f"{path}: listed in {INDEX_NAME} but missing")
        for name, info in read_header(path).items():
            if name in tensors:
                raise CheckpointFormatError(f"{path}: tensor {name} also in {tensors[name].file}")
            tensors[name] = info
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in tensors or os.path.basename(tensors[name].file) != fname:
                raise CheckpointFormatError(f"{os.path.join(hf_dir, fname)}: index lists tensor {name}, "
                                            "which that file does not hold")
    return tensors


def load(info: TensorInfo) -> np.ndarray:
    """The tensor's data, memory-mapped read-only (pages are read on first touch).

    Raises CheckpointFormatError if the file's size changed since it was indexed: touching pages
    past a truncated end would kill the process with SIGBUS instead."""
    size = os.path.getsize(info.file) if os.path.exists(info.file) else -1
    if size != info.file_size:
        raise CheckpointFormatError(f"{info.file}: changed while being read ({info.file_size} bytes "
                                    f"when indexed, {size} now); restore the file and rerun")
    if info.nbytes == 0:
        return np.zeros(info.shape, info.dtype)
    return np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset, shape=info.shape)


def _advise(info: TensorInfo, start: int, stop: int | None, advice: str) -> None:
    """posix_fadvise(os.<advice>) on bytes start:stop (default: to the end) of the tensor's data; a
    hint, so a no-op where the OS has no posix_fadvise (macOS)."""
    if not hasattr(os, "posix_fadvise"):
        return
    stop = info.nbytes if stop is None else stop
    fd = os.open(info.file, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, info.offset + start, stop - start, getattr(os, advice))
    finally:
        os.close(fd)


def prefetch(info: TensorInfo, start: int = 0, stop: int | None = None) -> None:
    """Asks the kernel to start reading bytes start:stop of the tensor's data in the background, so
    that a later `load` finds them in the page cache instead of waiting on page faults."""
    _advise(info, start, stop, "POSIX_FADV_WILLNEED")


def evict(info: TensorInfo, start: int = 0, stop: int | None = None) -> None:
    """Drops bytes start:stop of the tensor's data from the page cache once they have been used (and
    are no longer mapped): a job that reads each byte once need not keep the whole release cached."""
    _advise(info, start, stop, "POSIX_FADV_DONTNEED")


def identity(path: str) -> str:
    """A digest naming this version of a file: its name, size, mtime and safetensors header.

    Resuming a conversion trusts finished work only while the digest of its source is unchanged."""
    st = os.stat(path)
    h = hashlib.sha256(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            h.update(f.read(min(struct.unpack("<Q", head)[0], st.st_size)))
    return h.hexdigest()[:16]


# Writing ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class OutTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def plan_shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of `tensors` of at most `max_bytes` of data each (a bigger tensor alone)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


class ShardWriter:
    """One safetensors file whose header is written first; `write` fills any tensor's bytes, from
    any thread, in any order (positional writes at the offsets the header fixed)."""

    def __init__(self, path: str, tensors: list[OutTensor], *, create: bool):
        header: dict = {"__metadata__": {"format": "pt"}}
        self.offsets: dict[str, tuple[int, OutTensor]] = {}
        pos = 0
        for t in tensors:
            header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [pos, pos + t.nbytes]}
            self.offsets[t.name] = (pos, t)
            pos += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
        self.path, self.base, self.size = path, 8 + len(raw), 8 + len(raw) + pos
        if create:
            with open(path, "wb") as f:
                f.write(struct.pack("<Q", len(raw)) + raw)
                f.truncate(self.size)
        elif os.path.getsize(path) != self.size:
            raise CheckpointFormatError(f"{path}: {os.path.getsize(path)} bytes, expected {self.size}; "
                                        "remove the partial output and start again")
        self._fd = os.open(path, os.O_WRONLY)

    def write(self, name: str, data: np.ndarray, first_row: int = 0) -> None:
        """Writes `data` as tensor `name`, or as its rows first_row.. (axis 0) when a block of them."""
        start, t = self.offsets[name]
        if data.dtype != t.dtype or data.shape[1:] != t.shape[1:] or first_row + len(data) > t.shape[0]:
            raise AssertionError(f"{self.path}: {name}: {data.dtype}{list(data.shape)} at row "
                                 f"{first_row} does not fit {t.dtype}{list(t.shape)}")
        view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        pos = self.base + start + first_row * (t.nbytes // t.shape[0])
        while view:
            n = os.pwrite(self._fd, view, pos)
            view, pos = view[n:], pos + n

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


def write_index(directory: str, weight_map: dict[str, str], total_size: int) -> None:
    with open(os.path.join(directory, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
