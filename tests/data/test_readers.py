"""Inputs as users have them (`r1jax.data.readers`): every container prepares to the same bytes as its
JSONL twin; detection by extension and content; globs, directories, save_to_disk folders; row and
file errors by name; streaming. Containers are written here by a second code path (json, gzip,
csv, pyarrow writers, `datasets`), the JSONL twin by json.dumps."""
import glob as glob_lib
import gzip
import json
import os
import random
import shutil

import pyarrow.parquet as pq
import pytest

from r1jax.data import prepare, readers
from r1jax.data.errors import DataError
from r1jax.data.formats import read_examples

from container_writers import (write_arrow, write_csv, write_gz, write_hf, write_json, write_jsonl,
                               write_parquet, write_zst)

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma",
         "café", "naïve", "日本語", "данные", "🙂", "x=1,y=2", 'a "quote"', "tab\there", "semi;colon"]
PREPARED = ("train.jsonl", "val.jsonl", "train.ids.npy", "train.mask.npy", "train.offsets.npy",
            "train.meta.json", "val.ids.npy", "val.mask.npy", "val.offsets.npy", "val.meta.json")


pytestmark = pytest.mark.usefixtures("packaged_prepare")  # the session tokenizer: tests/data/conftest.py


def text(rng, n=10):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n))


def chat_rows(n=24, seed=0):
    """Chat rows: a system prompt in some, multi-turn in some, reasoning_content in some assistant
    turns and absent in others, a category in some rows (the first has one: `datasets` takes its
    columns from the first row)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": text(rng, 4)}] if i % 3 == 0 else []
        for turn in range(1 + (i % 4 == 1)):
            msgs.append({"role": "user", "content": text(rng)})
            a = {"role": "assistant", "content": text(rng)}
            if (i + turn) % 2 == 0:
                a["reasoning_content"] = text(rng, 6)
            msgs.append(a)
        row = {"messages": msgs}
        if i % 5 != 4:
            row["category"] = ("math", "code", "chat")[i % 3]
        rows.append(row)
    return rows


def flat_rows(n=24, seed=1):
    """prompt/completion rows for CSV: number-like strings ("42"), commas, quotes, newlines, tabs
    inside cells, and some rows without a category."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = str(40 + i) if i % 6 == 0 else text(rng) + ("\nsecond line" if i % 4 == 0 else "")
        row = {"prompt": prompt, "completion": text(rng)}
        if i % 5 != 2:
            row["category"] = ("a", "b")[i % 2]
        rows.append(row)
    return rows


CHAT_CONTAINERS = {
    "json": ("in.json", write_json, "json"),
    "jsonl.gz": ("in.jsonl.gz", write_gz, "jsonl"),
    "jsonl.zst": ("in.jsonl.zst", write_zst, "jsonl"),
    "parquet": ("in.parquet", write_parquet, "parquet"),
    "arrow_file": ("in.arrow", write_arrow, "arrow"),
    "arrow_stream": ("in.arrow", lambda p, r: write_arrow(p, r, stream=True), "arrow"),
    "save_to_disk": ("saved", write_hf, "hf_disk"),
}
FLAT_CONTAINERS = {
    "csv": ("in.csv", write_csv, "csv"),
    "tsv": ("in.tsv", lambda p, r: write_csv(p, r, "\t"), "tsv"),
    "csv.gz": ("in.csv.gz", lambda p, r: write_csv(p, r, opener=gzip.open), "csv"),
    "parquet": ("in.parquet", write_parquet, "parquet"),
    "json": ("in.json", write_json, "json"),
}


def prepared(out):
    """{file name: bytes} of a prepared dataset's split files."""
    return {n: open(os.path.join(out, n), "rb").read() for n in PREPARED if os.path.exists(os.path.join(out, n))}


def error_lines(capsys) -> list[str]:
    """stderr's lines since the last read, but prepare's log of the tokenizer it loaded."""
    return [x for x in capsys.readouterr().err.splitlines() if not x.startswith("tokenizer: ")]


def run(inputs, out, *flags):
    inputs = inputs if isinstance(inputs, list) else [inputs]
    rc = prepare.main(["--input", *inputs, "--out", str(out), "--val", "0.25", "--seed", "3", *flags])
    rep = os.path.join(out, "report.json")
    return rc, json.load(open(rep)) if os.path.exists(rep) else None


@pytest.mark.parametrize("rows_of, containers", [(chat_rows, CHAT_CONTAINERS), (flat_rows, FLAT_CONTAINERS)],
                         ids=["chat", "flat"])
def test_every_container_prepares_like_its_jsonl_twin(tmp_path, rows_of, containers):
    """Oracle: the JSONL twin of the same rows (json.dumps), prepared the same way: train/val JSONL
    and token store files are byte-identical, the counts equal, and each input is listed with its
    detected container. Parquet/Arrow/save_to_disk null fields (absent reasoning_content, category)
    read as absent keys; CSV cells stay strings ("42")."""
    rows = rows_of()
    rc, twin_rep = run(write_jsonl(tmp_path / "twin.jsonl", rows), tmp_path / "twin_out")
    assert rc == 0 and twin_rep["records"]["kept"] == len(rows)
    twin = prepared(tmp_path / "twin_out")
    assert {"train.jsonl", "val.jsonl", "val.ids.npy"} <= set(twin)
    for name, (file_name, write, container) in containers.items():
        os.makedirs(tmp_path / name)
        src = write(tmp_path / name / file_name, rows)
        rc, rep = run(src, tmp_path / name / "out")
        assert rc == 0, name
        assert rep["records"] == twin_rep["records"], name
        assert [(i["path"], i["container"]) for i in rep["inputs"]] == [(src, container)]
        assert prepared(tmp_path / name / "out") == twin, name


def test_rows_equal_json_of_the_twin(tmp_path):
    """Oracle: the rows as written (json.dumps of them is the JSONL twin). Every container gives the
    same dicts (plain Python values, nulls dropped recursively) and names rows `PATH:row N`
    (compressed JSON Lines: `PATH:LINE`)."""
    rows = chat_rows(12)
    for name, (file_name, write, _) in CHAT_CONTAINERS.items():
        os.makedirs(tmp_path / name)
        src = write(tmp_path / name / file_name, rows)
        unit = readers.expand(src)[0]
        got = list(readers.read_rows(unit))
        assert [r for _, r in got] == rows, name
        where_file = readers.hf_disk_files(src)[0] if name == "save_to_disk" else src
        row = "" if name.startswith("jsonl") else "row "  # JSON Lines: PATH:LINE
        assert [w for w, _ in got] == [f"{where_file}:{row}{i}" for i in range(1, 13)], name
        for _, r in got:
            assert all(type(m["content"]) is str for m in r["messages"])


def test_kfold_parquet_equals_jsonl(tmp_path):
    """Oracle: the JSONL twin prepared with --kfold 3: every fold's files are byte-identical."""
    rows = chat_rows(18)
    flags = ["--kfold", "3"]
    outs = {}
    for name, src in (("jsonl", write_jsonl(tmp_path / "a.jsonl", rows)),
                      ("parquet", write_parquet(tmp_path / "a.parquet", rows, row_group_size=4))):
        out = tmp_path / f"out_{name}"
        assert prepare.main(["--input", src, "--out", str(out), *flags]) == 0
        outs[name] = {os.path.relpath(p, out): open(p, "rb").read()
                      for p in glob_lib.glob(str(out / "fold*" / "*"))}
    assert len(outs["jsonl"]) == 3 * 2 * 5 and outs["parquet"] == outs["jsonl"]


RAGGED_CSV = 'prompt,completion\np1,c1\n"only one field"\np3,c3\np4,c4,extra\np5,c5\n'


def test_csv_ragged_row_lenient_and_strict(tmp_path, capsys):
    """Oracle: the CSV written by hand above: data rows 2 and 4 are ragged. Lenient counts them as
    malformed naming `file:row 2` and `file:row 4` and keeps the 3 others; --strict exits 2 naming
    row 2 on one line, writing nothing."""
    src = tmp_path / "r.csv"
    src.write_text(RAGGED_CSV)
    rc, rep = run(str(src), tmp_path / "lenient", "--val", "0")
    assert rc == 0
    assert rep["records"]["read"] == 5 and rep["records"]["removed"]["malformed"] == 2
    assert [e["where"] for e in rep["examples"]["malformed"]] == [f"{src}:row 2", f"{src}:row 4"]
    assert rep["examples"]["malformed"][0]["detail"] == "1 fields where the header has 2"
    got = [json.loads(line)["messages"][0]["content"] for line in open(tmp_path / "lenient" / "train.jsonl")]
    assert sorted(got) == ["p1", "p3", "p5"]
    capsys.readouterr()
    rc, _ = run(str(src), tmp_path / "strict", "--strict")
    assert rc == 2 and error_lines(capsys) == [f"{src}:row 2: 1 fields where the header has 2"]
    assert not os.path.exists(tmp_path / "strict")


def test_cut_parquet_footer_is_one_line_at_open(tmp_path, capsys):
    """Oracle: a Parquet file cut 10 bytes short has no readable footer: read_rows raises DataError
    naming the file before any row; prepare exits 2 with one line naming it and writes nothing."""
    src = write_parquet(tmp_path / "cut.parquet", chat_rows(10))
    data = open(src, "rb").read()
    open(src, "wb").write(data[:-10])
    rows = readers.read_rows(src)
    with pytest.raises(DataError, match=r"^" + str(src).replace(".", r"\.") + r": not a readable Parquet"):
        next(rows)
    capsys.readouterr()
    rc, _ = run(src, tmp_path / "out")
    err = capsys.readouterr().err  # before the tokenizer is loaded: the only line
    assert rc == 2 and err.startswith(f"error: --input {src}: not a readable Parquet file: ")
    assert err.count("\n") == 1 and not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("case", ["no_match", "missing_file", "dataset_dict", "json_cut", "json_bad_utf8",
                                  "not_arrow", "empty_dir", "unknown_container"])
def test_bad_inputs_exit_2_naming_them(tmp_path, capsys, case):
    """Oracle: the hand-written expectation of each message (what it names, on one line); exit 2,
    nothing written."""
    rows = chat_rows(6)
    if case == "no_match":
        src, expect = str(tmp_path / "none_*.jsonl"), "matches no file"
    elif case == "missing_file":
        src, expect = str(tmp_path / "nope.parquet"), "no such file or directory"
    elif case == "dataset_dict":
        import datasets
        src = str(tmp_path / "dd")
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "test": datasets.Dataset.from_list(rows)}).save_to_disk(src)
        expect = f"a DatasetDict folder with splits train, test; pass one split's folder, e.g. {src}/train"
    elif case == "json_cut":
        src = write_json(tmp_path / "cut.json", rows)
        open(src, "r+b").truncate(os.path.getsize(src) - 40)
        expect = "the JSON array is cut short"
    elif case == "json_bad_utf8":
        src = str(tmp_path / "bad.json")
        open(src, "wb").write(b'[{"text": "ok"},\n {"text": "caf\xe9"}]')
        expect = "not UTF-8"
    elif case == "not_arrow":
        src = str(tmp_path / "x.arrow")
        open(src, "wb").write(b"this is not arrow data at all\n" * 10)
        expect = "not an Arrow IPC file or stream"
    elif case == "empty_dir":
        src = str(tmp_path / "empty")
        os.makedirs(src)
        (tmp_path / "empty" / "notes.txt").write_text("x")
        expect = "a directory with no file of a known extension"
    else:
        src = str(tmp_path / "data.bin")
        open(src, "wb").write(b"prompt,completion\np,c\n")
        expect = "cannot tell its container from its name or first bytes; pass --input_format"
    capsys.readouterr()
    rc, _ = run(src, tmp_path / "out")
    err = error_lines(capsys)
    assert rc == 2 and len(err) == 1 and src in err[0] and expect in err[0], err
    assert not os.path.exists(tmp_path / "out")


def test_json_array_row_errors_are_rows(tmp_path):
    """Oracle: the hand-written array: element 2 is not an object (a row error, the rest read), a
    .json starting with "{" is JSON Lines; whitespace and an empty array are fine."""
    src = tmp_path / "a.json"
    src.write_text('  [ {"text": "a"} , 5 ,\n{"text": "c"}]  \n')
    got = list(readers.read_rows(str(src)))
    assert got[0] == (f"{src}:row 1", {"text": "a"}) and got[2] == (f"{src}:row 3", {"text": "c"})
    assert isinstance(got[1][1], DataError) and str(got[1][1]) == f"{src}:row 2: a row must be a JSON object, got int"
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert readers.detect(str(lines)) == "jsonl"
    assert [r for _, r in readers.read_rows(str(lines))] == [{"text": "a"}, {"text": "b"}]
    empty = tmp_path / "e.json"
    empty.write_text("[ ]")
    assert list(readers.read_rows(str(empty))) == []


def test_globs_and_directories(tmp_path):
    """Oracle: the JSONL twin of all rows in sorted path order. A directory input reads its files of
    known extensions recursively, sorted (a save_to_disk folder among them as one input, other files
    ignored); a glob its sorted matches; both prepare like the twin."""
    rows = chat_rows(30)
    d = tmp_path / "data"
    os.makedirs(d / "sub")
    write_parquet(d / "a.parquet", rows[:8])
    write_json(d / "b.json", rows[8:14])
    write_gz(d / "sub" / "c.jsonl.gz", rows[14:20])
    write_hf(d / "sub" / "d_saved", rows[20:26])
    write_jsonl(d / "sub" / "e.jsonl", rows[26:])
    (d / "sub" / "README.txt").write_text("not data")
    assert readers.expand(str(d)) == [str(d / "a.parquet"), str(d / "b.json"), str(d / "sub" / "c.jsonl.gz"),
                                      str(d / "sub" / "d_saved"), str(d / "sub" / "e.jsonl")]
    rc, _ = run(write_jsonl(tmp_path / "twin.jsonl", rows), tmp_path / "twin")
    assert rc == 0
    rc, rep = run(str(d), tmp_path / "dir")
    assert rc == 0 and prepared(tmp_path / "dir") == prepared(tmp_path / "twin")
    assert [i["container"] for i in rep["inputs"]] == ["parquet", "json", "jsonl", "hf_disk", "jsonl"]
    assert rep["inputs"][3]["bytes"] == sum(os.path.getsize(p) for p in readers.files_of(str(d / "sub" / "d_saved")))
    # Two inputs are two sources (val is stratified by source): the twin is two JSONL files too.
    rc, _ = run([write_jsonl(tmp_path / "twin_a.jsonl", rows[:14]), write_jsonl(tmp_path / "twin_b.jsonl", rows[14:])],
                tmp_path / "twins")
    rc, _ = run([str(d / "*.*"), str(d / "sub")], tmp_path / "glob")
    assert rc == 0 and prepared(tmp_path / "glob") == prepared(tmp_path / "twins")


def test_input_format_forces_a_container(tmp_path, capsys):
    """Oracle: the JSONL twin. A file without a known extension: Parquet and JSON array are told by
    their first bytes; CSV needs --input_format csv (and --input_format jsonl on a CSV reads its
    lines as JSON: malformed rows)."""
    rows = flat_rows(12)
    rc, _ = run(write_jsonl(tmp_path / "twin.jsonl", rows), tmp_path / "twin")
    twin = prepared(tmp_path / "twin")
    assert rc == 0
    pq_src = write_parquet(tmp_path / "export.bin", rows)
    assert readers.detect(pq_src) == "parquet"
    assert run(pq_src, tmp_path / "pq")[0] == 0 and prepared(tmp_path / "pq") == twin
    csv_src = write_csv(tmp_path / "export.dat", rows)
    rc, rep = run(csv_src, tmp_path / "csv", "--input_format", "csv")
    assert rc == 0 and prepared(tmp_path / "csv") == twin and rep["inputs"][0]["container"] == "csv"
    assert rep["options"]["input_format"] == "csv"
    rc, rep = run(csv_src, tmp_path / "forced_jsonl", "--input_format", "jsonl")
    assert rc == 1 and rep["records"]["removed"]["malformed"] == rep["records"]["read"]


def test_parquet_is_read_batch_by_batch(tmp_path):
    """Oracle: truncating the file after the first row was read. The reader holds the footer and
    at most the first row groups; cutting the file then makes a later row group unreadable, so the
    error comes after some rows, naming the file. A reader that read the whole file before its
    first row (pq.read_table, or pyarrow's iter_batches over all row groups at once, which reads
    every row group on its first batch) gives all 6000 rows without an error."""
    rng = random.Random(0)  # incompressible: 0.8 MB, far above pyarrow's 64 KB footer read
    rows = [{"text": f"row {i} " + "%0128x" % rng.getrandbits(512)} for i in range(6000)]
    src = write_parquet(tmp_path / "big.parquet", rows, row_group_size=300)
    assert pq.ParquetFile(src).num_row_groups == 20 and os.path.getsize(src) > 500_000
    it = readers.read_rows(src)
    assert next(it) == (f"{src}:row 1", rows[0])
    open(src, "r+b").truncate(os.path.getsize(src) // 2)
    seen = 1
    with pytest.raises(DataError, match=r"^" + src.replace(".", r"\.") + r": unreadable after row \d+"):
        for _ in it:
            seen += 1
    assert 1 <= seen < 6000 * 0.6


def test_detect_by_content_and_columns(tmp_path):
    """Oracle: the magic numbers of each format as written by pyarrow/gzip (no extension)."""
    rows = chat_rows(4)
    paths = {"parquet": write_parquet(tmp_path / "p", rows),
             "arrow": write_arrow(tmp_path / "f", rows),
             "arrow_stream": write_arrow(tmp_path / "s", rows, stream=True),
             "json": write_json(tmp_path / "j", rows),
             "jsonl": write_gz(tmp_path / "g", rows)}
    assert {k: readers.detect(p) for k, p in paths.items()} == {
        "parquet": "parquet", "arrow": "arrow", "arrow_stream": "arrow", "json": "json", "jsonl": "jsonl"}
    assert [r for _, r in readers.read_rows(paths["jsonl"])] == rows  # gzip by its magic
    assert readers.columns_of(paths["parquet"]) == ["messages", "category"]
    assert readers.columns_of(paths["arrow_stream"]) == ["messages", "category"]
    assert readers.columns_of(paths["json"]) is None
    assert readers.columns_of(write_csv(tmp_path / "c.csv", flat_rows(3))) == ["prompt", "completion", "category"]
    assert readers.columns_of(write_hf(tmp_path / "hf", rows)) == ["messages", "category"]


def test_read_examples_strict_over_containers(tmp_path):
    """Oracle: the hand-written rows: a Parquet row whose completion is null is malformed (missing
    field) in lenient mode, named `file:row 2`; strict raises it after row 1."""
    src = write_parquet(tmp_path / "n.parquet", [{"prompt": "p", "completion": "c"},
                                                  {"prompt": "q", "completion": None}])
    out = list(read_examples([src]))
    assert out[0].source == f"{src}:row 1"
    assert isinstance(out[1], DataError) and str(out[1]) == f"{src}:row 2: missing field 'completion'"
    it = read_examples([src], strict=True)
    next(it)
    with pytest.raises(DataError, match=r"row 2: missing field 'completion'"):
        next(it)


def test_trainer_inputs_glob_and_parquet(tmp_path):
    """Oracle: the files written here and json.loads of the JSONL twin. run_data's check expands a
    glob (error naming the config key when nothing matches), the stamp fingerprints every expanded
    file (a save_to_disk folder: state.json and its .arrow files), and data.max_examples takes the
    first N rows of a Parquet input as JSONL equal to the twin's first N lines."""
    from r1jax.train import run_data
    rows = chat_rows(10)
    d = tmp_path / "d"
    os.makedirs(d)
    a = write_parquet(d / "a.parquet", rows[:6])
    b = write_jsonl(d / "b.jsonl", rows[6:])
    hf = write_hf(tmp_path / "hf", rows)
    assert run_data.check_data_file(str(d / "*"), "data.train") == [a, b]
    with pytest.raises(DataError, match=r"nothing_\*\.parquet: matches no file \(config key data\.train\)"):
        run_data.check_data_file(str(tmp_path / "nothing_*.parquet"), "data.train")
    prints = run_data.fingerprints([a, b, hf])
    assert [p["path"] for p in prints] == [a, b, os.path.join(hf, "state.json"),
                                           *[os.path.join(hf, f) for f in sorted(os.listdir(hf)) if f.endswith(".arrow")]]
    assert [p["size"] for p in prints[:2]] == [os.path.getsize(a), os.path.getsize(b)]
    head = tmp_path / "head.jsonl"
    run_data._head([str(d / "*")], str(head), 8)
    twin = write_jsonl(tmp_path / "twin.jsonl", rows)
    assert [json.loads(x) for x in open(head)] == [json.loads(x) for x in open(twin)][:8]
    shutil.rmtree(d)
