"""Series over days read from the warehouse, for charts in metadata and the PQL report
(plain functions over a DuckDB connection; each returns empty lists when its tables do not
exist yet)."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence

from pql_pipeline.lib.warehouse import table_exists


def ratio_to_median(value: float, previous: Sequence[float]) -> tuple[float | None, float | None]:
    """``value`` (a day's count or rate) against the median of ``previous`` (the days before
    it): (median, value / median). Without previous days: (None, None). A median of 0 gives
    a ratio of 1 when the value is 0 too, else infinity. The checks that compare a day with
    its recent past (rows ingested, PQLs scored, the PQL rate) all judge this ratio."""
    if not previous:
        return None, None
    median = statistics.median(previous)
    return median, (value / median if median else (1.0 if value == 0 else float("inf")))


def quarantine_by_day(conn, last: dt.date | None = None, days: int = 90) -> tuple[list[str], list[float]]:
    """Per partition (received day), quarantined lines / raw lines, for the ``days`` days up to ``last``."""
    if not (table_exists(conn, "raw_events") and table_exists(conn, "quarantined_events")):
        return [], []
    last = last or conn.execute("SELECT max(partition_date) FROM raw_events").fetchall()[0][0]
    if last is None:
        return [], []
    first = last - dt.timedelta(days=days - 1)
    rows = conn.execute("""
        WITH r AS (SELECT partition_date, count(*) AS n FROM raw_events
                   WHERE partition_date BETWEEN ? AND ? GROUP BY ALL),
             q AS (SELECT partition_date, count(*) AS n FROM quarantined_events
                   WHERE partition_date BETWEEN ? AND ? GROUP BY ALL)
        SELECT CAST(r.partition_date AS VARCHAR), coalesce(q.n, 0) / r.n
        FROM r LEFT JOIN q USING (partition_date) ORDER BY r.partition_date""",
                        [first, last, first, last]).fetchall()
    return [d for d, _ in rows], [float(v) for _, v in rows]


def pqls_by_day(conn, last: dt.date | None = None, days: int = 60) -> tuple[list[str], dict[str, list[int]]]:
    """Per scored day, PQL users by route (sales, in_app, none), for the ``days`` days up to ``last``."""
    if not table_exists(conn, "pql_scores"):
        return [], {}
    last = last or conn.execute("SELECT max(snapshot_date) FROM pql_scores").fetchall()[0][0]
    if last is None:
        return [], {}
    first = last - dt.timedelta(days=days - 1)
    rows = conn.execute("""
        SELECT CAST(snapshot_date AS VARCHAR), coalesce(route, 'none'), count(*) FILTER (WHERE is_pql)
        FROM pql_scores WHERE snapshot_date BETWEEN ? AND ? GROUP BY ALL ORDER BY 1, 2""",
                        [first, last]).fetchall()
    day_list = sorted({d for d, _, _ in rows})
    routes = sorted({r for _, r, _ in rows}, key=lambda r: ({"sales": 0, "in_app": 1}.get(r, 2), r))
    counts = {(d, r): n for d, r, n in rows}
    return day_list, {r: [counts.get((d, r), 0) for d in day_list] for r in routes}


def day_probabilities(conn, day: dt.date):
    """The day's probabilities (a numpy array; empty before scoring)."""
    import numpy as np

    if not table_exists(conn, "pql_scores"):
        return np.array([], dtype=float)
    return conn.execute("SELECT probability FROM pql_scores WHERE snapshot_date = ?",
                        [day]).fetchnumpy()["probability"]
