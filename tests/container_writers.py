"""Writers of each input container, a second code path to r1jax/data/readers.py: JSONL and JSON by
`json`, gzip by `gzip`, zstd, Parquet and Arrow by pyarrow, save_to_disk folders by `datasets`, CSV by
`csv`. Each takes (path, rows) and returns the path as a string."""
import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def write_json(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=2)
    return str(path)


def write_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def write_zst(path, rows):
    with pa.output_stream(str(path), compression="zstd") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return str(path)


def write_parquet(path, rows, row_group_size=5):
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return str(path)


def write_arrow(path, rows, stream=False):
    table = pa.Table.from_pylist(rows)
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=7):
            writer.write_batch(batch)
    return str(path)


def write_hf(path, rows):
    import datasets
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def write_csv(path, rows, delimiter=",", opener=open, columns=("prompt", "completion", "category")):
    """Flat rows as CSV with a header of `columns` (a missing or None cell is empty, unquoted)."""
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)  # QUOTE_MINIMAL: None is an empty, unquoted cell
        w.writerow(list(columns))
        for r in rows:
            w.writerow([r.get(c) for c in columns])
    return str(path)
