"""Verifiable rewards for GRPO: rule-checked scores of sampled completions, weighted and summed.

    rewards = parse_rewards("boxed:1.0,format:0.2,length@2048:0.1,my_pkg.rewards.brevity:0.5")
    scores = score(completions, rows, prompts, rewards)       # -> Scores(totals, per_function, ...)

A completion is what the model wrote after the generation prompt, which ends with `<think>\\n`
(r1jax/data/chat.py): "reasoning...\\n</think>\\n\\nanswer<｜end▁of▁sentence｜>". It is scored as a
`Completion` record (`text`, `num_tokens`, `truncated`; `completion_of(generated)` makes one from a
r1jax.inference.generate result). Its parts, used by every reward below:
  - the body: the text up to the first `<｜end▁of▁sentence｜>` (the marker is optional; it and
    anything after it are dropped);
  - the reasoning: the body before its first `</think>` (all of the body when there is none);
  - the answer: the body after its first `</think>`, stripped of surrounding whitespace; EMPTY when
    the body has no `</think>` (the reasoning never ended, so there is no answer).

Built-in rewards (each a pure function `(completion, row) -> float`; `row` is the prompt's data row):
  - boxed:       1.0 when the answer's last `\\boxed{...}` equals row["answer"] by
                 answers.boxed_match (math-normalized, exact fractions), else 0.0. Only the answer
                 counts: a box inside the reasoning earns nothing (unlike `evaluate --task boxed`,
                 which reads the whole text), so the model is rewarded for finishing its thinking.
  - exact_match: 1.0 when the answer equals row["answer"] by answers.exact_match (whitespace runs
                 collapsed, case-folded), else 0.0.
  - contains:    1.0 when row["answer"] occurs in the answer by answers.contains, else 0.0.
  - format:      1.0 when the body is well-formed R1 output, else 0.0: exactly one `</think>`, no
                 `<think>` (the prompt already opened it), reasoning and answer both non-blank, and
                 the completion not truncated at the token limit.
  - length:      0.0 up to a budget of B tokens, then a linear penalty reaching -1.0 at 2B and
                 clipped there: -min(1, (num_tokens - B) / B) when num_tokens > B. B is written
                 `length@B` in the spec (default DEFAULT_LENGTH_BUDGET = 4096); the only reward with a
                 parameter. Needs each completion's num_tokens.
  - code_tests:  1.0 when the answer's code followed by row["tests"] (Python asserts) exits 0 in the
                 sandbox (r1jax.eval.tasks.sandbox, with `limits`), else 0.0 (failed assert, error,
                 syntax error, timeout, killed). The code (`answer_code`) is the answer's last fenced
                 block (```python, ```py, ```python3 or bare ```; an unclosed last fence runs to the
                 end), else the whole answer; a top-level `if __name__ == "__main__":` block and what
                 follows it is cut off (the program runs as a script). An empty answer scores 0.0
                 without running anything.
User functions: a dotted path `package.module.function` (any name containing a dot) is imported with
importlib and called as `function(prompt, completion, row) -> float` (prompt as passed to score,
completion the Completion record). Nothing else is loaded: no remote code, no pickles.

Spec syntax (parse_rewards): entries separated by commas, each `NAME[@BUDGET][:WEIGHT]`; NAME is a
built-in or a dotted path; a missing weight is 1.0. Weights are finite and >= 0 (0 logs a function
without rewarding it); a penalty is a function returning negative values, like length, never a
negative weight. Errors (RewardError, one line naming the entry): empty spec or entry, unknown name
(the built-ins are listed), a user function that cannot be imported, a bad or negative weight, a
parameter on anything but length or a budget that is not a positive integer, the same NAME twice.

Scoring (score): totals[i] = sum over functions of weight * reward[i]; per_function holds the
unweighted rewards. A function that raises or returns anything but a finite real number scores 0.0
for that item and is counted in problems[name] (the first message kept in errors[name]); one bad
item never fails the call. A row lacking a field a reward needs (answer, tests: a string), or a
completion without num_tokens for length, is a data error: RewardDataError (a RewardError and an
r1jax.data.errors.DataError) naming the index and field.
Where the work runs: built-ins inline (microseconds per item: shipping rows to another process
costs more); code_tests as one sandbox.run_many batch (`workers` children at once, 0 = CPU count);
user functions inline when workers == 1 or there are fewer than POOL_MIN_ITEMS items, else in a
process pool of `workers` processes (0 = CPU count) started with "spawn", since forking a process
that holds JAX's threads is unsafe; the workers import the user functions by name.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import math
import multiprocessing
import numbers
import os
import re
from typing import Any, Callable, NamedTuple, Sequence

from r1jax.data.errors import DataError
from r1jax.eval.tasks import answers, sandbox

EOS_MARKER = "<｜end▁of▁sentence｜>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
DEFAULT_LENGTH_BUDGET = 4096
POOL_MIN_ITEMS = 64
CODE_LIMITS = sandbox.Limits(timeout_s=10.0)


class RewardError(ValueError):
    """A bad reward spec, or data a reward cannot score; the one-line message names the entry or item."""


class RewardDataError(RewardError, DataError):
    """A row or completion a reward cannot score (a missing field, no token count): bad data, so
    also a DataError; the message starts with `rows[i]` or `completions[i]`."""


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled completion: `text` as generated after the prompt's `<think>\\n`, its token count
    (None when unknown; length needs it) and whether generation stopped at the token limit."""
    text: str
    num_tokens: int | None = None
    truncated: bool = False

    @property
    def body(self) -> str:
        """The text up to the first end-of-sentence marker (marker optional, dropped)."""
        return self.text.split(EOS_MARKER, 1)[0]

    @property
    def reasoning(self) -> str:
        """The body before its first `</think>`; the whole body when there is none."""
        return self.body.split(THINK_CLOSE, 1)[0]

    @property
    def answer(self) -> str:
        """The body after its first `</think>`, whitespace-stripped; "" when there is no `</think>`."""
        head, sep, tail = self.body.partition(THINK_CLOSE)
        return tail.strip() if sep else ""


def completion_of(generated: dict) -> Completion:
    """A Completion from an r1jax.inference.generate result ({"text", "n_tokens", "finish_reason"}):
    truncated when finish_reason is "length"."""
    return Completion(generated["text"], generated.get("n_tokens"), generated.get("finish_reason") == "length")


# -- built-in rewards ---------------------------------------------------------------------------------

def boxed(c: Completion, row: dict) -> float:
    """1.0 when the answer's last \\boxed{} equals row["answer"] (answers.boxed_match), else 0.0."""
    return 1.0 if answers.boxed_match(c.answer, row["answer"]) else 0.0


def exact_match(c: Completion, row: dict) -> float:
    """1.0 when the answer equals row["answer"] after answers.exact_match's normalization, else 0.0."""
    return 1.0 if answers.exact_match(c.answer, row["answer"]) else 0.0


def contains(c: Completion, row: dict) -> float:
    """1.0 when the normalized row["answer"] occurs in the normalized answer (answers.contains)."""
    return 1.0 if answers.contains(c.answer, row["answer"]) else 0.0


def well_formed(c: Completion, row: dict) -> float:
    """The `format` reward: 1.0 when the body has exactly one `</think>`, no `<think>`, non-blank
    reasoning and answer, and the completion was not truncated; else 0.0."""
    body = c.body
    ok = (body.count(THINK_CLOSE) == 1 and THINK_OPEN not in body and bool(c.reasoning.strip())
          and bool(c.answer) and not c.truncated)
    return 1.0 if ok else 0.0


def length(c: Completion, row: dict, budget: int = DEFAULT_LENGTH_BUDGET) -> float:
    """0.0 for num_tokens <= budget, else -min(1, (num_tokens - budget) / budget)."""
    over = c.num_tokens - budget
    return 0.0 if over <= 0 else -min(1.0, over / budget)


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_MAIN_GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:", re.MULTILINE)


def answer_code(answer: str) -> str:
    """The code of an answer: its last fenced block (an unclosed last fence runs to the end), else
    the whole answer; cut at a top-level `if __name__ == "__main__":`."""
    blocks = _FENCE.findall(answer)
    code = blocks[-1] if blocks else answer
    m = _MAIN_GUARD.search(code)
    return code[:m.start()] if m else code


def code_program(c: Completion, row: dict) -> str | None:
    """The program code_tests runs: the answer's code, a blank line, row["tests"]; None when the
    answer is empty (nothing to run: reward 0.0)."""
    if not c.answer:
        return None
    return answer_code(c.answer).rstrip("\n") + "\n\n\n" + row["tests"].rstrip("\n") + "\n"


# name -> (function (completion, row) -> float, the row fields it needs)
BUILTINS: dict[str, tuple[Callable[..., float] | None, tuple[str, ...]]] = {
    "boxed": (boxed, ("answer",)),
    "exact_match": (exact_match, ("answer",)),
    "contains": (contains, ("answer",)),
    "format": (well_formed, ()),
    "length": (length, ()),
    "code_tests": (None, ("tests",)),       # batched through the sandbox by score()
}


# -- the spec ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Reward:
    key: str                         # the name per_function uses: a built-in's name or the dotted path
    call: Callable[[Any, Completion, dict], Any] | None   # (prompt, completion, row); None: code_tests
    fields: tuple[str, ...]          # row fields it needs (strings)
    tokens: bool = False             # needs num_tokens
    user: bool = False


def _builtin_names() -> str:
    return ", ".join(sorted(BUILTINS))


def _user_function(path: str, entry: str) -> Callable:
    """The callable at dotted `path` (module path, then the function's name), imported by importlib."""
    module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise RewardError(f"reward {entry!r}: a user function is written package.module.function")
    try:
        mod = importlib.import_module(module)
    except Exception as e:           # ImportError, or the module's own code failing
        raise RewardError(f"reward {entry!r}: cannot import module {module!r}: "
                          f"{type(e).__name__}: {e}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise RewardError(f"reward {entry!r}: module {module!r} has no function {attr!r}")
    return fn


def _resolve(name: str) -> _Reward:
    """A spec NAME[@BUDGET] -> the reward it names (RewardError naming it when it names none)."""
    base, at, param = name.partition("@")
    if at and base != "length":
        raise RewardError(f"reward {name!r}: only length takes a parameter (length@BUDGET)")
    if "." in base:
        fn = _user_function(base, name)
        return _Reward(base, fn, (), user=True)
    if base not in BUILTINS:
        raise RewardError(f"unknown reward {base!r}; built-ins: {_builtin_names()}; "
                          "a user function is a dotted path package.module.function")
    fn, fields = BUILTINS[base]
    if base == "length":
        budget = DEFAULT_LENGTH_BUDGET
        if at:
            if not param.isdigit() or int(param) <= 0:
                raise RewardError(f"reward {name!r}: the length budget must be a positive integer "
                                  f"number of tokens, got {param!r}")
            budget = int(param)
        return _Reward(base, lambda p, c, r, b=budget: length(c, r, b), fields, tokens=True)
    if fn is None:
        return _Reward(base, None, fields)
    return _Reward(base, lambda p, c, r, f=fn: f(c, r), fields)


def _weight(text: str, entry: str) -> float:
    """A weight: a finite float >= 0."""
    try:
        w = float(text)
    except ValueError:
        raise RewardError(f"reward {entry!r}: bad weight {text!r} (a number >= 0)") from None
    if not math.isfinite(w) or w < 0:
        raise RewardError(f"reward {entry!r}: weight {text!r} must be finite and >= 0 (a penalty is "
                          "a function returning negative values, like length)")
    return w


def parse_rewards(spec: str) -> list[tuple[str, float]]:
    """`"boxed:1.0,format:0.2,length@2048:0.1,pkg.mod.fn"` -> [(name, weight)], names as written
    (with any @BUDGET); syntax and errors in the module docstring. User functions are imported here,
    so a spec that cannot run fails at once."""
    if not spec.strip():
        raise RewardError("reward spec is empty; built-ins: " + _builtin_names())
    out, seen = [], set()
    for pos, raw in enumerate(spec.split(","), 1):
        entry = raw.strip()
        if not entry:
            raise RewardError(f"reward spec {spec!r}: entry {pos} is empty")
        if entry.count(":") > 1:
            raise RewardError(f"reward {entry!r}: write NAME[@BUDGET][:WEIGHT] (one ':' at most)")
        name, colon, w = (part.strip() for part in entry.partition(":"))
        if not name:
            raise RewardError(f"reward {entry!r}: no name")
        weight = _weight(w, entry) if colon else 1.0
        key = _resolve(name).key
        if key in seen:
            raise RewardError(f"reward {entry!r}: {key} is named twice")
        seen.add(key)
        out.append((name, weight))
    return out


# -- scoring -----------------------------------------------------------------------------------------

class Scores(NamedTuple):
    """totals [N]; per_function {name: [N] unweighted}; problems {name: count of items that raised or
    returned a non-number} for every function; errors {name: the first problem's message}."""
    totals: list[float]
    per_function: dict[str, list[float]]
    problems: dict[str, int]
    errors: dict[str, str]


def _checked(call: Callable, prompt: Any, c: Completion, row: dict, i: int) -> tuple[float, str | None]:
    """(reward, None), or (0.0, message) when the call raises or returns no finite real number."""
    try:
        v = call(prompt, c, row)
    except Exception as e:
        return 0.0, f"item {i}: {type(e).__name__}: {e}"
    if isinstance(v, numbers.Real) and math.isfinite(v):
        return float(v), None
    return 0.0, f"item {i}: returned {type(v).__name__} {v!r:.80}, not a finite number"


def required_fields(rewards: str | list[tuple[str, float]]) -> dict[str, str]:
    """{row field: the first reward of the spec that reads it} (answer, tests: strings every row
    scored with the spec must have)."""
    if isinstance(rewards, str):
        rewards = parse_rewards(rewards)
    out: dict[str, str] = {}
    for name, _ in rewards:
        f = _resolve(name)
        for field in f.fields:
            out.setdefault(field, f.key)
    return out


def _user_chunk(paths: list[str], items: list[tuple[int, Any, Completion, dict]]) -> dict:
    """In a pool worker: {path: [(reward, message|None)] per item}, the functions imported by name."""
    fns = {p: _user_function(p, p) for p in paths}
    return {p: [_checked(fn, pr, c, row, i) for i, pr, c, row in items] for p, fn in fns.items()}


def _as_completion(c: Any, i: int) -> Completion:
    if isinstance(c, Completion):
        return c
    if isinstance(c, str):
        return Completion(c)
    raise RewardDataError(f"completions[{i}]: a Completion or a str, got {type(c).__name__}")


def _check_data(funcs: list[_Reward], comps: list[Completion], rows: Sequence[dict]) -> None:
    """RewardError naming the first row lacking a string field a reward needs, or the first
    completion without num_tokens when length is used."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RewardDataError(f"rows[{i}]: a row is a dict, got {type(row).__name__}")
        for f in funcs:
            for field in f.fields:
                if field not in row or row[field] is None:
                    raise RewardDataError(f"rows[{i}]: missing field {field!r}, which the {f.key} reward needs")
                if not isinstance(row[field], str):
                    raise RewardDataError(f"rows[{i}]: field {field!r} must be a string for the {f.key} "
                                      f"reward, got {type(row[field]).__name__}")
    if any(f.tokens for f in funcs):
        for i, c in enumerate(comps):
            if not isinstance(c.num_tokens, int) or c.num_tokens < 0:
                raise RewardDataError(f"completions[{i}]: the length reward needs num_tokens (an int >= 0), "
                                  f"got {c.num_tokens!r}")


def _code_rewards(comps: list[Completion], rows: Sequence[dict], limits: sandbox.Limits,
                  workers: int) -> list[tuple[float, str | None]]:
    """code_tests for every item: the non-empty answers' programs run as one sandbox batch."""
    programs = [code_program(c, row) for c, row in zip(comps, rows)]
    todo = [i for i, p in enumerate(programs) if p is not None]
    results = sandbox.run_many([programs[i] for i in todo], limits, workers)
    out: list[tuple[float, str | None]] = [(0.0, None)] * len(comps)
    for i, r in zip(todo, results):
        if r.returncode is None:         # the sandbox could not start it: not the model's doing
            out[i] = (0.0, f"item {i}: sandbox {r.status}: {r.stderr_tail.strip()[-300:]}")
        else:
            out[i] = (1.0 if r.passed else 0.0, None)
    return out


def _user_rewards(users: list[_Reward], prompts: Sequence, comps: list[Completion], rows: Sequence[dict],
                  workers: int) -> dict[str, list[tuple[float, str | None]]]:
    """Every user function on every item: inline, or chunked over a spawn process pool (module doc)."""
    n, paths = len(comps), [f.key for f in users]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or n < POOL_MIN_ITEMS:
        return {f.key: [_checked(f.call, prompts[i], comps[i], rows[i], i) for i in range(n)] for f in users}
    items = list(zip(range(n), prompts, comps, rows))
    size = -(-n // (4 * workers))
    chunks = [items[j:j + size] for j in range(0, n, size)]
    out: dict[str, list] = {p: [] for p in paths}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for got in pool.map(_user_chunk, [paths] * len(chunks), chunks):
            for p in paths:
                out[p].extend(got[p])
    return out


def score(completions: Sequence[Completion | str], rows: Sequence[dict], prompts: Sequence,
          rewards: str | list[tuple[str, float]], workers: int = 0,
          limits: sandbox.Limits = CODE_LIMITS) -> Scores:
    """Scores N completions (Completion records, or plain texts: no token count, not truncated) of
    their prompts against their data rows with the weighted rewards (a spec or parse_rewards'
    list); rules in the module docstring."""
    if isinstance(rewards, str):
        rewards = parse_rewards(rewards)
    n = len(completions)
    if len(rows) != n or len(prompts) != n:
        raise RewardError(f"score needs one row and one prompt per completion: {n} completions, "
                          f"{len(rows)} rows, {len(prompts)} prompts")
    for name, weight in rewards:
        if not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
            raise RewardError(f"reward {name!r}: weight {weight!r} must be finite and >= 0")
    funcs = [_resolve(name) for name, _ in rewards]
    if len({f.key for f in funcs}) != len(funcs):
        raise RewardError(f"a reward is named twice in {[name for name, _ in rewards]}")
    comps = [_as_completion(c, i) for i, c in enumerate(completions)]
    _check_data(funcs, comps, rows)

    users = [f for f in funcs if f.user]
    results = _user_rewards(users, prompts, comps, rows, workers) if users and n else {f.key: [] for f in users}
    for f in funcs:
        if f.key == "code_tests":
            results[f.key] = _code_rewards(comps, rows, limits, workers)
        elif not f.user:
            results[f.key] = [_checked(f.call, prompts[i], comps[i], rows[i], i) for i in range(n)]

    per_function, problems, errors = {}, {}, {}
    totals = [0.0] * n
    for f, (_, weight) in zip(funcs, rewards):
        pairs = results[f.key]
        per_function[f.key] = [v for v, _ in pairs]
        messages = [m for _, m in pairs if m is not None]
        problems[f.key] = len(messages)
        if messages:
            errors[f.key] = messages[0]
        for i, (v, _) in enumerate(pairs):
            totals[i] += weight * v
    return Scores(totals, per_function, problems, errors)
