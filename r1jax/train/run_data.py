"""The training run's data: prepared once (clean, dedup, tokenize, split) and reused on restart.

data.train names inputs (comma-separated: files, globs or directories in any container
`r1jax.data.readers` reads: JSONL, JSON array, Parquet, CSV/TSV, Arrow, a `datasets` save_to_disk
folder, .gz/.zst text) or, when empty, the bundled code dataset (built from the standard library on
first use). They are prepared with `python -m r1jax.data prepare` into
data.cache_dir (default OUTPUT_DIR/data); a stamp of the inputs, the options and the token format
version (token_store.FORMAT_VERSION) decides whether an existing preparation can be reused, so one
made under an older tokenization rule is prepared again, never reused; the stamp names every file
the inputs expand to. data.val names a held-out input (one, of the same kinds), else data.val_fraction of data.train is split off. The tokenizer is model.checkpoint's own
when it holds tokenizer.json, else the packaged R1 one (`run_tokenizer_dir`); its files' digest is
part of the stamp, so another tokenizer prepares anew.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os

import jax

from r1jax.train import run_config
from r1jax.data import code_dataset, prepare, readers, token_store
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


def _head(inputs: list[str], dst: str, n: int) -> None:
    """The first n rows of the inputs (any container, in order) into dst as JSONL; a row that
    cannot be read counts towards n and is left out (prepare would count it malformed)."""
    taken = 0
    with open(dst, "w", encoding="utf-8") as out:
        for path in inputs:
            for unit in readers.expand(path):
                for _, row in readers.read_rows(unit):
                    if not isinstance(row, DataError):
                        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                    taken += 1
                    if taken >= n:
                        return


def run_tokenizer_dir(c) -> str:
    """The directory of the run's tokenizer: model.checkpoint when it holds tokenizer.json, else the
    packaged R1 tokenizer's (a preset / random init, or a checkpoint converted without one)."""
    return (tokenizer_lib.checkpoint_tokenizer_dir(c.model.checkpoint)
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


def _prepare(inputs: list[str], out: str, c, val_fraction: float, log) -> None:
    args = ["--input", *inputs, "--out", out, "--val", repr(val_fraction), "--format", c.data.format,
            "--seed", str(c.seed), "--max_tokens", str(c.train.seq_len), "--too_long", "truncate",
            "--tokenizer", run_tokenizer_dir(c), "--overwrite"]
    if c.data.train_all_turns:
        args.append("--train_all_turns")
    log(f"data: preparing {', '.join(inputs)} -> {out}")
    report = io.StringIO()  # the full summary goes to OUT/summary.txt; the log gets its head
    with contextlib.redirect_stdout(report):
        code = prepare.main(args)
    for line in report.getvalue().splitlines()[:2]:
        log(f"data: {line}")
    if code != 0:
        raise DataError(f"data preparation of {', '.join(inputs)} failed; see the messages above "
                        f"and {out}/report.json")


def prepare_data(c, log=print) -> tuple[str, str]:
    """(train prefix, val prefix) of TokenStore splits for this run, preparing them if needed."""
    named = [p.strip() for p in c.data.train.split(",") if p.strip()]
    train_units = [u for p in named for u in check_data_file(p, "data.train")]
    val_units = check_data_file(c.data.val, "data.val") if c.data.val else []
    data_dir = os.path.abspath(c.data.cache_dir or os.path.join(c.output_dir, "data"))
    run_config.make_config_dir(data_dir, "data.cache_dir" if c.data.cache_dir else "output_dir")
    inputs = named or [code_dataset.cached(log=log)]
    stamp = {"inputs": fingerprints(train_units or inputs),
             "val": fingerprints(val_units) if c.data.val else None,
             "options": {k: c.data[k] for k in ("format", "val_fraction", "train_all_turns", "max_examples")}
             | {"seed": c.seed, "seq_len": c.train.seq_len},
             "token_format": token_store.FORMAT_VERSION,  # a new tokenization rule prepares anew
             "tokenizer": _tokenizer_digest(run_tokenizer_dir(c))}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    train_dir = os.path.join(data_dir, key)
    train_prefix = os.path.join(train_dir, "train")
    val_prefix = os.path.join(train_dir, "val_file", "train") if c.data.val else os.path.join(train_dir, "val")
    if jax.process_index() == 0 and not os.path.exists(os.path.join(train_dir, STAMP)):
        os.makedirs(train_dir, exist_ok=True)
        if c.data.max_examples:
            head = os.path.join(train_dir, "input_head.jsonl")
            _head(inputs, head, c.data.max_examples)
            inputs = [head]
        _prepare(inputs, train_dir, c, 0.0 if c.data.val else c.data.val_fraction, log)
        if c.data.val:
            _prepare([c.data.val], os.path.join(train_dir, "val_file"), c, 0.0, log)
        with open(os.path.join(train_dir, STAMP), "w") as f:
            json.dump(stamp, f, indent=1)
    else:
        log(f"data: reusing the preparation in {train_dir}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("r1jax data prepared")
    if not os.path.exists(val_prefix + ".ids.npy"):
        raise DataError(f"no validation split at {val_prefix}: set data.val_fraction > 0 or data.val")
    return train_prefix, val_prefix
