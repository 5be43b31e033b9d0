"""Loading one partition's files into raw_events (delete-then-insert)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pql_pipeline.defs.ingest.loader import RAW_SCHEMA, SourceFile, partition_files, read_jsonl
from pql_pipeline.lib.warehouse import ensure_tables


RAW_COLUMNS = "partition_date, source_file, line_no, raw_line, line_bytes, utf8_valid, read_error"


def ensure_raw_events(conn: duckdb.DuckDBPyConnection, contract) -> None:
    """raw_events as its contract has it; a table an earlier version created gets the
    ``read_error`` column (NULL for the lines it holds)."""
    ensure_tables(conn, contract, "raw_events")
    conn.execute("ALTER TABLE raw_events ADD COLUMN IF NOT EXISTS read_error VARCHAR")


@dataclass
class RawLoad:
    partition: str
    files: list[SourceFile] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    invalid_utf8: int = 0
    unreadable: list[str] = field(default_factory=list)     # read_error of each file not read to its end


def load_partition(conn: duckdb.DuckDBPyConnection, root: Path, pattern: str, fmt: str, partition: str) -> RawLoad:
    """Replace raw_events for one partition with the lines of its files."""
    return load_partitions(conn, root, pattern, fmt, [partition])[0]


def load_partitions(conn: duckdb.DuckDBPyConnection, root: Path, pattern: str, fmt: str, partitions: list[str],
                    commit_rows: int = 2_000_000) -> list[RawLoad]:
    """Replace raw_events for several partitions.

    Each partition is deleted and re-inserted inside a transaction; consecutive partitions
    share a transaction until about ``commit_rows`` lines were written (fewer commits and
    checkpoints on a range backfill, bounded transaction size). A failure rolls back the
    open transaction, so no partition is ever left half-loaded.
    """
    results = []
    pending = 0
    conn.execute("BEGIN TRANSACTION")
    try:
        for partition in partitions:
            files = partition_files(root, pattern, partition)
            r = RawLoad(partition=partition, files=files, bytes=sum(f.size for f in files))
            pdate = f"DATE '{partition}'"
            conn.execute(f"DELETE FROM raw_events WHERE partition_date = {pdate}")
            for f in files:
                if fmt == "parquet":
                    n, bad = _insert_parquet(conn, f, pdate)
                    r.rows += n
                    r.invalid_utf8 += bad
                else:
                    for batch in read_jsonl(f):
                        _insert_batch(conn, batch, pdate)
                        r.rows += batch.num_rows
                        r.invalid_utf8 += batch.num_rows - (pc.sum(batch.column("utf8_valid")).as_py() or 0)
                        errors = batch.column("read_error")
                        if errors.null_count < batch.num_rows:     # only the row of a file's unreadable rest
                            r.unreadable += pc.drop_null(errors).to_pylist()
            results.append(r)
            pending += r.rows
            if pending >= commit_rows:
                conn.execute("COMMIT")
                conn.execute("BEGIN TRANSACTION")
                pending = 0
    except Exception:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return results


def _insert_batch(conn: duckdb.DuckDBPyConnection, batch: pa.RecordBatch, pdate: str) -> None:
    tbl = pa.Table.from_batches([batch], schema=RAW_SCHEMA)  # noqa: F841 (read by DuckDB's replacement scan)
    conn.execute(f"INSERT INTO raw_events ({RAW_COLUMNS}) "
                 f"SELECT {pdate}, source_file, line_no, raw_line, line_bytes, utf8_valid, read_error FROM tbl")


def _insert_parquet(conn: duckdb.DuckDBPyConnection, f: SourceFile, pdate: str) -> tuple[int, int]:
    """Each Parquet row becomes one JSON object line (nested columns become nested JSON)."""
    path = str(f.path).replace("'", "''")
    rel = f.relative.replace("'", "''")
    cols = [r[0] for r in conn.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]
    struct = "{" + ", ".join("'" + c.replace("'", "''") + "': \"" + c.replace('"', '""') + "\"" for c in cols) + "}"
    n = conn.execute(f"""
        INSERT INTO raw_events ({RAW_COLUMNS})
        SELECT {pdate}, '{rel}', file_row_number + 1, line, strlen(line), TRUE, NULL
        FROM (SELECT file_row_number, CAST(to_json({struct}) AS VARCHAR) AS line
              FROM read_parquet('{path}', file_row_number = true))
    """).fetchall()[0][0]
    return n, 0
