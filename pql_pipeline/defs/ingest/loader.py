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

import pyarrow as pa

RAW_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
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
    paths = sorted(Path(p) for p in glob.glob(str(root / expr)) if Path(p).is_file())
    return [SourceFile(p, p.relative_to(root).as_posix(), p.stat().st_size) for p in paths]


def _open(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _decode_lines(lines: list[bytes]) -> tuple[list[str], list[bool]]:
    """Decode lines; only if the whole block is not UTF-8 go line by line."""
    block = b"\n".join(lines)
    try:
        text = block.decode("utf-8")
        return text.split("\n"), [True] * len(lines)
    except UnicodeDecodeError:
        pass
    out, ok = [], []
    for line in lines:
        try:
            out.append(line.decode("utf-8"))
            ok.append(True)
        except UnicodeDecodeError:
            out.append(line.decode("utf-8", errors="backslashreplace"))
            ok.append(False)
    return out, ok


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
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1 :]
            lines = data[:cut].split(b"\n")
            yield _batch(file, lines, line_no)
            line_no += len(lines)
    if carry:
        # last line without a trailing newline
        yield _batch(file, [carry], line_no)


def _batch(file: SourceFile, lines: list[bytes], first: int) -> pa.RecordBatch:
    # Windows line endings: strip one trailing \r (it is not part of the JSON value)
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    text, ok = _decode_lines(lines)
    n = len(lines)
    return pa.RecordBatch.from_arrays(
        [
            pa.array([file.relative] * n, pa.string()),
            pa.array(range(first + 1, first + n + 1), pa.int64()),
            pa.array(text, pa.string()),
            pa.array([len(x) for x in lines], pa.int64()),
            pa.array(ok, pa.bool_()),
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
