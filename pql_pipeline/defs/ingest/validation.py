"""Event lines -> raw_events -> validated_events / quarantined_events / duplicate_events, in SQL.

Row-level rules are compiled from the inbound contract (``segment_events.odcs.yaml``) and
applied while the lines are loaded (``parse_sql``): each line is parsed once, and
raw_events keeps its typed envelope, or, for a line that broke a rule, its verbatim text.

* line rules (always): not UTF-8, longer than ``maxEventBytes``, not JSON, not a JSON object;
* per envelope property: ``required`` -> ``<field>.required``, ``logicalType`` ->
  ``<field>.type``, ``timestamp`` fields must parse -> ``<field>.parse``,
  ``invalidValues`` quality -> its id;
* ``custom`` quality rules with ``engine: row-predicate`` on the envelope object;
* the tracking plan (every other schema object): unknown track event names ->
  ``event.in_tracking_plan``; required / typed properties per event ->
  ``properties.required`` / ``properties.type``.

A row that breaks any rule goes to ``quarantined_events`` with every rule id and a
sentence per rule; the first rule is its ``rule_id``. Of the remaining rows, a repeated
``messageId`` (earlier in the partition, or validated in the previous
``dedup_lookback_days`` days) is recorded in ``duplicate_events``; first wins by
(source_file, line_no). The rest is typed, normalised to UTC, identity-resolved and
written to ``validated_events``. Every write replaces the partition, so a re-run gives
identical tables, and ``raw = validated + duplicates + quarantined`` holds by construction
and is checked independently.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import duckdb
import pandas as pd

from pql_pipeline.lib.contracts import Contract, ContractError
from pql_pipeline.lib.engine import sql_ident, sql_literal
from pql_pipeline.lib.warehouse import dates_sql, registered

# JSON type names (duckdb json_type) accepted for each ODCS logicalType
JSON_TYPES = {
    "string": ("VARCHAR",),
    "timestamp": ("VARCHAR",),
    "date": ("VARCHAR",),
    "time": ("VARCHAR",),
    "integer": ("BIGINT", "UBIGINT"),
    "number": ("BIGINT", "UBIGINT", "DOUBLE"),
    "boolean": ("BOOLEAN",),
    "object": ("OBJECT",),
    "map": ("OBJECT",),
    "array": ("ARRAY",),
}

ENVELOPE = "segment_event"

# tables validation rebuilds per partition (besides raw_events, which it reads)
PARTITION_TABLES = ("quarantined_events", "duplicate_events", "validated_events", "identity_links",
                    "account_memberships")


@dataclass(frozen=True)
class RowRule:
    id: str
    condition: str  # SQL predicate, TRUE = violation
    reason: str  # SQL expression producing the sentence


def _raw_path(*keys: str) -> str:
    """A JSON path with every key quoted (safe for spaces, dots and quotes), unescaped for SQL."""
    return "$" + "".join('."' + k.replace('"', '\\"') + '"' for k in keys)


def _path(*keys: str) -> str:
    return sql_literal(_raw_path(*keys))


def _types_sql(types: tuple[str, ...]) -> str:
    return "(" + ", ".join(sql_literal(t) for t in types) + ")"


def _show(expr: str, width: int = 60) -> str:
    """SQL that renders a JSON value for a reason sentence, truncated."""
    return f"left(coalesce(CAST({expr} AS VARCHAR), 'null'), {width})"


def _jt(field: str) -> str:
    """Column holding json_type() of an envelope field (computed once per row)."""
    return sql_ident("jt__" + field)


def _sv(field: str) -> str:
    """Column holding the trimmed string value of an envelope field (NULL unless a non-empty string)."""
    return sql_ident("sv__" + field)


def _pt(prop: str) -> str:
    """Column holding json_type() of a tracking-plan property inside ``properties``."""
    return sql_ident("pt__" + prop)


@dataclass(frozen=True)
class CompiledRules:
    rules: list[RowRule]
    fields: list[str]  # envelope fields extracted from each line
    plan_properties: list[str]  # every property name of the tracking plan
    max_bytes: int


def compile_row_rules(contract: Contract) -> CompiledRules:
    """Rules evaluated on parsable rows, over per-row columns computed once (see _checked_sql)."""
    env = contract.object(ENVELOPE)
    fields = [p.name for p in env.properties or []]
    for required in ("messageId", "type", "timestamp"):
        if required not in fields:
            raise ContractError(f"{contract.path.name}: {ENVELOPE} must declare {required!r}")
    rules: list[RowRule] = []
    for p in env.properties or []:
        f = f"json_extract(raw_line, {_path(p.name)})"
        jt, sv = _jt(p.name), _sv(p.name)
        if p.required:
            cond = f"({jt} IS NULL OR {jt} = 'NULL' OR ({jt} = 'VARCHAR' AND {sv} IS NULL))"
            rules.append(RowRule(f"{p.name}.required", cond, sql_literal(f"{p.name} is missing")))
        if p.logicalType:
            allowed = JSON_TYPES.get(p.logicalType)
            if allowed is None:
                raise ContractError(f"{contract.path.name}: {p.name}: unsupported logicalType {p.logicalType!r}")
            cond = f"({jt} <> 'NULL' AND {jt} NOT IN {_types_sql(allowed)})"
            reason = f"{sql_literal(p.name + ' must be ' + p.logicalType + ', got ')} || lower({jt}) || ': ' || {_show(f)}"
            rules.append(RowRule(f"{p.name}.type", cond, reason))
            if p.logicalType in ("timestamp", "date"):
                parsed = sql_ident("ts__" + p.name)
                cond = f"({sv} IS NOT NULL AND ({parsed} IS NULL OR NOT isfinite({parsed})))"
                reason = f"{sql_literal(p.name + ' is not an ISO-8601 timestamp: ')} || {_show(f)}"
                rules.append(RowRule(f"{p.name}.parse", cond, reason))
        for q in p.quality or []:
            metric = q.metric or q.rule
            values = (q.arguments or {}).get("validValues")
            if metric == "invalidValues" and values:
                rid = q.name or q.id or f"{p.name}.allowed"
                cond = f"({sv} NOT IN ({', '.join(sql_literal(str(v)) for v in values)}))"
                reason = f"{sql_literal(p.name + ' not one of ' + ', '.join(map(str, values)) + ': ')} || {_show(f)}"
                rules.append(RowRule(rid, cond, reason))
            elif metric is not None:
                raise ContractError(f"{contract.path.name}: {p.name}: row rule metric {metric!r} not supported")
    for q in env.quality or []:
        if (q.type or "").lower() != "custom" or (q.engine or "") != "row-predicate":
            raise ContractError(f"{contract.path.name}: {ENVELOPE} quality rules must be type custom, "
                                f"engine row-predicate (rule {q.name or q.id})")
        rid = q.name or q.id
        if not rid or not isinstance(q.implementation, str):
            raise ContractError(f"{contract.path.name}: row-predicate rules need a name and an implementation")
        rules.append(RowRule(rid, f"({q.implementation})", sql_literal(q.description or rid)))

    # tracking plan: one schema object per track event
    plan = [o for o in contract.objects() if o.name != ENVELOPE]
    plan_props: list[str] = []
    if plan:
        names = ", ".join(sql_literal(o.name) for o in plan)
        rules.append(RowRule(
            "event.in_tracking_plan",
            f"(event_type = 'track' AND event_name IS NOT NULL AND event_name NOT IN ({names}))",
            f"'event ' || {_show('event_name')} || ' is not in the tracking plan'",
        ))
        req: dict[str, list[tuple[str, str]]] = {}
        typ: dict[str, list[tuple[str, str]]] = {}
        for o in plan:
            for p in o.properties or []:
                if p.name not in plan_props:
                    plan_props.append(p.name)
                pt = _pt(p.name)
                if p.required:
                    req.setdefault(o.name, []).append(
                        (f"({pt} IS NULL OR {pt} = 'NULL')", sql_literal(f"{o.name}: property {p.name} is required")))
                if p.logicalType:
                    allowed = JSON_TYPES.get(p.logicalType)
                    if allowed is None:
                        raise ContractError(f"{contract.path.name}: {o.name}.{p.name}: "
                                            f"unsupported logicalType {p.logicalType!r}")
                    shown = _show(f"json_extract(raw_line, {_path('properties', p.name)})")
                    typ.setdefault(o.name, []).append((
                        f"({pt} <> 'NULL' AND {pt} NOT IN {_types_sql(allowed)})",
                        f"{sql_literal(o.name + ': property ' + p.name + ' must be ' + p.logicalType + ', got ')}"
                        f" || lower({pt}) || ': ' || {shown}"))
        guard = f"event_type = 'track' AND {_jt('properties')} = 'OBJECT'"
        for rid, by_event in (("properties.required", req), ("properties.type", typ)):
            if not by_event:
                continue
            # CASE on the event name: each row evaluates only its own event's conditions
            cond = (f"({guard} AND CASE event_name " +
                    " ".join(f"WHEN {sql_literal(e)} THEN ({' OR '.join(c for c, _ in cs)})" for e, cs in by_event.items()) +
                    " ELSE FALSE END)")
            reason = ("CASE event_name " + " ".join(f"WHEN {sql_literal(e)} THEN {_first_reason(cs)}"
                                                    for e, cs in by_event.items()) + " END")
            rules.append(RowRule(rid, cond, reason))
    max_bytes = int(contract.custom("maxEventBytes", 32768))
    return CompiledRules(rules, fields, plan_props, max_bytes)


def _first_reason(pairs: list[tuple[str, str]]) -> str:
    return "CASE " + " ".join(f"WHEN {c} THEN {r}" for c, r in pairs) + " END"


def parse_sql(compiled: CompiledRules, source: str) -> str:
    """A SELECT giving the raw_events row of each line of ``source``: the line judged and parsed.

    ``source`` is a relation with the loader's columns (partition_date, source_file, line_no,
    raw_line, line_bytes, utf8_valid, read_error). A line that breaks a rule keeps its verbatim
    text (``raw_line``) and gets every rule id and a sentence per rule; any other line is kept
    as typed envelope columns and its JSON objects, and its text is dropped (the event file
    holds it).

    Each line is parsed four times in total, whatever the number of rules: one
    ``json_valid``, one ``json_type`` over every envelope path, ``context.groupId`` and
    every tracking-plan property, one ``json_transform`` for the scalar fields, and, for a
    good line, one ``json_extract`` of the nested objects. Rule flags are computed once per
    row; reason sentences only for rows that broke a rule.
    """
    fields, rules = compiled.fields, compiled.rules
    # context.groupId and the tracking plan's properties are typed by the same parse as the
    # envelope: one list of paths, the envelope's fields first
    ctx = "context" in fields
    props = compiled.plan_properties
    extra = ([_path("context", "groupId")] if ctx else []) + [_path("properties", x) for x in props]
    paths = "[" + ", ".join([_path(x) for x in fields] + extra) + "]"
    first_prop = len(fields) + (2 if ctx else 1)
    scalar = [x for x in fields if x not in ("properties", "traits", "context")]
    shapes = {**{x: "VARCHAR" for x in scalar}, **({"context": {"groupId": "VARCHAR"}} if ctx else {})}
    structure = sql_literal(json.dumps(shapes))
    jts = ", ".join(f"jt[{i + 1}] AS {_jt(x)}" for i, x in enumerate(fields))
    svs = ", ".join(f"CASE WHEN jt[{fields.index(x) + 1}] = 'VARCHAR' THEN NULLIF(trim(s.{sql_ident(x)}), '') END "
                    f"AS {_sv(x)}" for x in scalar)
    tss = ", ".join(f"TRY_CAST({_sv(x)} AS TIMESTAMPTZ) AS {sql_ident('ts__' + x)}"
                    for x in scalar if x in ("timestamp", "receivedAt", "sentAt"))
    pts = ", ".join(f"jt[{first_prop + i}] AS {_pt(x)}" for i, x in enumerate(props)) or "NULL AS _no_plan"
    flags = ", ".join(f"coalesce({r.condition}, FALSE) AS r{i}" for i, r in enumerate(rules))
    any_bad = " OR ".join(f"r{i}" for i in range(len(rules))) or "FALSE"
    ids = "[" + ", ".join(f"CASE WHEN r{i} THEN {sql_literal(r.id)} END" for i, r in enumerate(rules)) + "]"
    reasons = "[" + ", ".join(f"CASE WHEN r{i} THEN {r.reason} END" for i, r in enumerate(rules)) + "]"
    objects = [x for x in ("properties", "traits", "context") if x in fields]
    opaths = "[" + ", ".join(_path(x) for x in objects) + "]"

    def sv(x: str) -> str:
        return _sv(x) if x in scalar else "NULL::VARCHAR"

    def ts(x: str) -> str:
        return sql_ident("ts__" + x) if x in scalar else "NULL::TIMESTAMPTZ"

    def obj(x: str) -> str:
        if x not in objects:
            return f"NULL::JSON AS {x}"
        return f"CASE WHEN {_jt(x)} = 'OBJECT' THEN objs[{objects.index(x) + 1}] END AS {x}"

    ctx_group = (f"CASE WHEN {_jt('context')} = 'OBJECT' AND ctx_group_type = 'VARCHAR' "
                 f"THEN NULLIF(trim(ctx_group_value), '') END" if ctx else "NULL")
    ctx_cols = f", jt[{len(fields) + 1}] AS ctx_group_type, s.context.groupId AS ctx_group_value" if ctx else ""
    return f"""
        WITH lines AS (
            SELECT partition_date, source_file, line_no, raw_line, line_bytes, utf8_valid, read_error,
                   CASE WHEN read_error IS NOT NULL THEN 'file.unreadable'
                        WHEN NOT utf8_valid THEN 'line.utf8'
                        WHEN line_bytes > {compiled.max_bytes} THEN 'line.max_bytes'
                        WHEN NOT json_valid(raw_line) THEN
                             CASE WHEN trim(raw_line) = '' THEN 'line.empty' ELSE 'line.json' END
                        WHEN NOT (starts_with(raw_line, '{{') OR regexp_matches(raw_line, '^\\s*[{{]'))
                             THEN 'line.json_object'
                   END AS line_rule
            FROM {source}
        ), parsed AS (
            SELECT partition_date, source_file, line_no, raw_line, line_bytes, utf8_valid, read_error,
                   json_type(raw_line, {paths}) AS jt,
                   json_transform(raw_line, {structure}) AS s
            FROM lines WHERE line_rule IS NULL
        ), d1 AS (SELECT partition_date, source_file, line_no, raw_line, line_bytes, utf8_valid, read_error, {jts},
                         {svs}{ctx_cols}, {pts} FROM parsed
        ), d2 AS (
            SELECT *, {tss},
                   {sv('messageId')} AS message_id, {sv('type')} AS event_type,
                   CASE WHEN {sv('type')} = 'track' THEN {sv('event')}
                        WHEN {sv('type')} IN ('page', 'screen') THEN {sv('name')} END AS event_name,
                   {sv('userId')} AS user_id, {sv('anonymousId')} AS anonymous_id, {sv('previousId')} AS previous_id
            FROM d1
        ), d3 AS (
            SELECT *, coalesce({sv('groupId')}, {ctx_group}) AS group_id,
                   {ts('timestamp')} AS event_ts, {ts('receivedAt')} AS received_at, {ts('sentAt')} AS sent_at,
                   CAST(partition_date AS TIMESTAMPTZ) AS partition_start,
                   CAST(partition_date AS TIMESTAMPTZ) + INTERVAL 1 DAY AS partition_end
            FROM d2
        ), flagged AS (SELECT *, {flags} FROM d3
        ), judged AS (
            SELECT *, {any_bad} AS bad,
                   CASE WHEN NOT ({any_bad}) THEN json_extract(raw_line, {opaths}) END AS objs
            FROM flagged
        )
        SELECT partition_date, source_file, line_no, line_bytes, utf8_valid, read_error,
               CASE WHEN bad THEN raw_line END AS raw_line, message_id, event_type, event_name, user_id,
               anonymous_id, previous_id, group_id, event_ts, received_at, sent_at,
               {", ".join(obj(x) for x in ("properties", "traits", "context"))},
               CASE WHEN bad THEN list_filter({ids}, lambda x: x IS NOT NULL) ELSE [] END AS rule_ids,
               CASE WHEN bad THEN list_filter({reasons}, lambda x: x IS NOT NULL) ELSE [] END AS reasons
        FROM judged
        UNION ALL
        SELECT partition_date, source_file, line_no, line_bytes, utf8_valid, read_error, raw_line, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, [line_rule], [{_line_reason()}]
        FROM lines WHERE line_rule IS NOT NULL
    """


# --------------------------------------------------------------------------- the run

@dataclass(frozen=True)
class PartitionCounts:
    partition: str
    raw: int
    validated: int
    duplicates: int
    quarantined: int

    @property
    def reconciles(self) -> bool:
        return self.raw == self.validated + self.duplicates + self.quarantined


def validate_partition(
    conn: duckdb.DuckDBPyConnection,
    contract: Contract,
    partition: str,
    dedup_lookback_days: int = 7,
) -> PartitionCounts:
    """Rebuild one partition of validated / quarantined / duplicate events and identity tables."""
    counts = validate_partitions(conn, contract, [partition], dedup_lookback_days)
    return next(c for c in counts if c.partition == partition)


def validate_partitions(
    conn: duckdb.DuckDBPyConnection,
    contract: Contract,
    partitions: list[str],
    dedup_lookback_days: int = 7,
    group_rows: int = 2_000_000,
) -> list[PartitionCounts]:
    """Rebuild several partitions, oldest first (dedup and identities depend on earlier days).

    Validated partitions within ``dedup_lookback_days`` after the rebuilt ones are rebuilt
    too (see _dependent_partitions); the result lists every partition rebuilt.

    The partitions are processed in groups of consecutive days (up to ``group_rows`` raw
    rows): the row rules, deduplication and identity resolution run over a group at once, in
    set-based statements whose every step reads only a row's own day and the days before it,
    so a day's result is what rebuilding the days one by one gives. Each group is one
    transaction: a failure leaves every partition of the group as it was.
    """
    partitions = sorted(set(partitions) | set(_dependent_partitions(conn, partitions, dedup_lookback_days)))
    keys = dates_sql(partitions)
    sizes = dict(conn.execute(f"""SELECT CAST(partition_date AS VARCHAR), count(*) FROM raw_events
                                  WHERE partition_date IN ({keys}) GROUP BY 1""").fetchall())
    groups: list[list[str]] = []
    rows = 0
    for key in partitions:
        if not groups or rows + sizes.get(key, 0) > group_rows:
            groups.append([])
            rows = 0
        groups[-1].append(key)
        rows += sizes.get(key, 0)
    for group in groups:
        conn.execute("BEGIN TRANSACTION")
        try:
            # the group's lines as the load judged and parsed them
            in_group = dates_sql(group)
            conn.execute(f"CREATE OR REPLACE TEMP VIEW _checked AS SELECT * FROM raw_events "
                         f"WHERE partition_date IN ({in_group})")
            # what does not depend on the days before is done for the group at once
            for table in PARTITION_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE partition_date IN ({in_group})")
            conn.execute(f"""
                INSERT INTO quarantined_events
                SELECT partition_date, source_file, line_no, message_id, rule_ids[1], rule_ids, reasons, raw_line,
                       {sql_literal(contract.id)}, {sql_literal(contract.version)}
                FROM _checked WHERE len(rule_ids) > 0
            """)
            _validate_group(conn, group, dedup_lookback_days)
            _record_versions(conn, group)
        except Exception:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    conn.execute("DROP VIEW IF EXISTS _checked")
    return partitions_counts(conn, partitions)


def _record_versions(conn: duckdb.DuckDBPyConnection, partitions: list[str]) -> None:
    """A new version id for each rebuilt partition: derived tables (the feature cache) that
    were built from another version of it know they are stale."""
    conn.execute("CREATE TABLE IF NOT EXISTS validated_partitions "
                 "(partition_date DATE, version VARCHAR, validated_at TIMESTAMPTZ, validated_rows BIGINT)")
    keys = dates_sql(partitions)
    conn.execute(f"DELETE FROM validated_partitions WHERE partition_date IN ({keys})")
    conn.execute(f"""
        INSERT INTO validated_partitions
        SELECT k.partition_date, CAST(uuid() AS VARCHAR), now(), coalesce(v.n, 0)
        FROM (SELECT unnest([{keys}]) AS partition_date) AS k
        LEFT JOIN (SELECT partition_date, count(*) AS n FROM validated_events
                   WHERE partition_date IN ({keys}) GROUP BY 1) AS v USING (partition_date)""")


def _dependent_partitions(conn: duckdb.DuckDBPyConnection, partitions: list[str], lookback: int) -> list[str]:
    """Already-validated partitions whose result depends on the ones being rebuilt.

    A partition's deduplication looks back ``lookback`` days (and its identities at every
    earlier day), so rebuilding day D can change days D+1 .. D+lookback: a messageId that
    is new on D makes its copy on D+3 a duplicate. Those days are rebuilt too, and so,
    in turn, is a later day holding a copy of a message of a rebuilt day within its
    lookback (a message resent on D, D+7 and D+10: rebuilding D changes D+7, which changes
    D+10), with every validated day before it, so the days rebuilt stay consecutive (a day
    holding duplicates only counts as validated). Rebuilding them in order makes the
    deduplication independent of the order partitions were run in; identities resolved at
    validation are not rebuilt beyond these days (features resolve through
    ``identity_links`` themselves). The daily run on the newest day has none.
    """
    if not partitions or lookback <= 0:
        return []
    lookback = int(lookback)

    def done(after: str, through: str) -> set[str]:
        # the days already validated in (after, through]: a day may hold duplicates only
        return {r[0] for r in conn.execute(f"""
            SELECT DISTINCT CAST(partition_date AS VARCHAR) FROM (
                SELECT partition_date FROM validated_events UNION ALL SELECT partition_date FROM duplicate_events)
            WHERE partition_date > DATE '{after}' AND partition_date <= DATE '{through}'""").fetchall()}

    lo, hi = min(partitions), max(partitions)
    rebuilt = set(partitions) | done(lo, str(dt.date.fromisoformat(hi) + dt.timedelta(days=lookback)))
    while True:
        top = max(rebuilt)
        recent = dates_sql(sorted(d for d in rebuilt if d > str(dt.date.fromisoformat(top)
                                                                   - dt.timedelta(days=lookback))))
        # the first later day with a copy of a message of a rebuilt day inside its lookback
        (nxt,) = conn.execute(f"""
            WITH later AS (
                SELECT partition_date, message_id FROM validated_events
                WHERE partition_date > DATE '{top}' AND partition_date <= DATE '{top}' + INTERVAL {lookback} DAY
                UNION ALL
                SELECT partition_date, message_id FROM duplicate_events
                WHERE partition_date > DATE '{top}' AND partition_date <= DATE '{top}' + INTERVAL {lookback} DAY)
            SELECT CAST(min(l.partition_date) AS VARCHAR) FROM later AS l
            JOIN (SELECT partition_date, message_id FROM raw_events
                  WHERE partition_date IN ({recent}) AND len(rule_ids) = 0) AS e
              ON e.message_id = l.message_id AND e.partition_date >= l.partition_date - INTERVAL {lookback} DAY
        """).fetchone()
        if nxt is None:
            break
        rebuilt |= done(top, nxt) | {nxt}
    return sorted(rebuilt - set(partitions))


def _validate_group(conn: duckdb.DuckDBPyConnection, partitions: list[str], lookback: int) -> None:
    """Deduplicate and resolve identities of the partitions in ``_checked`` (consecutive, the
    days before them final): duplicates, identity links, memberships and validated events,
    in set-based steps for the whole group. A day's result is what rebuilding the days one
    by one in order gives: each step reads only its own day and the days before it."""
    first = f"DATE '{partitions[0]}'"
    # first wins: the earliest line of a day, unless a copy was validated in the lookback days
    # before it. Only narrow key columns travel through these steps; the wide JSON columns are
    # read once, from _checked, by the final insert.
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE _ranked AS
        SELECT partition_date, source_file, line_no, message_id,
               row_number() OVER w AS copy_no, first_value(source_file) OVER w AS first_file,
               first_value(line_no) OVER w AS first_line
        FROM _checked WHERE len(rule_ids) = 0
        WINDOW w AS (PARTITION BY partition_date, message_id ORDER BY source_file, line_no)
    """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE _prior AS
        SELECT message_id, partition_date, source_file, line_no FROM validated_events
        WHERE partition_date >= {first} - INTERVAL {int(lookback)} DAY AND partition_date < {first}
          AND message_id IN (SELECT message_id FROM _ranked)
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE _heads AS
        SELECT partition_date, source_file, line_no, message_id, count(*) OVER (PARTITION BY message_id) AS days
        FROM _ranked WHERE copy_no = 1
    """)
    # a message on several days of the group: each day's first copy is kept unless the copy kept
    # last (here or before the group) lies within the lookback: decided in order, message by message
    kept_again = []
    repeated = conn.execute("""
        SELECT h.message_id, list(h.partition_date ORDER BY h.partition_date),
               (SELECT max(p.partition_date) FROM _prior AS p WHERE p.message_id = h.message_id)
        FROM _heads AS h WHERE h.days > 1 GROUP BY h.message_id""").fetchall()
    for message_id, days, last in repeated:
        for day in days:
            if last is None or (day - last).days > lookback:
                kept_again.append((message_id, day))
                last = day
    repeats = pd.DataFrame(kept_again, columns=["message_id", "partition_date"]).astype(
        {"message_id": "object", "partition_date": "datetime64[us]"})
    with registered(conn, "fx_kept_again", repeats):
        conn.execute(f"""
            CREATE OR REPLACE TEMP TABLE _kept AS
            SELECT h.partition_date, h.source_file, h.line_no, h.message_id FROM _heads AS h
            WHERE h.days = 1 AND NOT EXISTS (
                SELECT 1 FROM _prior AS p WHERE p.message_id = h.message_id
                  AND p.partition_date >= h.partition_date - INTERVAL {int(lookback)} DAY)
            UNION ALL
            SELECT h.partition_date, h.source_file, h.line_no, h.message_id FROM _heads AS h
            JOIN fx_kept_again AS k ON k.message_id = h.message_id AND CAST(k.partition_date AS DATE) = h.partition_date
        """)
    # a duplicate points at the earliest copy validated in its lookback, else at its day's first copy
    conn.execute(f"""
        INSERT INTO duplicate_events
        WITH dup AS (SELECT * FROM _ranked ANTI JOIN _kept USING (partition_date, source_file, line_no)),
        valid AS (SELECT message_id, partition_date, source_file, line_no FROM _prior
                  UNION ALL SELECT message_id, partition_date, source_file, line_no FROM _kept),
        earliest AS (
            SELECT d.partition_date, d.source_file, d.line_no,
                   min_by(v.partition_date, (v.partition_date, v.source_file, v.line_no)) AS e_date,
                   min_by(v.source_file, (v.partition_date, v.source_file, v.line_no)) AS e_file,
                   min_by(v.line_no, (v.partition_date, v.source_file, v.line_no)) AS e_line
            FROM dup AS d JOIN valid AS v ON v.message_id = d.message_id AND v.partition_date < d.partition_date
              AND v.partition_date >= d.partition_date - INTERVAL {int(lookback)} DAY
            GROUP BY d.partition_date, d.source_file, d.line_no)
        SELECT d.partition_date, d.source_file, d.line_no, d.message_id, coalesce(e.e_date, d.partition_date),
               coalesce(e.e_file, d.first_file), coalesce(e.e_line, d.first_line)
        FROM dup AS d LEFT JOIN earliest AS e USING (partition_date, source_file, line_no)
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE _valid AS
        SELECT c.partition_date, c.source_file, c.line_no, c.message_id, c.event_type, c.user_id, c.anonymous_id,
               c.previous_id, c.group_id, c.event_ts
        FROM _checked AS c JOIN _kept AS k USING (partition_date, source_file, line_no)
    """)
    _resolve_identities(conn, partitions[-1])
    for t in ("_ranked", "_prior", "_heads", "_kept", "_valid"):
        conn.execute(f"DROP TABLE IF EXISTS {t}")


def _line_reason() -> str:
    return ("CASE line_rule WHEN 'file.unreadable' THEN read_error "
            "WHEN 'line.utf8' THEN 'line is not valid UTF-8' "
            "WHEN 'line.max_bytes' THEN 'line is ' || line_bytes || ' bytes, above the contract limit' "
            "WHEN 'line.empty' THEN 'line is empty' "
            "WHEN 'line.json' THEN 'line is not valid JSON' "
            "ELSE 'line is JSON but not an object' END")


def _resolve_identities(conn: duckdb.DuckDBPyConnection, last: str) -> None:
    """Identity links, memberships and validated events of the rows in ``_valid`` (of days up
    to ``last``): each row is resolved with the links and memberships of its day and the days
    before it."""
    # anonymousId -> userId links learned on each day (identify / any call with both; alias)
    conn.execute("""
        INSERT INTO identity_links
        SELECT partition_date, anonymous_id, user_id, min(event_ts)
        FROM (
            SELECT partition_date, anonymous_id, user_id, event_ts FROM _valid
            WHERE anonymous_id IS NOT NULL AND user_id IS NOT NULL
            UNION ALL
            SELECT partition_date, previous_id, user_id, event_ts FROM _valid
            WHERE event_type = 'alias' AND previous_id IS NOT NULL AND user_id IS NOT NULL
        ) GROUP BY ALL
    """)
    conn.execute("""
        CREATE OR REPLACE TEMP TABLE _resolved AS
        WITH need AS (
            SELECT DISTINCT partition_date, anonymous_id FROM _valid WHERE user_id IS NULL AND anonymous_id IS NOT NULL
        ), links AS (
            SELECT n.partition_date, n.anonymous_id, min_by(l.user_id, (l.linked_at, l.user_id)) AS user_id
            FROM need AS n JOIN identity_links AS l
              ON l.anonymous_id = n.anonymous_id AND l.partition_date <= n.partition_date
            GROUP BY ALL
        )
        SELECT v.*, coalesce(v.user_id, l.user_id) AS resolved_user_id
        FROM _valid AS v LEFT JOIN links AS l
          ON v.user_id IS NULL AND l.partition_date = v.partition_date AND l.anonymous_id = v.anonymous_id
    """)
    conn.execute("""
        INSERT INTO account_memberships
        SELECT partition_date, resolved_user_id, group_id, min(event_ts)
        FROM _resolved WHERE event_type = 'group' AND resolved_user_id IS NOT NULL AND group_id IS NOT NULL
        GROUP BY ALL
    """)
    # a row without groupId: the account its user joined (as of the row's day) by the event's
    # time, else the first it joined. A membership's join time as of a day is the earliest over
    # the days up to it; it changes only on the days that lower it (kept as breakpoints), so a
    # user's daily group calls do not multiply the rows each day is matched with.
    conn.execute(f"""
        INSERT INTO validated_events
        WITH need AS (
            SELECT DISTINCT partition_date, resolved_user_id AS user_id FROM _resolved
            WHERE group_id IS NULL AND resolved_user_id IS NOT NULL
        ), running AS (
            SELECT user_id, account_id, partition_date,
                   min(joined_at) OVER (PARTITION BY user_id, account_id ORDER BY partition_date
                                        ROWS UNBOUNDED PRECEDING) AS joined_at
            FROM account_memberships
            WHERE partition_date <= DATE '{last}' AND user_id IN (SELECT user_id FROM need)
        ), breaks AS (
            SELECT user_id, account_id, partition_date, joined_at FROM (
                SELECT *, lag(joined_at) OVER (PARTITION BY user_id, account_id ORDER BY partition_date) AS before
                FROM running)
            WHERE before IS NULL OR joined_at < before
        ), m AS (
            SELECT n.partition_date, n.user_id, b.account_id, arg_max(b.joined_at, b.partition_date) AS joined_at
            FROM need AS n JOIN breaks AS b ON b.user_id = n.user_id AND b.partition_date <= n.partition_date
            GROUP BY ALL
        ), acct AS (
            SELECT r.partition_date, r.source_file, r.line_no,
                   coalesce(max_by(m.account_id, (m.joined_at, m.account_id)) FILTER (WHERE m.joined_at <= r.event_ts),
                            min_by(m.account_id, (m.joined_at, m.account_id))) AS account_id
            FROM _resolved AS r JOIN m ON m.partition_date = r.partition_date AND m.user_id = r.resolved_user_id
            WHERE r.group_id IS NULL
            GROUP BY r.partition_date, r.source_file, r.line_no
        )
        SELECT c.partition_date, c.message_id, c.event_type, c.event_name, c.user_id, c.anonymous_id,
               r.resolved_user_id, c.group_id, coalesce(c.group_id, a.account_id), c.event_ts, c.received_at,
               c.sent_at, c.properties, c.traits, c.context, c.source_file, c.line_no
        FROM _resolved AS r
        JOIN _checked AS c USING (partition_date, source_file, line_no)
        LEFT JOIN acct AS a USING (partition_date, source_file, line_no)
        -- in the files' order: the joins scatter the rows, and a JSON column whose neighbouring
        -- rows differ compresses about four times worse
        ORDER BY c.partition_date, c.source_file, c.line_no
    """)
    conn.execute("DROP TABLE IF EXISTS _resolved")


def partition_counts(conn: duckdb.DuckDBPyConnection, partition: str) -> PartitionCounts:
    return partitions_counts(conn, [partition])[0]


def partitions_counts(conn: duckdb.DuckDBPyConnection, partitions: list[str]) -> list[PartitionCounts]:
    """Raw, validated, duplicate and quarantined rows of each partition (in the order given), one
    query per table."""
    if not partitions:
        return []
    keys = dates_sql(partitions)
    per = {k: [0, 0, 0, 0] for k in partitions}
    for i, table in enumerate(("raw_events", "validated_events", "duplicate_events", "quarantined_events")):
        for key, n in conn.execute(f"SELECT CAST(partition_date AS VARCHAR), count(*) FROM {table} "
                                   f"WHERE partition_date IN ({keys}) GROUP BY 1").fetchall():
            per[key][i] = n
    return [PartitionCounts(k, *per[k]) for k in partitions]


def reconcile_partition(conn: duckdb.DuckDBPyConnection, partition: str) -> dict:
    """Line-by-line accounting of one partition: every raw line is in exactly one output table."""
    return reconcile_partitions(conn, [partition])[0]


def reconcile_partitions(conn: duckdb.DuckDBPyConnection, partitions: list[str]) -> list[dict]:
    """``reconcile_partition`` of each partition, in one pass over the tables. A partition
    reconciles when each of its raw lines is stored once (``raw_lines_twice``), is in an
    output table (``unaccounted_lines``) and in only one (``counted_twice``), and every output
    line is a raw line (``unknown_lines``). Each condition can fail alone; together they
    imply the counts: raw = validated + duplicates + quarantined."""
    keys = dates_sql(partitions)
    found = {r[0]: r[1:] for r in conn.execute(f"""
        WITH acc AS (
            SELECT partition_date, source_file, line_no FROM validated_events WHERE partition_date IN ({keys})
            UNION ALL SELECT partition_date, source_file, line_no FROM duplicate_events WHERE partition_date IN ({keys})
            UNION ALL SELECT partition_date, source_file, line_no FROM quarantined_events WHERE partition_date IN ({keys})
        ), raw AS (SELECT partition_date, source_file, line_no FROM raw_events WHERE partition_date IN ({keys})),
        missing AS (SELECT partition_date, count(*) AS n FROM raw ANTI JOIN acc USING (partition_date, source_file, line_no)
                    GROUP BY 1),
        extra AS (SELECT partition_date, count(*) AS n FROM acc ANTI JOIN raw USING (partition_date, source_file, line_no)
                  GROUP BY 1),
        multi AS (SELECT partition_date, count(*) AS n FROM (SELECT partition_date, source_file, line_no FROM acc
                                                             GROUP BY ALL HAVING count(*) > 1) GROUP BY 1),
        raw_twice AS (SELECT partition_date, count(*) AS n FROM (SELECT partition_date, source_file, line_no FROM raw
                                                                 GROUP BY ALL HAVING count(*) > 1) GROUP BY 1)
        SELECT CAST(k.partition_date AS VARCHAR), coalesce(missing.n, 0), coalesce(extra.n, 0), coalesce(multi.n, 0),
               coalesce(raw_twice.n, 0)
        FROM (SELECT unnest([{keys}]) AS partition_date) AS k
        LEFT JOIN missing USING (partition_date) LEFT JOIN extra USING (partition_date)
        LEFT JOIN multi USING (partition_date) LEFT JOIN raw_twice USING (partition_date)""").fetchall()}
    out = []
    for c in partitions_counts(conn, partitions):
        missing, extra, multi, raw_twice = found.get(c.partition, (0, 0, 0, 0))
        ok = missing == 0 and extra == 0 and multi == 0 and raw_twice == 0
        out.append({"partition": c.partition, "raw": c.raw, "validated": c.validated, "duplicates": c.duplicates,
                    "quarantined": c.quarantined, "unaccounted_lines": missing, "unknown_lines": extra,
                    "counted_twice": multi, "raw_lines_twice": raw_twice, "ok": ok})
    return out
