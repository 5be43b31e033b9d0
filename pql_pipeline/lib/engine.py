"""Engine-portable SQL: written once, transpiled by SQLGlot for the engine that runs it.

Feature, label and milestone logic is generated as SQL text in one dialect
(``SOURCE_DIALECT``, DuckDB's) and every statement goes through ``render`` before it is
executed, so the SQL that runs locally is the same SQLGlot tree that would be written
out for Spark (``render(sql, "spark")``). An engine only has to run a SELECT into a
named temporary relation and hand back rows; ``DuckDBEngine`` does that on a DuckDB
connection.
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot

SOURCE_DIALECT = "duckdb"


@lru_cache(maxsize=512)
def render(sql: str, dialect: str = SOURCE_DIALECT) -> str:
    """Parse ``sql`` (DuckDB dialect) and write it for ``dialect``; raises on unsupported SQL."""
    out = sqlglot.transpile(sql, read=SOURCE_DIALECT, write=dialect,
                            unsupported_level=sqlglot.ErrorLevel.RAISE)
    if len(out) != 1:
        raise ValueError(f"expected one SQL statement, got {len(out)}")
    return out[0]


def sql_ident(name: str) -> str:
    """A quoted SQL identifier: ``name`` in double quotes, each ``"`` doubled, so any name is safe."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value) -> str:
    """A SQL literal for a config value (strings quoted, numbers as is, booleans).

    Anything else (a date, a path) is quoted as its ``str``, each ``'`` doubled."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def json_path(key: str) -> str:
    """JSONPath for a top-level property name, quoted so any name is safe."""
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return sql_literal(f'$."{escaped}"')


class DuckDBEngine:
    """Runs rendered SQL on a DuckDB connection (and sets the session to UTC)."""

    dialect = "duckdb"

    def __init__(self, conn):
        self.conn = conn
        # calendar days are UTC days whatever the caller's session zone (CAST(ts AS DATE))
        conn.execute("SET TimeZone = 'UTC'")

    def temp(self, name: str, select_sql: str) -> None:
        self.drop(name)
        self.conn.execute(f"CREATE TEMP TABLE {name} AS {render(select_sql, self.dialect)}")

    def view(self, name: str, select_sql: str) -> None:
        self.drop(name)
        self.conn.execute(f"CREATE TEMP VIEW {name} AS {render(select_sql, self.dialect)}")

    def drop(self, *names: str) -> None:
        """Drop temp tables or views of these names, whichever they are."""
        for n in names:
            kinds = self.conn.execute(
                "SELECT table_type FROM information_schema.tables WHERE table_schema = 'main' "
                "AND table_catalog = 'temp' AND table_name = ?", [n]).fetchall()
            for (kind,) in kinds:
                self.conn.execute(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} IF EXISTS temp.{n}")


    def df(self, select_sql: str):
        return self.conn.execute(render(select_sql, self.dialect)).df()
