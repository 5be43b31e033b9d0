"""Reading a partition's event files verbatim: one row per physical line.

Nothing is parsed or dropped here. A line that is not valid UTF-8 is kept with its
bad bytes written as ``\\xNN`` escapes and ``utf8_valid = false``; validation
quarantines it. Empty lines are kept too (they are quarantined as malformed), so
``raw rows = lines in the files`` always holds.

A file that cannot be read to its end (a truncated or corrupt ``.gz``, a read error) keeps
every whole line read before the fault, and its unreadable rest becomes one more row with
``read_error`` saying which file, from which byte and why (its ``raw_line`` holds the
partial line read before the fault, if any); validation quarantines that row, so the
partition reconciles and the files beside it load as usual.
"""

from __future__ import annotations

import glob
import zlib
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
        ("read_error", pa.string()),
    ]
)

CHUNK_BYTES = 64 * 1024 * 1024
KEEP_PARTIAL_BYTES = 64 * 1024     # of the bytes read after a file's last whole line before a fault


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


READ_BYTES = 64 * 1024      # compressed bytes inflated at a time (a corrupt piece loses at most this)


class UnreadableRest(Exception):
    """The file could not be read past ``offset`` bytes of its (uncompressed) content."""

    def __init__(self, offset: int, reason: str):
        super().__init__(reason)
        self.offset, self.reason = offset, reason


def _chunks(path: Path, size: int):
    """The file's content in blocks of about ``size`` bytes; a ``.gz`` file inflated as a
    stream (every member of a multi-member file), so that a fault keeps what came before
    it. A fault raises UnreadableRest after the last good block."""
    done = 0
    try:
        with open(path, "rb") as fh:
            if path.suffix != ".gz":
                while block := fh.read(size):
                    done += len(block)
                    yield block
                return
            inflate, fed, members, pending, fault = zlib.decompressobj(wbits=47), False, 0, b"", None
            while fault is None and (raw := fh.read(READ_BYTES)):
                while raw:
                    if not fed and members:
                        raw = raw.lstrip(b"\0")   # zero padding after a member, as gzip allows
                        if not raw:
                            break
                    before = inflate.copy()
                    try:
                        pending += inflate.decompress(raw)
                    except zlib.error as e:
                        # keep what the piece holds before the fault: inflate it again in small slices
                        pending += _salvage(before, raw)
                        fault = f"corrupt compressed data ({e})"
                        break
                    fed, raw = True, b""
                    if inflate.eof:            # a member ended: the next one starts in unused_data
                        raw, inflate, fed, members = inflate.unused_data, zlib.decompressobj(wbits=47), False, members + 1
                if len(pending) >= size:
                    done += len(pending)
                    yield pending
                    pending = b""
            if fault is None and fed and not inflate.eof:
                pending += inflate.flush()
                fault = ("compressed file ended before the end-of-stream marker was reached (truncated: the rest of "
                         "the file is missing)")
            if fault is None and not members and fh.tell() > 0:
                fault = "no gzip data in the file (not a gzip stream)"
            if pending:
                done += len(pending)
                yield pending
            if fault is not None:
                raise UnreadableRest(done, fault)
    except OSError as e:
        raise UnreadableRest(done, f"{type(e).__name__}: {e.strerror or e}") from None


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


def _salvage(inflate, raw: bytes, step: int = 512) -> bytes:
    """What ``inflate`` yields from ``raw`` before the corrupt byte, ``step`` bytes at a time."""
    out = b""
    for i in range(0, len(raw), step):
        try:
            out += inflate.decompress(raw[i:i + step])
        except zlib.error:
            break
    return out


def read_jsonl(file: SourceFile, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pa.RecordBatch]:
    """Yield record batches of RAW_SCHEMA for every physical line of a JSON-lines file, and
    one row for an unreadable rest (see the module's docstring)."""
    line_no = 0
    carry = b""
    offset = 0           # bytes of the content turned into rows so far
    try:
        for data in _chunks(file.path, chunk_bytes):
            data = carry + data
            if line_no == 0 and offset == 0 and not carry and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark is not part of the first line
                offset = 3
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1 :]
            batch = _batch(file, data[:cut], line_no)
            line_no += batch.num_rows
            offset += cut + 1
            yield batch
    except UnreadableRest as e:
        where = f"from byte {offset:,} of its content" + (" (inflated)" if file.path.suffix == ".gz" else "")
        kept = carry[:KEEP_PARTIAL_BYTES]
        note = (f"file {file.relative} unreadable {where}: {e.reason}; its {line_no:,} whole line(s) before that "
                "point were loaded" + (f", and the {len(carry):,} byte(s) read after them (no whole line) are kept "
                                       "here" + (f", the first {len(kept):,}" if len(kept) < len(carry) else "")
                                       if carry else ""))
        yield _batch(file, kept, line_no, read_error=note, nbytes=len(carry))
        return
    if carry:
        # last line without a trailing newline
        yield _batch(file, carry, line_no)


def _split_fast(block: bytes) -> tuple[pa.StringArray, list[int], list[int]] | None:
    """``_decode_block`` without a Python string per line: the newlines are cut out of the
    bytes and each line's start shifted by the newlines before it. Only the lines holding a
    byte above 0x7F are decoded in Python, to find the ones that are not UTF-8 (rendered with
    ``\\xNN`` escapes). None for a block with a ``\\r`` (the careful path strips one
    before each newline)."""
    if b"\r" in block:
        return None
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    n = len(ends) + 1
    if len(block) - len(ends) >= 2**31:
        return None
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:-1] = ends - np.arange(len(ends))   # line i+1 starts after i+1 newlines were cut
    offsets[-1] = len(block) - len(ends)
    raw = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                 pa.py_buffer(block.replace(b"\n", b""))])
    bad: list[int] = []
    bad_lines: list[bytes] = []
    for i in np.unique(np.searchsorted(ends, np.flatnonzero(data >= 0x80))).tolist():
        line = block[(ends[i - 1] + 1 if i else 0):(ends[i] if i < len(ends) else len(block))]
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            bad_lines.append(line)
    if bad:
        mask = np.zeros(n, dtype=bool)
        mask[bad] = True
        shown = pa.array([b.decode("utf-8", errors="backslashreplace").encode() for b in bad_lines], pa.binary())
        raw = pc.replace_with_mask(raw, pa.array(mask), shown)
    return raw.cast(pa.string()), bad, [len(b) for b in bad_lines]


def _batch(file: SourceFile, block: bytes, first: int, read_error: str | None = None,
           nbytes: int | None = None) -> pa.RecordBatch:
    """The rows of ``block``'s lines; with ``read_error``, ``block`` is the part of a line read
    before a fault (one row, ``nbytes`` long as read, whatever of it is kept)."""
    fast = _split_fast(block)
    if fast is not None:
        text, bad, bad_bytes = fast
    else:
        lines, bad, bad_bytes = _decode_block(block)
        # Windows line endings: one trailing \r is not part of the JSON value
        if b"\r" in block:
            lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
        text = pa.array(lines, pa.string())
    n = len(text)
    # byte length: UTF-8 length of the text, except for the re-rendered non-UTF-8 lines
    given, nbytes = nbytes, pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = np.ones(n, dtype=bool)
    if bad:
        valid[bad] = False
        nbytes[bad] = bad_bytes
    if given is not None:
        nbytes[:] = given
    return pa.RecordBatch.from_arrays(
        [
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([file.relative])),
            pa.array(np.arange(first + 1, first + n + 1, dtype=np.int64)),
            text,
            pa.array(nbytes),
            pa.array(valid),
            pa.array([read_error] * n, pa.string()) if read_error is not None else pa.nulls(n, pa.string()),
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
