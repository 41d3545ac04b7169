"""What `prepare` did: DIR/report.json, DIR/summary.txt (also printed) and DIR/token_lengths.png.

report.json:
    records     {"read", "kept", "truncated", "removed": {reason: count}, "training_examples": {"kept",
                "removed": {reason: count}}}; read = kept + sum(removed) counts records (every
                non-blank input line). Each kept record gives one training example, or with
                --train_all_turns one per assistant turn: training_examples.kept counts those
                written (each in one split, or fold), training_examples.removed the turn examples
                dropped from records that were kept; truncated counts training examples.
    examples    {reason: [{"where": "file:line", "detail": str}, ...]}, the first few of each reason
                (a turn example's where is "file:line turn j"); reasons are `clean.REASONS`, e.g.
                "contaminated" (--decontaminate), whose detail names the evaluation item and the
                shared words.
    splits      {name: stats} for every written split ("train", "val", "test", "fold0/train", ...).
    categories  {category: stats} over all kept examples ("(none)" for rows without one).
    mixture     {"weights": [w per source] or null, "max_per_category": N or null, "records_kept":
                [kept records per source], "training": {part: {"sources": [{"path", "target_share",
                "before": {"records", "share"}, "after": {...}}], "categories": {category: {"before",
                "after"}}}}} for each training part ("train", "fold0/train", ...): its records and
                shares before and after the mixture's category cap and weights (`mixture`).
    inputs      [{"path", "bytes", "container"}] of each file (or save_to_disk folder) read, in order.
    options, seconds, outputs.
A stats entry is {"examples", "tokens", "trained_tokens", "length": {min, mean, p50, p90, p99, max},
"categories": {category: examples}} (lengths in tokens).
"""
from __future__ import annotations

import json
import os

import numpy as np

from r1jax.data.clean import REASONS

EXAMPLES_PER_REASON = 5
NO_CATEGORY = "(none)"
TURN_REASONS = ("duplicate", "too_long", "too_long_chars")  # why a kept record's turn example is dropped


class Tally:
    """Counts of records read and removed, with the first few file:line examples per reason."""

    def __init__(self):
        self.read = 0
        self.truncated = 0
        self.removed = {r: 0 for r in REASONS}
        self.training_examples = 0
        self.turns_removed = {r: 0 for r in TURN_REASONS}
        self.examples: dict[str, list[dict]] = {r: [] for r in REASONS}

    def remove_turn(self, reason: str, where: str, detail: str) -> None:
        """A training example dropped from a record that is kept (with --train_all_turns)."""
        self.turns_removed[reason] += 1
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append({"where": where, "detail": detail})

    def remove(self, reason: str, where: str, detail: str) -> None:
        self.removed[reason] += 1
        if len(self.examples[reason]) < EXAMPLES_PER_REASON:
            self.examples[reason].append({"where": where, "detail": detail})

    @property
    def kept(self) -> int:
        return self.read - sum(self.removed.values())


def stats(lengths: np.ndarray, trained: np.ndarray, categories: list[str | None]) -> dict:
    """The stats entry of a set of examples: [N] token lengths, [N] trained tokens, [N] categories."""
    cats: dict[str, int] = {}
    for c in categories:
        cats[c or NO_CATEGORY] = cats.get(c or NO_CATEGORY, 0) + 1
    out = {"examples": int(len(lengths)), "tokens": int(lengths.sum()), "trained_tokens": int(trained.sum()),
           "categories": dict(sorted(cats.items()))}
    if len(lengths):
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        out["length"] = {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                         "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(lengths.max())}
    return out


def build(tally: Tally, splits: dict[str, list[int]], lengths: np.ndarray, trained: np.ndarray,
          categories: list[str | None], **extra) -> dict:
    """The report.json object (see the module docstring); `extra` adds top-level keys."""
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_cat.setdefault(c or NO_CATEGORY, []).append(i)
    pick = lambda idx: stats(lengths[idx], trained[idx], [categories[i] for i in idx])  # noqa: E731
    return {
        "records": {"read": tally.read, "kept": tally.kept, "truncated": tally.truncated,
                    "removed": dict(tally.removed),
                    "training_examples": {"kept": tally.training_examples, "removed": dict(tally.turns_removed)}},
        "examples": {r: v for r, v in tally.examples.items()},
        "splits": {name: pick(np.asarray(idx, np.int64)) for name, idx in splits.items()},
        "categories": {c: pick(np.asarray(idx, np.int64)) for c, idx in sorted(by_cat.items())},
        **extra,
    }


def length_columns(s: dict) -> str:
    """The summary table's length columns (min, mean, p50, p90, p99, max) of a split's stats."""
    ln = s.get("length")
    return (f"{ln['min']:>7} {ln['mean']:>9.1f} {ln['p50']:>8.0f} {ln['p90']:>8.0f} {ln['p99']:>8.0f} "
            f"{ln['max']:>8}" if ln else "")


def _row(name: str, s: dict) -> str:
    return f"  {name:<22} {s['examples']:>9} {s['tokens']:>12} {s['trained_tokens']:>12} {length_columns(s)}"


def summary(report: dict) -> str:
    """A readable summary of a report."""
    rec = report["records"]
    removed, turns = rec["removed"], rec["training_examples"]
    notes = ([f"{rec['truncated']} truncated"] if rec["truncated"] else []) + (
        ["turns dropped from kept records: " + ", ".join(f"{r} {n}" for r, n in turns["removed"].items())]
        if any(turns["removed"].values()) else [])
    lines = [f"records: read {rec['read']}, kept {rec['kept']}",
             "removed: " + ", ".join(f"{r} {removed[r]}" for r in REASONS),
             f"training examples: {turns['kept']}" + (f" ({'; '.join(notes)})" if notes else "")]
    for r in REASONS:
        for ex in report["examples"][r]:
            lines.append(f"  {r:<15} {ex['where']}: {ex['detail']}")
    header = (f"  {'':<22} {'examples':>9} {'tokens':>12} {'trained':>12} {'min':>7} {'mean':>9} "
              f"{'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for title, table in (("splits", report["splits"]), ("categories", report["categories"])):
        lines += ["", f"{title} (lengths in tokens):", header]
        lines += [_row(name, s) for name, s in table.items()]
    cats = sorted({c for s in report["splits"].values() for c in s["categories"]})
    if len(cats) > 1:
        lines += ["", "examples per split and category:",
                  f"  {'':<22} " + " ".join(f"{c[:12]:>12}" for c in cats)]
        for name, s in report["splits"].items():
            lines.append(f"  {name:<22} " + " ".join(f"{s['categories'].get(c, 0):>12}" for c in cats))
    lines += _mixture_lines(report.get("mixture"))
    if "seconds" in report:
        lines += ["", f"took {report['seconds']:.1f} s"]
    return "\n".join(lines) + "\n"


def _share(entry: dict) -> str:
    return f"{entry['records']:>9} {100 * entry['share']:>6.1f}%"


def _mixture_lines(mix: dict | None) -> list[str]:
    """The summary's mixture table: each source's (and, with a cap, category's) training records and
    share before -> after the mixture; nothing for one source without weights or cap."""
    if not mix or not mix["training"] or (len(mix["records_kept"]) == 1 and not mix["max_per_category"]):
        return []
    rules = ", ".join(([f"weights {mix['weights']}"] if mix["weights"] else [])
                      + ([f"max_per_category {mix['max_per_category']}"] if mix["max_per_category"] else []))
    lines = ["", f"mixture of the training split ({rules or 'natural shares'}):",
             f"  {'source':<40} {'kept':>9} {'before':>17} {'after':>17} {'target':>8}"]
    for part, t in mix["training"].items():
        if len(mix["training"]) > 1:
            lines.append(f"  {part}:")
        for s, kept in zip(t["sources"], mix["records_kept"]):
            target = f"{100 * s['target_share']:>7.1f}%" if s["target_share"] is not None else f"{'-':>8}"
            lines.append(f"  {s['path'][-40:]:<40} {kept:>9} {_share(s['before'])} {_share(s['after'])} {target}")
        if mix["max_per_category"]:
            for c, e in t["categories"].items():
                lines.append(f"  category {c[:31]:<31} {'':>9} {_share(e['before'])} {_share(e['after'])}")
    return lines


def histogram(path: str, lengths_by_split: dict[str, np.ndarray], max_tokens: int | None) -> None:
    """A PNG histogram of token lengths, one stacked colour per split.

    Uses the Agg canvas directly (no pyplot): no display, and no global backend is changed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    data = {k: v for k, v in lengths_by_split.items() if len(v)}
    if data:
        hi = max(int(v.max()) for v in data.values())
        bins = np.linspace(0, max(hi, 1), 61)
        ax.hist(list(data.values()), bins=bins, stacked=True, label=list(data.keys()))
        ax.legend()
    if max_tokens is not None:
        ax.axvline(max_tokens, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title("token lengths")
    fig.tight_layout()
    fig.savefig(path)


def write(out_dir: str, report: dict, lengths_by_split: dict[str, np.ndarray],
          max_tokens: int | None) -> str:
    """Writes report.json, summary.txt and token_lengths.png; returns the summary text."""
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    text = summary(report)
    with open(os.path.join(out_dir, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(text)
    histogram(os.path.join(out_dir, "token_lengths.png"), lengths_by_split, max_tokens)
    return text
