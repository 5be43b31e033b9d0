"""Loading partitions' files into raw_events (delete-then-insert), each line judged and parsed once.

A line's row holds its file, line number, size and what parsing it gave: the typed
envelope and JSON objects of a line that passes the inbound contract's row rules, or the
verbatim text, rule ids and reasons of a line that breaks one. The text of a good line is
not copied: the event files are the raw layer, and keeping every line twice would make the
warehouse grow by the size of the files (about 440 bytes a line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pql_pipeline.defs.ingest.loader import RAW_SCHEMA, SourceFile, partition_files, read_jsonl
from pql_pipeline.defs.ingest.validation import compile_row_rules, parse_sql
from pql_pipeline.lib.contracts import Contract
from pql_pipeline.lib.engine import sql_ident, sql_literal
from pql_pipeline.lib.warehouse import describe, ensure_tables, table_exists

# the loader's batches with their partition's day: what parse_sql reads
LINES_SCHEMA = pa.schema([("partition_date", pa.date32()), ("source_file", pa.string()),
                          *[RAW_SCHEMA.field(i) for i in range(1, len(RAW_SCHEMA))]])


def ensure_raw_events(conn: duckdb.DuckDBPyConnection, contract: Contract, segment: Contract) -> None:
    """raw_events as its contract has it.

    A table an earlier version wrote (every line's text, nothing parsed) is converted in
    place: its lines are judged and parsed by ``segment``'s rules, as a load would, so no
    event file has to be read again.
    """
    if table_exists(conn, "raw_events") and "rule_ids" not in describe(conn, "raw_events"):
        conn.execute("ALTER TABLE raw_events RENAME TO raw_events__lines")
        ensure_tables(conn, contract, "raw_events")
        old = describe(conn, "raw_events__lines")
        error = "read_error" if "read_error" in old else "NULL::VARCHAR AS read_error"
        source = (f"(SELECT partition_date, source_file, line_no, raw_line, line_bytes, utf8_valid, {error} "
                  f"FROM raw_events__lines)")
        conn.execute(f"INSERT INTO raw_events BY NAME {parse_sql(compile_row_rules(segment), source)}")
        conn.execute("DROP TABLE raw_events__lines")
    ensure_tables(conn, contract, "raw_events")


@dataclass
class RawLoad:
    partition: str
    files: list[SourceFile] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    invalid_utf8: int = 0
    unreadable: list[str] = field(default_factory=list)     # read_error of each file not read to its end


def load_partition(conn: duckdb.DuckDBPyConnection, root: Path, pattern: str, fmt: str, partition: str,
                   segment: Contract) -> RawLoad:
    """Replace raw_events for one partition with the lines of its files."""
    return load_partitions(conn, root, pattern, fmt, [partition], segment)[0]


def load_partitions(conn: duckdb.DuckDBPyConnection, root: Path, pattern: str, fmt: str, partitions: list[str],
                    segment: Contract, commit_rows: int = 2_000_000, parse_rows: int = 500_000) -> list[RawLoad]:
    """Replace raw_events for several partitions, judging and parsing each line by ``segment``'s
    row rules as it is written.

    Each partition is deleted and re-inserted inside a transaction; consecutive partitions
    share a transaction until about ``commit_rows`` lines were written (fewer commits and
    checkpoints on a range backfill, bounded transaction size). A failure rolls back the
    open transaction, so no partition is ever left half-loaded. Lines are parsed by one
    statement per about ``parse_rows`` lines, whatever the number of files and days.
    """
    parse = _Parser(conn, compile_row_rules(segment), parse_rows)
    results = []
    pending = 0
    conn.execute("BEGIN TRANSACTION")
    try:
        # each day once: its lines may still be held for parsing when a repeat would delete them
        for partition in dict.fromkeys(partitions):
            files = partition_files(root, pattern, partition)
            r = RawLoad(partition=partition, files=files, bytes=sum(f.size for f in files))
            pdate = f"DATE '{partition}'"
            conn.execute(f"DELETE FROM raw_events WHERE partition_date = {pdate}")
            for f in files:
                if fmt == "parquet":
                    n, bad = _insert_parquet(conn, parse.compiled, f, pdate)
                    r.rows += n
                    r.invalid_utf8 += bad
                else:
                    for batch in read_jsonl(f):
                        parse.add(batch, partition)
                        r.rows += batch.num_rows
                        r.invalid_utf8 += batch.num_rows - (pc.sum(batch.column("utf8_valid")).as_py() or 0)
                        errors = batch.column("read_error")
                        if errors.null_count < batch.num_rows:     # only the row of a file's unreadable rest
                            r.unreadable += pc.drop_null(errors).to_pylist()
            results.append(r)
            pending += r.rows
            if pending >= commit_rows:
                parse.flush()
                conn.execute("COMMIT")
                conn.execute("BEGIN TRANSACTION")
                pending = 0
        parse.flush()
    except Exception:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return results


class _Parser:
    """Collects read batches and writes them to raw_events, judged and parsed, in one
    statement per about ``rows`` lines (planning the parse costs tens of milliseconds, too
    much to pay per small file)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, compiled, rows: int):
        self.conn, self.compiled, self.rows = conn, compiled, rows
        self.batches: list[pa.RecordBatch] = []
        self.held = 0

    def add(self, batch: pa.RecordBatch, partition: str) -> None:
        day = pa.array(np.full(batch.num_rows, np.datetime64(partition, "D")), pa.date32())
        self.batches.append(pa.RecordBatch.from_arrays(
            [day, pc.cast(batch.column("source_file"), pa.string()), *batch.columns[1:]],
            schema=LINES_SCHEMA))
        self.held += batch.num_rows
        if self.held >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.batches:
            return
        lines = pa.Table.from_batches(self.batches, schema=LINES_SCHEMA)  # noqa: F841 (DuckDB's replacement scan)
        self.batches, self.held = [], 0
        self.conn.execute(f"INSERT INTO raw_events BY NAME {parse_sql(self.compiled, 'lines')}")


def _insert_parquet(conn: duckdb.DuckDBPyConnection, compiled, f: SourceFile, pdate: str) -> tuple[int, int]:
    """Each Parquet row becomes one JSON object line (nested columns become nested JSON)."""
    path, rel = sql_literal(str(f.path)), sql_literal(f.relative)
    cols = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM read_parquet({path})").fetchall()]
    struct = "{" + ", ".join(f"{sql_literal(c)}: {sql_ident(c)}" for c in cols) + "}"
    source = f"""(SELECT {pdate} AS partition_date, {rel} AS source_file, file_row_number + 1 AS line_no,
                         line AS raw_line, strlen(line) AS line_bytes, TRUE AS utf8_valid, NULL::VARCHAR AS read_error
                  FROM (SELECT file_row_number, CAST(to_json({struct}) AS VARCHAR) AS line
                        FROM read_parquet({path}, file_row_number = true)))"""
    n = conn.execute(f"INSERT INTO raw_events BY NAME {parse_sql(compiled, source)}").fetchall()[0][0]
    return n, 0
