"""Incremental features: a snapshot's aggregates advanced from the previous day's.

A daily run computes the features of day S. Computing them from the whole history reads
every cached day row of every user; but if the aggregates of day T = S - 1
(``fx_user_agg``: window sums, last days, active days, distinct values, per user; distinct
values across members, per account; the latest identify and group traits, with the time
and message id of the call that sent each) were kept, the rows that make S differ from T
are few:

- rows known at S but not at T (``day = S`` or ``avail_day = S``: the new partition, late
  events, identity links that arrived on S) are added; a trait call among them replaces
  the kept value if it is later;
- rows that leave a window as the snapshot moves on a day (``day = S - window``) are taken
  out of window sums; a distinct value or an active day leaves a distinct count only if
  it was not also seen later within the window;
- users whose rows stop being visible (an identity link re-attributes their anonymous
  events from S on) or whose signup day moves, and accounts whose members change, are
  recomputed from their rows, as a full run would.

The state of a snapshot is only used for the next day and only if it is exactly what a
full run would start from: same feature definitions, every partition up to T in the
feature cache and validated at the same version as when the state was saved (a
fingerprint of ``validated_partitions`` up to T). Otherwise the run computes the day from
the history and saves its state. The states of the two most recent snapshot days are kept,
so the newest day can be recomputed incrementally too (e.g. after its partition was
validated again). Tests compare day-by-day incremental runs with runs from events.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from pql_pipeline.defs.features.sql import (
    FeatureSpec,
    Signal,
    account_traits,
    account_values_sql,
    distinct_items,
    distinct_signals,
    distinct_values_sql,
    item_column,
    state_columns,
    trait_columns,
    traits_state_sql,
    user_agg_signup_sql,
    user_agg_sql,
    user_traits,
    value_source,
    visible,
    window_masks_sql,
)
from pql_pipeline.lib.engine import DuckDBEngine, sql_ident, sql_literal
from pql_pipeline.lib.warehouse import table_exists

STATE_USERS = "feature_state_users"
STATE_ACCOUNTS = "feature_state_accounts"
STATE_USER_TRAITS = "feature_state_user_traits"
STATE_ACCOUNT_TRAITS = "feature_state_account_traits"
STATE_SNAPSHOTS = "feature_state_snapshots"
STATE_FORMAT = "4"  # bump when what a state holds changes
# what a state holds: the kept table and the temp table of a run it is saved from
STATE_TABLES = ((STATE_USERS, "fx_user_agg"), (STATE_ACCOUNTS, "fx_account_values"),
                (STATE_USER_TRAITS, "fx_user_traits"), (STATE_ACCOUNT_TRAITS, "fx_account_traits"))
KEEP = 2  # most recent snapshot days whose state is kept
ACTIVE = "__active_day"  # the value source of active days: the day itself
TEMPS = ("fx_state", "fx_state_accounts", "fx_delta", "fx_delta_agg", "fx_drop_agg", "fx_hard", "fx_hard_accounts",
         "fx_item_rows", "fx_item_delta", "fx_cand", "fx_item_chg", "fx_acct_cand", "fx_acct_chg", "fx_h_user_day",
         "fx_h_user_values", "fx_h_user_masks", "fx_h_agg0", "fx_h_user_agg", "fx_h_members", "fx_snap_one", "fx_bdv",
         "fx_user_wmasks", "fx_trait_delta")


def state_hash(spec: FeatureSpec) -> str:
    return hashlib.sha256(f"{spec.measures_hash}|{spec.signals.definition_hash}|{STATE_FORMAT}".encode()
                          ).hexdigest()[:16]


def fingerprint(conn, day: dt.date) -> str:
    """The partitions (and their versions) a snapshot of ``day`` is computed from."""
    n, digest = conn.execute(
        "SELECT count(*), md5(COALESCE(string_agg(CAST(partition_date AS VARCHAR) || '=' || version, ',' "
        "ORDER BY partition_date), '')) FROM validated_partitions WHERE partition_date <= ?", [day]).fetchall()[0]
    return f"{n}:{digest}"


def usable(conn, spec: FeatureSpec, day: dt.date) -> bool:
    """Whether the saved state of the day before ``day`` is exactly what a full run of
    ``day`` would start from (the cache must hold every partition up to then: checked by
    the caller)."""
    if not table_exists(conn, STATE_SNAPSHOTS):
        return False
    prev = day - dt.timedelta(days=1)
    rows = conn.execute(f"SELECT fingerprint FROM {STATE_SNAPSHOTS} WHERE snapshot_date = ? AND state_hash = ?",
                        [prev, state_hash(spec)]).fetchall()
    return bool(rows) and rows[0][0] == fingerprint(conn, prev)


def user_state_names(spec: FeatureSpec) -> list[str]:
    """fx_user_agg's columns in the order the full computation gives them."""
    cols = state_columns(spec)
    names = ["user_id", "snapshot_date", "signup_day"] + [c.name for c in cols if not c.signup]
    names += [item_column(s) for s in spec.signals.signals if s.kind == "active_days"]
    names += [c.name for c in cols if c.signup]
    names += [item_column(s) for s in spec.signals.signals if s.kind == "distinct_count"]
    return names


def _account_items(spec: FeatureSpec):
    return [s for s in spec.signals.account_signals if s.kind == "distinct_count"]


def _date(d: dt.date) -> str:
    return f"CAST({sql_literal(d.isoformat())} AS DATE)"


def _item_source(s) -> str:
    return ACTIVE if s.kind == "active_days" else value_source(s)


def _drop_ages(spec: FeatureSpec) -> list[int]:
    ages = set()
    for s in [*spec.signals.signals, *spec.signals.account_signals]:
        if s.window_days:
            ages.add(s.window_days)
        if s.kind == "trend":
            p = s.period_days or 7
            ages |= {p, 2 * p}
    return sorted(ages)


def _changes(eng: DuckDBEngine, items, day: dt.date, out: str, keys: str, cand: str, members: bool) -> None:
    """How much each distinct count of ``items`` changes from T to S = ``day``, per key:
    +1 for each value known at S within its window that was not known at T within the part
    of the window both days share, -1 for each value that leaves the window and was not seen
    again in it. ``keys``: a relation (user_id, k, signup_day) giving the key of a user's
    rows: the user itself, or (``members``) the member's account."""
    S, T = _date(day), _date(day - dt.timedelta(days=1))
    parts = []
    for s in items:
        src, name = sql_literal(_item_source(s)), sql_literal(item_column(s))
        w, n = s.window_days, s.within_days_of_signup
        head = f"SELECT k.k, {name} AS item, r.value"
        win = f"DATE_DIFF('day', r.day, {S}) < {w}" if w else (
            f"DATE_DIFF('day', k.signup_day, r.day) >= 0 AND DATE_DIFF('day', k.signup_day, r.day) < {n}"
            if n else "TRUE")
        parts.append(f"{head}, TRUE AS in_n, FALSE AS in_d FROM fx_item_delta AS r "
                     f"JOIN {keys} AS k ON k.user_id = r.user_id WHERE r.src = {src} AND {win}")
        if w:
            drop_day = _date(day - dt.timedelta(days=w))
            parts.append(f"{head}, FALSE AS in_n, TRUE AS in_d FROM fx_item_rows AS r "
                         f"JOIN {keys} AS k ON k.user_id = r.user_id "
                         f"WHERE r.src = {src} AND r.day = {drop_day} AND {visible('r', T)}")
    eng.temp(cand, f"SELECT k, item, value, BOOL_OR(in_n) AS in_n, BOOL_OR(in_d) AS in_d "
                   f"FROM ({' UNION ALL '.join(parts)}) AS x GROUP BY k, item, value")
    # the candidates also known at T within the window S and T share: each candidate (key,
    # value) looked up among the rows of that source and window known at T (an active day of
    # S was never known at T, so only late days are looked up)
    found = []
    for s in items:
        name = sql_literal(item_column(s))
        where = [visible("r", T)]
        if s.window_days:
            where.append(f"r.day > {_date(day - dt.timedelta(days=s.window_days))}")
        if s.kind == "active_days":
            # a candidate day is looked up as that day of the user's rows: the window, and a
            # signup window, hold for it as they held for the candidate
            found.append(
                f"SELECT DISTINCT r.user_id AS k, {name} AS item, CAST(r.day AS VARCHAR) AS value "
                f"FROM fx_user_day AS r JOIN (SELECT DISTINCT k, CAST(value AS DATE) AS d FROM {cand} "
                f"WHERE item = {name} AND value < CAST({S} AS VARCHAR)) AS c ON c.k = r.user_id AND c.d = r.day "
                f"WHERE r.n_events > 0 AND {' AND '.join(where)}")
            continue
        pairs = f"(SELECT DISTINCT k, value FROM {cand} WHERE item = {name}) AS c"
        rows = f"(SELECT * FROM fx_user_values WHERE signal = {sql_literal(_item_source(s))}) AS r"
        if members:
            found.append(f"SELECT DISTINCT c.k, {name} AS item, r.value FROM {rows} "
                         f"JOIN fx_members AS m ON m.user_id = r.user_id "
                         f"JOIN {pairs} ON c.k = m.account_id AND c.value = r.value WHERE {' AND '.join(where)}")
            continue
        join = ""
        if s.within_days_of_signup:
            join = "JOIN fx_state AS st ON st.user_id = r.user_id "
            where.append(f"DATE_DIFF('day', st.signup_day, r.day) >= 0 "
                         f"AND DATE_DIFF('day', st.signup_day, r.day) < {s.within_days_of_signup}")
        found.append(f"SELECT DISTINCT c.k, {name} AS item, r.value FROM {rows} "
                     f"JOIN {pairs} ON c.k = r.user_id AND c.value = r.value {join}WHERE {' AND '.join(where)}")
    present = " UNION ALL ".join(found)
    pivot = ", ".join(f"CAST(COALESCE(SUM(chg) FILTER (WHERE item = {sql_literal(item_column(s))}), 0) AS BIGINT) "
                      f"AS {sql_ident(item_column(s))}" for s in items)
    eng.temp(out, f"""
SELECT k, {pivot} FROM (
  SELECT c.k, c.item,
         COUNT(*) FILTER (WHERE c.in_n AND p.k IS NULL)
         - COUNT(*) FILTER (WHERE c.in_d AND p.k IS NULL) AS chg
  FROM {cand} AS c LEFT JOIN ({present}) AS p ON p.k = c.k AND p.item = c.item AND p.value = c.value
  GROUP BY c.k, c.item) AS x
GROUP BY k""")


def _advance_traits(eng: DuckDBEngine, traits: list[Signal], call: str, key: str, table: str, out: str,
                    day: dt.date, hard: str | None) -> None:
    """``out``: the latest traits per ``key`` at S = ``day``, from the saved ones of T and the
    ``call`` calls that became known at S; keys of ``hard`` (a SELECT of the keys that lost
    calls known at T) are computed from all their calls. An account never loses a call (a
    re-attributed call stays with the account it named), so accounts have no hard keys."""
    S, T = _date(day), _date(day - dt.timedelta(days=1))
    if not traits:
        eng.temp(out, traits_state_sql(traits, call, key))
        return
    eng.temp("fx_trait_delta", traits_state_sql(
        traits, call, key, rows=f"(SELECT * FROM fx_traits AS d WHERE d.day = {S} OR d.avail_day = {S})",
        snapshots="fx_snap_one"))
    cols = []
    for s in traits:
        tv, tt, ti = (sql_ident(f"{p}_{s.name}") for p in ("tv", "tt", "ti"))
        newer = (f"d.{tt} IS NOT NULL AND (st.{tt} IS NULL OR d.{tt} > st.{tt} "
                 f"OR (d.{tt} = st.{tt} AND d.{ti} > st.{ti}))")
        cols += [f"CASE WHEN {newer} THEN d.{c} ELSE st.{c} END AS {c}" for c in (tv, tt, ti)]
    keep = f"COALESCE(st.{key}, d.{key}) NOT IN ({hard})" if hard else "TRUE"
    merged = (f"SELECT COALESCE(st.{key}, d.{key}) AS {key}, {S} AS snapshot_date, {', '.join(cols)} "
              f"FROM (SELECT * FROM {table} WHERE snapshot_date = {T}) AS st "
              f"FULL JOIN fx_trait_delta AS d ON d.{key} = st.{key} WHERE {keep}")
    if hard:
        names = ", ".join(sql_ident(c) for c in [key, "snapshot_date", *trait_columns(traits)])
        merged += (f" UNION ALL SELECT {names} FROM ("
                   f"{traits_state_sql(traits, call, key, snapshots='fx_snap_one', only=hard)}) AS h")
    eng.temp(out, merged)


def _count(eng: DuckDBEngine, table: str) -> int:
    return eng.conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def advance(eng: DuckDBEngine, spec: FeatureSpec, day: dt.date, memberships: str = "account_memberships",
            bitmap: frozenset[str] = frozenset()) -> dict:
    """Compute fx_user_agg and fx_account_values of ``day`` from the saved state of the day
    before (``usable`` must hold) and the rows that changed; fx_user_day, fx_user_values,
    fx_user_day_raw (every row that an identity link resolves) and fx_members (of ``day``)
    must exist. Returns counts for the run's metadata."""
    S, T = _date(day), _date(day - dt.timedelta(days=1))
    cols = state_columns(spec)
    names = user_state_names(spec)
    items = distinct_items(spec)
    # distinct values of sources with few values are counted from their masks, for every user
    # (cheap); active days and the other distinct values are advanced
    bitems = [s for s in items if s.kind == "distinct_count" and value_source(s) in bitmap]
    items = [s for s in items if s not in bitems]
    eng.temp("fx_snap_one", f"SELECT {S} AS snapshot_date")
    eng.temp("fx_state", f"SELECT * FROM {STATE_USERS} WHERE snapshot_date = {T}")
    # day rows known at S that were not known at T
    eng.temp("fx_delta", f"SELECT * FROM fx_user_day AS d WHERE (d.day = {S} OR d.avail_day = {S}) "
                         f"AND {visible('d', S)}")
    aggs = ", ".join(f"{c.expr} AS {sql_ident(c.name)}" for c in cols)
    eng.temp("fx_delta_agg", f"""
SELECT user_id, {aggs} FROM (
  SELECT d.*, DATE_DIFF('day', d.day, {S}) AS age, DATE_DIFF('day', st.signup_day, d.day) AS since_signup
  FROM fx_delta AS d LEFT JOIN fx_state AS st ON st.user_id = d.user_id) AS r
GROUP BY user_id""")
    # recomputed from their rows: users with rows known at T but not at S (only identity
    # resolutions end, and fx_user_day_raw holds those rows), new users, moved signups
    eng.temp("fx_hard", f"""
SELECT user_id FROM fx_user_day_raw WHERE until_day = {S} AND day <= {T} AND avail_day <= {T}
UNION
SELECT a.user_id FROM fx_delta_agg AS a LEFT JOIN fx_state AS st ON st.user_id = a.user_id
WHERE st.user_id IS NULL
   OR COALESCE(LEAST(st.sig_day, a.sig_day), LEAST(st.first_day, a.first_day)) IS DISTINCT FROM st.signup_day""")
    ages = _drop_ages(spec)
    drops = [c for c in cols if c.drop]
    if drops and ages:
        days = ", ".join(_date(day - dt.timedelta(days=a)) for a in ages)
        eng.temp("fx_drop_agg", f"""
SELECT user_id, {', '.join(f'{c.drop} AS {sql_ident(c.name)}' for c in drops)} FROM (
  SELECT d.*, DATE_DIFF('day', d.day, {S}) AS age FROM fx_user_day AS d
  WHERE d.day IN ({days}) AND {visible('d', T)}) AS r
GROUP BY user_id""")
    else:
        drops = []
    # distinct counts (active days, distinct values) of users and accounts
    eng.view("fx_item_rows", f"""
SELECT user_id, signal AS src, value, day, avail_day, until_day FROM fx_user_values
UNION ALL
SELECT user_id, {sql_literal(ACTIVE)} AS src, CAST(day AS VARCHAR) AS value, day, avail_day, until_day
FROM fx_user_day WHERE n_events > 0""")
    eng.temp("fx_item_delta", f"SELECT * FROM fx_item_rows AS r WHERE (r.day = {S} OR r.avail_day = {S}) "
                              f"AND {visible('r', S)}")
    if items:
        _changes(eng, items, day, "fx_item_chg", "(SELECT user_id, user_id AS k, signup_day FROM fx_state "
                 "WHERE user_id NOT IN (SELECT user_id FROM fx_hard))", "fx_cand", members=False)

    # users recomputed from their rows, as the full computation does
    # (their rows are read from the history once, then from these small tables)
    hard_rows = "WHERE user_id IN (SELECT user_id FROM fx_hard)"
    eng.temp("fx_h_user_day", f"SELECT * FROM fx_user_day {hard_rows}")
    # (sources counted from masks are not read from their values)
    sources = ", ".join(sql_literal(value_source(s)) for s in spec.signals.signals
                        if s.kind == "distinct_count" and value_source(s) not in bitmap)
    eng.temp("fx_h_user_values", f"SELECT * FROM fx_user_values {hard_rows} AND signal IN ({sources or 'NULL'})")
    if bitmap:
        eng.temp("fx_h_user_masks", f"SELECT * FROM fx_user_masks {hard_rows}")
    eng.temp("fx_h_agg0", user_agg_sql(spec, "fx_h_user_day", "fx_snap_one"))
    eng.temp("fx_h_user_agg", user_agg_signup_sql(spec, "fx_h_agg0", "fx_h_user_day", "fx_h_user_values",
                                                  bitmap, since=day, masks="fx_h_user_masks"))

    def merged(c) -> str:
        st, a = f"st.{sql_ident(c.name)}", f"a.{sql_ident(c.name)}"
        if c.merge == "min":
            return f"LEAST({st}, {a})"
        if c.merge == "max":
            return f"GREATEST({st}, {a})"
        drop = f" - COALESCE(dr.{sql_ident(c.name)}, 0)" if c in drops else ""
        return f"{st}{drop} + COALESCE({a}, 0)"

    exprs = {"user_id": "st.user_id", "snapshot_date": S,
             "signup_day": "COALESCE(LEAST(st.sig_day, a.sig_day), LEAST(st.first_day, a.first_day))"}
    exprs.update({c.name: merged(c) for c in cols})
    exprs.update({item_column(s): f"st.{sql_ident(item_column(s))} + COALESCE(ch.{sql_ident(item_column(s))}, 0)"
                  for s in items})
    joins = ["LEFT JOIN fx_delta_agg AS a ON a.user_id = st.user_id"]
    if drops:
        joins.append("LEFT JOIN fx_drop_agg AS dr ON dr.user_id = st.user_id")
    if items:
        joins.append("LEFT JOIN fx_item_chg AS ch ON ch.k = st.user_id")
    bcols = [item_column(s) for s in bitems]
    # each user's masks of a window, OR-ed once for users and accounts
    eng.temp("fx_user_wmasks", window_masks_sql(distinct_signals(spec), bitmap, snapshots="fx_snap_one", since=day))
    if bitems:
        # every kept user's distinct values of few-valued sources, from the masks of the window
        # (a user whose signup day moves is recomputed: the kept one holds for the others)
        kept = f"(SELECT user_id, {S} AS snapshot_date, signup_day FROM fx_state)"
        eng.temp("fx_bdv", distinct_values_sql(bitems, "user_id", kept, bitmap=bitmap, since=day,
                                               window_masks="fx_user_wmasks"))
        exprs.update({n: f"COALESCE(b.{sql_ident(n)}, 0)" for n in bcols})
        joins.append("LEFT JOIN fx_bdv AS b ON b.user_id = st.user_id")
    eng.temp("fx_user_agg", f"""
SELECT {', '.join(f'{exprs[n]} AS {sql_ident(n)}' for n in names)}
FROM fx_state AS st {' '.join(joins)}
WHERE st.user_id NOT IN (SELECT user_id FROM fx_hard)
UNION ALL
SELECT {', '.join(sql_ident(n) for n in names)} FROM fx_h_user_agg""")
    counts = {"delta_rows": _count(eng, "fx_delta"), "users_recomputed": _count(eng, "fx_hard")}
    # what the users' state was advanced from is no longer needed: its memory goes back
    eng.drop("fx_state", "fx_delta", "fx_delta_agg", "fx_drop_agg", "fx_cand", "fx_item_chg",
             "fx_bdv", "fx_h_agg0", "fx_h_user_agg", "fx_h_user_day", "fx_h_user_values", "fx_h_user_masks")

    # accounts: recomputed if their members changed (a membership became known at S) or a
    # member's rows stopped being visible; else advanced like the users' distinct counts
    acc = _account_items(spec)
    if acc and all(value_source(s) in bitmap for s in acc):
        eng.temp("fx_hard_accounts", "SELECT CAST(NULL AS VARCHAR) AS account_id WHERE FALSE")
        eng.temp("fx_account_values", account_values_sql(spec, bitmap=bitmap, since=day,
                                                          window_masks="fx_user_wmasks"))
    elif acc:
        eng.temp("fx_hard_accounts", f"""
WITH moved AS (
  SELECT DISTINCT user_id FROM {memberships}
  WHERE partition_date <= {S} AND CAST(joined_at AS DATE) <= {S}
    AND (partition_date = {S} OR CAST(joined_at AS DATE) = {S})
)
SELECT account_id FROM fx_members
WHERE user_id IN (SELECT user_id FROM moved)
   OR user_id IN (SELECT user_id FROM fx_user_day_raw WHERE until_day = {S})
UNION
SELECT ARG_MAX(m.account_id, m.joined_at) AS account_id FROM {memberships} AS m
WHERE m.user_id IN (SELECT user_id FROM moved) AND m.partition_date <= {T} AND CAST(m.joined_at AS DATE) <= {T}
GROUP BY m.user_id""")
        eng.temp("fx_state_accounts", f"SELECT * FROM {STATE_ACCOUNTS} WHERE snapshot_date = {T}")
        _changes(eng, acc, day, "fx_acct_chg", "(SELECT user_id, account_id AS k, CAST(NULL AS DATE) AS signup_day "
                 "FROM fx_members WHERE account_id NOT IN (SELECT account_id FROM fx_hard_accounts "
                 "WHERE account_id IS NOT NULL))", "fx_acct_cand", members=True)
        eng.temp("fx_h_members", "SELECT * FROM fx_members WHERE account_id IN (SELECT account_id FROM fx_hard_accounts)")
        acols = [item_column(s) for s in acc]
        eng.temp("fx_account_values", f"""
SELECT COALESCE(st.account_id, ch.k) AS account_id, {S} AS snapshot_date,
       {', '.join(f'COALESCE(st.{sql_ident(c)}, 0) + COALESCE(ch.{sql_ident(c)}, 0) AS {sql_ident(c)}' for c in acols)}
FROM fx_state_accounts AS st FULL JOIN fx_acct_chg AS ch ON ch.k = st.account_id
WHERE COALESCE(st.account_id, ch.k) NOT IN (SELECT account_id FROM fx_hard_accounts WHERE account_id IS NOT NULL)
UNION ALL
SELECT account_id, snapshot_date, {', '.join(sql_ident(c) for c in acols)}
FROM ({account_values_sql(spec, 'fx_h_members', since=day)}) AS h""")
    else:
        eng.temp("fx_account_values", account_values_sql(spec, since=day))

    # a user's calls known at T stay known at S unless an identity link re-attributes them
    # (only those users' traits are computed from their calls; new users and moved signups
    # merge like the others)
    lost = (f"SELECT DISTINCT user_id FROM fx_traits_raw WHERE event_type = 'identify' AND until_day = {S} "
            f"AND day <= {T} AND avail_day <= {T}")
    _advance_traits(eng, user_traits(spec), "identify", "user_id", STATE_USER_TRAITS, "fx_user_traits", day,
                    hard=lost if _count(eng, f"({lost}) AS l") else None)
    _advance_traits(eng, account_traits(spec), "group", "account_id", STATE_ACCOUNT_TRAITS, "fx_account_traits", day,
                    hard=None)

    return {**counts, "accounts_recomputed": _count(eng, "fx_hard_accounts") if acc else 0}


def save(eng: DuckDBEngine, spec: FeatureSpec, fingerprints: dict[dt.date, str]) -> list[dt.date]:
    """Keep the states (``STATE_TABLES``: fx_user_agg, fx_account_values and the traits) of
    those of ``fingerprints``' days that are among the ``KEEP`` most recent snapshot days
    with a state; returns the days saved."""
    conn = eng.conn
    h = state_hash(spec)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_SNAPSHOTS} (snapshot_date DATE, state_hash VARCHAR, "
                 "fingerprint VARCHAR, saved_at TIMESTAMPTZ)")
    for table, tmp in STATE_TABLES:
        cols = [r[:2] for r in conn.execute(f"DESCRIBE {tmp}").fetchall()]
        if table_exists(conn, table) and [r[:2] for r in conn.execute(f"DESCRIBE {table}").fetchall()] != cols:
            # other columns or types: the definitions changed, and no state kept is usable any more
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"DELETE FROM {STATE_SNAPSHOTS}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM {tmp} WHERE FALSE")
    kept = {r[0] for r in conn.execute(f"SELECT snapshot_date FROM {STATE_SNAPSHOTS} WHERE state_hash = ?",
                                       [h]).fetchall()}
    newest = set(sorted(kept | set(fingerprints), reverse=True)[:KEEP])
    save_days = sorted(set(fingerprints) & newest)
    conn.execute("BEGIN TRANSACTION")
    try:
        gone = sorted((kept - newest) | set(save_days))
        for table, _ in STATE_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE snapshot_date NOT IN (SELECT snapshot_date FROM "
                         f"{STATE_SNAPSHOTS} WHERE state_hash = ?)", [h])
            if gone:
                conn.execute(f"DELETE FROM {table} WHERE snapshot_date IN ({', '.join('?' for _ in gone)})", gone)
        conn.execute(f"DELETE FROM {STATE_SNAPSHOTS} WHERE state_hash <> ?", [h])
        if gone:
            conn.execute(f"DELETE FROM {STATE_SNAPSHOTS} WHERE snapshot_date IN ({', '.join('?' for _ in gone)})",
                         gone)
        for d in save_days:
            for table, tmp in STATE_TABLES:
                conn.execute(f"INSERT INTO {table} SELECT * FROM {tmp} WHERE snapshot_date = ?", [d])
            conn.execute(f"INSERT INTO {STATE_SNAPSHOTS} VALUES (?, ?, ?, now())", [d, h, fingerprints[d]])
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return save_days


def drop_temps(eng: DuckDBEngine) -> None:
    eng.drop(*TEMPS)
