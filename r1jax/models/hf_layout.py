"""The machinery mapping an HF checkpoint's tensors to r1jax parameter paths, both directions; each
family lists its own tensors with it (its `hf_tensors`, e.g. r1jax/models/deepseek_v3/layout.py).

HF stores torch Linear weights as [out, in]; r1jax stores kernels as [in, ...out] with heads split
out, and stacks layers (and experts) along leading axes. Each HF tensor maps to one or more `Slot`s:
a parameter path, the leading indices it fills (layer, expert), and a declarative transform (swap the
last two axes, split one axis into heads, keep a row range) that `fn` applies and `inv` undoes.
Convert (HF -> r1jax) applies `fn`; export (r1jax -> HF) walks the same list and applies `inv`.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

# The release stores every tensor with one of these suffixes block-scaled FP8 (the projections,
# kv_a_proj_with_mqa among them).
FP8_SUFFIXES = ("_proj.weight", "_proj_with_mqa.weight")
# r1jax path suffix of the block scales of a projection held as FP8 codes (RuntimeConfig.fp8_weights):
# PATH holds codes, PATH_scale their scales (r1jax/models/common/params.py).
SCALE_PATH_SUFFIX = "_scale"


TRANSPOSE_BAND = 16


def transpose_last2(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """[..., M, N] -> C-contiguous [..., N, M] (into `out` when given, converting to its dtype).
    Copied 16 source rows at a time, so that each tile stays in cache: 2-3x faster than numpy's
    one-pass transposed copy of a large matrix."""
    if out is None:
        out = np.empty(x.shape[:-2] + (x.shape[-1], x.shape[-2]), x.dtype)
    src, dst = x, out
    if x.dtype == out.dtype:  # moved as unsigned integers: numpy copies bfloat16 through slow dtype hooks
        bits = np.dtype(f"u{x.dtype.itemsize}")
        src, dst = x.view(bits), out.view(bits)
    for r in range(0, x.shape[-2], TRANSPOSE_BAND):
        dst[..., r:r + TRANSPOSE_BAND] = np.swapaxes(src[..., r:r + TRANSPOSE_BAND, :], -1, -2)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    """Where (part of) an HF tensor lands: target[index] = fn(hf data).

    The transform, in order: keep HF rows `rows` of axis -2 (the halves of a fused gate_up_proj), swap
    the last two axes when `swap` ([out, in] -> [in, out]), then split axis `split[0]` into
    (split[1] heads, rest).
    """
    path: str                              # dotted r1jax path of the target variable
    index: tuple[int, ...]                 # leading indices into the target array (layer[, expert])
    swap: bool = False
    split: tuple[int, int] | None = None   # (axis after the swap, number of heads)
    rows: tuple[int, int] | None = None    # HF rows lo:hi of axis -2

    def fn(self, w: np.ndarray, swapped: bool = False) -> np.ndarray:
        """HF data (or a block of its axis-0 rows, see `block`) -> data of target[index] (a view
        where possible). swapped: `w` comes with its last two axes already swapped (by
        `transpose_last2` or a transposing reader), as this slot swaps them."""
        if self.rows is not None:
            lo, hi = self.rows
            w = w[..., lo:hi] if swapped else w[..., lo:hi, :]
        if self.swap and not swapped:
            w = np.swapaxes(w, -1, -2)
        if self.split is not None:
            axis, heads = self.split
            w = w.reshape(w.shape[:axis] + (heads, w.shape[axis] // heads) + w.shape[axis + 1:])
        return w

    def inv(self, x: np.ndarray, contiguous: bool = False) -> np.ndarray:
        """data of target[index] -> the HF data it came from (rows `hf_region` of the HF tensor); a
        view, or a C-contiguous array when `contiguous`."""
        if self.split is not None:
            axis = self.split[0]
            x = x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])
        if self.swap:
            return transpose_last2(x) if contiguous else np.swapaxes(x, -1, -2)
        return np.ascontiguousarray(x) if contiguous else x

    def hf_region(self, ndim: int) -> tuple:
        """Index of the HF tensor (of `ndim` axes) that this slot's data comes from."""
        if self.rows is None:
            return ()
        return (slice(None),) * (ndim - 2) + (slice(*self.rows),)

    def block(self, lo: int, hi: int, ndim: int) -> tuple | None:
        """Index into target[index] holding HF rows lo:hi of axis 0 (of an `ndim`-axis HF tensor), or
        None when those rows do not land in one box (split heads; row ranges of axis 0)."""
        if self.split is not None or (self.rows is not None and ndim == 2):
            return None
        if self.swap and ndim == 2:  # HF rows are the output features: the last target axis
            return (slice(None), slice(lo, hi))
        return (slice(lo, hi),)


@dataclasses.dataclass(frozen=True, slots=True)
class HFTensor:
    """One HF tensor and where it lands. A job keeps one per tensor of the release (~48,000), so no
    per-instance dict, and every slot of a parameter shares its (interned) path string."""
    name: str
    shape: tuple[int, ...]
    slots: tuple[Slot, ...]

    @property
    def fp8_in_release(self) -> bool:
        """Whether the release stores this tensor block-scaled FP8 (FP8_SUFFIXES)."""
        return self.name.endswith(FP8_SUFFIXES)


def scale_slot(slot: Slot) -> Slot:
    """Where the block scales of `slot`'s rows go when its path holds FP8 codes: PATH_scale at the
    same leading index, swapped as the codes are ([out/128, in/128] -> [in/128, out/128]), without a
    head split (a block of the [out, in] matrix spans heads) and without a row range (the caller
    hands over the scale rows of the slot's own rows, r1jax/interop/fp8.py take_rows)."""
    return Slot(sys.intern(slot.path + SCALE_PATH_SUFFIX), slot.index, swap=slot.swap)


def fp8_held(expected, paths) -> frozenset[str]:
    """Names of the HF tensors of `expected` that land on projections held as FP8 codes: those whose
    every slot's path has a PATH_scale among `paths` (a model's variable paths). Raises
    AssertionError for a tensor split between held and plain paths (a layout bug)."""
    paths = set(paths)
    held = set()
    for t in expected:
        flags = {s.path + SCALE_PATH_SUFFIX in paths for s in t.slots}
        if len(flags) != 1:
            raise AssertionError(f"{t.name}: slots both FP8 and not: {[s.path for s in t.slots]}")
        if flags.pop():
            held.add(t.name)
    return frozenset(held)
