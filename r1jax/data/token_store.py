"""Tokenized examples on disk: three flat, memory-mappable arrays per split.

    {prefix}.ids.npy      int32  [total_tokens]   every example's input_ids, concatenated
    {prefix}.mask.npy     uint8  [total_tokens]   loss_mask (1 = training target)
    {prefix}.offsets.npy  int64  [N + 1]          example i is [offsets[i], offsets[i+1])

Written once by `python -m r1jax.data prepare`, read by the training loader without parsing JSON.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

SUFFIXES = ("ids", "mask", "offsets")


def paths(prefix: str) -> dict[str, str]:
    return {s: f"{prefix}.{s}.npy" for s in SUFFIXES}


def write(prefix: str, examples: Iterable[dict]) -> int:
    """Writes tokenized examples ({"input_ids", "loss_mask"}) under `prefix`; returns their count.

    Files appear only when complete (written to temporary names, then renamed).
    """
    ids, mask, offsets = [], [], [0]
    for ex in examples:
        if len(ex["input_ids"]) != len(ex["loss_mask"]):
            raise ValueError("input_ids and loss_mask differ in length")
        ids.append(np.asarray(ex["input_ids"], np.int32))
        mask.append(np.asarray(ex["loss_mask"], np.uint8))
        offsets.append(offsets[-1] + len(ex["input_ids"]))
    arrays = {"ids": np.concatenate(ids) if ids else np.zeros(0, np.int32),
              "mask": np.concatenate(mask) if mask else np.zeros(0, np.uint8),
              "offsets": np.asarray(offsets, np.int64)}
    for name, path in paths(prefix).items():
        tmp = path + ".tmp.npy"
        np.save(tmp, arrays[name])
        os.replace(tmp, path)
    return len(offsets) - 1


class TokenStore:
    """Read-only, memory-mapped access to a split written by `write`."""

    def __init__(self, prefix: str):
        p = paths(prefix)
        missing = [v for v in p.values() if not os.path.exists(v)]
        if missing:
            raise FileNotFoundError(f"{prefix}: missing {', '.join(missing)}; run "
                                    "`python -m r1jax.data prepare` to create the split")
        self.ids = np.load(p["ids"], mmap_mode="r")
        self.mask = np.load(p["mask"], mmap_mode="r")
        self.offsets = np.load(p["offsets"])
        if self.offsets[-1] != len(self.ids) or len(self.ids) != len(self.mask):
            raise ValueError(f"{prefix}: token files disagree in length (corrupt or partly written)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids int32 [n], loss_mask uint8 [n]) of example i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return np.asarray(self.ids[a:b]), np.asarray(self.mask[a:b])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)
