"""Evaluate a contract object's table rules against a warehouse table.

Library rules run through Great Expectations on the rows (up to ``ge_max_rows``; above
that the same rules run as DuckDB SQL). ``sql`` rules always run in DuckDB. A schema
rule compares the live table with the contract's columns and physical types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb

from pql_pipeline.lib.contracts import Contract, TableRule, schema_columns, table_rules
from pql_pipeline.lib.warehouse import dates_sql, describe, normalize_type


@dataclass
class RuleOutcome:
    rule_id: str
    description: str
    severity: str  # error | warning
    passed: bool
    observed: Any
    engine: str  # great_expectations | duckdb
    sample: list = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)  # partitions a failed rule failed in


def check_schema(conn: duckdb.DuckDBPyConnection, contract: Contract, object_name: str) -> RuleOutcome:
    table = contract.object(object_name).physicalName or object_name
    live = describe(conn, table)
    problems = []
    for name, _logical, physical in schema_columns(contract, object_name):
        if name not in live:
            problems.append(f"missing column {name}")
        elif physical and normalize_type(live[name]) != normalize_type(physical):
            problems.append(f"{name} is {live[name]}, contract says {physical}")
    extra = set(live) - {c for c, _, _ in schema_columns(contract, object_name)}
    problems += [f"column {c} is not in the contract" for c in sorted(extra)]
    return RuleOutcome("schema", f"{table} matches {contract.path.name}", "error", not problems,
                       problems or "ok", "duckdb")


def evaluate(
    conn: duckdb.DuckDBPyConnection,
    contract: Contract,
    object_name: str,
    where: str = "TRUE",
    ge_max_rows: int = 250_000,
    sample_rows: int = 5,
    partitions: list[str] | None = None,
    partition_column: str = "partition_date",
) -> list[RuleOutcome]:
    """All rules of one contract object on the rows of its table matching ``where``.

    With ``partitions``, rules hold per partition: uniqueness is checked within each
    partition (compound with the partition column), SQL and row-count rules run once per
    partition, and a failed rule lists the partitions it failed in. Library rules still
    run in one Great Expectations validation (or one SQL query) over all the partitions,
    so a range backfill costs about as much as a single day.
    """
    table = contract.object(object_name).physicalName or object_name
    base_where = where
    if partitions is not None:
        keys = dates_sql(partitions)
        where = f"({where}) AND {partition_column} IN ({keys})"
    relation = f"(SELECT * FROM {table} WHERE {where})"
    rules = table_rules(contract, object_name)
    if partitions is not None:
        rules = [_per_partition(r, partition_column) for r in rules]
    n = conn.execute(f"SELECT count(*) FROM {relation}").fetchall()[0][0]
    outcomes: list[RuleOutcome] = []
    whole = [r for r in rules if r.kind not in ("sql", "row_count") or partitions is None]
    each = [r for r in rules if r not in whole]
    lib = [r for r in whole if r.kind != "sql"]
    if lib and n <= ge_max_rows:
        # a list or struct column becomes an array per row in pandas, which Great Expectations
        # walks slowly (4.5 s for 243 k rows of two list columns): its rules run in SQL
        nested = {c for c, t in describe(conn, table).items() if t.endswith("]") or t.startswith(("STRUCT", "MAP"))}
        in_sql = [r for r in lib if nested & set(r.needed_columns)]
        ge = [r for r in lib if r not in in_sql]
        outcomes += _evaluate_ge(conn, relation, ge, n, object_name) if ge else []
        outcomes += [_evaluate_sql(conn, relation, r, n) for r in in_sql]
    else:
        outcomes += [_evaluate_sql(conn, relation, r, n) for r in lib]
    outcomes += [_evaluate_sql(conn, relation, r, n) for r in whole if r.kind == "sql"]
    if each:
        # rows per partition in one query; each rule's per-partition values in one statement per
        # PARTITION_BATCH partitions (a long range otherwise costs two round trips per partition and rule)
        counts = dict(conn.execute(f"SELECT CAST({partition_column} AS VARCHAR), count(*) FROM {relation} "
                                   "GROUP BY 1").fetchall())
    for r in each:
        failed = {}
        keys = list(partitions or [])
        for i in range(0, len(keys), PARTITION_BATCH):
            batch = keys[i:i + PARTITION_BATCH]
            # a rule's query becomes a scalar subquery: a trailing semicolon would end the statement
            parts = [f"SELECT {j} AS i, ("
                     f"{r.violations_sql(_partition_relation(table, base_where, partition_column, k)).strip().rstrip(';')}"
                     f") AS v" for j, k in enumerate(batch)]
            values = dict(conn.execute(" UNION ALL ".join(parts)).fetchall())
            for j, key in enumerate(batch):
                value = float(values[j]) if values.get(j) is not None else 0.0
                if not r.passes(value, counts.get(key, 0)):
                    failed[key] = int(value) if value == int(value) else round(value, 4)
        outcomes.append(RuleOutcome(r.id, r.description, r.severity, not failed,
                                    failed or "ok in every partition", "duckdb"))
    by_id = {r.id: r for r in rules}
    for o in outcomes:
        if not o.passed and sample_rows:
            q = by_id[o.rule_id].sample_sql(relation, sample_rows)
            if q:
                o.sample = _rows(conn, q)
        if not o.passed and partitions is not None and by_id[o.rule_id].kind not in ("sql", "row_count"):
            o.partitions = _failing_partitions(conn, relation, by_id[o.rule_id], partition_column)
    return outcomes


PARTITION_BATCH = 100


def _partition_relation(table: str, where: str, partition_column: str, key: str) -> str:
    return f"(SELECT * FROM {table} WHERE {where} AND {partition_column} = DATE '{key}')"


def _per_partition(rule: TableRule, partition_column: str) -> TableRule:
    """Uniqueness within each partition: (partition, column...) must be unique."""
    if rule.kind == "unique" and rule.params.get("mostly", 1.0) >= 1.0:
        return replace(rule, kind="compound_unique", columns=(partition_column, rule.column), column=None)
    if rule.kind == "compound_unique" and partition_column not in rule.columns:
        return replace(rule, columns=(partition_column, *rule.columns))
    return rule


def _failing_partitions(conn, relation: str, rule: TableRule, partition_column: str) -> list[str]:
    sample = rule.sample_sql(relation, 1_000_000)
    if sample is None:
        return []
    if rule.kind in ("unique", "compound_unique"):
        cols = rule.columns or (rule.column,)
        if partition_column not in cols:
            return []
    rows = conn.execute(f"SELECT DISTINCT CAST({partition_column} AS VARCHAR) FROM ({sample}) ORDER BY 1 LIMIT 50"
                        ).fetchall()
    return [r[0] for r in rows]


def _evaluate_sql(conn: duckdb.DuckDBPyConnection, relation: str, rule: TableRule, n: int) -> RuleOutcome:
    value = conn.execute(rule.violations_sql(relation)).fetchall()[0][0]
    value = float(value) if value is not None else 0.0
    return RuleOutcome(rule.id, rule.description, rule.severity, rule.passes(value, n),
                       int(value) if value == int(value) else round(value, 4), "duckdb")


def _evaluate_ge(conn, relation: str, rules: list[TableRule], n: int, name: str) -> list[RuleOutcome]:
    from pql_pipeline.lib.ge_runner import run_expectations

    cols = sorted({c for r in rules for c in r.needed_columns})
    select = ", ".join(f'"{c}"' for c in cols) if cols else "1 AS _row"
    df = conn.execute(f"SELECT {select} FROM {relation}").df()
    by_id = {r.id: r for r in rules}
    outcomes = []
    for e in run_expectations(df, [r.to_ge() for r in rules], name=name):
        rule = by_id[e.rule_id]
        observed = e.observed_value if rule.kind == "row_count" else e.unexpected_count
        outcomes.append(RuleOutcome(rule.id, rule.description, rule.severity, e.success, observed,
                                    "great_expectations", []))
    return outcomes


def _rows(conn: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cur = conn.execute(sql)
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = {}
        for k, v in zip(names, row):
            s = v if isinstance(v, (int, float, bool)) or v is None else str(v)
            if isinstance(s, str) and len(s) > 300:
                s = s[:300] + "…"
            rec[k] = s
        out.append(rec)
    return out


def summarize(outcomes: list[RuleOutcome]) -> tuple[bool, bool]:
    """(passed, any_error): passed when no rule failed; any_error when an error-severity rule failed."""
    failed = [o for o in outcomes if not o.passed]
    return not failed, any(o.severity == "error" for o in failed)


def outcomes_markdown(outcomes: list[RuleOutcome], label: str | None = None) -> str:
    head = "| " + ("partition | " if label else "") + "rule | severity | result | observed | engine |\n"
    head += "|" + ("---|" if label else "") + "---|---|---|---|---|\n"
    lines = []
    for o in outcomes:
        obs = json.dumps(o.observed, default=str) if not isinstance(o.observed, (int, float, str)) else o.observed
        lines.append("| " + (f"{label} | " if label else "") +
                     f"`{o.rule_id}` | {o.severity} | {'pass' if o.passed else '**FAIL**'} | {obs} | {o.engine} |")
    return head + "\n".join(lines)
