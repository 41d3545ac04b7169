"""Inputs as users have them -> rows: `read_rows(path)` yields (where, row dict or DataError).

An input (`expand`) is a file, a glob (its sorted matches) or a directory:
  a `datasets` `Dataset.save_to_disk` directory   state.json + data-*.arrow (Arrow stream format),
                                                  read in the order state.json lists them, through
                                                  pyarrow (`datasets` is not imported)
  a `DatasetDict.save_to_disk` directory          refused, naming its splits: pass DIR/<split>
  any other directory                             its files with a known extension, recursively,
                                                  sorted (names starting with "." skipped)

Containers (`INPUT_FORMATS`), by extension, else by content (`detect`):
  jsonl    one JSON object per line (.jsonl, .ndjson); blank lines skipped, a UTF-8 BOM tolerated
  json     a JSON array of row objects (.json whose first non-space character is "["; a .json
           starting with "{" is JSON Lines, as `datasets`' to_json writes it); read as a stream
  parquet  .parquet (magic "PAR1"), batch by batch
  csv/tsv  .csv/.tsv with a header row; every cell read as a string ("42" stays "42"); an empty
           unquoted cell is null, a quoted "" an empty string; quoted cells may span lines
  arrow    .arrow, Arrow IPC in the file (magic "ARROW1") or the stream format, batch by batch
Compression is orthogonal: a .gz / .zst suffix on a text container (.jsonl.gz, .json.zst, .csv.gz,
...), or the gzip / zstd magic, is decompressed as a stream.

Rows are dicts of plain Python values. In tabular containers (parquet, csv, tsv, arrow) a null cell
and a null field of a nested struct mean "absent": the key is dropped, recursively, so a Parquet
row whose message has a null `reasoning_content` reads like the JSONL row without that key.

Where: `PATH:LINE` for a JSONL line (1-based, blank lines counted), `PATH:row N` for the Nth row of
any other file (1-based; CSV/TSV: the Nth data row, the header not counted; a save_to_disk directory
names its .arrow file). A row that cannot be used (a bad JSONL line, a JSON array element that is not
an object, a ragged CSV row) is yielded as a DataError naming it; a file that cannot be read (a cut
Parquet footer, a file that is not Arrow, a JSON array cut short, invalid UTF-8 in a JSON array or
CSV, a broken compressed stream) raises DataError naming the file, for a bad footer or magic at
open, before any row.
"""
from __future__ import annotations

import collections
import glob
import io
import json
import os
import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from r1jax.data.errors import DataError

INPUT_FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "tsv", "arrow")
HF_DISK = "hf_disk"  # the container `detect` names a save_to_disk directory (Arrow underneath)
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
              ".csv": "csv", ".tsv": "tsv", ".arrow": "arrow"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))
BATCH_ROWS = 256          # rows of a record batch turned into Python objects at a time
_TEXT_CHUNK = 1 << 20     # characters of a JSON array read at a time
_SKIP_CHUNK = 1 << 20     # bytes read at a time while skipping the rest of an over-long line
_CSV_BLOCK = 1 << 20      # bytes of CSV parsed at a time
_NON_SPACE = re.compile(r"\S")
_BLANK = object()


class LineTooLong(DataError):
    """A JSONL line longer than the reader's byte bound, skipped unread (`max_line_bytes`)."""

    def __init__(self, where: str, nbytes: int, limit: int):
        super().__init__(f"{where}: line of {nbytes} bytes > {limit}, skipped unread")
        self.where, self.nbytes, self.limit = where, nbytes, limit


def _one_line(err: Exception) -> str:
    """An exception's message on one line (pyarrow's can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


# ---- inputs -> files -----------------------------------------------------------------------------

def _dir_kind(path: str) -> str | None:
    """HF_DISK for a save_to_disk directory, "dataset_dict" for a DatasetDict one, else None."""
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return "dataset_dict"
    if os.path.isfile(os.path.join(path, "state.json")):
        return HF_DISK
    return None


def _dataset_dict_error(path: str) -> DataError:
    try:
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as f:
            splits = [str(s) for s in json.load(f)["splits"]]
    except (OSError, ValueError, KeyError, TypeError):
        splits = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    return DataError(f"{path}: a DatasetDict folder with splits {', '.join(splits) or '(none)'}; pass "
                     f"one split's folder, e.g. {os.path.join(path, splits[0] if splits else '<split>')}")


def _split_name(path: str) -> tuple[str | None, str | None]:
    """(container, compression) named by a file's suffixes, e.g. "a.jsonl.gz" -> ("jsonl", "gzip");
    None for what the name does not say."""
    name = os.path.basename(path).lower()
    compression = None
    for suffix, codec in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = codec, name[:-len(suffix)]
            break
    return next((c for suffix, c in EXTENSIONS.items() if name.endswith(suffix)), None), compression


def _expand_dir(path: str) -> list[str]:
    kind = _dir_kind(path)
    if kind == "dataset_dict":
        raise _dataset_dict_error(path)
    if kind == HF_DISK:
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        for d in sorted(dirs):
            sub = os.path.join(root, d)
            if d.startswith("."):
                dirs.remove(d)
            elif _dir_kind(sub) == "dataset_dict":
                raise _dataset_dict_error(sub)
            elif _dir_kind(sub) == HF_DISK:
                found.append(sub)
                dirs.remove(d)
        found += [os.path.join(root, f) for f in files
                  if not f.startswith(".") and _split_name(f)[0] is not None]
    if not found:
        raise DataError(f"{path}: a directory with no file of a known extension "
                        f"({', '.join(EXTENSIONS)}, optionally {', '.join(COMPRESSIONS)}) and no "
                        "save_to_disk folder")
    return sorted(found)


def expand(path: str) -> list[str]:
    """The files (and save_to_disk directories) an input names, in reading order: a file itself; a
    directory's files with a known extension, recursively, sorted; a glob's sorted matches, each
    directory among them expanded. Raises DataError naming `path` when it names nothing readable."""
    if os.path.isdir(path):
        return _expand_dir(path)
    if os.path.isfile(path):
        return [path]
    if glob.has_magic(path):
        units = []
        for match in sorted(glob.glob(path, recursive=True)):
            units += _expand_dir(match) if os.path.isdir(match) else [match]
        if units:
            return units
        raise DataError(f"{path}: matches no file")
    raise DataError(f"{path}: no such file or directory")


def hf_disk_files(path: str) -> list[str]:
    """The .arrow files of a save_to_disk directory, in the order its state.json lists them."""
    state = os.path.join(path, "state.json")
    try:
        with open(state, encoding="utf-8") as f:
            names = [entry["filename"] for entry in json.load(f)["_data_files"]]
    except OSError as e:
        raise DataError(f"{state}: cannot open: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{state}: not a save_to_disk state file (no _data_files list of "
                        f"filenames): {_one_line(e)}") from None
    return [os.path.join(path, n) for n in names]


def files_of(unit: str) -> list[str]:
    """The files reading `unit` (an item of `expand`) opens: state.json and the .arrow files of a
    save_to_disk directory, else the file itself."""
    if os.path.isdir(unit):
        return [os.path.join(unit, "state.json"), *hf_disk_files(unit)]
    return [unit]


# ---- detection -----------------------------------------------------------------------------------

def _open_binary(path: str, compression: str | None):
    """A buffered binary reader of the file, decompressed as a stream when `compression` is set."""
    try:
        if compression is None:
            return open(path, "rb")
        return io.BufferedReader(pa.input_stream(path, compression=compression))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot open: {getattr(e, 'strerror', None) or _one_line(e)}") from None


def _compression(path: str) -> str | None:
    """The compression of a file: by its suffix, else by the gzip / zstd magic; None when plain."""
    by_name = _split_name(path)[1]
    if by_name:
        return by_name
    with _open_binary(path, None) as f:
        head = f.read(4)
    return next((codec for magic, codec in _COMPRESSION_MAGIC if head.startswith(magic)), None)


def _head(path: str, compression: str | None, n: int = 4096) -> bytes:
    try:
        with _open_binary(path, compression) as f:
            return f.read(n)
    except OSError as e:  # a broken compressed stream
        raise DataError(f"{path}: cannot read its {compression} stream: {_one_line(e)}") from None


def _first_char(head: bytes) -> bytes:
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]


def detect(path: str) -> str:
    """The container of a file (one of INPUT_FORMATS but "auto"), or HF_DISK for a save_to_disk
    directory: by extension, else by content (Parquet magic "PAR1", Arrow file magic "ARROW1", Arrow
    stream start 0xFFFFFFFF, first non-space byte "[" a JSON array, "{" JSON Lines). A .json file
    starting with "{" is JSON Lines. Raises DataError naming the file when nothing fits."""
    if os.path.isdir(path):
        kind = _dir_kind(path)
        if kind == HF_DISK:
            return HF_DISK
        raise _dataset_dict_error(path) if kind else DataError(f"{path}: a directory, not a file")
    by_name, _ = _split_name(path)
    if by_name is not None and by_name != "json":
        return by_name
    head = _head(path, _compression(path))
    first = _first_char(head)
    if by_name == "json":
        return "jsonl" if first == b"{" else "json"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    if first in (b"[", b"{"):
        return "json" if first == b"[" else "jsonl"
    raise DataError(f"{path}: cannot tell its container from its name or first bytes; pass "
                    f"--input_format (one of {', '.join(INPUT_FORMATS[1:])})")


# ---- JSON Lines ----------------------------------------------------------------------------------

def bounded_lines(f, max_bytes: int | None) -> Iterator[tuple[int, bytes | int]]:
    """(line number, line) for each line of a binary file, counting from 1.

    The line is its bytes, with the trailing b"\n". A line of more than `max_bytes` bytes (without
    its b"\n") is read past in chunks of `_SKIP_CHUNK` and given as its length in bytes instead, or
    as b"" when all of it is ASCII whitespace; the next line is read from its start. Memory held is
    at most max_bytes + 1 bytes per line whatever its length. None reads every line whole.
    """
    lineno = 0
    while raw := f.readline(-1 if max_bytes is None else max_bytes + 1):
        lineno += 1
        if max_bytes is None or len(raw) <= max_bytes or raw.endswith(b"\n"):
            yield lineno, raw
            del raw  # not held while the next line is read
            continue
        nbytes, blank = len(raw), raw.isspace()
        del raw
        while chunk := f.readline(_SKIP_CHUNK):
            if chunk.endswith(b"\n"):
                nbytes, blank = nbytes + len(chunk) - 1, blank and chunk.isspace()
                break
            nbytes, blank = nbytes + len(chunk), blank and chunk.isspace()
        yield lineno, b"" if blank else nbytes


def _json_lines(path: str, max_line_bytes: int | None = None, compression: str | None = None
                ) -> Iterator[tuple[str, int, dict | list | str | int | float | DataError | None]]:
    """(where "PATH:LINE", line number, decoded JSON value or the DataError of a bad line) for each
    non-blank line; a line over `max_line_bytes` gives a LineTooLong without being decoded. A file
    that cannot be opened (or whose compressed stream breaks) raises DataError.

    At most two copies of a line are held at once (its bytes and text while decoding, its text and
    value while parsing), and only the value while it is yielded or the next line is read."""
    with _open_binary(path, compression) as f:
        lines = bounded_lines(f, max_line_bytes)
        while True:
            try:
                lineno, raw = next(lines, (0, None))
            except OSError as e:
                raise DataError(f"{path}: cannot read its {compression or 'file'} stream: "
                                f"{_one_line(e)}") from None
            if raw is None:
                return
            where = f"{path}:{lineno}"
            value = _BLANK
            if isinstance(raw, int):
                value = LineTooLong(where, raw, max_line_bytes)
            else:
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # BOM tolerated
                    raw = None
                    if line and not line.isspace():  # as line.strip(), without its copy
                        value = json.loads(line)
                except UnicodeDecodeError:
                    value = DataError(f"{where}: not UTF-8")
                except json.JSONDecodeError as e:
                    value = DataError(f"{where}: invalid JSON: {e.msg}")
            raw = line = None  # nothing of this line is held while the next one is read
            if value is not _BLANK:
                yield where, lineno, value
            value = None


def _object_or_error(where: str, value):
    if isinstance(value, (dict, DataError)):
        return value
    return DataError(f"{where}: a row must be a JSON object, got {type(value).__name__}")


def json_objects(path: str) -> Iterator[tuple[str, int, dict]]:
    """(where "PATH:LINE", line number, row) for each non-blank line of a JSONL file, in order.

    A file that cannot be opened, a line that is not UTF-8 JSON, or a row that is not an object
    raises DataError naming PATH:LINE.
    """
    for where, lineno, value in _json_lines(path):
        row = _object_or_error(where, value)
        if isinstance(row, DataError):
            raise row
        yield where, lineno, row


# ---- a JSON array, streamed ----------------------------------------------------------------------

class _Chars:
    """The characters of a text stream, read in chunks and consumed from the front: only the
    unconsumed rest of the last chunks is held."""

    def __init__(self, text, path: str):
        self.text, self.path = text, path
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _more(self, size: int) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.text.read(size)
        except UnicodeDecodeError:
            raise DataError(f"{self.path}: not UTF-8") from None
        except OSError as e:  # a broken compressed stream
            raise DataError(f"{self.path}: cannot read its stream: {_one_line(e)}") from None
        if not chunk:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character, not consumed ("" at the end)."""
        while True:
            m = _NON_SPACE.search(self.buf, self.pos)
            if m:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self._more(_TEXT_CHUNK):
                return ""

    def take(self) -> None:
        self.pos += 1

    def value(self, where: str):
        """The JSON value at the cursor, consumed; reads on while it is incomplete (doubling the
        read, so a long value costs linear time)."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number may go on in the next chunk
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof:
                    cut = e.pos >= len(self.buf) - 1 or "Unterminated" in e.msg
                    raise DataError(f"{where}: the JSON array is cut short" if cut else
                                    f"{where}: invalid JSON: {e.msg}") from None
            self._more(max(_TEXT_CHUNK, len(self.buf) - self.pos))


def _json_array_rows(path: str, compression: str | None) -> Iterator[tuple[str, dict | DataError]]:
    with _open_binary(path, compression) as raw:
        chars = _Chars(io.TextIOWrapper(raw, encoding="utf-8-sig"), path)
        first = chars.peek()
        if first != "[":
            raise DataError(f"{path}: not a JSON array (it starts with {first or 'nothing'!r}); "
                            "for one object per line pass --input_format jsonl")
        chars.take()
        n, c = 0, chars.peek()
        if c == "]":
            chars.take()
        while c != "]":
            n += 1
            where = f"{path}:row {n}"
            if not c:
                raise DataError(f"{where}: the JSON array is cut short")
            yield where, _object_or_error(where, chars.value(where))
            c = chars.peek()
            if c == ",":
                chars.take()
                c = chars.peek()
            elif c == "]":
                chars.take()
            elif not c:
                raise DataError(f"{path}: the JSON array is cut short after row {n}")
            else:
                raise DataError(f"{where}: invalid JSON: expected ',' or ']' after the row, found {c!r}")
        if chars.peek():
            raise DataError(f"{path}: data after the JSON array's closing ']'")


# ---- tabular containers --------------------------------------------------------------------------

def drop_nulls(value):
    """A value with every None dict entry removed, recursively (through dicts and lists; a None
    list element stays: it is an element, not an absent field)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _batch_rows(path: str, batches) -> Iterator[tuple[str, dict]]:
    """("PATH:row N", row) for the rows of record batches, BATCH_ROWS of them made Python at a time.
    An error of the reader raises DataError naming the file and the last row read."""
    n = 0
    batches = iter(batches)
    while True:
        try:
            batch = next(batches, None)
        except DataError:
            raise
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: unreadable after row {n}: {_one_line(e)}") from None
        if batch is None:
            return
        for start in range(0, batch.num_rows, BATCH_ROWS):
            for row in batch.slice(start, BATCH_ROWS).to_pylist():
                n += 1
                yield f"{path}:row {n}", drop_nulls(row)
        del batch


def _parquet_file(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file: {_one_line(e)}") from None


def _parquet_batches(pf: pq.ParquetFile):
    """Record batches of a Parquet file, one row group at a time: `iter_batches` over all row
    groups at once reads every row group's pages on its first batch (pyarrow 26), the whole file."""
    for group in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group])


def _parquet_rows(path: str) -> Iterator[tuple[str, dict]]:
    pf = _parquet_file(path)
    try:
        yield from _batch_rows(path, _parquet_batches(pf))
    finally:
        pf.close()


def _arrow_reader(path: str, compression: str | None):
    """(reader, its record batches) of an Arrow IPC file or stream; DataError naming the file at open."""
    if compression is None:
        try:
            source = pa.OSFile(path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: cannot open: {_one_line(e)}") from None
        try:
            reader = pa.ipc.open_file(source)
            return source, reader, (reader.get_batch(i) for i in range(reader.num_record_batches))
        except (OSError, pa.ArrowException):
            source.seek(0)
    else:
        source = pa.input_stream(path, compression=compression)
    try:
        reader = pa.ipc.open_stream(source)
    except (OSError, pa.ArrowException) as e:
        source.close()
        raise DataError(f"{path}: not an Arrow IPC file or stream: {_one_line(e)}") from None
    return source, reader, iter(reader)


def _arrow_rows(path: str, compression: str | None) -> Iterator[tuple[str, dict]]:
    source, _, batches = _arrow_reader(path, compression)
    with source:
        yield from _batch_rows(path, batches)


def _csv_options(delimiter: str, column_names=None, on_invalid=None):
    read = pa_csv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK)
    parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                invalid_row_handler=on_invalid or (lambda row: "skip"))
    convert = pa_csv.ConvertOptions(column_types={n: pa.string() for n in column_names or ()},
                                    null_values=[""], strings_can_be_null=True,
                                    quoted_strings_can_be_null=False)
    return dict(read_options=read, parse_options=parse, convert_options=convert)


def _csv_reader(path: str, delimiter: str, compression: str | None, column_names=None, on_invalid=None):
    try:
        return pa_csv.open_csv(pa.input_stream(path, compression=compression),
                               **_csv_options(delimiter, column_names, on_invalid))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file: "
                        f"{_one_line(e)}") from None


def _csv_columns(path: str, delimiter: str, compression: str | None) -> list[str]:
    """The header's column names (read with the first block only)."""
    reader = _csv_reader(path, delimiter, compression)
    try:
        return reader.schema.names
    finally:
        reader.close()


def _csv_rows(path: str, delimiter: str, compression: str | None) -> Iterator[tuple[str, dict | DataError]]:
    """Rows of a CSV/TSV file, every column a string; a row with another number of fields than the
    header is yielded as a DataError in its place (pyarrow numbers rows with the header as row 1)."""
    bad: collections.deque[tuple[int | None, str]] = collections.deque()

    def on_invalid(row) -> str:
        bad.append((None if row.number is None else row.number - 1,
                    f"{row.actual_columns} fields where the header has {row.expected_columns}"))
        return "skip"

    names = _csv_columns(path, delimiter, compression)
    reader = _csv_reader(path, delimiter, compression, names, on_invalid)
    n = 0

    def ragged(upto: int | None):
        nonlocal n
        while bad and (upto is None or bad[0][0] is None or bad[0][0] <= upto):
            number, detail = bad.popleft()
            n = number or n + 1
            yield f"{path}:row {n}", DataError(f"{path}:row {n}: {detail}")

    try:
        for _, row in _batch_rows(path, reader):
            yield from ragged(n + 1)
            n += 1
            yield f"{path}:row {n}", row
        yield from ragged(None)
    finally:
        reader.close()


# ---- any input -----------------------------------------------------------------------------------

def read_rows(path: str, input_format: str = "auto", max_line_bytes: int | None = None
              ) -> Iterator[tuple[str, dict | DataError]]:
    """(where, row or the DataError of a row that cannot be used) for each row of one file or
    save_to_disk directory (an item of `expand`), in order; see the module docstring.

    `input_format` forces the container (a save_to_disk directory is always read as one);
    `max_line_bytes` bounds JSONL lines: a longer one is yielded as a LineTooLong, unread.
    Raises DataError naming the file when it cannot be read."""
    if input_format not in INPUT_FORMATS:
        raise DataError(f"--input_format {input_format!r}: choose one of {INPUT_FORMATS}")
    container = detect(path) if input_format == "auto" or os.path.isdir(path) else input_format
    if container == HF_DISK:
        for arrow in hf_disk_files(path):
            yield from _arrow_rows(arrow, None)
        return
    compression = _compression(path)
    if container == "jsonl":
        for where, _, value in _json_lines(path, max_line_bytes, compression):
            yield where, _object_or_error(where, value)
    elif container == "json":
        yield from _json_array_rows(path, compression)
    elif container in ("csv", "tsv"):
        yield from _csv_rows(path, "," if container == "csv" else "\t", compression)
    elif container == "arrow":
        yield from _arrow_rows(path, compression)
    else:
        if compression:
            raise DataError(f"{path}: a {compression}-compressed Parquet file cannot be read as a "
                            "stream; decompress it first (Parquet compresses its pages itself)")
        yield from _parquet_rows(path)


def columns_of(path: str, input_format: str = "auto") -> list[str] | None:
    """The column names of a tabular file or save_to_disk directory (its schema, a CSV's header),
    None for a JSON container (rows may differ in their keys). Reads the footer, schema or first
    block only."""
    container = detect(path) if input_format == "auto" or os.path.isdir(path) else input_format
    if container in ("json", "jsonl"):
        return None
    compression = None if container == HF_DISK else _compression(path)
    if container in ("csv", "tsv"):
        return _csv_columns(path, "," if container == "csv" else "\t", compression)
    if container == "parquet":
        pf = _parquet_file(path)
        try:
            return list(pf.schema_arrow.names)
        finally:
            pf.close()
    arrow = hf_disk_files(path)[0] if container == HF_DISK else path
    source, reader, _ = _arrow_reader(arrow, None if container == HF_DISK else compression)
    with source:
        return list(reader.schema.names)


def describe(unit: str, input_format: str = "auto") -> dict:
    """{"path", "bytes" (of the files read), "container"} of an item of `expand`, for reports."""
    container = detect(unit) if input_format == "auto" or os.path.isdir(unit) else input_format
    return {"path": unit, "bytes": sum(os.path.getsize(f) for f in files_of(unit)), "container": container}
