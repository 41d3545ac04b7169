"""The training run's data: prepared once (clean, dedup, tokenize, split) and reused on restart.

The sources (`run_sources`) are data.mixture's file (r1jax/data/mixture.py), else data.train's inputs
(comma-separated files, globs or directories in any container `r1jax.data.readers` reads: JSONL,
JSON array, Parquet, CSV/TSV, Arrow, a `datasets` save_to_disk folder, .gz/.zst text; when empty,
the bundled code dataset, built from the standard library on first use) with data.weights and
data.max_per_category; data.input_format, data.format and data.columns apply to every source that
does not set its own. They are prepared with `python -m r1jax.data prepare --mixture` (the sources
written as DIR/sources.json) into data.cache_dir (default OUTPUT_DIR/data); a stamp of the input
files, the sources, the options and the token format version (token_store.FORMAT_VERSION) decides
whether an existing preparation can be reused, so one made under an older tokenization rule is
prepared again, never reused. data.max_examples takes the first N rows of each source. data.val
names a held-out input (one, of the same kinds), else data.val_fraction of the sources is split off
(each source keeping its natural share). The tokenizer is model.checkpoint's own when it holds
tokenizer.json (RUN/model for a training run), else the packaged R1 one (`run_tokenizer_dir`); its files' digest is part of the
stamp, so another tokenizer prepares anew.

GRPO's prompt sets (`prepare_prompts`; rows of a prompt and an answer or tests, r1jax/data/prompt_set.py)
are prepared the same way with `prepare --prompts` from data.train (no bundled default: empty is an
error), data.val / data.val_fraction, data.columns, data.format, data.input_format,
data.max_examples and seed, and the caller's prompt budget as --max_tokens, into data.cache_dir
(default OUTPUT_DIR/data_prompts, apart from the run's SFT data), reused on the same stamp.
data.mixture, data.weights, data.max_per_category and data.train_all_turns do not apply to prompt
sets: set, they are an error naming the key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os

import jax

from r1jax.train import run_config
from r1jax.data import code_dataset, mixture, prepare, prompt_set, readers, token_store
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.formats import DataError

STAMP = "r1jax_prepared.json"


def check_data_file(path: str, key: str) -> list[str]:
    """The files (and save_to_disk folders) input `path` names (`readers.expand`); raises DataError
    naming `path` and config key `key` when it names nothing readable."""
    try:
        return readers.expand(path)
    except DataError as e:
        raise DataError(f"{e} (config key {key})") from None


def _fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def fingerprints(units: list[str]) -> list[dict]:
    """{"path", "size", "mtime"} of every file reading `units` (items of `readers.expand`) opens."""
    return [_fingerprint(f) for unit in units for f in readers.files_of(unit)]


def _head(inputs: list[str], dst: str, n: int, input_format: str = "auto") -> None:
    """The first n rows of the inputs (any container, in order) into dst as JSONL; a row that
    cannot be read counts towards n and is left out (prepare would count it malformed)."""
    taken = 0
    with open(dst, "w", encoding="utf-8") as out:
        for path in inputs:
            for unit in readers.expand(path):
                for _, row in readers.read_rows(unit, input_format):
                    if not isinstance(row, DataError):
                        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                    taken += 1
                    if taken >= n:
                        return


def run_tokenizer_dir(c) -> str:
    """The directory of the run's tokenizer: model.checkpoint's (run_config.model_dir: RUN/model for a
    training run) when it holds tokenizer.json, else the packaged R1 tokenizer's (a preset / random
    init, or a checkpoint converted without one)."""
    return (tokenizer_lib.checkpoint_tokenizer_dir(run_config.model_dir(c))
            or str(tokenizer_lib.packaged_tokenizer_dir()))


def _tokenizer_digest(directory: str) -> str:
    """sha256 of the tokenizer files that decide token ids (tokenizer.json, tokenizer_config.json)."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = os.path.join(directory, name)
        h.update(name.encode() + b"\0")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def run_sources(c, log=print) -> mixture.Mixture:
    """The run's training sources: data.mixture's file, else data.train's inputs (the bundled code
    dataset when empty) with data.weights and data.max_per_category; each source's unset container,
    row shape and column map are data.input_format, data.format and data.columns. Raises DataError
    naming the config key."""
    try:
        if c.data.mixture:
            mix = mixture.load(c.data.mixture)
        else:
            named = [p.strip() for p in c.data.train.split(",") if p.strip()]
            mix = mixture.from_args(named or [code_dataset.cached(log=log)],
                                    run_config.data_weights(c.data.weights), c.data.max_per_category or None)
    except mixture.MixtureError as e:
        raise DataError(f"{e} (config key {'data.mixture' if c.data.mixture else 'data.weights'})") from None
    return mixture.with_defaults(mix, c.data.input_format, c.data.format, c.data.columns or None)


def _with_heads(mix: mixture.Mixture, out_dir: str, n: int) -> mixture.Mixture:
    """The mixture with each source replaced by the JSONL of its first n rows (data.max_examples)."""
    sources = []
    for i, s in enumerate(mix.sources):
        head = os.path.join(out_dir, f"input_head_{i}.jsonl")
        _head([s.path], head, n, s.input_format)
        sources.append(dataclasses.replace(s, path=head, input_format="jsonl"))
    return dataclasses.replace(mix, sources=tuple(sources))


def _prepare(mix: mixture.Mixture, out: str, c, val_fraction: float, log) -> None:
    """Prepares the sources of `mix` into `out` (prepare --mixture, written next to it)."""
    os.makedirs(out, exist_ok=True)
    spec = os.path.join(out, "sources.json")
    mixture.write(mix, spec)
    args = ["--mixture", spec, "--out", out, "--val", repr(val_fraction),
            "--seed", str(c.seed), "--max_tokens", str(c.train.seq_len), "--too_long", "truncate",
            "--tokenizer", run_tokenizer_dir(c), "--overwrite"]
    if c.data.train_all_turns:
        args.append("--train_all_turns")
    _run_prepare(args, [s.path for s in mix.sources], out, log)


def _run_prepare(args: list[str], inputs: list[str], out: str, log) -> None:
    """Runs `python -m r1jax.data prepare ARGS` in-process, the summary's head logged; DataError
    naming the inputs and OUT/report.json when it fails."""
    log(f"data: preparing {', '.join(inputs)} -> {out}")
    report = io.StringIO()  # the full summary goes to OUT/summary.txt; the log gets its head
    with contextlib.redirect_stdout(report):
        code = prepare.main(args)
    for line in report.getvalue().splitlines()[:2]:
        log(f"data: {line}")
    if code != 0:
        raise DataError(f"data preparation of {', '.join(inputs)} failed; see the messages above "
                        f"and {out}/report.json")


def _prepared(c, mix: mixture.Mixture, train_key: str, default_dir: str, stamp_extra: dict,
              prepare_one, what: str, log) -> str:
    """The directory of this run's preparation of `mix` (and data.val), prepared once.

    It is DATA_DIR/KEY, DATA_DIR = data.cache_dir or OUTPUT_DIR/default_dir, KEY a digest of the
    stamp: the input files' fingerprints, the sources, `stamp_extra` (options, formats) and the
    tokenizer's digest. Process 0 prepares it when its stamp file is missing
    (`prepare_one(mix, out, val_fraction)`, data.val into OUT/val_file with no split), the other
    processes wait; otherwise it is reused as it is."""
    train_units = [u for s in mix.sources for u in check_data_file(s.path, train_key)]
    val_units = check_data_file(c.data.val, "data.val") if c.data.val else []
    data_dir = os.path.abspath(c.data.cache_dir or os.path.join(c.output_dir, default_dir))
    run_config.make_config_dir(data_dir, "data.cache_dir" if c.data.cache_dir else "output_dir")
    stamp = {"inputs": fingerprints(train_units),
             "val": fingerprints(val_units) if c.data.val else None,
             "sources": [dataclasses.asdict(s) | {"path": os.path.abspath(s.path)} for s in mix.sources],
             "tokenizer": _tokenizer_digest(run_tokenizer_dir(c)), **stamp_extra}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    out = os.path.join(data_dir, key)
    if jax.process_index() == 0 and not os.path.exists(os.path.join(out, STAMP)):
        os.makedirs(out, exist_ok=True)
        if c.data.max_examples:
            mix = _with_heads(mix, out, c.data.max_examples)
        prepare_one(mix, out, 0.0 if c.data.val else c.data.val_fraction)
        if c.data.val:
            val = mixture.with_defaults(mixture.from_args([c.data.val], None, None), c.data.input_format,
                                        c.data.format, c.data.columns or None)
            prepare_one(val, os.path.join(out, "val_file"), 0.0)
        with open(os.path.join(out, STAMP), "w") as f:
            json.dump(stamp, f, indent=1)
    else:
        log(f"data: reusing the {what} prepared in {out}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"r1jax {what} prepared")
    return out


def prepare_data(c, log=print) -> tuple[str, str]:
    """(train prefix, val prefix) of TokenStore splits for this run, preparing them if needed."""
    mix = run_sources(c, log)
    options = {k: c.data[k] for k in ("val_fraction", "train_all_turns", "max_examples", "max_per_category")}
    extra = {"options": options | {"seed": c.seed, "seq_len": c.train.seq_len},
             "token_format": token_store.FORMAT_VERSION}  # a new tokenization rule prepares anew
    out = _prepared(c, mix, "data.mixture" if c.data.mixture else "data.train", "data", extra,
                    lambda m, d, f: _prepare(m, d, c, f, log), "data", log)
    train_prefix = os.path.join(out, "train")
    val_prefix = os.path.join(out, "val_file", "train") if c.data.val else os.path.join(out, "val")
    if not os.path.exists(val_prefix + ".ids.npy"):
        raise DataError(f"no validation split at {val_prefix}: set data.val_fraction > 0 or data.val")
    return train_prefix, val_prefix


PROMPTS_DIR = "data_prompts"  # under output_dir when data.cache_dir is empty


def _prepare_prompt_set(mix: mixture.Mixture, out: str, c, val_fraction: float, max_tokens: int | None,
                        log) -> None:
    """Prepares the sources of `mix` as a prompt set into `out` (`prepare --prompts`)."""
    os.makedirs(out, exist_ok=True)
    inputs = [s.path for s in mix.sources]
    args = ["--prompts", "--input", *inputs, "--out", out, "--val", repr(val_fraction), "--seed", str(c.seed),
            "--format", c.data.format, "--input_format", mix.sources[0].input_format,
            "--tokenizer", run_tokenizer_dir(c), "--overwrite"]
    if c.data.columns:
        args += ["--columns", c.data.columns]
    if max_tokens is not None:
        args += ["--max_tokens", str(max_tokens)]
    _run_prepare(args, inputs, out, log)


def prepare_prompts(c, log=print, *, max_tokens: int | None = None) -> tuple[str, str]:
    """(train JSONL, val JSONL) of this run's GRPO prompt set, preparing it if needed (see the module
    docstring); read them with `prompt_set.read_prompts`. max_tokens: the prompt budget in tokens
    (the generation prompt's length limit), None for none. Raises DataError naming the config key."""
    for key, unset in (("mixture", ""), ("weights", ""), ("max_per_category", 0), ("train_all_turns", False)):
        if c.data[key] != unset:
            raise DataError(f"config key data.{key}: does not apply to GRPO prompt sets (rows of a prompt "
                            "and an answer or tests); unset it")
    named = [p.strip() for p in c.data.train.split(",") if p.strip()]
    if not named:
        raise DataError("config key data.train is empty: GRPO needs prompt rows with answer or tests "
                        "(r1jax/data/prompt_set.py), as files, globs or directories")
    mix = mixture.with_defaults(mixture.from_args(named, None, None), c.data.input_format, c.data.format,
                                c.data.columns or None)
    extra = {"kind": prompt_set.KIND,
             "options": {k: c.data[k] for k in ("val_fraction", "max_examples")}
             | {"seed": c.seed, "max_tokens": max_tokens}}
    out = _prepared(c, mix, "data.train", PROMPTS_DIR, extra,
                    lambda m, d, f: _prepare_prompt_set(m, d, c, f, max_tokens, log), "prompt set", log)
    train_jsonl = os.path.join(out, "train.jsonl")
    val_jsonl = os.path.join(out, "val_file", "train.jsonl") if c.data.val else os.path.join(out, "val.jsonl")
    if not os.path.exists(val_jsonl):
        raise DataError(f"no validation prompts at {val_jsonl}: set data.val_fraction > 0 (enough prompts "
                        "for one) or data.val")
    return train_jsonl, val_jsonl
