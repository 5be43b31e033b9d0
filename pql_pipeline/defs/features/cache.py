"""The feature cache: per-partition daily measures, so a snapshot does not re-read history.

A snapshot's features need every event of the user's history, but a day's events only
change when that day's partition is validated again. So the per-(user, day) measures of
each validated partition (``fx_user_day``'s rows), its distinct property values and its
first-time occurrences and its identify / group calls are kept in four tables keyed by
``partition_date``; a daily run
adds the new partition and reads the rest from the cache instead of scanning every event
again.

The cache is only an accelerator, never a source of truth:

- a partition is used only if its cached copy was built from the version of the
  partition that ``validated_partitions`` lists now (validation gives every rebuild a new
  version) and with the current measure definitions (``FeatureSpec.measures_hash``);
  anything else is rebuilt before use, or read from validated_events;
- only events resolved at validation are cached; anonymous events, whose attribution
  depends on identity links that arrive later, always come from validated_events;
- the leakage guard recomputes sampled snapshots without the cache, from source tables
  cut off at the snapshot, and compares.
"""

from __future__ import annotations

import datetime as dt

from pql_pipeline.defs.features.features import (
    FeatureSpec,
    q,
    user_day_measures,
    traits_sql,
    user_day_sql,
    user_firsts_sql,
    user_values_sql,
)
from pql_pipeline.lib.engine import DuckDBEngine, render, sql_literal
from pql_pipeline.lib.warehouse import ensure_columns, table_exists

USER_DAY = "feature_cache_user_day"
USER_VALUES = "feature_cache_user_values"
USER_FIRSTS = "feature_cache_user_firsts"
TRAIT_CALLS = "feature_cache_trait_calls"
MANIFEST = "feature_cache_partitions"
VALUE_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("signal", "VARCHAR"), ("value", "VARCHAR"),
                 ("day", "DATE")]
FIRST_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("signal", "VARCHAR"), ("value", "VARCHAR"),
                 ("event_ts", "TIMESTAMPTZ"), ("message_id", "VARCHAR"), ("day", "DATE")]
TRAIT_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("account_id", "VARCHAR"),
                 ("event_type", "VARCHAR"), ("event_ts", "TIMESTAMPTZ"), ("message_id", "VARCHAR"), ("traits", "JSON"),
                 ("day", "DATE")]
MANIFEST_COLUMNS = [("partition_date", "DATE"), ("version", "VARCHAR"), ("measures_hash", "VARCHAR"),
                    ("built_at", "TIMESTAMPTZ")]
GROUP_PARTITIONS = 31  # partitions built per statement


def _build_events_sql(days: list[dt.date]) -> str:
    in_days = ", ".join(f"CAST({sql_literal(d.isoformat())} AS DATE)" for d in days)
    return ("SELECT resolved_user_id AS user_id, account_id, event_type, event_name, event_ts, partition_date, "
            "message_id, properties, traits, CAST(event_ts AS DATE) AS day, partition_date AS avail_day, "
            "CAST(NULL AS DATE) AS until_day FROM validated_events "
            f"WHERE resolved_user_id IS NOT NULL AND partition_date IN ({in_days})")


def _ensure_tables(eng: DuckDBEngine, spec: FeatureSpec) -> None:
    conn = eng.conn
    # the measure columns and their types, as the engine infers them
    eng.view("fx_build_events", _build_events_sql([dt.date(1970, 1, 1)]))
    types = describe_query(conn, user_day_sql(spec, "fx_build_events"))
    day_cols = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("day", "DATE")] + [
        (c, types[c]) for c, _ in user_day_measures(spec)]
    ensure_columns(conn, USER_DAY, day_cols)
    ensure_columns(conn, USER_VALUES, VALUE_COLUMNS)
    ensure_columns(conn, USER_FIRSTS, FIRST_COLUMNS)
    ensure_columns(conn, TRAIT_CALLS, TRAIT_COLUMNS)
    ensure_columns(conn, MANIFEST, MANIFEST_COLUMNS)


def describe_query(conn, sql: str) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute(f"DESCRIBE {render(sql)}").fetchall()}


def refresh_cache(eng: DuckDBEngine, spec: FeatureSpec, last_day: dt.date) -> int:
    """Bring the cache up to date for every validated partition up to ``last_day`` and
    leave the usable partitions in the temp table ``fx_cached``; returns how many
    partitions were (re)built."""
    conn = eng.conn
    h = spec.measures_hash
    if not table_exists(conn, "validated_partitions"):
        eng.temp("fx_cached", "SELECT CAST(NULL AS DATE) AS partition_date WHERE FALSE")
        return 0
    _ensure_tables(eng, spec)
    stale = [r[0] for r in conn.execute(f"""
        SELECT v.partition_date FROM validated_partitions AS v
        LEFT JOIN {MANIFEST} AS c ON c.partition_date = v.partition_date AND c.version = v.version
                                 AND c.measures_hash = ?
        WHERE v.partition_date <= ? AND c.partition_date IS NULL ORDER BY 1""", [h, last_day]).fetchall()]
    measures = [c for c, _ in user_day_measures(spec)]
    values_sql, firsts_sql = user_values_sql(spec, "fx_build_events"), user_firsts_sql(spec, "fx_build_events")
    for i in range(0, len(stale), GROUP_PARTITIONS):
        group = stale[i:i + GROUP_PARTITIONS]
        eng.view("fx_build_events", _build_events_sql(group))
        marks = ", ".join("?" for _ in group)
        day_cols = ", ".join(q(c) for c in ["user_id", "day", *measures])
        conn.execute("BEGIN TRANSACTION")
        try:
            for table in (USER_DAY, USER_VALUES, USER_FIRSTS, TRAIT_CALLS, MANIFEST):
                conn.execute(f"DELETE FROM {table} WHERE partition_date IN ({marks})", group)
            conn.execute(f"INSERT INTO {USER_DAY} (partition_date, {day_cols}) "
                         + render(f"SELECT avail_day, {day_cols} FROM ({user_day_sql(spec, 'fx_build_events')}) AS d"))
            if values_sql:
                conn.execute(f"INSERT INTO {USER_VALUES} (partition_date, user_id, signal, value, day) "
                             + render(f"SELECT avail_day, user_id, signal, value, day FROM ({values_sql}) AS v"))
            if firsts_sql:
                conn.execute(f"INSERT INTO {USER_FIRSTS} (partition_date, user_id, signal, value, event_ts, "
                             "message_id, day) " + render(
                                 "SELECT avail_day, user_id, signal, value, event_ts, message_id, day "
                                 f"FROM ({firsts_sql}) AS f"))
            conn.execute(f"INSERT INTO {TRAIT_CALLS} (partition_date, user_id, account_id, event_type, event_ts, "
                         "message_id, traits, day) " + render(
                             "SELECT avail_day, user_id, account_id, event_type, event_ts, message_id, traits, day "
                             f"FROM ({traits_sql('fx_build_events')}) AS t"))
            conn.execute(f"""INSERT INTO {MANIFEST}
                             SELECT partition_date, version, ?, now() FROM validated_partitions
                             WHERE partition_date IN ({marks})""", [h, *group])
            conn.execute("COMMIT")
        except Exception:
            conn.execute("ROLLBACK")
            raise
    eng.drop("fx_build_events")
    eng.temp("fx_cached", f"""
        SELECT c.partition_date FROM {MANIFEST} AS c
        JOIN validated_partitions AS v ON v.partition_date = c.partition_date AND v.version = c.version
        WHERE c.measures_hash = {sql_literal(h)}
          AND c.partition_date <= CAST({sql_literal(last_day.isoformat())} AS DATE)""")
    return len(stale)


def cached_sql(spec: FeatureSpec, kind: str) -> str:
    """The cached rows of the usable partitions (``fx_cached``), shaped like the raw ones."""
    usable = "partition_date IN (SELECT partition_date FROM fx_cached)"
    if kind == "user_day":
        measures = ", ".join(q(c) for c, _ in user_day_measures(spec))
        return (f"SELECT user_id, day, partition_date AS avail_day, CAST(NULL AS DATE) AS until_day, {measures} "
                f"FROM {USER_DAY} WHERE {usable}")
    if kind == "user_values":
        return (f"SELECT user_id, signal, value, day, partition_date AS avail_day, CAST(NULL AS DATE) AS until_day "
                f"FROM {USER_VALUES} WHERE {usable}")
    if kind == "traits":
        return (f"SELECT user_id, account_id, event_type, event_ts, message_id, traits, day, "
                f"partition_date AS avail_day, CAST(NULL AS DATE) AS until_day FROM {TRAIT_CALLS} WHERE {usable}")
    if kind == "user_firsts":
        return (f"SELECT user_id, signal, value, event_ts, message_id, day, partition_date AS avail_day, "
                f"CAST(NULL AS DATE) AS until_day FROM {USER_FIRSTS} WHERE {usable}")
    raise ValueError(kind)


