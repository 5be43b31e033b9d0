"""Reading a partition's event files verbatim: one row per physical line.

Nothing is parsed or dropped here. A line that is not valid UTF-8 is kept with its
bad bytes written as ``\\xNN`` escapes and ``utf8_valid = false``; validation
quarantines it. Empty lines are kept too (they are quarantined as malformed), so
``raw rows = lines in the files`` always holds.
"""

from __future__ import annotations

import glob
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RAW_SCHEMA = pa.schema(
    [
        ("source_file", pa.dictionary(pa.int32(), pa.string())),
        ("line_no", pa.int64()),
        ("raw_line", pa.string()),
        ("line_bytes", pa.int64()),
        ("utf8_valid", pa.bool_()),
    ]
)

CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    path: Path
    relative: str  # path relative to the source root: stable across machines
    size: int


def partition_files(root: Path, pattern: str, partition: str) -> list[SourceFile]:
    """The files of one daily partition, sorted by name (the order defines 'first wins')."""
    expr = pattern.replace("{date}", partition)
    # the root is a literal path (it may contain glob characters such as '['); the pattern is a glob
    paths = sorted(Path(p) for p in glob.glob(glob.escape(str(root)) + "/" + expr) if Path(p).is_file())
    return [SourceFile(p, p.relative_to(root).as_posix(), p.stat().st_size) for p in paths]


def _open(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _decode_block(data: bytes) -> tuple[list[str], list[int], list[int]]:
    """Split a block of whole lines; return (lines, indexes of non-UTF-8 lines, their byte lengths).

    Runs of valid lines are decoded and split in single C calls; only a line holding
    invalid bytes (rare) is handled on its own, rendered with ``\\xNN`` escapes.
    """
    out: list[str] = []
    bad: list[int] = []
    bad_bytes: list[int] = []
    view = memoryview(data)
    start = 0  # always the first byte of a line
    while True:
        try:
            out.extend(str(view[start:], "utf-8").split("\n"))
            return out, bad, bad_bytes
        except UnicodeDecodeError as e:
            err = start + e.start
            line_start = data.rfind(b"\n", start, err) + 1 or start
            line_end = data.find(b"\n", err)
            if line_end < 0:
                line_end = len(data)
            if line_start > start:
                out.extend(str(view[start:line_start - 1], "utf-8").split("\n"))
            raw = data[line_start:line_end]
            bad.append(len(out))
            bad_bytes.append(len(raw))
            out.append(raw.decode("utf-8", errors="backslashreplace"))
            if line_end >= len(data):
                return out, bad, bad_bytes
            start = line_end + 1


def read_jsonl(file: SourceFile, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pa.RecordBatch]:
    """Yield record batches of RAW_SCHEMA for every physical line of a JSON-lines file."""
    line_no = 0
    carry = b""
    with _open(file.path) as fh:
        while True:
            data = fh.read(chunk_bytes)
            if not data:
                break
            data = carry + data
            if line_no == 0 and not carry and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark is not part of the first line
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1 :]
            batch = _batch(file, data[:cut], line_no)
            line_no += batch.num_rows
            yield batch
    if carry:
        # last line without a trailing newline
        yield _batch(file, carry, line_no)


def _batch(file: SourceFile, block: bytes, first: int) -> pa.RecordBatch:
    lines, bad, bad_bytes = _decode_block(block)
    n = len(lines)
    # Windows line endings: one trailing \r is not part of the JSON value
    if b"\r" in block:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    text = pa.array(lines, pa.string())
    # byte length: UTF-8 length of the text, except for the re-rendered non-UTF-8 lines
    nbytes = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = np.ones(n, dtype=bool)
    if bad:
        valid[bad] = False
        nbytes[bad] = bad_bytes
    return pa.RecordBatch.from_arrays(
        [
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([file.relative])),
            pa.array(np.arange(first + 1, first + n + 1, dtype=np.int64)),
            text,
            pa.array(nbytes),
            pa.array(valid),
        ],
        schema=RAW_SCHEMA,
    )


def available_partitions(root: Path, pattern: str) -> list[str]:
    """Partition days that have at least one file under ``root`` matching ``pattern``."""
    import re

    if not root.is_dir():
        return []
    glob_expr = pattern.replace("{date}", "*")
    regex = re.escape(pattern).replace(re.escape("{date}"), r"(\d{4}-\d{2}-\d{2})")
    regex = regex.replace(r"\*", r"[^/]*").replace(r"\?", r"[^/]")
    rx = re.compile(regex + r"$")
    days = set()
    for p in root.glob(glob_expr):
        if p.is_file():
            m = rx.match(p.relative_to(root).as_posix())
            if m:
                days.add(m.group(1))
    return sorted(days)
