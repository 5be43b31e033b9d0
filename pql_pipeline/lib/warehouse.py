"""The DuckDB file warehouse: a dagster-duckdb resource and contract-driven DDL."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from pql_pipeline.lib.contracts import Contract
from pql_pipeline.lib.engine import sql_ident


class Warehouse(DuckDBResource):
    """DuckDBResource with the session settings every step needs.

    Sessions run in UTC, with a memory limit (DuckDB spills to disk above it) and a
    thread count. Opening is retried while another process holds the file's write lock;
    the ``duckdb_warehouse`` pool in dagster.yaml keeps that rare.
    """

    memory_limit: str = Field("2.75GB", description="DuckDB memory_limit; larger work spills to disk.")
    threads: int = Field(2, description="DuckDB worker threads.")
    lock_timeout_seconds: float = Field(120.0, description="How long to wait for another writer to finish.")

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        delay = 0.2
        while True:
            try:
                conn = duckdb.connect(self.database, config={"custom_user_agent": "pql-pipeline", **self.connection_config})
                break
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute(f"SET memory_limit = '{self.memory_limit}'")
            conn.execute(f"SET threads = {int(self.threads)}")
            conn.execute("SET preserve_insertion_order = false")
            yield conn
        finally:
            conn.close()


def dates_sql(keys) -> str:
    """SQL list of the dates of partition keys (``YYYY-MM-DD``; each parsed, so a key is never
    SQL), for ``partition_date IN (...)``; NULL for none: matches nothing."""
    return ", ".join(f"DATE '{dt.date.fromisoformat(str(k)).isoformat()}'" for k in keys) or "NULL"


def release_memory(conn: duckdb.DuckDBPyConnection) -> None:
    """Hand the memory DuckDB keeps cached after a large scan back to the operating system
    (a short drop of memory_limit evicts its unpinned buffers), so that pandas work that
    follows in the same process does not stack on top of it."""
    limit = conn.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    conn.execute("SET memory_limit = '64MB'")
    conn.execute(f"SET memory_limit = '{limit}'")


def create_table_sql(contract: Contract, object_name: str) -> str:
    obj = contract.object(object_name)
    cols = []
    for p in obj.properties or []:
        if not p.physicalType:
            raise ValueError(f"{contract.path.name}: {object_name}.{p.name} needs a physicalType for DDL")
        cols.append(f'"{p.name}" {p.physicalType}')
    name = obj.physicalName or obj.name
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(cols)})"


def ensure_tables(conn: duckdb.DuckDBPyConnection, contract: Contract, *object_names: str) -> None:
    for name in object_names:
        conn.execute(create_table_sql(contract, name))


def table_exists(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchall()[0][0])


def describe(conn: duckdb.DuckDBPyConnection, name: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [name]).fetchall()
    return {c: t for c, t in rows}


def normalize_type(t: str) -> str:
    """A column type as DuckDB spells it in one canonical form (TIMESTAMP WITH TIME ZONE ->
    TIMESTAMPTZ, ...), so declared and live types compare."""
    t = t.upper().replace(" ", "")
    return {"TIMESTAMPWITHTIMEZONE": "TIMESTAMPTZ", "INT64": "BIGINT", "INTEGER": "INT", "BOOL": "BOOLEAN",
            "STRING": "VARCHAR", "TEXT": "VARCHAR"}.get(t, t)


def ensure_columns(conn: duckdb.DuckDBPyConnection, table: str, columns: list[tuple[str, str]]) -> list[str]:
    """Create ``table`` or bring its columns to ``columns`` (for tables whose columns follow
    configuration, e.g. one per signal). Rows keep the values of columns that stay; new
    columns are NULL until recomputed. Returns a description of the changes made."""
    ddl = ", ".join(f"{sql_ident(c)} {t}" for c, t in columns)
    if not table_exists(conn, table):
        conn.execute(f"CREATE TABLE {table} ({ddl})")
        return [f"created {table}"]
    have = describe(conn, table)
    want = dict(columns)

    def same(c: str) -> bool:
        return c in have and normalize_type(have[c]) == normalize_type(want[c])

    if list(have) == list(want) and all(same(c) for c in want):
        return []
    keep = [c for c in want if same(c)]
    changes = ([f"added {c}" for c in want if c not in have] + [f"dropped {c}" for c in have if c not in want]
               + [f"retyped {c}" for c in want if c in have and not same(c)])
    conn.execute(f"CREATE TABLE {table}__new ({ddl})")
    if keep:
        cols = ", ".join(sql_ident(c) for c in keep)
        conn.execute(f"INSERT INTO {table}__new ({cols}) SELECT {cols} FROM {table}")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {table}__new RENAME TO {table}")
    return changes


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, rolled back if the block raises."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextmanager
def registered(conn: duckdb.DuckDBPyConnection, name: str, frame) -> Iterator[str]:
    """A pandas frame visible to SQL as ``name`` for the block, unregistered after it."""
    conn.register(name, frame)
    try:
        yield name
    finally:
        conn.unregister(name)


def replace_rows(conn: duckdb.DuckDBPyConnection, table: str, columns: list[str], source: str,
                 where: str = "TRUE", params: list | None = None) -> None:
    """Idempotent write: delete ``table``'s rows matching ``where`` and insert ``columns``
    from the relation ``source``, in one transaction (readers see the old or the new rows)."""
    names = ", ".join(sql_ident(c) for c in columns)
    with transaction(conn):
        conn.execute(f"DELETE FROM {table} WHERE {where}", params or [])
        conn.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}")
