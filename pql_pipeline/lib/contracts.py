"""ODCS v3 data contracts: loading and compiling them into table-level rules.

A contract object (one table) yields a list of :class:`TableRule`. Each rule can be
evaluated two ways that must agree: as a Great Expectations 1.x expectation on a
DataFrame (see :mod:`pql_pipeline.lib.ge_runner`) or as a DuckDB SQL query counting
violating rows (used above ``checks.ge_max_rows`` and for ``sql`` rules).

What is compiled from where:

=============================================  =======================================
contract                                        rule
=============================================  =======================================
property ``required: true``                     ``<col>.not_null``
property ``unique: true``                       ``<col>.unique``
properties with ``primaryKey`` (2+ of them)     ``primary_key.unique`` (compound)
``logicalTypeOptions.minimum/maximum``          ``<col>.between``
``logicalTypeOptions.pattern``                  ``<col>.pattern``
property quality ``invalidValues`` +validValues ``<id>`` in-set rule
property quality ``nullValues``                 ``<id>`` not-null rule (``mostly``)
property/object quality ``duplicateValues``     ``<id>`` unique / compound unique
object quality ``rowCount``                     ``<id>`` row-count rule
quality ``type: sql`` (``{table}`` placeholder) ``<id>`` SQL rule
=============================================  =======================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from open_data_contract_standard.model import DataQuality, OpenDataContractStandard, SchemaObject
from pydantic import ValidationError

from pql_pipeline.lib.engine import sql_ident, sql_literal


class ContractError(ValueError):
    """A contract file is missing or invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class Contract:
    path: Path
    odcs: OpenDataContractStandard

    @property
    def id(self) -> str:
        return self.odcs.id or self.path.stem

    @property
    def version(self) -> str:
        return self.odcs.version or "0"

    @property
    def owner(self) -> str | None:
        team = self.odcs.team
        if team is None:
            return None
        if isinstance(team, list):
            return team[0].username if team else None
        return team.name

    def objects(self) -> list[SchemaObject]:
        return list(self.odcs.schema_ or [])

    def object(self, name: str) -> SchemaObject:
        for obj in self.objects():
            if obj.name == name:
                return obj
        raise ContractError(f"{self.path.name}: no schema object named {name!r}")

    def custom(self, prop: str, default: Any = None) -> Any:
        for cp in self.odcs.customProperties or []:
            if cp.property == prop:
                return cp.value
        return default


def load_contract(path: str | os.PathLike) -> Contract:
    path = Path(path)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ContractError(f"contract file {path} does not exist") from None
    return _load_contract(str(path), mtime)


@lru_cache(maxsize=64)
def _load_contract(path: str, _mtime: int) -> Contract:
    from pql_pipeline.lib.yaml_config import ConfigError, read_yaml

    p = Path(path)
    try:
        raw, _ = read_yaml(p)        # also refuses a key given twice
    except ConfigError as e:
        raise ContractError(str(e)) from None
    if not isinstance(raw, dict):
        raise ContractError(f"{p.name}: a contract must be a YAML mapping")
    if raw.get("kind") != "DataContract" or not str(raw.get("apiVersion", "")).startswith("v3"):
        raise ContractError(f"{p.name}: expected an ODCS v3 contract (kind: DataContract, apiVersion: v3.x.x)")
    try:
        odcs = OpenDataContractStandard.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ContractError(f"{p.name}: {problems}") from None
    return Contract(path=p, odcs=odcs)


# --------------------------------------------------------------------------- table rules

SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class TableRule:
    """One table-level expectation compiled from a contract."""

    id: str
    kind: str  # not_null | unique | compound_unique | in_set | between | pattern | row_count | sql
    description: str
    severity: str = "error"
    column: str | None = None
    columns: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    # ---- SQL evaluation (DuckDB dialect, plain ANSI where possible)
    def violations_sql(self, table: str) -> str:
        """A query returning one row: the number of violations (rows, or groups for uniqueness)."""
        c = sql_ident(self.column) if self.column else None
        if self.kind == "not_null":
            return f"SELECT count(*) FROM {table} WHERE {c} IS NULL"
        if self.kind == "unique":
            return (f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {table} "
                    f"WHERE {c} IS NOT NULL GROUP BY {c} HAVING count(*) > 1)")
        if self.kind == "compound_unique":
            cols = ", ".join(sql_ident(x) for x in self.columns)
            return (f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {table} "
                    f"GROUP BY {cols} HAVING count(*) > 1)")
        if self.kind in ("in_set", "between", "pattern"):
            return f"SELECT count(*) FROM {table} WHERE {self._bad_row_condition()}"
        if self.kind == "row_count":
            return f"SELECT count(*) FROM {table}"
        if self.kind == "sql":
            return self.params["query"].replace("{table}", table)
        raise ContractError(f"rule {self.id}: unknown kind {self.kind}")

    def _bad_row_condition(self) -> str:
        c = sql_ident(self.column)
        if self.kind == "in_set":
            values = ", ".join(sql_literal(v) for v in self.params["values"])
            return f"{c} IS NOT NULL AND {c} NOT IN ({values})"
        if self.kind == "between":
            conds = []
            if self.params.get("min") is not None:
                conds.append(f"{c} < {sql_literal(self.params['min'])}")
            if self.params.get("max") is not None:
                conds.append(f"{c} > {sql_literal(self.params['max'])}")
            return f"{c} IS NOT NULL AND ({' OR '.join(conds) or 'FALSE'})"
        if self.kind == "pattern":
            return (f"{c} IS NOT NULL AND "
                    f"NOT regexp_full_match(CAST({c} AS VARCHAR), {sql_literal(self.params['pattern'])})")
        raise ContractError(f"rule {self.id}: {self.kind} has no row condition")

    def sample_sql(self, table: str, n: int) -> str | None:
        """Up to ``n`` offending rows, for check metadata; None for aggregate rules."""
        c = sql_ident(self.column) if self.column else None
        if self.kind == "not_null":
            return f"SELECT * FROM {table} WHERE {c} IS NULL LIMIT {n}"
        if self.kind == "unique":
            return (f"SELECT {c}, count(*) AS copies FROM {table} WHERE {c} IS NOT NULL "
                    f"GROUP BY {c} HAVING count(*) > 1 ORDER BY copies DESC, {c} LIMIT {n}")
        if self.kind == "compound_unique":
            cols = ", ".join(sql_ident(x) for x in self.columns)
            return (f"SELECT {cols}, count(*) AS copies FROM {table} GROUP BY {cols} "
                    f"HAVING count(*) > 1 ORDER BY copies DESC LIMIT {n}")
        if self.kind in ("in_set", "between", "pattern"):
            return f"SELECT * FROM {table} WHERE {self._bad_row_condition()} LIMIT {n}"
        return None

    def passes(self, value: float, row_count: int) -> bool:
        """Whether the measured value (violations, or rows for row_count/sql) satisfies the rule."""
        if self.kind in ("row_count", "sql"):
            return compare(value, self.params)
        mostly = self.params.get("mostly", 1.0)
        if row_count == 0:
            return True
        return (row_count - value) / row_count >= mostly - 1e-12

    # ---- Great Expectations evaluation
    def to_ge(self):
        """The equivalent GE 1.x expectation, or None for rules GE cannot express (sql)."""
        from pql_pipeline.lib.ge_runner import import_ge

        gxe = import_ge().expectations  # lazy: see ge_runner

        meta = {"rule_id": self.id}
        mostly = self.params.get("mostly", 1.0)
        if self.kind == "not_null":
            return gxe.ExpectColumnValuesToNotBeNull(column=self.column, mostly=mostly, meta=meta)
        if self.kind == "unique":
            return gxe.ExpectColumnValuesToBeUnique(column=self.column, mostly=mostly, meta=meta)
        if self.kind == "compound_unique":
            return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(self.columns), meta=meta)
        if self.kind == "in_set":
            return gxe.ExpectColumnValuesToBeInSet(column=self.column, value_set=list(self.params["values"]),
                                                   mostly=mostly, meta=meta)
        if self.kind == "between":
            return gxe.ExpectColumnValuesToBeBetween(column=self.column, min_value=self.params.get("min"),
                                                     max_value=self.params.get("max"), mostly=mostly, meta=meta)
        if self.kind == "pattern":
            return gxe.ExpectColumnValuesToMatchRegex(column=self.column, regex=self.params["pattern"],
                                                      mostly=mostly, meta=meta)
        if self.kind == "row_count":
            lo, hi = _bounds(self.params)
            return gxe.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi, meta=meta)
        return None

    @property
    def needed_columns(self) -> tuple[str, ...]:
        if self.column:
            return (self.column,)
        return self.columns


def compare(value: float, params: dict[str, Any]) -> bool:
    """ODCS comparison operators (mustBe, mustBeGreaterThan, ... mustBeBetween)."""
    checks = {
        "mustBe": lambda v, x: v == x,
        "mustNotBe": lambda v, x: v != x,
        "mustBeGreaterThan": lambda v, x: v > x,
        "mustBeGreaterOrEqualTo": lambda v, x: v >= x,
        "mustBeLessThan": lambda v, x: v < x,
        "mustBeLessOrEqualTo": lambda v, x: v <= x,
        "mustBeBetween": lambda v, x: x[0] <= v <= x[1],
        "mustNotBeBetween": lambda v, x: not (x[0] <= v <= x[1]),
    }
    present = [k for k in checks if params.get(k) is not None]
    return all(checks[k](value, params[k]) for k in present)


def _bounds(params: dict[str, Any]) -> tuple[int | None, int | None]:
    lo = hi = None
    if params.get("mustBe") is not None:
        lo = hi = params["mustBe"]
    if params.get("mustBeGreaterThan") is not None:
        lo = params["mustBeGreaterThan"] + 1
    if params.get("mustBeGreaterOrEqualTo") is not None:
        lo = params["mustBeGreaterOrEqualTo"]
    if params.get("mustBeLessThan") is not None:
        hi = params["mustBeLessThan"] - 1
    if params.get("mustBeLessOrEqualTo") is not None:
        hi = params["mustBeLessOrEqualTo"]
    if params.get("mustBeBetween") is not None:
        lo, hi = params["mustBeBetween"]
    return lo, hi


_OPS = ("mustBe", "mustNotBe", "mustBeGreaterThan", "mustBeGreaterOrEqualTo", "mustBeLessThan",
        "mustBeLessOrEqualTo", "mustBeBetween", "mustNotBeBetween")


def _ops(q: DataQuality) -> dict[str, Any]:
    return {k: getattr(q, k) for k in _OPS if getattr(q, k) is not None}


def _severity(q: DataQuality | None, default: str = "error") -> str:
    s = (q.severity if q is not None else None) or default
    s = s.lower()
    if s in ("warn", "warning", "info"):
        return "warning"
    return "error"


def _mostly_from_nulls(q: DataQuality, rows_hint: str) -> float:
    """nullValues / duplicateValues with a percent bound -> GE 'mostly'."""
    ops = _ops(q)
    if q.unit == "percent":
        bound = ops.get("mustBeLessThan", ops.get("mustBeLessOrEqualTo", ops.get("mustBe", 0)))
        return max(0.0, 1.0 - float(bound) / 100.0)
    if ops.get("mustBe", 0) == 0 and len(ops) <= 1:
        return 1.0
    raise ContractError(f"quality rule {q.id or q.metric} on {rows_hint}: only 'mustBe: 0' or a percent bound "
                        "is supported for nullValues/duplicateValues")


def table_rules(contract: Contract, object_name: str) -> list[TableRule]:
    """Compile the table-level rules of one schema object."""
    obj = contract.object(object_name)
    rules: list[TableRule] = []
    pk: list[tuple[int, str]] = []
    for prop in obj.properties or []:
        col = prop.name
        if not col:
            raise ContractError(f"{contract.path.name}: a property of {object_name} has no name")
        if prop.required:
            rules.append(TableRule(f"{col}.not_null", "not_null", f"{col} is required", column=col))
        if prop.unique:
            rules.append(TableRule(f"{col}.unique", "unique", f"{col} is unique", column=col))
        if prop.primaryKey:
            pk.append((prop.primaryKeyPosition or len(pk) + 1, col))
        opts = prop.logicalTypeOptions or {}
        if "minimum" in opts or "maximum" in opts:
            rules.append(TableRule(f"{col}.between", "between",
                                   f"{col} within [{opts.get('minimum')}, {opts.get('maximum')}]", column=col,
                                   params={"min": opts.get("minimum"), "max": opts.get("maximum")}))
        if "pattern" in opts:
            rules.append(TableRule(f"{col}.pattern", "pattern", f"{col} matches {opts['pattern']}", column=col,
                                   params={"pattern": opts["pattern"]}))
        for i, q in enumerate(prop.quality or []):
            rules.append(_quality_rule(contract, q, f"{col}.quality{i + 1}", column=col))
    if len(pk) > 1:
        cols = tuple(c for _, c in sorted(pk))
        rules.append(TableRule("primary_key.unique", "compound_unique", f"({', '.join(cols)}) is unique",
                               columns=cols))
    elif len(pk) == 1 and not any(r.id == f"{pk[0][1]}.unique" for r in rules):
        rules.append(TableRule(f"{pk[0][1]}.unique", "unique", f"{pk[0][1]} is unique", column=pk[0][1]))
    for i, q in enumerate(obj.quality or []):
        rules.append(_quality_rule(contract, q, f"{object_name}.quality{i + 1}", column=None))
    ids = [r.id for r in rules]
    dupes = {x for x in ids if ids.count(x) > 1}
    if dupes:
        raise ContractError(f"{contract.path.name}: rule ids must be unique in {object_name}: {sorted(dupes)}")
    return rules


def _quality_rule(contract: Contract, q: DataQuality, default_id: str, column: str | None) -> TableRule:
    rid = q.name or q.id or default_id
    where = f"{contract.path.name} rule {rid}"
    desc = q.description or rid
    sev = _severity(q)
    qtype = (q.type or "library").lower()
    if qtype == "sql":
        if not q.query:
            raise ContractError(f"{where}: a sql rule needs a query")
        return TableRule(rid, "sql", desc, sev, column=column, params={"query": q.query, **_ops(q)})
    if qtype != "library":
        raise ContractError(f"{where}: quality type {q.type!r} is not supported here (use library or sql)")
    metric = q.metric or q.rule
    args = q.arguments or {}
    if metric == "nullValues":
        if column is None:
            raise ContractError(f"{where}: nullValues belongs on a property")
        return TableRule(rid, "not_null", desc, sev, column=column, params={"mostly": _mostly_from_nulls(q, where)})
    if metric == "duplicateValues":
        cols = args.get("properties")
        if cols:
            return TableRule(rid, "compound_unique", desc, sev, columns=tuple(cols))
        if column is None:
            raise ContractError(f"{where}: duplicateValues on an object needs arguments.properties")
        return TableRule(rid, "unique", desc, sev, column=column, params={"mostly": _mostly_from_nulls(q, where)})
    if metric == "invalidValues":
        if column is None:
            raise ContractError(f"{where}: invalidValues belongs on a property")
        if "validValues" in args:
            return TableRule(rid, "in_set", desc, sev, column=column, params={"values": list(args["validValues"])})
        if "pattern" in args:
            return TableRule(rid, "pattern", desc, sev, column=column, params={"pattern": args["pattern"]})
        raise ContractError(f"{where}: invalidValues needs arguments.validValues or arguments.pattern")
    if metric == "rowCount":
        return TableRule(rid, "row_count", desc, sev, params=_ops(q))
    raise ContractError(f"{where}: unsupported metric {metric!r} (nullValues, duplicateValues, invalidValues, rowCount)")


def schema_columns(contract: Contract, object_name: str) -> list[tuple[str, str | None, str | None]]:
    """(name, logicalType, physicalType) of every property of an object."""
    obj = contract.object(object_name)
    return [(p.name, p.logicalType, p.physicalType) for p in obj.properties or []]


_LOGICAL = {"BIGINT": "integer", "DOUBLE": "number", "BOOLEAN": "boolean", "VARCHAR": "string", "DATE": "date",
            "TIMESTAMPTZ": "timestamp"}


def with_columns(contract: Contract, object_name: str, columns: list[dict], before: str | None = None) -> Contract:
    """A copy of ``contract`` whose object ``object_name`` also has ``columns``.

    Used for tables whose columns follow configuration (one per signal): each column is
    ``{"name", "physicalType", "required"?, "minimum"?, "maximum"?, "description"?}`` and is
    inserted before the property ``before`` (appended if None), so the generated checks
    cover configured columns like declared ones."""
    from open_data_contract_standard.model import SchemaProperty

    odcs = contract.odcs.model_copy(deep=True)
    obj = next((o for o in odcs.schema_ or [] if o.name == object_name), None)
    if obj is None:
        raise ContractError(f"{contract.path.name}: no schema object named {object_name!r}")
    new = []
    for c in columns:
        opts = {k: c[k] for k in ("minimum", "maximum") if c.get(k) is not None}
        new.append(SchemaProperty(name=c["name"], physicalType=c["physicalType"],
                                  logicalType=_LOGICAL.get(c["physicalType"], "string"),
                                  required=bool(c.get("required")), description=c.get("description"),
                                  logicalTypeOptions=opts or None))
    props = list(obj.properties or [])
    taken = {p.name for p in props}
    clash = [c["name"] for c in columns if c["name"] in taken]
    if clash:
        raise ContractError(f"{contract.path.name}: configured columns {clash} clash with {object_name}'s own columns")
    at = next((i for i, p in enumerate(props) if p.name == before), len(props)) if before else len(props)
    obj.properties = props[:at] + new + props[at:]
    return Contract(path=contract.path, odcs=odcs)
