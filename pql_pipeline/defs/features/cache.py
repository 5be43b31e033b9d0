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
- events not resolved at validation are cached under their anonymous id and resolved
  through the identity links known at the snapshot when read, so a link that arrives
  later (or re-attributes an id) never needs a rebuild;
- the leakage guard recomputes sampled snapshots without the cache, from source tables
  cut off at the snapshot, and compares.
"""

from __future__ import annotations

import datetime as dt

from pql_pipeline.defs.features.sql import (
    FeatureSpec,
    traits_sql,
    user_day_measures,
    user_day_sql,
    user_firsts_sql,
    user_values_sql,
)
from pql_pipeline.lib.engine import DuckDBEngine, render, sql_ident, sql_literal
from pql_pipeline.lib.warehouse import ensure_columns, table_exists

USER_DAY = "feature_cache_user_day"
USER_VALUES = "feature_cache_user_values"
USER_FIRSTS = "feature_cache_user_firsts"
TRAIT_CALLS = "feature_cache_trait_calls"
MANIFEST = "feature_cache_partitions"
# a small number per (value source, value), given once and never changed, so that the values a
# user had on a day fit one integer (``USER_MASKS``: bit i set = value i seen)
VALUE_BITS = "feature_value_bits"
USER_MASKS = "feature_cache_user_masks"
MASK_BITS = 62  # a source with more values is counted from its values, not from masks
# ``anonymous``: user_id holds an anonymous id (events not resolved at validation)
VALUE_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("signal", "VARCHAR"), ("value", "VARCHAR"),
                 ("day", "DATE"), ("anonymous", "BOOLEAN")]
FIRST_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("signal", "VARCHAR"), ("value", "VARCHAR"),
                 ("event_ts", "TIMESTAMPTZ"), ("message_id", "VARCHAR"), ("day", "DATE"), ("anonymous", "BOOLEAN")]
TRAIT_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("account_id", "VARCHAR"),
                 ("event_type", "VARCHAR"), ("event_ts", "TIMESTAMPTZ"), ("message_id", "VARCHAR"), ("traits", "JSON"),
                 ("day", "DATE"), ("anonymous", "BOOLEAN")]
BITS_COLUMNS = [("src", "VARCHAR"), ("value", "VARCHAR"), ("bit", "BIGINT")]
# masks are kept for values resolved at validation only (``anonymous`` is always false)
MASK_COLUMNS = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("signal", "VARCHAR"), ("day", "DATE"),
                ("mask", "BIGINT"), ("anonymous", "BOOLEAN")]
MANIFEST_COLUMNS = [("partition_date", "DATE"), ("version", "VARCHAR"), ("measures_hash", "VARCHAR"),
                    ("built_at", "TIMESTAMPTZ")]
GROUP_PARTITIONS = 31  # partitions built per statement


def _build_events_sql(days: list[dt.date], anonymous: bool = False) -> str:
    """The partitions' events resolved at validation or, with ``anonymous``, the others,
    keyed by their anonymous id in ``user_id`` (resolved through identity links on read)."""
    in_days = ", ".join(f"CAST({sql_literal(d.isoformat())} AS DATE)" for d in days)
    who = ("anonymous_id AS user_id", "resolved_user_id IS NULL AND anonymous_id IS NOT NULL") if anonymous else (
        "resolved_user_id AS user_id", "resolved_user_id IS NOT NULL")
    return (f"SELECT {who[0]}, account_id, event_type, event_name, event_ts, partition_date, "
            "message_id, properties, traits, CAST(event_ts AS DATE) AS day, partition_date AS avail_day, "
            "CAST(NULL AS DATE) AS until_day FROM validated_events "
            f"WHERE {who[1]} AND partition_date IN ({in_days})")


def _ensure_tables(eng: DuckDBEngine, spec: FeatureSpec) -> None:
    conn = eng.conn
    # the measure columns and their types, as the engine infers them
    eng.view("fx_build_events", _build_events_sql([dt.date(1970, 1, 1)]))
    types = describe_query(conn, user_day_sql(spec, "fx_build_events"))
    day_cols = [("partition_date", "DATE"), ("user_id", "VARCHAR"), ("day", "DATE"), ("anonymous", "BOOLEAN")] + [
        (c, types[c]) for c, _ in user_day_measures(spec)]
    ensure_columns(conn, USER_DAY, day_cols)
    ensure_columns(conn, USER_VALUES, VALUE_COLUMNS)
    ensure_columns(conn, USER_FIRSTS, FIRST_COLUMNS)
    ensure_columns(conn, TRAIT_CALLS, TRAIT_COLUMNS)
    if not table_exists(conn, VALUE_BITS) and table_exists(conn, MANIFEST):
        # masks cached with a lost numbering mean nothing: rebuild every partition
        conn.execute(f"DELETE FROM {MANIFEST}")
    ensure_columns(conn, VALUE_BITS, BITS_COLUMNS)
    ensure_columns(conn, USER_MASKS, MASK_COLUMNS)
    ensure_columns(conn, MANIFEST, MANIFEST_COLUMNS)


def number_values(conn, values_sql: str) -> None:
    """Give every (value source, value) of ``values_sql`` (signal, value rows) that has no
    number yet the next numbers of its source."""
    conn.execute(f"""
        INSERT INTO {VALUE_BITS}
        SELECT n.signal, n.value, COALESCE(b.n, 0) + ROW_NUMBER() OVER (PARTITION BY n.signal ORDER BY n.value) - 1
        FROM (SELECT DISTINCT signal, value FROM ({values_sql}) AS v
              WHERE NOT EXISTS (SELECT 1 FROM {VALUE_BITS} AS x WHERE x.src = v.signal AND x.value = v.value)) AS n
        LEFT JOIN (SELECT src, count(*) AS n FROM {VALUE_BITS} GROUP BY src) AS b ON b.src = n.signal""")


def masks_sql(values: str) -> str:
    """Per row of ``values`` (a relation shaped like fx_user_values) grouped by user, source,
    day and availability: the mask of the values (only values numbered below MASK_BITS)."""
    return (f"SELECT v.user_id, v.signal, v.day, v.avail_day, v.until_day, "
            f"BIT_OR(CAST(1 AS BIGINT) << b.bit) AS mask FROM {values} AS v "
            f"JOIN {VALUE_BITS} AS b ON b.src = v.signal AND b.value = v.value AND b.bit < {MASK_BITS} "
            f"GROUP BY v.user_id, v.signal, v.day, v.avail_day, v.until_day")


def narrow_sources(conn) -> set[str]:
    """Value sources whose values all have a mask bit."""
    return {r[0] for r in conn.execute(f"SELECT src FROM {VALUE_BITS} GROUP BY src HAVING max(bit) < {MASK_BITS}"
                                       ).fetchall()}


def all_numbered_sources(conn) -> set[str]:
    return {r[0] for r in conn.execute(f"SELECT DISTINCT src FROM {VALUE_BITS}").fetchall()}


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
    day_cols = ", ".join(sql_ident(c) for c in ["user_id", "day", *measures])
    for i in range(0, len(stale), GROUP_PARTITIONS):
        group = stale[i:i + GROUP_PARTITIONS]
        marks = ", ".join("?" for _ in group)
        conn.execute("BEGIN TRANSACTION")
        try:
            for table in (USER_DAY, USER_VALUES, USER_MASKS, USER_FIRSTS, TRAIT_CALLS, MANIFEST):
                conn.execute(f"DELETE FROM {table} WHERE partition_date IN ({marks})", group)
            for anonymous in (False, True):
                eng.view("fx_build_events", _build_events_sql(group, anonymous))
                flag = sql_literal(anonymous)
                conn.execute(f"INSERT INTO {USER_DAY} (partition_date, anonymous, {day_cols}) " + render(
                    f"SELECT avail_day, {flag}, {day_cols} FROM ({user_day_sql(spec, 'fx_build_events')}) AS d"))
                if values_sql:
                    conn.execute(f"INSERT INTO {USER_VALUES} (partition_date, anonymous, user_id, signal, value, day) "
                                 + render(f"SELECT avail_day, {flag}, user_id, signal, value, day "
                                          f"FROM ({values_sql}) AS v"))
                if firsts_sql:
                    conn.execute(f"INSERT INTO {USER_FIRSTS} (partition_date, anonymous, user_id, signal, value, "
                                 "event_ts, message_id, day) " + render(
                                     f"SELECT avail_day, {flag}, user_id, signal, value, event_ts, message_id, day "
                                     f"FROM ({firsts_sql}) AS f"))
                conn.execute(f"INSERT INTO {TRAIT_CALLS} (partition_date, anonymous, user_id, account_id, event_type, "
                             "event_ts, message_id, traits, day) " + render(
                                 f"SELECT avail_day, {flag}, user_id, account_id, event_type, event_ts, message_id, "
                                 f"traits, day FROM ({traits_sql('fx_build_events')}) AS t"))
            # masks of the values resolved at validation (anonymous ones are masked when read)
            listed = ", ".join(f"CAST({sql_literal(d.isoformat())} AS DATE)" for d in group)
            conn.execute(f"CREATE OR REPLACE TEMP VIEW fx_build_values AS SELECT user_id, signal, value, day, "
                         f"partition_date AS avail_day, CAST(NULL AS DATE) AS until_day FROM {USER_VALUES} "
                         f"WHERE NOT anonymous AND partition_date IN ({listed})")
            number_values(conn, "SELECT signal, value FROM fx_build_values")
            conn.execute(f"INSERT INTO {USER_MASKS} (partition_date, user_id, signal, day, mask, anonymous) "
                         f"SELECT avail_day, user_id, signal, day, mask, FALSE "
                         f"FROM ({masks_sql('fx_build_values')}) AS m")
            conn.execute("DROP VIEW fx_build_values")
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


def cached_sql(spec: FeatureSpec, kind: str, anonymous: bool = False) -> str:
    """The cached rows of the usable partitions (``fx_cached``), shaped like the raw ones:
    rows resolved at validation as they are or, with ``anonymous``, the anonymous rows
    resolved through ``fx_links`` (available from the link's arrival, until the next link
    of that id)."""
    usable = "c.partition_date IN (SELECT partition_date FROM fx_cached)"
    if kind == "user_day":
        cols = ", ".join(f"c.{sql_ident(c)}" for c, _ in user_day_measures(spec))
        table, head = USER_DAY, "c.day"
    elif kind == "user_values":
        table, head, cols = USER_VALUES, "c.signal, c.value, c.day", ""
    elif kind == "traits":
        table, head, cols = TRAIT_CALLS, "c.account_id, c.event_type, c.event_ts, c.message_id, c.traits, c.day", ""
    elif kind == "user_masks":
        if anonymous:
            raise ValueError("anonymous values are masked when read, not cached as masks")
        table, head, cols = USER_MASKS, "c.signal, c.day", "c.mask"
    elif kind == "user_firsts":
        table, head, cols = USER_FIRSTS, "c.signal, c.value, c.event_ts, c.message_id, c.day", ""
    else:
        raise ValueError(kind)
    # the same column order as the raw rows: user_id, <head>, avail_day, until_day, <measures>
    tail = f", {cols}" if cols else ""
    if not anonymous:
        return (f"SELECT c.user_id, {head}, c.partition_date AS avail_day, CAST(NULL AS DATE) AS until_day{tail} "
                f"FROM {table} AS c WHERE {usable} AND NOT c.anonymous")
    return (f"SELECT l.user_id, {head}, GREATEST(c.partition_date, l.from_day) AS avail_day, l.until_day{tail} "
            f"FROM {table} AS c JOIN fx_links AS l ON l.anonymous_id = c.user_id WHERE {usable} AND c.anonymous")
