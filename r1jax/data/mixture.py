"""Mixtures: which sources a dataset is made of, and each source's share of the training split.

A mixture is a list of sources (an input path, file glob or folder, with how to read it) and, per
source, an optional weight. `python -m r1jax.data prepare` takes one as `--input A B --weights 7 3`
or as a file, `--mixture mix.yaml` (YAML or JSON):

    max_per_category: 500                 # optional: no category has more training records
    sources:
      - path: mine/*.parquet              # relative paths are relative to the mixture file
        weight: 0.7
        columns: {prompt: problem, completion: solution}   # or "prompt=problem,completion=solution"
        input_format: parquet             # optional, default auto (readers.INPUT_FORMATS)
        format: auto                      # optional row shape (formats.FORMATS)
      - path: traces.jsonl
        weight: 0.3

Every source is cleaned and deduplicated with the others (the first occurrence of a content is kept,
in source order) and split with its own natural share: the val and test splits are stratified by
(source, category), so they keep the mixture as it occurs and validation stays honest. Only the
training split is then shaped, in two steps, both seeded by --seed:

1. `cap_categories`: a category with more than `max_per_category` training records keeps a random
   `max_per_category` of them (records without a category form the category "(none)").
2. `resample`: with weights w_1..w_S (not all zero, none negative), the training split keeps its size
   N (the records left after step 1) and source s gets t_s records, the largest-remainder rounding of
   N * w_s / sum(w), so every share is within 1/N of its target. A source with n_s records available
   gives each of them floor(t_s / n_s) times and a random (t_s mod n_s) of them once more: upsampling
   repeats whole records, downsampling draws without repetition. A source with weight 0 trains on
   nothing (its records still reach val and test).

Shares count records, which are training examples unless --train_all_turns splits a record into one
example per assistant turn (a record's examples stay together).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from r1jax.data.formats import FORMATS, DataError, parse_columns
from r1jax.data.readers import INPUT_FORMATS

NO_CATEGORY = "(none)"
SOURCE_KEYS = ("path", "weight", "columns", "input_format", "format")
MIXTURE_KEYS = ("sources", "max_per_category")


class MixtureError(ValueError):
    """A mixture that cannot be used; the message names the flag, file or key."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One input of a mixture: a path (file, glob or folder) and how its rows are read."""
    path: str
    weight: float | None = None
    columns: str | None = None          # "field=column,..." as --columns takes it
    input_format: str | None = None     # None: the command line's --input_format
    format: str | None = None           # None: the command line's --format


@dataclasses.dataclass(frozen=True)
class Mixture:
    sources: tuple[Source, ...]
    max_per_category: int | None = None

    @property
    def weights(self) -> list[float] | None:
        """The sources' weights, or None when no source sets one (natural shares)."""
        return None if self.sources[0].weight is None else [s.weight for s in self.sources]


def check_weights(weights: Sequence[float], names: Sequence[str], what: str = "--weights") -> None:
    """Raises MixtureError unless there is one finite, non-negative weight per source, not all 0."""
    if len(weights) != len(names):
        raise MixtureError(f"{what} has {len(weights)} value(s) for {len(names)} input(s) "
                           f"({', '.join(names)}): give one weight per input, in the same order")
    for w, name in zip(weights, names):
        if not math.isfinite(w) or w < 0:
            raise MixtureError(f"{what}: weight {w} for {name} must be a finite number >= 0")
    if not any(weights):
        raise MixtureError(f"{what}: every weight is 0; at least one source must be trained on")


def from_args(inputs: Sequence[str], weights: Sequence[float] | None,
              max_per_category: int | None) -> Mixture:
    """The mixture of `--input ... [--weights ...] [--max_per_category N]`."""
    if weights is not None:
        check_weights(weights, inputs)
    check_cap(max_per_category, "--max_per_category")
    return Mixture(tuple(Source(p, None if weights is None else float(w))
                         for p, w in zip(inputs, weights or [None] * len(inputs))), max_per_category)


def check_cap(cap, what: str) -> None:
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise MixtureError(f"{what} {cap!r}: must be an integer >= 1")


def _columns_text(value, where: str) -> str | None:
    """A source's `columns` (a mapping or "field=column,..." text) as --columns text."""
    if value is None:
        return None
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    if not isinstance(value, str):
        raise MixtureError(f"{where}: must map fields to column names, e.g. {{prompt: problem}}")
    try:
        parse_columns(value)
    except DataError as e:
        raise MixtureError(f"{where}: {e}") from None
    return value


def _source(item, where: str, base: str) -> Source:
    if not isinstance(item, dict):
        raise MixtureError(f"{where}: a source must be a mapping with a 'path', got {type(item).__name__}")
    unknown = sorted(set(item) - set(SOURCE_KEYS))
    if unknown:
        raise MixtureError(f"{where}.{unknown[0]}: unknown key; a source has {', '.join(SOURCE_KEYS)}")
    path = item.get("path")
    if not isinstance(path, str) or not path:
        raise MixtureError(f"{where}.path: missing or not a string")
    weight = item.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise MixtureError(f"{where}.weight: {weight!r} is not a number")
    for key, choices in (("input_format", INPUT_FORMATS), ("format", FORMATS)):
        if item.get(key) is not None and item[key] not in choices:
            raise MixtureError(f"{where}.{key}: {item[key]!r}: choose one of {', '.join(choices)}")
    path = os.path.expanduser(path)
    return Source(path if os.path.isabs(path) else os.path.join(base, path),
                  None if weight is None else float(weight), _columns_text(item.get("columns"), f"{where}.columns"),
                  item.get("input_format"), item.get("format"))


def load(path: str) -> Mixture:
    """The mixture described by a YAML (.yaml/.yml) or JSON file (format in the module docstring).

    Raises MixtureError naming the file and the key (`sources[1].weight`) of anything unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise MixtureError(f"--mixture {path}: cannot read: {e.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError: both name the line
        raise MixtureError(f"{path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: "
                           f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MixtureError(f"{path}: must be a mapping with a 'sources' list")
    unknown = sorted(set(data) - set(MIXTURE_KEYS) - {"resolved"})  # "resolved": as prepare writes it back
    if unknown:
        raise MixtureError(f"{path}: unknown key {unknown[0]!r}; a mixture has {', '.join(MIXTURE_KEYS)}")
    items = data.get("sources")
    if not isinstance(items, list) or not items:
        raise MixtureError(f"{path}: 'sources' must be a non-empty list")
    base = os.path.dirname(os.path.abspath(path))
    sources = tuple(_source(item, f"{path}: sources[{i}]", base) for i, item in enumerate(items))
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        raise MixtureError(f"{path}: sources[{weighted.index(False)}].weight is missing; give every source "
                           "a weight, or none (natural shares)")
    if all(weighted):
        check_weights([s.weight for s in sources], [f"sources[{i}] ({s.path})" for i, s in enumerate(sources)],
                      f"{path}: weight")
    cap = data.get("max_per_category")
    check_cap(cap, f"{path}: max_per_category")
    return Mixture(sources, cap)


def with_defaults(mix: Mixture, input_format: str, format: str, columns: str | None) -> Mixture:
    """The mixture with every source's unset input_format, format and columns set to these (the
    command line's --input_format, --format and --columns)."""
    return dataclasses.replace(mix, sources=tuple(dataclasses.replace(
        s, input_format=s.input_format or input_format, format=s.format or format,
        columns=s.columns if s.columns is not None else columns) for s in mix.sources))


def write(mix: Mixture, path: str) -> None:
    """Writes the mixture as a --mixture JSON file (paths absolute), which `load` reads back."""
    sources = []
    for s in mix.sources:
        item = {"path": os.path.abspath(s.path)}
        item |= {k: getattr(s, k) for k in ("input_format", "format", "columns", "weight")
                 if getattr(s, k) is not None}
        sources.append(item)
    data = {"sources": sources} | ({"max_per_category": mix.max_per_category} if mix.max_per_category else {})
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def strata(origins: Sequence[int], categories: Sequence[str | None], n_sources: int) -> list[str | None]:
    """The groups val and test are stratified by: the category alone for one source (as without a
    mixture), else (source, category), so each split keeps each source's natural share."""
    if n_sources == 1:
        return list(categories)
    return [f"{o:06d}\x00{'' if c is None else chr(1) + c}" for o, c in zip(origins, categories)]


def cap_categories(indices: Sequence[int], categories: Sequence[str | None], cap: int | None,
                   seed: int) -> list[int]:
    """The training records left after capping each category at `cap`, ascending.

    Args:
        indices: [N] training record indices.
        categories: each record's category (indexed by record), or None.
        cap: the most records a category keeps; None keeps all.
        seed: seeds the draw (one generator, categories in sorted order).
    """
    if cap is None:
        return sorted(indices)
    by_cat: dict[str, list[int]] = {}
    for i in indices:
        by_cat.setdefault(categories[i] or NO_CATEGORY, []).append(i)
    rng = np.random.default_rng([seed, 1])
    kept = []
    for c in sorted(by_cat):
        idx = sorted(by_cat[c])
        kept += idx if len(idx) <= cap else [idx[j] for j in rng.choice(len(idx), cap, replace=False)]
    return sorted(kept)


def targets(total: int, weights: Sequence[float]) -> list[int]:
    """Records per source: the largest-remainder rounding of total * w_s / sum(w), summing to total
    (ties go to the earlier source)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in exact]
    order = sorted(range(len(weights)), key=lambda s: (-(exact[s] - counts[s]), s))
    for s in order[:total - sum(counts)]:
        counts[s] += 1
    return counts


def resample(indices: Sequence[int], origins: Sequence[int], weights: Sequence[float], seed: int,
             names: Sequence[str]) -> list[int]:
    """The training split shaped to the weights (rule in the module docstring).

    Args:
        indices: [N] training record indices.
        origins: each record's source index (indexed by record).
        weights: [S] one weight per source.
        seed: seeds the draws (one generator, sources in order).
        names: [S] the sources' names, for errors.

    Returns:
        Record indices, ascending, a record repeated as often as it is drawn; N of them.

    Raises:
        MixtureError: a source with a positive weight that has no training record left.
    """
    by_source: list[list[int]] = [[] for _ in weights]
    for i in sorted(indices):
        by_source[origins[i]].append(i)
    want = targets(len(indices), weights)
    rng = np.random.default_rng([seed, 2])
    out = []
    for s, (idx, t) in enumerate(zip(by_source, want)):
        if t and not idx:
            raise MixtureError(f"{names[s]} has weight {weights[s]} but no training record left after "
                               "cleaning and splitting: nothing to draw its share from")
        if not t:
            continue
        full, extra = divmod(t, len(idx))
        out += idx * full + [idx[j] for j in rng.choice(len(idx), extra, replace=False)]
    return sorted(out)


def shares(indices: Sequence[int], keys: Sequence, names: Sequence) -> dict:
    """{name: {"records", "share"}} of the records `indices` by key (keys indexed by record)."""
    counts = {n: 0 for n in names}
    for i in indices:
        counts[keys[i]] += 1
    total = max(len(indices), 1)
    return {n: {"records": c, "share": round(c / total, 6)} for n, c in counts.items()}
