"""Generate with a checkpoint: R1 chat prompts, prefill + decode on MLA's latent cache, sampling.

    python -m r1jax.generate --checkpoint CKPT --prompt TEXT            # streams to the console
    python -m r1jax.generate --checkpoint CKPT --input FILE.jsonl --output FILE.jsonl
        [--temperature 0.6] [--top_p 0.95] [--top_k 0] [--seed 0] [--max_new_tokens 1024]
        [--stop STR ...] [--batch_size 8] [--dtype bfloat16] [--mesh fsdp=2,tensor=4]
        [--generation_key generation]

CKPT is a model checkpoint (python -m r1jax.convert) or a training run (RUN for its latest step,
RUN/checkpoints/STEP, RUN/best/STEP), resolved as export does. Input rows are {"prompt": str} (one
user turn) or {"messages": [...]} (a final assistant turn, if any, is dropped: generation replaces
it). Each output row is its input row, unchanged, plus one object under "generation" (the
--generation_key): {"text", "reasoning", "answer", "n_tokens", "finish_reason"}. Nothing generation
adds is written beside the input's own fields, so an input's `answer` (an eval set's reference) or
`text` is never replaced, and every row has the same layout; an input row that already has a
"generation" field is refused before the model loads (file:line named; pick another key).

A prompt whose ids + max_new_tokens exceed the model's max_position_embeddings is skipped, not
generated: its row gets {"text": "", "reasoning": "", "answer": "", "n_tokens": 0, "finish_reason":
"skipped", "error": "prompt of N tokens + max_new_tokens M = N+M > ..."}, stderr names its file:line
and the count of skipped rows, and the other rows generate. With --prompt it is a one-line error.

Prompts are rendered in the R1 chat format and end with `<｜Assistant｜><think>\\n`, so the model
writes its reasoning first: `reasoning` is the text before `</think>`, `answer` what follows it (all
of the text is reasoning, and `answer` empty, when `</think>` never came).

Python API (what other code calls; HumanEval evaluation builds on it):

    generate_texts(model: nnx.Module, tokenizer, prompts: list[str | list[dict]],
                   settings: GenerationSettings = GenerationSettings(), *, mesh=None,
                   on_text=None, skip_too_long=False) -> list[dict]

`prompts[i]` is a user message (str) or a conversation ([{"role", "content"}, ...]). Returns, per
prompt in order, {"text": str, "reasoning": str, "answer": str, "tokens": list[int] (generated ids,
the end-of-sentence token included when produced), "n_tokens": int, "finish_reason": "stop" (end of
sentence or a stop string) | "length" (max_new_tokens) | "skipped"}. `text` is cut before the
first stop string. A prompt too long for the model (ids + max_new_tokens > max_position_embeddings)
raises PromptTooLong (a ValueError naming prompts[i] and the lengths); with skip_too_long=True it
gets an empty result with finish_reason "skipped" and "error" (the reason) instead, and the other
prompts keep their samples (keys stay by index). `on_text(i, piece)` receives prompt i's text as it
grows (console streaming). `mesh`: the mesh the model's params are placed on (load(..., mesh=mesh));
None for one device.
GenerationSettings(max_new_tokens=1024, temperature=0.6, top_p=0.95, top_k=0, seed=0, stop=(),
eos_token_ids=() [the tokenizer's], batch_size=8, steps_per_call=8). Also:

    load(path: str, dtype="bfloat16", mesh=None) -> (model, meta_dir: str)
    generate_ids(model, prompts: list[list[int]], settings, *, eos_token_ids=None, mesh=None,
                 detokenize=None, on_text=None, skip_too_long=False) -> list[dict]  # on token ids

Sampling (r1jax/inference/sampling.py): each prompt draws with keys from (seed, its index in `prompts`, step),
so a fixed seed reproduces, and a prompt's sample does not depend on the other prompts of its batch
(up to the float rounding of its logits).

Decode: left-padded batches (every row's next token at one shared cache slot); `prefill` runs the
prompts through the training forward and fills the latent cache; each call of the jitted decode
function then runs `steps_per_call` steps under a lax.scan (sample, write, attend with kv_b absorbed).
EOS is handled inside the loop; stop strings between calls, on the decoded text.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.models import checkpoint, sources
from r1jax.inference import sampling
from r1jax.parallel import distributed, sharding
from r1jax.data.chat import generation_prompt, prompt_ids
from r1jax.data.formats import DataError, Example, parse_row, split_reasoning
from r1jax.data.readers import json_objects
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models.common.config import ConfigError

PROMPT_BUCKET = 64  # prompts are left-padded to a multiple of this: few shapes to compile


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()              # stop strings (the text is cut before them)
    eos_token_ids: tuple[int, ...] = ()     # () = the tokenizer's end-of-sentence token
    batch_size: int = 8
    steps_per_call: int = 8                 # decode steps per jitted call (1 for token streaming)

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.steps_per_call < 1:
            raise ValueError("max_new_tokens, batch_size and steps_per_call must be >= 1")
        self.sampling  # validates temperature / top_p / top_k

    @property
    def sampling(self) -> sampling.SamplingSettings:
        return sampling.SamplingSettings(self.temperature, self.top_p, self.top_k)


class PromptTooLong(ValueError):
    """A prompt with no room for max_new_tokens within the model's positions; names prompts[index]."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"prompts[{index}]: {reason}")
        self.index, self.reason = index, reason


def length_problem(n_prompt: int, max_new_tokens: int, max_positions: int) -> str | None:
    """Why a prompt of n_prompt ids (BOS included) cannot be followed by max_new_tokens tokens within
    the model's max_positions (max_position_embeddings) rope positions; None when it can.

    A row's positions count from its own first token (left padding takes none), so the prompt's
    length and the tokens asked for are what count, not the padded batch width.
    """
    if n_prompt + max_new_tokens <= max_positions:
        return None
    return (f"prompt of {n_prompt} tokens + max_new_tokens {max_new_tokens} = "
            f"{n_prompt + max_new_tokens} > the model's max_position_embeddings {max_positions}")


class Decoding(NamedTuple):
    """The decode loop's state (a pytree)."""
    cache: Any           # the model's decode cache (its init_cache)
    logits: jnp.ndarray   # [B, V] float32: next-token logits of every row
    slot: jnp.ndarray     # () int32: the cache slot the next token goes to
    done: jnp.ndarray     # [B] bool: row finished (emits -1 from now on)
    rows: jnp.ndarray     # [B] int32: prompt index of each row (its sampling key)
    step: jnp.ndarray     # () int32: tokens generated so far
    seed: jnp.ndarray     # () int32


# ---- the jitted engine ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill(graphdef, state, tokens, start, rows, done, seed, max_len: int) -> Decoding:
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], max_len, start)
    logits, cache = model.prefill(tokens, cache)
    return Decoding(cache, logits, jnp.asarray(tokens.shape[1], jnp.int32), done, rows,
                    jnp.zeros((), jnp.int32), seed)


def _decode(graphdef, state, d: Decoding, eos_ids, n: int, settings: sampling.SamplingSettings):
    """n decode steps -> (Decoding, tokens [B, n] int32, -1 where a row had already finished)."""
    model = nnx.merge(graphdef, state)

    def step(d: Decoding, _):
        tok = sampling.sample(d.logits, sampling.row_keys(d.seed, d.rows, d.step), settings)
        out = jnp.where(d.done, -1, tok)
        done = d.done | jnp.isin(tok, eos_ids)
        logits, cache = model.decode(jnp.where(d.done, 0, tok)[:, None], d.slot, d.cache)
        return d._replace(cache=cache, logits=logits[:, 0], slot=d.slot + 1, done=done,
                          step=d.step + 1), out

    d, toks = jax.lax.scan(step, d, None, length=n)
    return d, toks.T


@functools.cache
def _decode_fn(backend: str):
    # The cache is updated in place where buffers can be donated (not on CPU, which would warn).
    return jax.jit(_decode, static_argnames=("graphdef", "n", "settings"),
                   donate_argnames=() if backend == "cpu" else ("d",))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _batch_multiple(mesh) -> int:
    """Rows of a batch must divide over the mesh's data-like axes (the "batch" rule)."""
    if mesh is None:
        return 1
    spec = sharding.logical_to_spec(("batch",))[0]
    names = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return int(np.prod([mesh.shape[a] for a in names if a in mesh.shape]))


@dataclasses.dataclass
class _Row:
    """Host-side bookkeeping of one prompt's generation."""
    index: int
    tokens: list
    finish: str | None = None
    emitted: int = 0  # characters already given to on_text

    def take(self, toks: np.ndarray, eos_ids, max_new: int) -> None:
        """Appends one decode call's tokens [n] up to an end-of-sentence id or max_new tokens."""
        for tok in map(int, toks):
            self.tokens.append(tok)
            if tok in eos_ids:
                self.finish = "stop"
            elif len(self.tokens) >= max_new:
                self.finish = "length"
            if self.finish:
                return

    def check_text(self, text: str, stops, hold: int, on_text) -> None:
        """Stops at a stop string; streams the new text, held back `hold` characters (a stop string
        may be forming) and while it ends in a partial UTF-8 character."""
        text, hit = sampling.cut_at_stop(text, stops)
        if hit:
            self.finish = "stop"
        if on_text is None:
            return
        end = len(text) if self.finish else max(len(text) - hold, self.emitted)
        if not self.finish and text[self.emitted:end].endswith("\ufffd"):
            end -= 1
        if end > self.emitted:
            on_text(self.index, text[self.emitted:end])
            self.emitted = end


def generate_ids(model: nnx.Module, prompts: Sequence[Sequence[int]],
                 settings: GenerationSettings = GenerationSettings(), *,
                 eos_token_ids: Sequence[int] | None = None, mesh=None,
                 detokenize: Callable[[list[int]], str] | None = None,
                 on_text: Callable[[int, str], None] | None = None,
                 skip_too_long: bool = False) -> list[dict]:
    """Generates after each prompt (token ids, BOS included): [{"tokens", "finish_reason", "text"?}].

    A prompt that length_problem rejects raises PromptTooLong before anything runs; with
    skip_too_long its result is {"tokens": [], "finish_reason": "skipped", "error": reason,
    "text"?: ""} and the rest generate. eos_token_ids default to settings.eos_token_ids. Stop
    strings and on_text need `detokenize` (generated ids -> text, EOS excluded); "text" is then
    returned too. Batches of
    settings.batch_size rows (rounded up to the mesh's data axes); a short last batch is filled with
    finished dummy rows, so every batch has one shape.
    """
    eos_ids = tuple(eos_token_ids if eos_token_ids is not None else settings.eos_token_ids)
    if not eos_ids:
        raise ValueError("no end-of-sentence id: pass eos_token_ids (the tokenizer's eos_token_id)")
    graphdef, state = nnx.split(model)
    cfg = model.cfg
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i}: no tokens")
        if max(p) >= cfg.vocab_size or min(p) < 0:
            raise ValueError(f"prompt {i}: token ids must be in [0, vocab_size {cfg.vocab_size})")
    too_long = {i: r for i, p in enumerate(prompts)
                if (r := length_problem(len(p), settings.max_new_tokens, cfg.max_position_embeddings))}
    if too_long and not skip_too_long:
        first_bad = min(too_long)
        raise PromptTooLong(first_bad, too_long[first_bad])
    eos = jnp.asarray(sorted(set(eos_ids)), jnp.int32)
    bsz = _round_up(settings.batch_size, _batch_multiple(mesh))
    chunk = min(settings.steps_per_call, settings.max_new_tokens)
    n_steps = _round_up(settings.max_new_tokens, chunk)
    stops = tuple(s for s in settings.stop if s)
    hold = max((len(s) for s in stops), default=1) - 1
    watch_text = detokenize is not None and (stops or on_text is not None)
    decode = _decode_fn(jax.default_backend())
    put = functools.partial(_place, mesh=mesh)
    results: list[dict] = [None] * len(prompts)  # type: ignore[list-item]
    for i, reason in too_long.items():
        results[i] = {"tokens": [], "finish_reason": "skipped", "error": reason}
        if detokenize is not None:
            results[i]["text"] = ""
    todo = [i for i in range(len(prompts)) if i not in too_long]
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        for first in range(0, len(todo), bsz):
            idx = todo[first:first + bsz]
            # The cache may hold more slots than max_position_embeddings (the bucket's padding):
            # positions are per row, and each row's fit length_problem checked above.
            t = _round_up(max(len(prompts[i]) for i in idx), PROMPT_BUCKET)
            tokens = np.zeros((bsz, t), np.int32)  # left-padded; dummy rows hold one token
            start = np.full((bsz,), t - 1, np.int32)
            for r, i in enumerate(idx):
                tokens[r, t - len(prompts[i]):] = prompts[i]
                start[r] = t - len(prompts[i])
            rows = np.zeros((bsz,), np.int32)  # prompt index: the sampling key (dummy rows: 0)
            rows[:len(idx)] = idx
            dummy = np.arange(bsz) >= len(idx)
            d = _prefill(graphdef, state, put(tokens), put(start), put(rows), put(dummy),
                         jnp.asarray(settings.seed, jnp.int32), max_len=t + n_steps)
            live = [_Row(i, []) for i in idx]
            for _ in range(n_steps // chunk):
                d, toks = decode(graphdef, state, d, eos, chunk, settings.sampling)
                toks = distributed.to_host(toks)  # every process sees every row
                for r, row in enumerate(live):
                    if row.finish is None:
                        row.take(toks[r], eos_ids, settings.max_new_tokens)
                        if watch_text:
                            text = detokenize(_without_eos(row.tokens, eos_ids))
                            row.check_text(text, stops, hold, on_text)
                if all(row.finish for row in live):
                    break
                stopped = np.array([bool(row.finish) for row in live] + [True] * (bsz - len(live)))
                d = d._replace(done=d.done | put(stopped))  # rows ended by a stop string, too
            for row in live:
                out = {"tokens": row.tokens, "finish_reason": row.finish or "length"}
                if detokenize is not None:
                    text = detokenize(_without_eos(row.tokens, eos_ids))
                    out["text"] = sampling.cut_at_stop(text, stops)[0]
                results[row.index] = out
    return results


def _place(x: np.ndarray, mesh=None) -> jax.Array:
    """A host batch array [B, ...] on the devices: rows over the mesh's data-like axes."""
    if mesh is None:
        return jnp.asarray(x)
    spec = sharding.logical_to_spec(("batch",) + (None,) * (x.ndim - 1))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


def _without_eos(tokens: list[int], eos_ids) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in eos_ids else tokens


# ---- prompts and outputs -------------------------------------------------------------------------

def prompt_example(prompt: str | Sequence[dict], where: str = "prompt") -> Example:
    """A user message (str) or a conversation -> an Example whose final assistant turn is the one to
    generate (an existing final assistant turn is that turn: dropped from the prompt). DataError
    names `where`."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)):
        msgs = list(prompt)
    else:
        raise DataError(f"{where}: a prompt is a string or a list of messages, got {type(prompt).__name__}")
    if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
        msgs = msgs + [{"role": "assistant", "content": ""}]  # the turn generation writes
    return parse_row({"messages": msgs}, where)


def render_prompt(prompt: str | Sequence[dict], where: str = "prompt") -> str:
    """A user message (str) or a conversation -> the R1 generation prompt (ends with
    `<｜Assistant｜><think>\\n`). A final assistant turn is dropped; DataError names `where`."""
    return generation_prompt(prompt_example(prompt, where))


def split_output(text: str) -> tuple[str, str]:
    """(reasoning, answer) of generated text that followed `<think>\\n`: split at `</think>`; with
    no `</think>`, the reasoning never ended and the answer is empty."""
    if "</think>" not in text:
        return text, ""
    reasoning, answer = split_reasoning(text)
    return reasoning or "", answer


def eos_ids_of(tokenizer, meta_dir: str | None = None) -> tuple[int, ...]:
    """End-of-sentence ids: the tokenizer's EOS, and generation_config.json's `eos_token_id` (an int
    or a list) from the tokenizer's directory and from the checkpoint's `meta_dir` when given
    (`r1jax.data.tokenizer.eos_token_ids`)."""
    return tokenizer_lib.eos_token_ids(tokenizer, meta_dir)


def generate_texts(model: nnx.Module, tokenizer, prompts: Sequence[str | Sequence[dict]],
                   settings: GenerationSettings = GenerationSettings(), *, mesh=None,
                   on_text: Callable[[int, str], None] | None = None,
                   skip_too_long: bool = False) -> list[dict]:
    """See the module docstring: per prompt {"text", "reasoning", "answer", "tokens", "n_tokens",
    "finish_reason"} (+ "error" when skipped)."""
    # The same ids a training row of this conversation starts with (r1jax/data/chat.py).
    ids = [prompt_ids(prompt_example(p, f"prompts[{i}]"), tokenizer) for i, p in enumerate(prompts)]
    eos = settings.eos_token_ids or eos_ids_of(tokenizer)
    detok = lambda t: tokenizer.decode(t, skip_special_tokens=False)
    out = generate_ids(model, ids, settings, eos_token_ids=eos, mesh=mesh, detokenize=detok, on_text=on_text,
                       skip_too_long=skip_too_long)
    for o in out:
        o["reasoning"], o["answer"] = split_output(o["text"])
        o["n_tokens"] = len(o["tokens"])
    return out


# ---- checkpoints: r1jax/models/sources.py resolves and loads what --checkpoint names ----------------

load = sources.load


def parse_mesh(spec: str | None):
    """"fsdp=2,tensor=4" -> a mesh of those axis sizes (data takes the rest); None -> no mesh."""
    if not spec:
        return None
    sizes = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name not in sharding.MESH_AXES or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh {spec!r}: expected AXIS=N,... with AXIS one of {sharding.MESH_AXES}")
        sizes[name] = int(value)
    sizes.setdefault("data", -1)
    return sharding.make_mesh(**sizes)


# ---- command line --------------------------------------------------------------------------------

GENERATION_KEY = "generation"  # the output row's field for what generation adds
OUTPUT_FIELDS = ("text", "reasoning", "answer", "n_tokens", "finish_reason")  # its keys (+ "error")


def read_prompts(path: str, generation_key: str = GENERATION_KEY) -> list[tuple[str, dict, str | list]]:
    """(where "PATH:LINE", row, prompt) of each JSONL row: {"prompt": str} or {"messages": [...]};
    errors name file:line, also for a row that already has the `generation_key` field."""
    out = []
    for where, _, row in json_objects(path):
        if generation_key in row:
            raise DataError(f"{where}: the row already has a {generation_key!r} field, where generate "
                            f"writes its output; pass --generation_key with another name")
        if "messages" in row:
            prompt = row["messages"]
        elif isinstance(row.get("prompt"), str):
            prompt = row["prompt"]
        else:
            raise DataError(f"{where}: expected a string 'prompt' or a 'messages' list "
                            f"(keys: {sorted(row)})")
        render_prompt(prompt, where)  # validates now, before any model is loaded
        out.append((where, row, prompt))
    return out


def output_row(row: dict, result: dict, generation_key: str = GENERATION_KEY) -> dict:
    """An input row plus generate_texts' result for it under `generation_key`:
    {**row, key: {"text", "reasoning", "answer", "n_tokens", "finish_reason", "error"?}}."""
    added = {k: result[k] for k in OUTPUT_FIELDS}
    if "error" in result:
        added["error"] = result["error"]
    return {**row, generation_key: added}


def check_output_path(path: str) -> None:
    """Makes --output's folder; a folder as the path, or one that cannot be made, raises DataError
    now, before hours of generation would be lost at the write."""
    if os.path.isdir(path):
        raise DataError(f"--output {path}: is a directory")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise DataError(f"--output {path}: cannot make its folder: {e.strerror}") from None


SKIPS_LISTED = 20  # skipped rows named on stderr; the output rows name every one


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m r1jax.generate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="model checkpoint or training run")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message; the output streams to stdout")
    src.add_argument("--input", help="JSONL rows with 'prompt' or 'messages'")
    p.add_argument("--output", help="JSONL output (with --input): each input row + a 'generation' object")
    p.add_argument("--generation_key", default=GENERATION_KEY,
                   help="the output row's field for the generated values (an input row must not have it)")
    d = GenerationSettings()
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 is greedy")
    p.add_argument("--top_p", type=float, default=d.top_p)
    p.add_argument("--top_k", type=int, default=d.top_k, help="0 is off")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--stop", nargs="+", default=[], metavar="STR", help="stop strings")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--steps_per_call", type=int, default=d.steps_per_call,
                   help="decode steps per jitted call with --input (--prompt streams every token)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
    p.add_argument("--mesh", help="mesh axis sizes, e.g. tensor=8 or fsdp=2,tensor=4 (default: one device)")
    a = p.parse_args(argv)
    if a.input and not a.output:
        p.error("--input needs --output")
    if not a.generation_key:
        p.error("--generation_key must not be empty")
    log = lambda s: print(s, file=sys.stderr, flush=True)
    try:
        settings = GenerationSettings(
            max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
            seed=a.seed, stop=tuple(a.stop), batch_size=1 if a.prompt is not None else a.batch_size,
            steps_per_call=1 if a.prompt is not None else a.steps_per_call)
        if a.prompt is not None:
            render_prompt(a.prompt, "--prompt")
            rows = [("--prompt", {"prompt": a.prompt}, a.prompt)]
        else:
            rows = read_prompts(a.input, a.generation_key)
            check_output_path(a.output)
        mesh = parse_mesh(a.mesh)
        t0 = time.time()
        model, meta_dir = load(a.checkpoint, a.dtype, mesh)
        tokenizer = tokenizer_lib.load_checkpoint_tokenizer(meta_dir, log)
        tokenizer_lib.check_fits(tokenizer, model.cfg.vocab_size, a.checkpoint)
        settings = dataclasses.replace(settings, eos_token_ids=eos_ids_of(tokenizer, meta_dir))
        log(f"generate: loaded {a.checkpoint} in {time.time() - t0:.1f}s; {len(rows)} prompt(s)")
    except (ValueError, DataError, ConfigError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    stream = (lambda i, piece: print(piece, end="", flush=True)) if a.prompt is not None else None
    try:
        out = generate_texts(model, tokenizer, [pr for _, _, pr in rows], settings, mesh=mesh,
                             on_text=stream, skip_too_long=a.prompt is None)
    except PromptTooLong as e:  # --prompt only: --input rows are skipped instead
        print(f"error: --prompt: {e.reason}", file=sys.stderr)
        return 2
    n = sum(o["n_tokens"] for o in out)
    if a.prompt is not None:
        print()
    else:
        tmp = a.output + ".partial"
        with open(tmp, "w", encoding="utf-8") as f:
            for (_, row, _), o in zip(rows, out):
                f.write(json.dumps(output_row(row, o, a.generation_key), ensure_ascii=False) + "\n")
        os.replace(tmp, a.output)
    skipped = [(where, o["error"]) for (where, _, _), o in zip(rows, out)
               if o["finish_reason"] == "skipped"]
    for where, reason in skipped[:SKIPS_LISTED]:
        log(f"generate: skipped {where}: {reason}")
    if len(skipped) > SKIPS_LISTED:
        log(f"generate: ... and {len(skipped) - SKIPS_LISTED} more (their rows' {a.generation_key}.error)")
    log(f"generate: {len(out)} outputs, {n} tokens in {time.time() - t0:.1f}s"
        + (f"; {len(skipped)} skipped (prompt too long)" if a.prompt is None else ""))
    return 0
