"""The null-rate check's measure: every snapshot of a range in one query."""

from pql_pipeline.defs.features.checks import null_rates


def test_null_rates_per_snapshot_in_one_query(conn):
    conn.execute("CREATE TABLE f (snapshot_date DATE, user_id VARCHAR, a DOUBLE, b VARCHAR)")
    conn.execute("""INSERT INTO f VALUES ('2026-03-01', 'u1', 1, 'x'), ('2026-03-01', 'u2', NULL, 'y'),
                    ('2026-03-02', 'u1', NULL, NULL), ('2026-03-02', 'u2', NULL, 'y'),
                    ('2026-03-02', 'u3', 2, 'z'), ('2026-03-02', 'u4', 3, 'z')""")
    rates = null_rates(conn, "f", ["a", "b"], ["2026-02-28", "2026-03-01", "2026-03-02"])
    assert rates == {"2026-02-28": {"a": None, "b": None},            # no rows: nothing to compare
                     "2026-03-01": {"a": 0.5, "b": 0.0},
                     "2026-03-02": {"a": 0.5, "b": 0.25}}
