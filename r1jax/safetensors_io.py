"""Reading HF safetensors checkpoints tensor by tensor, memory-mapped, with errors that name the file.

A checkpoint directory holds `model.safetensors` or shards listed by `model.safetensors.index.json`.
We parse the safetensors header ourselves (8-byte little-endian length, JSON, then raw data) so that
bf16 and float8_e4m3fn map onto ml_dtypes without a framework, a truncated shard is caught before
any tensor is used, and nothing is read until a tensor is asked for.
"""
from __future__ import annotations

import dataclasses
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
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointFormatError(ValueError):
    """An HF checkpoint that cannot be read as it claims to be; the message names the file."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


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
    for name, m in meta.items():
        if name == "__metadata__":
            continue
        if m.get("dtype") not in DTYPES:
            raise CheckpointFormatError(f"{path}: tensor {name}: unsupported dtype {m.get('dtype')!r}")
        dtype, shape = DTYPES[m["dtype"]], tuple(m["shape"])
        start, end = m["data_offsets"]
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointFormatError(f"{path}: tensor {name}: {end - start} bytes for shape {shape}")
        if base + end > size:
            raise CheckpointFormatError(f"{path}: truncated: tensor {name} ends at byte {base + end}, "
                                        f"file has {size}")
        out[name] = TensorInfo(name, path, dtype, shape, base + start, end - start)
    return out


def index_checkpoint(hf_dir: str) -> dict[str, TensorInfo]:
    """All tensors of an HF checkpoint dir (sharded with an index json, or a single file)."""
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
    """The tensor's data, memory-mapped read-only (pages are read on first touch)."""
    if info.nbytes == 0:
        return np.zeros(info.shape, info.dtype)
    return np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset, shape=info.shape)
