"""Reading inputs (`r1jax.data.readers`): prepare's peak memory on 1x and 8x the same rows, and read
throughput next to a plain pyarrow read.

    python tools/bench_data.py [--rows 20000] [--copies 8] [--row_group 1000] [--seed 0]
                               [--formats parquet jsonl] [--out tools/results/bench_data.json]

Builds N synthetic chat rows (a system prompt in some, reasoning_content in some assistant turns,
a category in most; ~150 words each), written as Parquet (row groups of --row_group rows) and as
JSONL, each once (1x) and --copies times over (8x: the same rows again and again, so prepare keeps
the same examples: exact duplicates are removed before tokenizing). Then, per file, runs
`python -m r1jax.data prepare --input FILE --out DIR --val 0` in a subprocess and takes its peak RSS
from os.wait4 (the child's own ru_maxrss); the ratio 8x / 1x shows what grows with the input
(target <= 1.3). Read throughput: rows/s of `readers.read_rows` over the 1x Parquet file against
`pq.ParquetFile(...).iter_batches()` + `to_pylist()` of the same file (pyarrow's default batches of
65536 rows), and against the same with readers' batches (one row group at a time, BATCH_ROWS rows:
what readers adds on top, its row names and null dropping), in this process, by wall time and per
CPU second (time.process_time), and the ratios. Writes the numbers and the command to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from r1jax.data import readers

SYLLABLES = "ka ri to na me shi lo pu ve zan dor ix um bel tra qua fen gor ly so pe ad in con ter".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))


def chat_rows(n: int, seed: int) -> list[dict]:
    """n distinct chat rows (see the module docstring)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": sentence(rng, 8)}] if i % 4 == 0 else []
        msgs.append({"role": "user", "content": f"{i}: " + sentence(rng, 30)})
        answer = {"role": "assistant", "content": sentence(rng, 60)}
        if i % 2 == 0:
            answer["reasoning_content"] = sentence(rng, 60)
        msgs.append(answer)
        row = {"messages": msgs}
        if i % 10:
            row["category"] = ("math", "code", "chat", "writing")[i % 4]
        rows.append(row)
    return rows


def write_inputs(d: str, rows: list[dict], copies: int, row_group: int, formats: list[str]) -> dict:
    """{(format, copies): path} of the inputs."""
    paths = {}
    table = pa.Table.from_pylist(rows)
    for k in (1, copies):
        if "parquet" in formats:
            path = os.path.join(d, f"rows_x{k}.parquet")
            with pq.ParquetWriter(path, table.schema) as w:
                for _ in range(k):
                    w.write_table(table, row_group_size=row_group)
            paths[("parquet", k)] = path
        if "jsonl" in formats:
            path = os.path.join(d, f"rows_x{k}.jsonl")
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            with open(path, "w", encoding="utf-8") as f:
                for _ in range(k):
                    f.write(lines)
            paths[("jsonl", k)] = path
    return paths


def prepare_peak(path: str, out: str) -> dict:
    """Runs prepare on `path` in a subprocess: {"peak_rss_mb", "seconds", "read", "kept"}."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "r1jax.data", "prepare", "--input", path, "--out", out,
                             "--val", "0", "--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"prepare {path} failed ({proc.returncode}): {err.decode()[-2000:]}")
    rec = json.load(open(os.path.join(out, "report.json")))["records"]
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t, 2),
            "read": rec["read"], "kept": rec["kept"]}


def read_rate(fn) -> dict:
    """{"rows", "rows_per_s", "rows_per_cpu_s"} of consuming fn()'s rows."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows": n, "rows_per_s": round(n / wall), "rows_per_cpu_s": round(n / max(cpu, 1e-9))}


def plain_pyarrow(path: str) -> int:
    n = 0
    for batch in pq.ParquetFile(path).iter_batches():
        n += len(batch.to_pylist())
    return n


def pyarrow_small_batches(path: str) -> int:
    pf, n = pq.ParquetFile(path), 0
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=readers.BATCH_ROWS, row_groups=[group]):
            n += len(batch.to_pylist())
    return n


def with_readers(path: str) -> int:
    return sum(1 for _ in readers.read_rows(path))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--row_group", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", default=["parquet", "jsonl"], choices=["parquet", "jsonl"])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_data.json"))
    args = p.parse_args(argv)
    d = tempfile.mkdtemp(prefix="bench_data_")
    try:
        paths = write_inputs(d, chat_rows(args.rows, args.seed), args.copies, args.row_group, args.formats)
        result = {"command": "python tools/bench_data.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "pyarrow": pa.__version__},
                  "rows": args.rows, "copies": args.copies, "row_group": args.row_group, "prepare": {},
                  "input_bytes": {f"{f}_x{k}": os.path.getsize(path) for (f, k), path in paths.items()}}
        for (fmt, k), path in paths.items():
            r = prepare_peak(path, os.path.join(d, f"out_{fmt}_{k}"))
            result["prepare"][f"{fmt}_x{k}"] = r
            print(f"prepare {fmt} x{k}: {r}", flush=True)
        for fmt in args.formats:
            one, many = result["prepare"][f"{fmt}_x1"], result["prepare"][f"{fmt}_x{args.copies}"]
            result["prepare"][f"{fmt}_peak_rss_ratio"] = round(many["peak_rss_mb"] / one["peak_rss_mb"], 3)
            print(f"{fmt}: peak RSS x{args.copies} / x1 = {result['prepare'][f'{fmt}_peak_rss_ratio']} "
                  "(target <= 1.3)")
        if "parquet" in args.formats:
            path = paths[("parquet", 1)]
            plain_pyarrow(path), with_readers(path)  # warm the page cache and imports
            plain, small = read_rate(lambda: plain_pyarrow(path)), read_rate(lambda: pyarrow_small_batches(path))
            ours = read_rate(lambda: with_readers(path))
            result["read"] = {"pyarrow_iter_batches_to_pylist": plain, "pyarrow_same_batches_to_pylist": small,
                              "readers_read_rows": ours,
                              "ratio_wall": round(ours["rows_per_s"] / plain["rows_per_s"], 3),
                              "ratio_per_cpu_s": round(ours["rows_per_cpu_s"] / plain["rows_per_cpu_s"], 3),
                              "ratio_per_cpu_s_same_batches": round(ours["rows_per_cpu_s"] / small["rows_per_cpu_s"], 3)}
            print(f"read: {result['read']}")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
