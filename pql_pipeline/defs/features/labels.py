"""Conversion labels, the training set and the leakage guard.

A label answers: did this user (account), free at the snapshot, convert within
``horizon_days`` after it? Status per (entity, snapshot):

- ``excluded_paying``: already paying at the snapshot (a conversion event on or before
  the snapshot day, even one that arrived later; for users optionally also an account
  that already pays) - not a training example at all, never a negative;
- ``positive``: a conversion event on one of the ``horizon_days`` days after the
  snapshot (known as soon as it is observed);
- ``negative``: no conversion, and the horizon plus ``late_arrival_days`` lies within the
  data the warehouse holds;
- ``unknown``: the horizon has not fully been observed yet.

``horizon_complete`` says whether the whole horizon has been observed. A positive can be
known before that, but training uses complete horizons only: recent snapshots would
otherwise contribute their early converters and none of their non-converters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from pql_pipeline.defs.features.sql import WAREHOUSE, Sources, events_sql
from pql_pipeline.lib.engine import DuckDBEngine, sql_literal
from pql_pipeline.lib.warehouse import ensure_columns, replace_rows

LABEL_COLUMNS = [
    ("snapshot_date", "DATE"), ("entity_type", "VARCHAR"), ("entity_id", "VARCHAR"), ("account_id", "VARCHAR"),
    ("label_status", "VARCHAR"), ("label", "BOOLEAN"), ("converted_at", "TIMESTAMPTZ"),
    ("label_window_start", "DATE"), ("label_window_end", "DATE"), ("observed_until", "DATE"),
    ("horizon_complete", "BOOLEAN"), ("definition_hash", "VARCHAR"),
]


@dataclass(frozen=True)
class LabelSpec:
    conversion_events: tuple[str, ...]
    horizon_days: int = 30
    late_arrival_days: int = 1
    exclude_users_of_paying_accounts: bool = True

    @property
    def definition_hash(self) -> str:
        blob = json.dumps([list(self.conversion_events), self.horizon_days, self.late_arrival_days,
                           self.exclude_users_of_paying_accounts])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def observed_until(conn, src: Sources = WAREHOUSE) -> dt.date | None:
    """Last partition day the warehouse holds: labels are observed up to the end of it."""
    return conn.execute(f"SELECT MAX(partition_date) FROM {src.validated_events}").fetchall()[0][0]


def labels_sql(spec: LabelSpec, days: list[dt.date], until: dt.date) -> str:
    conv = ", ".join(sql_literal(e) for e in spec.conversion_events)
    in_days = ", ".join(f"CAST({sql_literal(d.isoformat())} AS DATE)" for d in days)
    h = spec.horizon_days
    final = (f"DATE_DIFF('day', e.snapshot_date, CAST({sql_literal(until.isoformat())} AS DATE)) "
             f">= {h + spec.late_arrival_days}")
    user_excl = "u.is_paying" + (" OR COALESCE(a.is_paying, FALSE)" if spec.exclude_users_of_paying_accounts else "")
    return f"""
WITH conv AS (
  SELECT user_id, account_id, event_ts, CAST(event_ts AS DATE) AS day FROM fx_label_events
  WHERE event_name IN ({conv})
),
e AS (
  SELECT u.snapshot_date, 'user' AS entity_type, u.user_id AS entity_id, u.account_id,
         ({user_excl}) AS excluded
  FROM user_features AS u
  LEFT JOIN account_features AS a ON a.account_id = u.account_id AND a.snapshot_date = u.snapshot_date
  WHERE u.snapshot_date IN ({in_days})
  UNION ALL
  SELECT snapshot_date, 'account' AS entity_type, account_id AS entity_id, account_id, is_paying AS excluded
  FROM account_features WHERE snapshot_date IN ({in_days})
),
-- conversions on or before the snapshot, including ones that arrived after it: such an
-- entity was already paying, whatever the snapshot's features could see
before AS (
  SELECT DISTINCT e.snapshot_date, e.entity_type, e.entity_id
  FROM e JOIN conv AS c ON c.user_id = e.entity_id AND c.day <= e.snapshot_date WHERE e.entity_type = 'user'
  UNION ALL
  SELECT DISTINCT e.snapshot_date, e.entity_type, e.entity_id
  FROM e JOIN conv AS c ON c.account_id = e.entity_id AND c.day <= e.snapshot_date WHERE e.entity_type = 'account'
),
hit AS (
  SELECT e.snapshot_date, e.entity_type, e.entity_id, MIN(c.event_ts) AS converted_at
  FROM e JOIN conv AS c ON c.user_id = e.entity_id
   AND c.day > e.snapshot_date AND DATE_DIFF('day', e.snapshot_date, c.day) <= {h}
  WHERE e.entity_type = 'user'
  GROUP BY e.snapshot_date, e.entity_type, e.entity_id
  UNION ALL
  SELECT e.snapshot_date, e.entity_type, e.entity_id, MIN(c.event_ts) AS converted_at
  FROM e JOIN conv AS c ON c.account_id = e.entity_id
   AND c.day > e.snapshot_date AND DATE_DIFF('day', e.snapshot_date, c.day) <= {h}
  WHERE e.entity_type = 'account'
  GROUP BY e.snapshot_date, e.entity_type, e.entity_id
)
SELECT e.snapshot_date, e.entity_type, e.entity_id, e.account_id,
       CASE WHEN e.excluded OR b.entity_id IS NOT NULL THEN 'excluded_paying'
            WHEN hit.converted_at IS NOT NULL THEN 'positive'
            WHEN {final} THEN 'negative' ELSE 'unknown' END AS label_status,
       CASE WHEN e.excluded OR b.entity_id IS NOT NULL THEN NULL
            WHEN hit.converted_at IS NOT NULL THEN TRUE
            WHEN {final} THEN FALSE END AS label,
       CASE WHEN e.excluded OR b.entity_id IS NOT NULL THEN NULL ELSE hit.converted_at END AS converted_at,
       CAST(e.snapshot_date + INTERVAL 1 DAY AS DATE) AS label_window_start,
       CAST(e.snapshot_date + INTERVAL {h} DAY AS DATE) AS label_window_end,
       CAST({sql_literal(until.isoformat())} AS DATE) AS observed_until,
       {final} AS horizon_complete,
       {sql_literal(spec.definition_hash)} AS definition_hash
FROM e LEFT JOIN hit
  ON hit.snapshot_date = e.snapshot_date AND hit.entity_type = e.entity_type AND hit.entity_id = e.entity_id
LEFT JOIN before AS b
  ON b.snapshot_date = e.snapshot_date AND b.entity_type = e.entity_type AND b.entity_id = e.entity_id"""


def refresh_days(conn, requested: list[dt.date], spec: LabelSpec) -> list[dt.date]:
    """Snapshot days whose labels a run over ``requested`` must (re)compute: the requested
    days, every earlier day with features whose horizon reaches into them, and every day
    whose horizon was still incomplete (new data can turn an unknown label into a known
    one, even after days without a run)."""
    if not requested:
        return []
    lo = min(requested) - dt.timedelta(days=spec.horizon_days + spec.late_arrival_days)
    rows = conn.execute(
        "SELECT DISTINCT snapshot_date FROM user_features WHERE snapshot_date >= ? AND snapshot_date < ?",
        [lo, min(requested)]).fetchall()
    open_days = conn.execute(
        "SELECT DISTINCT snapshot_date FROM conversion_labels WHERE NOT horizon_complete "
        "AND snapshot_date IN (SELECT DISTINCT snapshot_date FROM user_features)").fetchall()
    return sorted(set(requested) | {r[0] for r in rows} | {r[0] for r in open_days})


@dataclass
class LabelRun:
    snapshot_days: list[dt.date]
    observed_until: dt.date | None
    counts: dict


def compute_labels(conn, spec: LabelSpec, requested: list[dt.date], src: Sources = WAREHOUSE) -> LabelRun:
    """(Re)compute conversion_labels for the requested snapshot days and the earlier days
    whose horizon they complete. Idempotent (delete-then-insert in one transaction)."""
    ensure_columns(conn, "conversion_labels", LABEL_COLUMNS)
    days = refresh_days(conn, requested, spec)
    until = observed_until(conn, src)
    run = LabelRun(days, until, {})
    if not days or until is None:
        return run
    eng = DuckDBEngine(conn)
    eng.view("fx_label_events", events_sql(until, src))
    eng.temp("fx_labels", labels_sql(spec, days, until))
    in_days = ", ".join("?" for _ in days)
    replace_rows(conn, "conversion_labels", [c for c, _ in LABEL_COLUMNS], "fx_labels",
                 f"snapshot_date IN ({in_days})", days)
    run.counts = {f"{t}.{s}": n for t, s, n in conn.execute(
        "SELECT entity_type, label_status, count(*) FROM fx_labels GROUP BY ALL ORDER BY ALL").fetchall()}
    eng.drop("fx_labels")
    eng.drop("fx_label_events")
    return run
