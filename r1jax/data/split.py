"""Train / validation / test splits and k-fold cross-validation, stratified by category.

Splits are drawn from deduplicated examples (see `clean`), so no content appears in two splits;
`check_disjoint` verifies it on the content keys before anything is written.

Stratification: examples are grouped by `category` (rows without one form their own group). Each
split's total is the rounded fraction of all examples, and each group contributes the floor or the
ceiling of its exact share (largest remainders get the extra ones), so per-category counts match
the fractions within rounding. Groups are shuffled with one seeded generator in a fixed order, and
every split lists its examples in input order.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np


def _groups(categories: Sequence[str | None]) -> list[list[int]]:
    """Indices per category, groups ordered by name (uncategorized first), indices ascending."""
    groups: dict[str | None, list[int]] = {}
    for i, c in enumerate(categories):
        groups.setdefault(c, []).append(i)
    return [groups[c] for c in sorted(groups, key=lambda c: (c is not None, c or ""))]


def _allocate(sizes: Sequence[int], frac: float, capacity: Sequence[int]) -> list[int]:
    """Counts per group summing to round(sum(sizes) * frac), each the floor or ceiling of
    size * frac (largest remainder first), never above the group's capacity."""
    quotas = [n * frac for n in sizes]
    counts = [min(math.floor(q), cap) for q, cap in zip(quotas, capacity)]
    missing = math.floor(sum(sizes) * frac + 0.5) - sum(counts)
    order = sorted(range(len(sizes)), key=lambda g: (-(quotas[g] - math.floor(quotas[g])), g))
    for g in order:
        if missing <= 0:
            break
        if counts[g] < capacity[g] and counts[g] < math.ceil(quotas[g]):
            counts[g] += 1
            missing -= 1
    return counts


def split(categories: Sequence[str | None], val: float, test: float, seed: int) -> dict[str, list[int]]:
    """Assigns examples to "train", "val" and "test".

    Args:
        categories: [N] each example's category, or None.
        val, test: fractions of all examples, each in [0, 1), summing below 1.
        seed: seeds the shuffle within each category.

    Returns:
        {"train": [...], "val": [...], "test": [...]} of example indices, ascending, disjoint,
        covering range(N).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val} and --test {test} must be in [0, 1) with a sum below 1")
    groups = _groups(categories)
    sizes = [len(g) for g in groups]
    n_test = _allocate(sizes, test, sizes)
    n_val = _allocate(sizes, val, [n - t for n, t in zip(sizes, n_test)])
    rng = np.random.default_rng(seed)
    out = {"train": [], "val": [], "test": []}
    for g, idx in enumerate(groups):
        perm = [idx[i] for i in rng.permutation(len(idx))]
        out["test"] += perm[:n_test[g]]
        out["val"] += perm[n_test[g]:n_test[g] + n_val[g]]
        out["train"] += perm[n_test[g] + n_val[g]:]
    return {k: sorted(v) for k, v in out.items()}


def kfold(categories: Sequence[str | None], k: int, seed: int,
          indices: Sequence[int] | None = None) -> list[dict[str, list[int]]]:
    """K train/val pairs in which every example is in exactly one val fold.

    Args:
        categories: [N] each example's category, or None.
        k: the number of folds, 2 <= k <= number of examples.
        seed: seeds the shuffle within each category.
        indices: the examples to fold (e.g. all but a held-out test split); default all.

    Returns:
        [{"train": [...], "val": [...]}] * k; within each category, folds differ in size by at
        most one, and so do the folds overall (the round robin continues across categories).
    """
    indices = list(range(len(categories))) if indices is None else list(indices)
    if not 2 <= k <= len(indices):
        raise ValueError(f"--kfold {k} needs 2 <= K <= the number of examples ({len(indices)})")
    groups = _groups([categories[i] for i in indices])
    rng = np.random.default_rng(seed)
    fold_of: dict[int, int] = {}
    position = 0
    for idx in groups:
        for i in rng.permutation(len(idx)):
            fold_of[indices[idx[i]]] = position % k
            position += 1
    return [{"train": sorted(i for i, f in fold_of.items() if f != j),
             "val": sorted(i for i, f in fold_of.items() if f == j)} for j in range(k)]


def check_disjoint(parts: dict[str, Sequence[int]], keys: Sequence[Hashable]) -> None:
    """Raises RuntimeError when a content key occurs twice within or across `parts`."""
    owner: dict[Hashable, str] = {}
    for name, idx in parts.items():
        for i in idx:
            if keys[i] in owner:
                raise RuntimeError(f"example {i} of split {name!r} has the content of one in "
                                   f"{owner[keys[i]]!r}: deduplication failed to keep splits apart")
            owner[keys[i]] = name
