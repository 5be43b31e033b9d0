"""The training sets and the leakage guard.

``training_set`` holds one row per (user, training snapshot): the user's features, the
features of the user's account at the same snapshot (prefixed ``acct_``) and the label,
for snapshots whose label horizon has been observed completely. ``account_training_set``
is the same per account. Training snapshots are every ``snapshot_every_days``-th day
counted from ``partitions.start_date`` (a fixed grid, so the set does not shift from one
day to the next) within ``lookback_days``.

The leakage guard proves, rather than assumes, that no feature saw the future:

1. bookkeeping - every row's newest event (``max_event_ts``) and newest partition lie on
   or before its snapshot day, and its label window starts after both;
2. recomputation - for sampled snapshot days the features are computed again from
   copies of the source tables cut off at the end of that day (events, identify and
   group calls, identity links and memberships received later removed) and must equal
   the stored rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pql_pipeline.defs.features.features import build_feature_temps, drop_feature_temps
from pql_pipeline.defs.features.sql import FeatureSpec, Sources, account_table_columns, user_table_columns
from pql_pipeline.lib.engine import DuckDBEngine, sql_ident, sql_literal
from pql_pipeline.lib.warehouse import ensure_columns, replace_rows

LABEL_OUT = [("label", "BOOLEAN"), ("converted_at", "TIMESTAMPTZ"), ("label_window_start", "DATE"),
             ("label_window_end", "DATE")]


ACCOUNT_KEYS = ("snapshot_date", "account_id", "definition_hash")   # account columns a user row does not repeat


def feature_row_columns(signals) -> list[tuple[str, str]]:
    """A user's feature row as the model sees it, in training and in scoring: the user's
    features, then its account's at the same snapshot (``acct_*``)."""
    return user_table_columns(signals) + [(f"acct_{c}", t) for c, t in account_table_columns(signals)
                                          if c not in ACCOUNT_KEYS]


def feature_rows_sql(signals, where: str, label_columns: tuple[str, ...] = ()) -> str:
    """The one query that builds user feature rows (``feature_row_columns``, then
    ``label_columns`` of the user's label row) for training and for scoring: each user's
    features joined with its label row (``l``) and its account's features (``a``) of the
    same snapshot; ``where`` chooses the rows (aliases ``u``, ``l``, ``a``)."""
    sel = ([f"u.{sql_ident(c)}" for c, _ in user_table_columns(signals)]
           + [f"a.{sql_ident(c)} AS {sql_ident('acct_' + c)}" for c, _ in account_table_columns(signals)
              if c not in ACCOUNT_KEYS]
           + [f"l.{sql_ident(c)}" for c in label_columns])
    return f"""
SELECT {', '.join(sel)}
FROM user_features AS u
JOIN conversion_labels AS l
  ON l.entity_type = 'user' AND l.entity_id = u.user_id AND l.snapshot_date = u.snapshot_date
LEFT JOIN account_features AS a ON a.account_id = u.account_id AND a.snapshot_date = u.snapshot_date
WHERE {where}"""


def training_columns(spec: FeatureSpec) -> list[tuple[str, str]]:
    return feature_row_columns(spec.signals) + LABEL_OUT


def account_training_columns(spec: FeatureSpec) -> list[tuple[str, str]]:
    return account_table_columns(spec.signals) + LABEL_OUT


def _grid(start: dt.date, every: int) -> str:
    return f"DATE_DIFF('day', CAST({sql_literal(start.isoformat())} AS DATE), {{col}}) % {every} = 0"


def build_training_sets(conn, spec: FeatureSpec, start: dt.date, every_days: int, lookback_days: int,
                        label_hash: str) -> dict:
    """Rebuild training_set and account_training_set from the rows of the current signal
    and label definitions (``label_hash``); returns row and label counts."""
    eng = DuckDBEngine(conn)
    last = conn.execute("SELECT MAX(snapshot_date) FROM conversion_labels WHERE horizon_complete").fetchall()[0][0]
    grid = _grid(start, every_days)
    lo = (last - dt.timedelta(days=lookback_days)) if last else start
    window = f"{{col}} > CAST({sql_literal(lo.isoformat())} AS DATE)"
    # rows computed with another signals.yaml / label definition are stale: left out until recomputed
    current = (f"{{alias}}.definition_hash = {sql_literal(spec.signals.definition_hash)} "
               f"AND l.definition_hash = {sql_literal(label_hash)}")
    user_sql = feature_rows_sql(
        spec.signals, f"l.label IS NOT NULL AND l.horizon_complete AND {grid.format(col='u.snapshot_date')} "
                      f"AND {window.format(col='u.snapshot_date')} AND {current.format(alias='u')}",
        tuple(c for c, _ in LABEL_OUT))
    acct_all = [c for c, _ in account_table_columns(spec.signals)]
    acct_sql = f"""
SELECT {', '.join(f'a.{sql_ident(c)}' for c in acct_all)}, l.label, l.converted_at, l.label_window_start, l.label_window_end
FROM account_features AS a
JOIN conversion_labels AS l
  ON l.entity_type = 'account' AND l.entity_id = a.account_id AND l.snapshot_date = a.snapshot_date
WHERE l.label IS NOT NULL AND l.horizon_complete AND {grid.format(col='a.snapshot_date')}
  AND {window.format(col='a.snapshot_date')} AND {current.format(alias='a')}"""
    out = {}
    for table, sql, cols in (("training_set", user_sql, training_columns(spec)),
                             ("account_training_set", acct_sql, account_training_columns(spec))):
        eng.temp("fx_training", sql)
        ensure_columns(conn, table, cols)
        replace_rows(conn, table, [c for c, _ in cols], "fx_training")
        rows, pos, snaps = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE label), count(DISTINCT snapshot_date) FROM {table}").fetchall()[0]
        out[table] = {"rows": rows, "positives": pos, "snapshots": snaps}
    eng.drop("fx_training")
    return out


# ------------------------------------------------------------------ leakage guard

@dataclass
class LeakageReport:
    bookkeeping_violations: dict[str, int] = field(default_factory=dict)
    recomputed_days: list[dt.date] = field(default_factory=list)
    recomputed_rows: int = 0
    mismatched_rows: dict[str, int] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(self.bookkeeping_violations.values()) and not any(self.mismatched_rows.values())


BOOKKEEPING = {
    "feature event after snapshot": "CAST(max_event_ts AS DATE) > snapshot_date",
    "feature partition after snapshot": "max_partition_date > snapshot_date",
    "account feature event after snapshot": "CAST(acct_max_event_ts AS DATE) > snapshot_date",
    "account feature partition after snapshot": "acct_max_partition_date > snapshot_date",
    "label window starts on or before snapshot": "label_window_start <= snapshot_date",
    "label window overlaps features": "label_window_start <= CAST(max_event_ts AS DATE)",
    "conversion outside label window": "converted_at IS NOT NULL AND (CAST(converted_at AS DATE) < label_window_start "
                                       "OR CAST(converted_at AS DATE) > label_window_end)",
    "positive label without conversion": "label AND converted_at IS NULL",
}


def truncated_sources(conn, day: dt.date) -> Sources:
    """Temp views of the source tables as the pipeline held them at the end of ``day``."""
    d = f"CAST({sql_literal(day.isoformat())} AS DATE)"
    views = {
        "validated_events": f"SELECT * FROM validated_events WHERE partition_date <= {d}",
        "identity_links": f"SELECT * FROM identity_links WHERE partition_date <= {d}",
        "account_memberships": f"SELECT * FROM account_memberships WHERE partition_date <= {d}",
    }
    for name, sql in views.items():
        conn.execute(f"CREATE OR REPLACE TEMP VIEW lg_{name} AS {sql}")
    return Sources(**{name: f"lg_{name}" for name in views})


def leakage_guard(conn, spec: FeatureSpec, sample_days: list[dt.date], max_samples: int = 5) -> LeakageReport:
    rep = LeakageReport()
    eng = DuckDBEngine(conn)  # UTC session: the bookkeeping compares UTC days
    for name, cond in BOOKKEEPING.items():
        rep.bookkeeping_violations[name] = conn.execute(
            f"SELECT count(*) FROM training_set WHERE {cond}").fetchall()[0][0]
    for name, cond in BOOKKEEPING.items():
        if "acct_" not in cond:
            rep.bookkeeping_violations["account set: " + name] = conn.execute(
                f"SELECT count(*) FROM account_training_set WHERE {cond}").fetchall()[0][0]
    for day in sample_days:
        src = truncated_sources(conn, day)
        build_feature_temps(eng, spec, [day], src)
        rep.recomputed_days.append(day)
        for table, tmp, cols, key in (
                ("user_features", "fx_user_features", user_table_columns(spec.signals), "user_id"),
                ("account_features", "fx_account_features", account_table_columns(spec.signals), "account_id")):
            rep.recomputed_rows += conn.execute(f"SELECT count(*) FROM {tmp}").fetchall()[0][0]
            differs = []
            for c, t in cols:
                if c in ("snapshot_date", key):
                    continue
                a, b = f"s.{sql_ident(c)}", f"f.{sql_ident(c)}"
                if t == "DOUBLE":
                    # doubles are stored rounded to 6 decimals, and sums of doubles vary in the last
                    # bits with the order of addition: one unit of the 6th decimal is equality
                    differs.append(f"NOT ({a} IS NULL AND {b} IS NULL OR "
                                   f"abs({a} - {b}) <= 1.5e-6 + 1e-9 * abs({a}))")
                else:
                    differs.append(f"{a} IS DISTINCT FROM {b}")
            stored = f"SELECT * FROM {table} WHERE snapshot_date = CAST({sql_literal(day.isoformat())} AS DATE)"
            diff = conn.execute(
                f"SELECT coalesce(s.{key}, f.{key}) AS {key}, s.{key} IS NULL AS only_recomputed, "
                f"f.{key} IS NULL AS only_stored, "
                + " || ".join(f"CASE WHEN coalesce({d}, TRUE) THEN '{c} ' ELSE '' END"
                              for d, (c, _) in zip(differs, [x for x in cols if x[0] not in ("snapshot_date", key)]))
                + f" AS differing_columns FROM ({stored}) AS s FULL OUTER JOIN {tmp} AS f ON s.{key} = f.{key} "
                f"WHERE s.{key} IS NULL OR f.{key} IS NULL OR " + " OR ".join(f"coalesce({d}, TRUE)" for d in differs)
            ).df()
            rep.mismatched_rows[f"{table}@{day}"] = len(diff)
            if len(diff) and len(rep.samples) < max_samples:
                rep.samples += [{"table": table, "snapshot_date": str(day), **r}
                                for r in diff.head(max_samples - len(rep.samples)).astype(str).to_dict("records")]
        drop_feature_temps(eng)
        for name in ("validated_events", "identity_links", "account_memberships"):
            conn.execute(f"DROP VIEW IF EXISTS lg_{name}")
    return rep
