"""The features' SQL: every statement that computes point-in-time user and account
features from the signal configuration, for the full computation (``features.py``), the
feature cache (``cache.py``) and the incremental state (``state.py``), which all import it.

For a batch of snapshot days the computation is:

1. ``fx_events``: validated events up to the last snapshot, with anonymous events
   resolved through ``identity_links``. Each event carries ``day`` (UTC date of its
   timestamp), ``avail_day`` (the first day the pipeline could have known it: its
   partition, i.e. the day it was received, or the day the identity link arrived,
   whichever is later) and ``until_day`` (the end of the identity resolution's
   validity, if a later link re-attributes it). A snapshot sees a row only if it
   happened and was known by the snapshot day, so a late-arriving event, a later
   identify, group call or identity link never reaches an earlier snapshot.
2. ``fx_user_day``: one row per user, day and availability with the per-signal measures
   (conditional counts, sums); ``fx_user_values``: distinct property values for the
   distinct-count signals; ``fx_user_firsts``: occurrences of first-time milestones;
   ``fx_traits``: identify and group calls. With the feature cache (``cache.py``) these
   are the cached partitions' rows plus those of ``fx_events`` for partitions not cached.
3. ``fx_user_agg``: per (user, snapshot), every user with a row known by the snapshot,
   the summed signals, lifecycle days and active days, each within its window.
   User features are those rows for recently active users plus distinct values, first
   occurrences and traits; account features roll the users up through the account
   memberships valid at the snapshot and add firmographic traits from the group calls
   known by the snapshot. ``fx_user_traits`` and ``fx_account_traits`` hold the latest
   trait values per key and snapshot.

All SQL is generated in the DuckDB dialect and passed through SQLGlot (``lib.engine``),
so the same definitions can be written out for Spark. Days are UTC days: the engine
runs its session in UTC.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from pql_pipeline.lib.engine import json_path, sql_ident, sql_literal
from pql_pipeline.signals import Signal, SignalSet, rollup_column

ACTIVITY_TYPES = ("track", "page", "screen")
CACHE_FORMAT = "5"  # bump when what the feature cache holds changes
USER_KEY_COLUMNS = [
    ("snapshot_date", "DATE"), ("user_id", "VARCHAR"), ("account_id", "VARCHAR"), ("signup_date", "DATE"),
    ("days_since_signup", "BIGINT"), ("is_paying", "BOOLEAN"),
]
ACCOUNT_KEY_COLUMNS = [
    ("snapshot_date", "DATE"), ("account_id", "VARCHAR"), ("signup_date", "DATE"), ("days_since_signup", "BIGINT"),
    ("is_paying", "BOOLEAN"), ("n_members", "BIGINT"),
]
AUDIT_COLUMNS = [("max_event_ts", "TIMESTAMPTZ"), ("max_partition_date", "DATE"), ("definition_hash", "VARCHAR")]


def user_table_columns(signals: SignalSet) -> list[tuple[str, str]]:
    return USER_KEY_COLUMNS + [(c, t) for c, t, _ in signals.user_columns()] + AUDIT_COLUMNS


def account_table_columns(signals: SignalSet) -> list[tuple[str, str]]:
    return ACCOUNT_KEY_COLUMNS + [(c, t) for c, t, _ in signals.account_columns()] + AUDIT_COLUMNS


@dataclass(frozen=True)
class Sources:
    """Tables the features read; the leakage guard points them at truncated copies."""

    validated_events: str = "validated_events"
    identity_links: str = "identity_links"
    account_memberships: str = "account_memberships"


WAREHOUSE = Sources()


@dataclass(frozen=True)
class FeatureSpec:
    """Everything the feature SQL depends on besides the data."""

    signals: SignalSet
    conversion_events: tuple[str, ...]
    active_within_days: int = 60
    paid_plans: tuple[str, ...] = ()

    @property
    def measures_hash(self) -> str:
        """Identifies what the per-day measures (the feature cache) contain."""
        blob = f"{self.signals.definition_hash}|{sorted(self.conversion_events)}|{CACHE_FORMAT}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ SQL building blocks

def prop(key: str, source: str = "properties") -> str:
    return f"json_extract_string({source}, {json_path(key)})"


def num(key: str, source: str = "properties") -> str:
    return f"TRY_CAST({prop(key, source)} AS DOUBLE)"


def event_condition(s: Signal) -> str:
    """SQL condition selecting the events a signal counts (track event name + where filter)."""
    parts = [f"event_type = 'track' AND event_name = {sql_literal(s.event)}"] if s.event else [
        f"event_type IN ({', '.join(sql_literal(t) for t in ACTIVITY_TYPES)})"]
    for key, value in (s.where or {}).items():
        if isinstance(value, bool):
            parts.append(f"{prop(key)} = {sql_literal('true' if value else 'false')}")
        elif isinstance(value, (int, float)):
            parts.append(f"{num(key)} = {sql_literal(float(value))}")
        else:
            parts.append(f"{prop(key)} = {sql_literal(value)}")
    return " AND ".join(parts)


def window_condition(s: Signal, age: str = "age", since_signup: str = "since_signup") -> str:
    """Condition on a joined row: ``age`` = days between the row's day and the snapshot,
    ``since_signup`` = days between signup and the row's day."""
    if s.window_days:
        return f"{age} < {s.window_days}"
    if s.within_days_of_signup:
        return f"{since_signup} >= 0 AND {since_signup} < {s.within_days_of_signup}"
    return "TRUE"


def visible(rel: str, snap: str) -> str:
    """A row of fx_* (``rel``) is known at snapshot ``snap``: it happened and arrived by then,
    and the identity link that attributes it (if any) was valid then."""
    return (f"{rel}.day <= {snap} AND {rel}.avail_day <= {snap} "
            f"AND ({rel}.until_day IS NULL OR {snap} < {rel}.until_day)")


def snapshots_sql(days: list[dt.date]) -> str:
    values = ", ".join(f"({sql_literal(d.isoformat())})" for d in days)
    return f"SELECT CAST(d AS DATE) AS snapshot_date FROM (VALUES {values}) AS t(d)"


def links_sql(last_day: dt.date, src: Sources = WAREHOUSE, only_ids: str | None = None) -> str:
    """Which user an anonymous id resolves to, and when: one row per (anonymous_id,
    from_day) with the user of the earliest link known on ``from_day`` (a link's partition)
    and ``until_day`` (exclusive), the arrival of the next link of that id. With
    ``only_ids`` (a SELECT of anonymous ids) only those ids are resolved."""
    last = f"CAST({sql_literal(last_day.isoformat())} AS DATE)"
    ids = f" AND anonymous_id IN ({only_ids})" if only_ids else ""
    return f"""
SELECT anonymous_id, from_day, until_day, user_id FROM (
  SELECT k.anonymous_id, k.from_day, k.until_day, l.user_id,
         ROW_NUMBER() OVER (PARTITION BY k.anonymous_id, k.from_day ORDER BY l.linked_at, l.user_id) AS rn
  FROM (SELECT anonymous_id, partition_date AS from_day,
               LEAD(partition_date) OVER (PARTITION BY anonymous_id ORDER BY partition_date) AS until_day
        FROM (SELECT DISTINCT anonymous_id, partition_date FROM {src.identity_links}
              WHERE partition_date <= {last}{ids}) AS d) AS k
  JOIN {src.identity_links} AS l ON l.anonymous_id = k.anonymous_id AND l.partition_date <= k.from_day
) AS ranked WHERE rn = 1"""


def events_sql(last_day: dt.date, src: Sources = WAREHOUSE, only_partitions: list[dt.date] | None = None,
               links: str | None = None) -> str:
    """Validated events known by ``last_day``, anonymous ones resolved through identity links.

    ``avail_day`` is the first day the row was known; ``until_day`` (exclusive) ends the
    validity of an identity resolution: an anonymous id resolves, on each day, to the
    user of its earliest link known that day (as validation does), so a link that
    arrives later with an earlier ``linked_at`` re-attributes the events from its
    arrival on, never before. With ``only_partitions``, events are read from those
    partitions only (the others come from the feature cache); a literal list, so the scan
    skips the other row groups. ``links`` names a relation that already holds
    ``links_sql``'s rows for ``last_day`` (else they are computed here)."""
    skip = ""
    if only_partitions is not None:
        listed = ", ".join(f"CAST({sql_literal(d.isoformat())} AS DATE)" for d in only_partitions)
        skip = f" AND e.partition_date IN ({listed})" if listed else " AND FALSE"
    end = sql_literal(f"{(last_day + dt.timedelta(days=1)).isoformat()} 00:00:00+00:00")
    last = f"CAST({sql_literal(last_day.isoformat())} AS DATE)"
    cols = ("e.account_id, e.event_type, e.event_name, e.event_ts, e.partition_date, e.message_id, "
            "e.properties, e.traits")
    if links is None:
        unresolved = (f"SELECT anonymous_id FROM {src.validated_events} AS e WHERE resolved_user_id IS NULL "
                      f"AND anonymous_id IS NOT NULL AND partition_date <= {last}{skip}")
        links = f"({links_sql(last_day, src, unresolved)})"
    return f"""
SELECT e.resolved_user_id AS user_id, {cols}, CAST(e.event_ts AS DATE) AS day, e.partition_date AS avail_day,
       CAST(NULL AS DATE) AS until_day
FROM {src.validated_events} AS e
WHERE e.resolved_user_id IS NOT NULL AND e.partition_date <= {last}
  AND e.event_ts < CAST({end} AS TIMESTAMPTZ){skip}
UNION ALL
SELECT r.user_id, {cols}, CAST(e.event_ts AS DATE) AS day,
       CASE WHEN r.from_day > e.partition_date THEN r.from_day ELSE e.partition_date END AS avail_day,
       r.until_day
FROM {src.validated_events} AS e
JOIN {links} AS r ON e.anonymous_id = r.anonymous_id
WHERE e.resolved_user_id IS NULL AND e.partition_date <= {last}
  AND e.event_ts < CAST({end} AS TIMESTAMPTZ){skip}"""


def _measure_signals(spec: FeatureSpec) -> list[Signal]:
    """Signals measured on fx_user_day (account count signals are summed over members)."""
    return [s for s in spec.signals.signals if s.kind not in ("distinct_count", "trait")] + [
        s for s in spec.signals.account_signals if s.kind == "count"]


def user_day_measures(spec: FeatureSpec) -> list[tuple[str, str]]:
    """(column, aggregate) of fx_user_day; numeric properties are parsed only for the
    signal's own events (an aggregate's argument is otherwise evaluated on every event)."""
    activity = f"event_type IN ({', '.join(sql_literal(t) for t in ACTIVITY_TYPES)})"
    conv = ", ".join(sql_literal(e) for e in spec.conversion_events)
    measures = [
        f"COUNT(*) FILTER (WHERE {activity}) AS n_events",
        f"COUNT(*) FILTER (WHERE event_name IN ({conv})) AS n_conversion",
        "MAX(event_ts) AS max_ts",
        "MAX(partition_date) AS max_pd",
    ]
    if spec.signals.signup_event:
        measures.append(f"COUNT(*) FILTER (WHERE event_name = {sql_literal(spec.signals.signup_event)}) AS n_signup")
    else:
        measures.append("0 AS n_signup")
    for s in _measure_signals(spec):
        cond = event_condition(s)
        m = sql_ident("m_" + s.name)
        if s.kind in ("count", "first_time", "recency", "trend"):
            measures.append(f"COUNT(*) FILTER (WHERE {cond}) AS {m}")
        elif s.kind in ("session_length", "share"):
            value = f"CASE WHEN {cond} THEN {num(s.prop)} END"
            if s.kind == "session_length":
                measures.append(f"SUM({value}) AS {m}")
            else:
                measures.append(f"COUNT(*) FILTER (WHERE {value} < {sql_literal(float(s.below))}) AS {m}")
            measures.append(f"COUNT({value}) AS {sql_ident('n_' + s.name)}")
    return [(expr.rsplit(" AS ", 1)[1].strip('"'), expr) for expr in measures]


def user_day_sql(spec: FeatureSpec, source: str = "fx_events") -> str:
    """Per user, day and availability: the measures every user signal is computed from."""
    measures = ", ".join(expr for _, expr in user_day_measures(spec))
    return (f"SELECT user_id, day, avail_day, until_day, {measures} FROM {source} "
            "GROUP BY user_id, day, avail_day, until_day")


def value_source(s: Signal) -> str:
    """Key of the distinct values a distinct-count signal reads: signals that count the
    same property of the same events (a user signal and its team-wide twin, or two
    windows) share one set of cached rows."""
    blob = json.dumps([s.event, sorted((s.where or {}).items()), s.prop], default=str)
    return "src_" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def distinct_signals(spec: FeatureSpec) -> list[Signal]:
    """The distinct-count signals of users and accounts."""
    return [s for s in [*spec.signals.signals, *spec.signals.account_signals] if s.kind == "distinct_count"]


def value_sources(spec: FeatureSpec) -> dict[str, Signal]:
    out: dict[str, Signal] = {}
    for s in distinct_signals(spec):
        out.setdefault(value_source(s), s)
    return out


def user_values_sql(spec: FeatureSpec, source: str = "fx_events") -> str | None:
    """Distinct (user, value source, value, day, availability) rows of the distinct-count
    signals; ``signal`` holds the value source (``value_source``)."""
    parts = [
        f"SELECT DISTINCT user_id, {sql_literal(key)} AS signal, {prop(s.prop)} AS value, day, avail_day, "
        f"until_day FROM {source} WHERE {event_condition(s)} AND {prop(s.prop)} IS NOT NULL"
        for key, s in value_sources(spec).items()]
    return " UNION ALL ".join(parts) if parts else None


def user_firsts_sql(spec: FeatureSpec, source: str = "fx_events") -> str | None:
    parts = []
    for s in spec.signals.signals:
        if s.kind == "first_time" and s.detail_property:
            parts.append(
                f"SELECT user_id, {sql_literal(s.name)} AS signal, {prop(s.detail_property)} AS value, "
                f"event_ts, message_id, day, avail_day, until_day FROM {source} WHERE {event_condition(s)}")
    return " UNION ALL ".join(parts) if parts else None


def _typed(expr: str, s: Signal) -> str:
    if s.type == "number":
        return f"TRY_CAST({expr} AS DOUBLE)"
    if s.type == "boolean":
        return f"TRY_CAST({expr} AS BOOLEAN)"
    return expr


def traits_sql(source: str = "fx_events") -> str:
    """Identify and group calls with their traits (few rows; read by the trait joins)."""
    return ("SELECT user_id, account_id, event_type, event_ts, message_id, traits, day, avail_day, until_day "
            f"FROM {source} WHERE event_type IN ('identify', 'group')")


def user_traits(spec: FeatureSpec) -> list[Signal]:
    return [s for s in spec.signals.signals if s.kind == "trait"]


def account_traits(spec: FeatureSpec) -> list[Signal]:
    """The account trait signals, plus the plan that tells paying accounts (``paid_plans``)."""
    traits = [s for s in spec.signals.account_signals if s.kind == "trait"]
    if spec.paid_plans:
        traits.append(Signal(name="plan_for_paying", kind="trait", property="plan", type="string"))
    return traits


def trait_columns(traits: list[Signal]) -> list[str]:
    """Per trait: its latest value (tv_), and the time (tt_) and message id (ti_) of the call
    that sent it, which order it against later calls."""
    return [f"{p}_{s.name}" for s in traits for p in ("tv", "tt", "ti")]


def traits_state_sql(traits: list[Signal], call: str, key: str, rows: str = "fx_traits",
                     snapshots: str = "fx_snapshots", only: str | None = None) -> str:
    """Per ``key`` and snapshot, for every key with a ``call`` call (identify / group) known
    by the snapshot: the latest value of each trait (``trait_columns``); a call without the
    trait leaves the earlier value in place, and ties on the timestamp go to the larger
    message id. ``rows``: the calls (shaped like fx_traits); ``only``: a SELECT of the keys
    to compute."""
    if not traits:
        return f"SELECT CAST(NULL AS VARCHAR) AS {key}, CAST(NULL AS DATE) AS snapshot_date WHERE FALSE"
    aggs, outs = [], []
    for s in traits:
        value = prop(s.prop, "t.traits")
        x = sql_ident("x_" + s.name)
        aggs.append(f"ARG_MAX(STRUCT_PACK(v := {value}, ts := t.event_ts, id := t.message_id), "
                    f"STRUCT_PACK(ts := t.event_ts, id := t.message_id)) FILTER (WHERE {value} IS NOT NULL) AS {x}")
        outs += [f"x.{x}.v AS {sql_ident('tv_' + s.name)}", f"x.{x}.ts AS {sql_ident('tt_' + s.name)}",
                 f"x.{x}.id AS {sql_ident('ti_' + s.name)}"]
    where = f"t.event_type = {sql_literal(call)} AND t.{key} IS NOT NULL"
    if only:
        where += f" AND t.{key} IN ({only})"
    return (f"SELECT x.{key}, x.snapshot_date, {', '.join(outs)} FROM ("
            f"SELECT t.{key}, s.snapshot_date, {', '.join(aggs)} FROM {rows} AS t "
            f"JOIN {snapshots} AS s ON {visible('t', 's.snapshot_date')} WHERE {where} "
            f"GROUP BY t.{key}, s.snapshot_date) AS x")


@dataclass(frozen=True)
class StateColumn:
    """A per-(user, snapshot) aggregate the user features are finished from (``fx_user_agg``).

    ``expr`` aggregates day rows that carry ``day``, ``age`` (days before the snapshot) and
    ``since_signup``; ``merge`` says how it combines with the same aggregate of more rows
    (sum, min, max); ``drop`` aggregates the rows that leave its window when the snapshot
    moves on by one day (``age`` then counted from the new snapshot), so that the state of
    a snapshot can be advanced to the next one (``state.py``); ``signup``: within a signup
    window (needs the signup day)."""

    name: str
    expr: str
    merge: str
    drop: str | None = None
    signup: bool = False


def _sum(col: str, where: str | None = None, count: bool = True) -> str:
    """``col`` summed over day rows; a count is kept as BIGINT (DuckDB sums BIGINTs into
    128-bit HUGEINTs, which every later join, merge and write of the state would carry)."""
    total = f"COALESCE(SUM({col}){f' FILTER (WHERE {where})' if where else ''}, 0)"
    return f"CAST({total} AS BIGINT)" if count else total


def _window_sum(name: str, col: str, s: Signal, count: bool = True) -> StateColumn:
    if s.window_days:
        w = s.window_days
        return StateColumn(name, _sum(col, f"age < {w}", count), "sum", _sum(col, f"age = {w}", count))
    if s.within_days_of_signup:
        return StateColumn(name, _sum(col, window_condition(s), count), "sum", signup=True)
    return StateColumn(name, _sum(col, count=count), "sum")


def state_columns(spec: FeatureSpec) -> list[StateColumn]:
    """The summed aggregates of fx_user_agg (active days and distinct values aside)."""
    cols = [
        StateColumn("sig_day", "MIN(day) FILTER (WHERE n_signup > 0)", "min"),
        StateColumn("first_day", "MIN(day)", "min"),
        StateColumn("last_active_day", "MAX(day) FILTER (WHERE n_events > 0)", "max"),
        StateColumn("n_conversion", _sum("n_conversion"), "sum"),
        StateColumn("max_event_ts", "MAX(max_ts)", "max"),
        StateColumn("max_partition_date", "MAX(max_pd)", "max"),
    ]
    for s in spec.signals.signals:
        m = sql_ident("m_" + s.name)
        if s.kind in ("count", "first_time"):
            cols.append(_window_sum("st_" + s.name, m, s))
        elif s.kind in ("session_length", "share"):
            cols.append(_window_sum("ss_" + s.name, m, s, count=s.kind == "share"))  # seconds: DOUBLE
            cols.append(_window_sum("sn_" + s.name, sql_ident("n_" + s.name), s))
        elif s.kind == "recency":
            cond = f"{m} > 0" if s.event else "n_events > 0"
            cols.append(StateColumn("sr_" + s.name, f"MAX(day) FILTER (WHERE {cond})", "max"))
        elif s.kind == "trend":
            p = s.period_days or 7
            col = m if s.event else "n_events"

            def at(age: int, col: str = col) -> str:
                return _sum(col, f"age = {age}")
            cols.append(StateColumn("sc_" + s.name, _sum(col, f"age < {p}"), "sum", at(p)))
            cols.append(StateColumn("sp_" + s.name, _sum(col, f"age >= {p} AND age < {2 * p}"), "sum",
                                    f"{at(2 * p)} - {at(p)}"))
    for s in spec.signals.account_signals:
        if s.kind == "count":
            cols.append(_window_sum("ac_" + s.name, sql_ident("m_" + s.name), s))
    return cols


def distinct_items(spec: FeatureSpec) -> list[Signal]:
    """User signals counted as distinct things per user: active days and distinct values."""
    return [s for s in spec.signals.signals if s.kind in ("active_days", "distinct_count")]


def item_column(s: Signal) -> str:
    return ("ad_" if s.kind == "active_days" else "dv_") + s.name


def finish_expr(s: Signal, a: str = "a") -> str:
    """A user signal's feature value from its state columns in ``a`` (a row of fx_user_agg)."""
    n = s.name
    if s.kind == "count":
        return f"{a}.{sql_ident('st_' + n)}"
    if s.kind == "first_time":
        return f"{a}.{sql_ident('st_' + n)} > 0"
    if s.kind in ("session_length", "share"):
        # rounded: sums of doubles vary in the last bits with the order of addition
        return f"ROUND(CAST({a}.{sql_ident('ss_' + n)} AS DOUBLE) / NULLIF({a}.{sql_ident('sn_' + n)}, 0), 6)"
    if s.kind == "recency":
        return f"DATE_DIFF('day', {a}.{sql_ident('sr_' + n)}, {a}.snapshot_date)"
    if s.kind == "trend":
        cur, prev = f"{a}.{sql_ident('sc_' + n)}", f"{a}.{sql_ident('sp_' + n)}"
        return f"ROUND(CAST({cur} - {prev} AS DOUBLE) / GREATEST({prev}, 1), 6)"
    if s.kind in ("active_days", "distinct_count"):
        return f"{a}.{sql_ident(item_column(s))}"
    raise ValueError(f"no state for kind {s.kind}")


def user_agg_sql(spec: FeatureSpec, day_rows: str = "fx_user_day", snapshots: str = "fx_snapshots") -> str:
    """Per (user, snapshot), for every user with a row known by the snapshot: the signup day
    and every state column that does not depend on it (``state_columns``). Signup-window
    sums, active days and distinct values are added by ``user_agg_signup_sql``."""
    aggs = ", ".join(f"{c.expr} AS {sql_ident(c.name)}" for c in state_columns(spec) if not c.signup)
    return f"""
SELECT user_id, snapshot_date,
       COALESCE(MIN(day) FILTER (WHERE n_signup > 0), MIN(day)) AS signup_day, {aggs}
FROM (SELECT d.*, s.snapshot_date, DATE_DIFF('day', d.day, s.snapshot_date) AS age
      FROM {day_rows} AS d JOIN {snapshots} AS s ON {visible('d', 's.snapshot_date')}) AS joined
GROUP BY user_id, snapshot_date"""


def user_agg_signup_sql(spec: FeatureSpec, agg0: str = "fx_user_agg0", day_rows: str = "fx_user_day",
                        value_rows: str = "fx_user_values", bitmap: frozenset[str] = frozenset(),
                        since: dt.date | None = None, window_masks: str | None = None,
                        masks: str = "fx_user_masks") -> str:
    """``agg0`` (``user_agg_sql``'s rows, which give the signup day) with the signup-window
    sums, the active days (distinct days, any window) and the distinct values of every user
    of ``agg0``: the complete state of fx_user_agg."""
    active = [s for s in spec.signals.signals if s.kind == "active_days"]
    signup_cols = [c for c in state_columns(spec) if c.signup]
    distinct = [s for s in spec.signals.signals if s.kind == "distinct_count"]
    rows = (f"SELECT d.*, g.snapshot_date, g.signup_day, DATE_DIFF('day', d.day, g.snapshot_date) AS age, "
            f"DATE_DIFF('day', g.signup_day, d.day) AS since_signup "
            f"FROM {day_rows} AS d JOIN {agg0} AS g ON d.user_id = g.user_id "
            f"AND {visible('d', 'g.snapshot_date')}")
    parts, cols = [], ["g.*"]

    def join(alias: str, sql: str, names: list[str]) -> None:
        """Left-join per-(user, snapshot) columns ``names`` of ``sql``; a user without rows gets 0."""
        parts.append(f"LEFT JOIN ({sql}) AS {alias} ON {alias}.user_id = g.user_id "
                     f"AND {alias}.snapshot_date = g.snapshot_date")
        cols.extend(f"COALESCE({alias}.{sql_ident(n)}, 0) AS {sql_ident(n)}" for n in names)

    if active:
        ad = ", ".join(f"COUNT(*) FILTER (WHERE {window_condition(s)}) AS {sql_ident(item_column(s))}" for s in active)
        # one row per distinct active day (a day can have rows from several partitions)
        join("ad", f"SELECT user_id, snapshot_date, {ad} FROM (SELECT DISTINCT user_id, snapshot_date, day, age, "
                   f"since_signup FROM ({rows}) AS r WHERE n_events > 0) AS dd GROUP BY user_id, snapshot_date",
             [item_column(s) for s in active])
    if signup_cols:
        sw = ", ".join(f"{c.expr} AS {sql_ident(c.name)}" for c in signup_cols)
        longest = max(s.within_days_of_signup for s in spec.signals.signals if s.within_days_of_signup)
        join("sw", f"SELECT user_id, snapshot_date, {sw} FROM ({rows}) AS r "
                   f"WHERE since_signup >= 0 AND since_signup < {longest} GROUP BY user_id, snapshot_date",
             [c.name for c in signup_cols])
    if distinct:
        join("dv", distinct_values_sql(distinct, "user_id", agg0, value_rows, bitmap, masks, since=since,
                                       window_masks=window_masks),
             [item_column(s) for s in distinct])
    return f"SELECT {', '.join(cols)} FROM {agg0} AS g {' '.join(parts)}"


def _skip_older(s: Signal, since: dt.date | None) -> str:
    """A condition on value rows ``v`` skipping those older than ``s``'s window of the
    earliest snapshot ``since`` (so that the scan skips them), or nothing."""
    if not (since and s.window_days):
        return ""
    return f" AND v.day > CAST({sql_literal((since - dt.timedelta(days=s.window_days)).isoformat())} AS DATE)"


def window_mask_key(s: Signal) -> str:
    """Names a distinct-count signal's (value source, window) in ``window_masks_sql``."""
    return f"{value_source(s)}:{s.window_days or 0}"


def shares_window_masks(s: Signal, bitmap: frozenset[str]) -> bool:
    """Counted from the per-user window masks: a masked source outside signup windows."""
    return s.kind == "distinct_count" and value_source(s) in bitmap and not s.within_days_of_signup


def window_masks_sql(signals: list[Signal], bitmap: frozenset[str], masks: str = "fx_user_masks",
                     snapshots: str = "fx_snapshots", since: dt.date | None = None) -> str:
    """Per user, snapshot and (value source, window) of the masked ``signals`` (``wkey``):
    the OR of the masks known by the snapshot within the window, so that user and account
    distinct counts of one source and window OR the masks of the window once."""
    shared: dict[str, Signal] = {}
    for s in signals:
        if shares_window_masks(s, bitmap):
            shared.setdefault(window_mask_key(s), s)
    parts = []
    for key, s in sorted(shared.items()):
        w = window_condition(s, age="DATE_DIFF('day', v.day, s.snapshot_date)") + _skip_older(s, since)
        parts.append(f"SELECT v.user_id, s.snapshot_date, {sql_literal(key)} AS wkey, BIT_OR(v.mask) AS mask "
                     f"FROM {masks} AS v JOIN {snapshots} AS s ON {visible('v', 's.snapshot_date')} "
                     f"WHERE v.signal = {sql_literal(value_source(s))} AND {w} GROUP BY v.user_id, s.snapshot_date")
    if not parts:
        return ("SELECT CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS DATE) AS snapshot_date, "
                "CAST(NULL AS VARCHAR) AS wkey, CAST(NULL AS BIGINT) AS mask WHERE FALSE")
    return " UNION ALL ".join(parts)


def distinct_values_sql(signals: list[Signal], key: str, groups: str, value_rows: str = "fx_user_values",
                        bitmap: frozenset[str] = frozenset(), masks: str = "fx_user_masks",
                        since: dt.date | None = None, window_masks: str | None = None) -> str:
    """Distinct values of distinct-count signals per ``key`` and snapshot over the users of
    ``groups`` (user rows: one user each; members: every member of an account) within each
    signal's window: one column dv_<signal> per signal. Sources in ``bitmap`` are counted
    from ``masks`` (the bits of the values seen per user and day) instead of their values,
    or, with ``window_masks`` (a relation of ``window_masks_sql``), from each user's masks
    of the window. ``since``: the earliest snapshot of ``groups``, so that rows older than
    every window are skipped by the scan."""
    parts = []
    for s in signals:
        w = window_condition(s, age="DATE_DIFF('day', v.day, g.snapshot_date)",
                             since_signup="DATE_DIFF('day', g.signup_day, v.day)") + _skip_older(s, since)
        src, name = sql_literal(value_source(s)), sql_literal(s.name)
        if window_masks and shares_window_masks(s, bitmap):
            parts.append(
                f"SELECT g.{key}, g.snapshot_date, {name} AS sig, CAST(BIT_COUNT(BIT_OR(um.mask)) AS BIGINT) AS n "
                f"FROM {window_masks} AS um "
                f"JOIN {groups} AS g ON um.user_id = g.user_id AND um.snapshot_date = g.snapshot_date "
                f"WHERE um.wkey = {sql_literal(window_mask_key(s))} GROUP BY g.{key}, g.snapshot_date")
            continue
        if value_source(s) in bitmap:
            parts.append(
                f"SELECT g.{key}, g.snapshot_date, {name} AS sig, CAST(BIT_COUNT(BIT_OR(v.mask)) AS BIGINT) AS n "
                f"FROM {masks} AS v JOIN {groups} AS g ON v.user_id = g.user_id "
                f"AND {visible('v', 'g.snapshot_date')} WHERE v.signal = {src} AND {w} "
                f"GROUP BY g.{key}, g.snapshot_date")
            continue
        parts.append(
            f"SELECT {key}, snapshot_date, sig, COUNT(*) AS n FROM ("
            f"SELECT DISTINCT g.{key}, g.snapshot_date, {name} AS sig, v.value "
            f"FROM {value_rows} AS v JOIN {groups} AS g ON v.user_id = g.user_id "
            f"AND {visible('v', 'g.snapshot_date')} WHERE v.signal = {src} AND {w}) AS d "
            f"GROUP BY {key}, snapshot_date, sig")
    pivot = ", ".join(f"COALESCE(MAX(n) FILTER (WHERE sig = {sql_literal(s.name)}), 0) AS {sql_ident('dv_' + s.name)}"
                      for s in signals)
    return (f"SELECT {key}, snapshot_date, {pivot} FROM ({' UNION ALL '.join(parts)}) AS c "
            f"GROUP BY {key}, snapshot_date")


def members_sql(src: Sources = WAREHOUSE, snapshots: str = "fx_snapshots") -> str:
    """Each user's account at each snapshot: the latest membership known by then."""
    return (f"SELECT m.user_id, s.snapshot_date, ARG_MAX(m.account_id, m.joined_at) AS account_id "
            f"FROM {src.account_memberships} AS m JOIN {snapshots} AS s "
            f"ON CAST(m.joined_at AS DATE) <= s.snapshot_date AND m.partition_date <= s.snapshot_date "
            f"GROUP BY m.user_id, s.snapshot_date")


def account_values_sql(spec: FeatureSpec, members: str = "fx_members", value_rows: str = "fx_user_values",
                       bitmap: frozenset[str] = frozenset(), since: dt.date | None = None,
                       window_masks: str | None = None) -> str:
    """Distinct values across the members of each account (account distinct-count signals)."""
    distinct = [s for s in spec.signals.account_signals if s.kind == "distinct_count"]
    if not distinct:
        return "SELECT CAST(NULL AS VARCHAR) AS account_id, CAST(NULL AS DATE) AS snapshot_date WHERE FALSE"
    return distinct_values_sql(distinct, "account_id", members, value_rows, bitmap, since=since,
                               window_masks=window_masks)


def user_features_sql(spec: FeatureSpec) -> str:
    """One row per (user, snapshot) for the users active within ``active_within_days`` of
    the snapshot, from fx_user_agg, fx_user_firsts, fx_user_traits and fx_members."""
    sigs = spec.signals
    select_cols, joins = [], []
    traits = user_traits(spec)
    for col, _dtype, s in sigs.user_columns():
        if s.kind == "first_time" and col.endswith("_detail"):
            alias = sql_ident("fv_" + s.name)
            w = window_condition(s, since_signup="DATE_DIFF('day', sp.signup_day, f.day)")
            select_cols.append(f"{alias}.value AS {sql_ident(col)}")
            # the value of the first occurrence (even if it has none), ties broken by message id
            joins.append(
                f"LEFT JOIN (SELECT f.user_id, sp.snapshot_date, "
                # wrapped: ARG_MIN skips a NULL argument, and the first occurrence may have no value
                f"ARG_MIN(STRUCT_PACK(v := f.value), STRUCT_PACK(ts := f.event_ts, id := f.message_id)).v AS value "
                f"FROM fx_user_firsts AS f JOIN spine AS sp ON f.user_id = sp.user_id "
                f"AND {visible('f', 'sp.snapshot_date')} "
                f"WHERE f.signal = {sql_literal(s.name)} AND {w} GROUP BY f.user_id, sp.snapshot_date) AS {alias} "
                f"ON {alias}.user_id = a.user_id AND {alias}.snapshot_date = a.snapshot_date")
        elif s.kind == "trait":
            select_cols.append(f"{_typed('tv.' + sql_ident('tv_' + s.name), s)} AS {sql_ident(col)}")
        else:
            select_cols.append(f"{finish_expr(s)} AS {sql_ident(col)}")
    if traits:
        joins.append("LEFT JOIN fx_user_traits AS tv ON tv.user_id = a.user_id AND tv.snapshot_date = a.snapshot_date")
    joins.append("LEFT JOIN fx_members AS mem ON mem.user_id = a.user_id AND mem.snapshot_date = a.snapshot_date")
    return f"""
WITH a AS (SELECT * FROM fx_user_agg WHERE last_active_day > snapshot_date - {spec.active_within_days}),
spine AS (SELECT user_id, snapshot_date, signup_day FROM a)
SELECT a.snapshot_date, a.user_id, mem.account_id, a.signup_day AS signup_date,
       DATE_DIFF('day', a.signup_day, a.snapshot_date) AS days_since_signup, a.n_conversion > 0 AS is_paying,
       {', '.join(select_cols)},
       a.max_event_ts, a.max_partition_date, {sql_literal(sigs.definition_hash)} AS definition_hash
FROM a
{chr(10).join(joins)}"""


def _rollup_expr(rollup: str, col: str, dtype: str) -> str:
    c = sql_ident(col)
    if dtype == "BOOLEAN":
        return {"max": f"MAX({c})", "min": f"MIN({c})", "sum": f"SUM(CAST({c} AS BIGINT))",
                "mean": f"AVG(CAST({c} AS DOUBLE))"}[rollup]
    if dtype == "DOUBLE":
        # summed exactly (user values carry 6 decimals): a float sum depends on the order the
        # engine's threads add rows in, so a range and one run per day could differ in the last digit
        exact = f"CAST({c} AS DECIMAL(38, 6))"
        return {"max": f"MAX({c})", "min": f"MIN({c})", "sum": f"CAST(SUM({exact}) AS DOUBLE)",
                "mean": f"CAST(AVG({exact}) AS DOUBLE)"}[rollup]
    return {"max": f"MAX({c})", "min": f"MIN({c})", "sum": f"SUM({c})", "mean": f"AVG(CAST({c} AS DOUBLE))"}[rollup]


def account_features_sql(spec: FeatureSpec) -> str:
    """One row per (account, snapshot) for accounts with at least one user row in
    fx_user_features; member activity comes from fx_user_agg (every member with a row),
    memberships from fx_members, distinct values across members from fx_account_values and
    firmographic traits from fx_account_traits."""
    sigs = spec.signals
    rolled = []
    for s in sigs.signals:
        for r in s.rollups:
            rolled.append(f"{_rollup_expr(r, s.name, s.dtype)} AS {sql_ident(rollup_column(r, s.name))}")
    member_aggs = []
    for s in sigs.account_signals:
        if s.kind in ("active_users", "active_seat_share"):
            w = f"u.last_active_day > mb.snapshot_date - {s.window_days}" if s.window_days else \
                "u.last_active_day IS NOT NULL"
            member_aggs.append(f"COUNT(*) FILTER (WHERE {w}) AS {sql_ident('au_' + s.name)}")
        elif s.kind == "count":
            member_aggs.append(f"SUM(u.{sql_ident('ac_' + s.name)}) AS {sql_ident('ac_' + s.name)}")
    select_cols, joins = [], []
    distinct = [s for s in sigs.account_signals if s.kind == "distinct_count"]
    traits = account_traits(spec)  # with the plan that tells paying accounts
    for col, dtype, s in sigs.account_columns():
        if s in sigs.signals:
            select_cols.append(f"ROUND(r.{sql_ident(col)}, 6) AS {sql_ident(col)}" if dtype == "DOUBLE"
                               else f"r.{sql_ident(col)}")
        elif s.kind == "seats":
            select_cols.append(f"COALESCE(st.seats, 0) AS {sql_ident(col)}")
        elif s.kind == "active_users":
            select_cols.append(f"COALESCE(md.{sql_ident('au_' + s.name)}, 0) AS {sql_ident(col)}")
        elif s.kind == "active_seat_share":
            select_cols.append(
                f"ROUND(CAST(COALESCE(md.{sql_ident('au_' + s.name)}, 0) AS DOUBLE) / NULLIF(st.seats, 0), 6) "
                f"AS {sql_ident(col)}")
        elif s.kind == "count":
            select_cols.append(f"COALESCE(md.{sql_ident('ac_' + s.name)}, 0) AS {sql_ident(col)}")
        elif s.kind == "distinct_count":
            select_cols.append(f"COALESCE(dv.{sql_ident('dv_' + s.name)}, 0) AS {sql_ident(col)}")
        elif s.kind == "trait":
            select_cols.append(f"{_typed('tv.' + sql_ident('tv_' + s.name), s)} AS {sql_ident(col)}")
    paid = ""
    if spec.paid_plans:
        paid = (f" OR COALESCE(tv.{sql_ident('tv_plan_for_paying')} IN "
                f"({', '.join(sql_literal(p) for p in spec.paid_plans)}), FALSE)")
    if distinct:
        joins.append("LEFT JOIN fx_account_values AS dv "
                     "ON dv.account_id = sp.account_id AND dv.snapshot_date = sp.snapshot_date")
    if traits:
        joins.append("LEFT JOIN fx_account_traits AS tv "
                     "ON tv.account_id = sp.account_id AND tv.snapshot_date = sp.snapshot_date")
    return f"""
WITH members AS (SELECT * FROM fx_members),
sp AS (SELECT DISTINCT account_id, snapshot_date FROM fx_user_features WHERE account_id IS NOT NULL),
st AS (SELECT account_id, snapshot_date, COUNT(*) AS seats FROM members GROUP BY account_id, snapshot_date),
md AS (
  SELECT mb.account_id, mb.snapshot_date, SUM(u.n_conversion) AS n_conversion,
         MAX(u.max_event_ts) AS max_ts, MAX(u.max_partition_date) AS max_pd,
         MIN(u.first_day) AS first_day{''.join(', ' + a for a in member_aggs)}
  FROM members AS mb JOIN fx_user_agg AS u ON u.user_id = mb.user_id AND u.snapshot_date = mb.snapshot_date
  GROUP BY mb.account_id, mb.snapshot_date
),
r AS (
  SELECT account_id, snapshot_date, MIN(signup_date) AS signup_date{''.join(', ' + x for x in rolled)}
  FROM fx_user_features WHERE account_id IS NOT NULL GROUP BY account_id, snapshot_date
)
SELECT sp.snapshot_date, sp.account_id, LEAST(r.signup_date, md.first_day) AS signup_date,
       DATE_DIFF('day', LEAST(r.signup_date, md.first_day), sp.snapshot_date) AS days_since_signup,
       (COALESCE(md.n_conversion, 0) > 0{paid}) AS is_paying,
       COALESCE(st.seats, 0) AS n_members,
       {', '.join(select_cols)},
       md.max_ts AS max_event_ts, md.max_pd AS max_partition_date,
       {sql_literal(sigs.definition_hash)} AS definition_hash
FROM sp
JOIN r ON r.account_id = sp.account_id AND r.snapshot_date = sp.snapshot_date
LEFT JOIN st ON st.account_id = sp.account_id AND st.snapshot_date = sp.snapshot_date
LEFT JOIN md ON md.account_id = sp.account_id AND md.snapshot_date = sp.snapshot_date
{chr(10).join(joins)}"""
