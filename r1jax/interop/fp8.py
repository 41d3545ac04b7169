"""Block-scaled FP8 weights as the DeepSeek-V3/R1 release stores them: e4m3 codes, 128x128 scales.

    w[..., i, j] = float32(q[..., i, j]) * scale_inv[..., i // 128, j // 128]

q is `float8_e4m3fn`, scale_inv float32 of shape [..., ceil(M/128), ceil(N/128)] (edge blocks
partial; leading axes, as in fused experts [E, M, N], carry their own scales). Quantizing uses the
release's recipe, scale_inv = amax / 448 per block and q = round-to-nearest-even(w / scale_inv). That
recipe does not invert dequantization: fl(fl(448 s) / 448) != s for about a tenth of float32 scales,
and a block without a +-448 code has amax < 448 s. So `quantize` can be handed the source's scales
and keeps every block they reproduce exactly, which makes FP8 -> float -> FP8 bit for bit.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

BLOCK = 128
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_MAX = 448.0
# float32 value of each of the 256 codes (NaN for 0x7f and 0xff).
_CODE_VALUES = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)


def scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the scale_inv of an FP8 tensor of `shape` [..., M, N]."""
    return tuple(shape[:-2]) + tuple(-(-d // BLOCK) for d in shape[-2:])


def scale_rows(lo: int, hi: int, ndim: int) -> slice:
    """Rows of scale_inv's axis 0 that belong to rows lo:hi of axis 0 of an `ndim`-axis weight (lo a
    multiple of 128 when ndim is 2)."""
    if ndim == 2:
        return slice(lo // BLOCK, -(-hi // BLOCK))
    return slice(lo, hi)


SUB_ROWS = 16  # rows gathered at a time: their index, values and transposed tile stay in cache


def dequantize(q: np.ndarray, scale_inv: np.ndarray, dtype=np.float32, transpose: bool = False,
               out: np.ndarray | None = None) -> np.ndarray:
    """q [..., M, N] e4m3, scale_inv [..., ceil(M/128), ceil(N/128)] -> w [..., M, N] in `dtype`,
    bit for bit (float32(q) * scale_inv).astype(dtype); [..., N, M] (C-contiguous) when `transpose`.
    `out`: a C-contiguous array of that shape and dtype to fill (e.g. a reused buffer)."""
    q, scale_inv = np.asarray(q), np.asarray(scale_inv, np.float32)
    *lead, m, n = q.shape
    shape = tuple(lead) + ((n, m) if transpose else (m, n))
    if out is None:
        out = np.empty(shape, dtype)
    elif out.shape != shape or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
        raise ValueError(f"out is {out.dtype}{list(out.shape)}, expected C-contiguous {np.dtype(dtype)}{list(shape)}")
    # Per band of 128 rows, a table holds every code's value times each column block's scale, cast to
    # `dtype` once; a gather indexed by (column block << 8 | code) then does SUB_ROWS rows at a time in
    # one pass over q. Each entry is float32(code) * scale rounded as the formula rounds it, so nothing
    # changes. Transposed, those rows are gathered into a small buffer and copied as a tile into their
    # columns of the output: a whole-matrix strided copy would miss the cache on every element.
    # Values move as unsigned integers of their width: numpy copies ml_dtypes' bfloat16 element by
    # element through the dtype's own functions, several times slower.
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    n_col_blocks = -(-n // BLOCK)
    index_dtype = np.uint16 if n_col_blocks <= 256 else np.uint32
    col_base = ((np.arange(n) // BLOCK) << 8).astype(index_dtype)  # [N]
    codes = q.view(np.uint8)
    sub = min(SUB_ROWS, m)
    index = np.empty((sub, n), index_dtype)
    values = np.empty((sub, n), bits) if transpose else None
    dest = out.view(bits)
    for lead_idx in np.ndindex(*lead):
        for b, r in enumerate(range(0, m, BLOCK)):
            table = (scale_inv[lead_idx + (b,)][:, None] * _CODE_VALUES[None, :]).astype(dtype).view(bits)
            table = table.reshape(-1)
            for lo in range(r, min(r + BLOCK, m), sub):
                k = min(sub, m - lo)
                np.bitwise_or(codes[lead_idx + (slice(lo, lo + k),)], col_base, out=index[:k])
                if transpose:
                    np.take(table, index[:k], out=values[:k], mode="wrap")
                    dest[lead_idx + (slice(None), slice(lo, lo + k))] = values[:k].T
                else:
                    np.take(table, index[:k], out=dest[lead_idx + (slice(lo, lo + k),)], mode="wrap")
    return out


def _block_reduce(ufunc, x: np.ndarray) -> np.ndarray:
    """ufunc-reduce [M, N] over 128x128 blocks (edge blocks partial) -> [ceil(M/128), ceil(N/128)]."""
    rows = ufunc.reduceat(x, np.arange(0, x.shape[0], BLOCK), axis=0)
    return ufunc.reduceat(rows, np.arange(0, x.shape[1], BLOCK), axis=1)


def _expand(s: np.ndarray, m: int, n: int) -> np.ndarray:
    """[ceil(M/128), ceil(N/128)] -> [M, N], each block's value repeated over it."""
    return np.repeat(np.repeat(s, BLOCK, 0), BLOCK, 1)[:m, :n]


def _codes(w32: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[M, N] float32 and its block scales -> e4m3 codes, round to nearest even, saturating."""
    return np.clip(w32 / _expand(s, *w32.shape), -E4M3_MAX, E4M3_MAX).astype(E4M3)


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _quantize_2d(w: np.ndarray, given: np.ndarray | None):
    w32 = w.astype(np.float32)
    amax = _block_reduce(np.maximum, np.abs(w32))
    # An all-zero block has amax 0; any positive scale codes it as zeros, and 1 keeps it finite.
    fresh = np.where(amax > 0, amax / np.float32(E4M3_MAX), np.float32(1)).astype(np.float32)
    if given is None:
        return _codes(w32, fresh), fresh
    given = np.asarray(given, np.float32)
    q = _codes(w32, given)
    # A block keeps the given scale when it reproduces every bit of w (the sign of zeros included):
    # then the codes are the source's own.
    same = _bits(dequantize(q, given, w.dtype)) == _bits(w)
    keep = _block_reduce(np.logical_and, same)
    if keep.all():
        return q, given
    s = np.where(keep, given, fresh).astype(np.float32)
    return _codes(w32, s), s


def quantize(w: np.ndarray, scale_inv: np.ndarray | None = None):
    """w [..., M, N] (float32 or bfloat16, finite) -> (q [..., M, N] e4m3, scale_inv [..., ceil(M/128),
    ceil(N/128)] float32).

    Fresh scales are amax / 448 per block (1 for an all-zero block). `scale_inv`, when given (the
    source's scales), is kept for every block it dequantizes back to exactly w, so those blocks get
    the source's codes; the other blocks (changed by fine-tuning) get fresh scales.
    Raises ValueError if w holds NaN or infinity.
    """
    w = np.asarray(w)
    if not np.isfinite(w).all():
        raise ValueError("holds NaN or infinity; FP8 cannot represent it")
    *lead, m, n = w.shape
    q = np.empty(w.shape, E4M3)
    s = np.empty(scale_shape(w.shape), np.float32)
    for idx in np.ndindex(*lead):
        q[idx], s[idx] = _quantize_2d(w[idx], None if scale_inv is None else scale_inv[idx])
    return q, s


def take_rows(w: np.ndarray, scale_inv: np.ndarray | None, lo: int, hi: int):
    """Rows lo:hi of axis -2 of a weight [..., M, N] as block-scaled FP8: (q [..., hi-lo, N] e4m3,
    scale_inv [..., ceil((hi-lo)/128), ceil(N/128)] float32).

    w: e4m3 codes with their `scale_inv`, or floats (`scale_inv` None), quantized fresh here.
    Codes whose rows start on a block boundary and end on one (or at M) are sliced as they are, with
    their scale rows: never dequantized. Rows cutting through blocks (a fused gate_up_proj whose
    halves are not multiples of 128) are dequantized to float32 and quantized fresh.
    Raises ValueError if the floats hold NaN or infinity."""
    m = w.shape[-2]
    if scale_inv is not None and lo % BLOCK == 0 and (hi % BLOCK == 0 or hi == m):
        return w[..., lo:hi, :], np.asarray(scale_inv, np.float32)[..., lo // BLOCK:-(-hi // BLOCK), :]
    if scale_inv is not None:
        w = dequantize(w, scale_inv)
    return quantize(w[..., lo:hi, :])
