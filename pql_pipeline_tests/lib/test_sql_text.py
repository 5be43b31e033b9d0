"""The one identifier quoting and the one literal quoting every generated statement uses:
the exact SQL text, and that DuckDB reads it back as the name or value it was made from."""

import datetime as dt

import duckdb
import pytest

from pql_pipeline.lib.engine import sql_ident, sql_literal

NAMES = ['a"b', '"', "it's", "", "größe ü 名前", "with space", "x.y"]


@pytest.mark.parametrize(("name", "sql"), [
    ("plain", '"plain"'),
    ('a"b', '"a""b"'),
    ('"', '""""'),
    ("it's", '"it\'s"'),
    ("", '""'),
    ("größe ü 名前", '"größe ü 名前"'),
])
def test_identifier_text(name, sql):
    assert sql_ident(name) == sql


def test_quoted_identifiers_name_a_table_and_its_columns():
    conn = duckdb.connect()
    table = sql_ident('t "quoted" ü')
    cols = [n for n in NAMES if n]  # DuckDB has no zero-length identifier
    conn.execute(f"CREATE TABLE {table} ({', '.join(f'{sql_ident(c)} INTEGER' for c in cols)})")
    conn.execute(f"INSERT INTO {table} VALUES ({', '.join(str(i) for i in range(len(cols)))})")
    assert [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()] == cols
    for i, c in enumerate(cols):
        assert conn.execute(f"SELECT {sql_ident(c)} FROM {table}").fetchone()[0] == i


@pytest.mark.parametrize(("value", "sql"), [
    ("plain", "'plain'"),
    ("it's", "'it''s'"),
    ("'", "''''"),
    ("", "''"),
    ("größe ü 名前", "'größe ü 名前'"),
    ('a"b', "'a\"b'"),
    ("back\\slash", "'back\\slash'"),
    ("two\nlines", "'two\nlines'"),
    (0, "0"),
    (-42, "-42"),
    (2**40, "1099511627776"),
    (2.5, "2.5"),
    (-0.125, "-0.125"),
    (1e20, "1e+20"),
    (True, "TRUE"),
    (False, "FALSE"),
    (dt.date(2026, 1, 2), "'2026-01-02'"),
])
def test_literal_text(value, sql):
    assert sql_literal(value) == sql


@pytest.mark.parametrize("value", ["plain", "it's", "'", "", "größe ü 名前", 'a"b', "back\\slash", "two\nlines"])
def test_string_literals_read_back(value):
    assert duckdb.connect().execute(f"SELECT {sql_literal(value)}").fetchone()[0] == value


@pytest.mark.parametrize("value", [0, -42, 2**40, True, False])
def test_int_and_bool_literals_read_back(value):
    got = duckdb.connect().execute(f"SELECT {sql_literal(value)}").fetchone()[0]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("value", [2.5, -0.125, 1e20, 0.1])
def test_float_literals_read_back(value):
    # DuckDB reads 2.5 as a DECIMAL and 1e+20 as a DOUBLE: the same number either way
    assert float(duckdb.connect().execute(f"SELECT {sql_literal(value)}").fetchone()[0]) == value


def test_date_literals_read_back_as_dates():
    d = dt.date(2026, 1, 2)
    assert duckdb.connect().execute(f"SELECT CAST({sql_literal(d)} AS DATE)").fetchone()[0] == d
