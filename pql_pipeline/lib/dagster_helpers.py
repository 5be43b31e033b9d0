"""Dagster helpers shared by every stage: the warehouse pool, contract loading, table
schemas and markdown for metadata, and contract checks generated from ODCS contracts."""

import datetime as dt

import dagster as dg

from pql_pipeline.lib.contract_checks import RuleOutcome, check_schema, evaluate, outcomes_markdown, summarize
from pql_pipeline.lib.contracts import Contract, load_contract
from pql_pipeline.lib.warehouse import Warehouse, table_exists
from pql_pipeline.settings import Settings, contracts_dir

POOL = "duckdb_warehouse"
OWNERS = ["team:data-engineering"]


def contract(name: str) -> Contract:
    return load_contract(contracts_dir() / f"{name}.odcs.yaml")


def table_schema(c: Contract, object_name: str) -> dg.TableSchema:
    obj = c.object(object_name)
    return dg.TableSchema(columns=[
        dg.TableColumn(p.name, p.physicalType or p.logicalType or "unknown", description=p.description,
                       constraints=dg.TableColumnConstraints(nullable=not p.required, unique=bool(p.unique)))
        for p in obj.properties or []
    ])


def table_spec(name: str, stage: str, description: str, deps: list[str], *, partition_expr: str | None = None,
               contract: Contract | None = None, names_contract: bool = True, kinds: set[str] | None = None,
               code_version: str | None = None) -> dg.AssetSpec:
    """The spec of an asset that is a warehouse table of the same name: its stage's group and
    tag, the owners, the table name, the partition column, and with ``contract`` the column
    schema (and the contract's id, unless ``names_contract`` is false)."""
    metadata: dict = {"partition_expr": partition_expr} if partition_expr else {}
    if contract is not None and names_contract:
        metadata["contract"] = contract.id
    metadata["dagster/table_name"] = name
    if contract is not None:
        metadata["dagster/column_schema"] = table_schema(contract, name)
    return dg.AssetSpec(name, deps=deps, group_name=stage, kinds=kinds or {"duckdb"}, owners=OWNERS,
                        tags={"pql/stage": stage}, code_version=code_version, description=description,
                        metadata=metadata)


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "_none_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def partition_days(context) -> list[dt.date]:
    """The run's partitions as dates, oldest first (a single-run range gives several)."""
    return sorted({dt.date.fromisoformat(k) for k in context.partition_keys})


def run_partitions(context, conn, table: str, partition_column: str = "partition_date") -> list[str]:
    """The partitions the run materialized, or the newest one in the table for a standalone check run."""
    keys = list(context.partition_keys) if context.has_partition_key or context.has_partition_key_range else []
    if not keys and table_exists(conn, table):
        latest = conn.execute(f"SELECT CAST(max({partition_column}) AS VARCHAR) FROM {table}").fetchall()[0][0]
        keys = [latest] if latest else []
    return sorted(keys)


def _result(outcomes_by_label: dict[str, list[RuleOutcome]], extra: dict | None = None) -> dg.AssetCheckResult:
    all_outcomes = [o for outs in outcomes_by_label.values() for o in outs]
    passed, any_error = summarize(all_outcomes)
    failed = [(label, o) for label, outs in outcomes_by_label.items() for o in outs if not o.passed]
    md = "\n\n".join(
        (f"**{label}**\n\n" if label else "") + outcomes_markdown(outs) for label, outs in outcomes_by_label.items()
        if label == "" or any(not o.passed for o in outs) or len(outcomes_by_label) == 1
    ) or "all partitions pass"
    meta = {
        "rules_evaluated": len(all_outcomes),
        "rules_failed": len(failed),
        "engines": ", ".join(sorted({o.engine for o in all_outcomes})),
        "results": dg.MetadataValue.md(md),
    }
    if failed:
        meta["failed_rules"] = dg.MetadataValue.json([{"partitions": o.partitions or label or None,
                                                       "rule": o.rule_id, "severity": o.severity,
                                                       "observed": o.observed, "description": o.description}
                                                      for label, o in failed[:20]])
        samples = [{"partition": label or None, "rule": o.rule_id, "rows": o.sample} for label, o in failed if o.sample]
        if samples:
            meta["sample_bad_rows"] = dg.MetadataValue.json(samples[:5])
    meta.update(extra or {})
    # a failure is ERROR when an error-severity rule failed; a pass reports the level the check gates at
    gates = any_error if not passed else any(o.severity == "error" for o in all_outcomes)
    return dg.AssetCheckResult(passed=passed, metadata=meta,
                               severity=dg.AssetCheckSeverity.ERROR if gates else dg.AssetCheckSeverity.WARN)


def contract_check(
    settings: Settings,
    asset: str,
    c: Contract,
    object_name: str,
    partitions_def: dg.PartitionsDefinition | None,
    name: str | None = None,
    partition_column: str = "partition_date",
) -> dg.AssetChecksDefinition:
    check_name = name or f"{object_name}_contract"

    @dg.asset_check(
        asset=asset,
        name=check_name,
        blocking=True,
        partitions_def=partitions_def,
        pool=POOL,
        description=f"Schema and quality rules of {object_name} from {c.path.name} (v{c.version}).",
    )
    def _check(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        table = c.object(object_name).physicalName or object_name
        with warehouse.get_connection() as conn:
            if not table_exists(conn, table):
                return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                           metadata={"error": f"table {table} does not exist; materialize {asset}"})
            schema = check_schema(conn, c, object_name)
            results: dict[str, list[RuleOutcome]] = {}
            if partitions_def is None:
                results[""] = [schema] + evaluate(conn, c, object_name, "TRUE",
                                                  settings.checks.ge_max_rows, settings.checks.sample_rows)
            else:
                keys = run_partitions(context, conn, table, partition_column)
                label = (f"{keys[0]} .. {keys[-1]} ({len(keys)} partitions)" if len(keys) > 1
                         else (keys[0] if keys else "no partitions"))
                results[label] = [schema] + evaluate(conn, c, object_name, "TRUE", settings.checks.ge_max_rows,
                                                     settings.checks.sample_rows, partitions=keys,
                                                     partition_column=partition_column)
        return _result(results, {"contract": f"{c.id} v{c.version}"})

    return _check


