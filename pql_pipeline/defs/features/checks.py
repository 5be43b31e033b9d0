"""Asset checks of the features stage.

- contract checks generated from data_contracts/ (features, conversion_labels,
  training_set, activation_milestones), the feature tables' contracts extended with one
  column per configured signal (types, ranges, not-null, unique (entity, snapshot));
- feature null rates against the previous snapshot (warn);
- feature rows computed with an older signals.yaml (warn: backfill them);
- label base rate within the configured bounds (blocking);
- the leakage guard on the training set (blocking).
"""

import datetime as dt

import dagster as dg

from pql_pipeline.defs.features.specs import feature_contract, feature_spec, signal_set, training_contract
from pql_pipeline.defs.features.training import leakage_guard
from pql_pipeline.lib.dagster_helpers import POOL, contract, contract_check, md_table, run_partitions
from pql_pipeline.lib.warehouse import Warehouse, table_exists
from pql_pipeline.settings import Settings


def null_rates(conn, table: str, columns: list[str], days: list[str]) -> dict[str, dict[str, float | None]]:
    """Share of NULLs per column in each snapshot of ``days``, in one query (None for every
    column of a snapshot without rows)."""
    exprs = ", ".join(f'avg(CASE WHEN "{c}" IS NULL THEN 1.0 ELSE 0.0 END)' for c in columns)
    found = {str(r[0]): r[1:] for r in conn.execute(
        f"SELECT snapshot_date, {exprs} FROM {table} WHERE snapshot_date IN (SELECT CAST(unnest(?) AS DATE)) "
        "GROUP BY snapshot_date", [list(days)]).fetchall()}
    return {d: {c: (float(v) if d in found else None) for c, v in zip(columns, found.get(d, [None] * len(columns)))}
            for d in days}


def build_feature_checks(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    sigs = signal_set(settings)
    fc, tc = feature_contract(settings), training_contract(settings)
    lc, mc = contract("conversion_labels"), contract("activation_milestones")
    max_rise = settings.features.null_rate_max_increase
    bounds = settings.labels.base_rate

    def null_rate_check(asset: str, columns: list[str]):
        @dg.asset_check(asset=asset, name=f"{asset}_null_rates", blocking=False, partitions_def=daily, pool=POOL,
                        description=f"Per feature, the share of NULLs may rise by at most {max_rise:.0%} "
                                    "against the previous snapshot (a broken event or property shows up here).")
        def _check(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
            rows, worst = [], 0.0
            with warehouse.get_connection() as conn:
                keys = run_partitions(context, conn, asset, "snapshot_date")
                previous = {k: (dt.date.fromisoformat(k) - dt.timedelta(days=1)).isoformat() for k in keys}
                rates = null_rates(conn, asset, columns, sorted(set(keys) | set(previous.values())))
                for key in keys:
                    now, before = rates[key], rates[previous[key]]
                    for c in columns:
                        if now[c] is None or before[c] is None:
                            continue
                        rise = now[c] - before[c]
                        worst = max(worst, rise)
                        if rise > max_rise:
                            rows.append({"snapshot": key, "feature": c, "null_rate": f"{now[c]:.1%}",
                                         "previous": f"{before[c]:.1%}", "rise": f"{rise:+.1%}"})
            return dg.AssetCheckResult(passed=not rows, severity=dg.AssetCheckSeverity.WARN, metadata={
                "max_rise": dg.MetadataValue.float(round(worst, 4)), "allowed_rise": max_rise,
                "features_checked": len(columns),
                "violations": dg.MetadataValue.md(md_table(rows[:50]) if rows else "none")})
        return _check

    def current_definition_check(asset: str):
        @dg.asset_check(asset=asset, name=f"{asset}_definition_current", blocking=False, pool=POOL,
                        description="Rows computed with an older signals.yaml: backfill those snapshots to "
                                    "recompute them (see docs/operations.md, backfills).")
        def _check(warehouse: Warehouse) -> dg.AssetCheckResult:
            with warehouse.get_connection() as conn:
                if not table_exists(conn, asset):
                    return dg.AssetCheckResult(passed=False, metadata={"error": f"{asset} does not exist"})
                stale = conn.execute(f"""
                    SELECT CAST(min(snapshot_date) AS VARCHAR), CAST(max(snapshot_date) AS VARCHAR),
                           count(DISTINCT snapshot_date), count(*)
                    FROM {asset} WHERE definition_hash <> ?""", [sigs.definition_hash]).fetchall()[0]
            first, last, days, n = stale
            return dg.AssetCheckResult(passed=n == 0, severity=dg.AssetCheckSeverity.WARN, metadata={
                "current_definition_hash": sigs.definition_hash, "stale_rows": n, "stale_snapshots": days,
                "stale_range": f"{first} .. {last}" if n else "none"})
        return _check

    @dg.asset_check(asset="conversion_labels", name="label_base_rate", blocking=True, partitions_def=daily,
                    pool=POOL,
                    description=f"Share of positive labels among user labels with a complete horizon within "
                                f"[{bounds.min:.1%}, {bounds.max:.0%}] (outside: conversion tracking is probably "
                                "broken or the conversion events are misconfigured). Blocks training.")
    def label_base_rate(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            keys = run_partitions(context, conn, "conversion_labels", "snapshot_date")
            rows = []
            if keys:
                # the labels this run can judge: its days and the earlier ones it refreshed
                lo = dt.date.fromisoformat(keys[0]) - dt.timedelta(
                    days=settings.labels.horizon_days + settings.labels.late_arrival_days)
                # complete horizons only: positives are known early, negatives only at the end of the
                # horizon, so recent snapshots alone would overstate the rate
                rows = conn.execute("""
                    SELECT entity_type, count(*) FILTER (WHERE label AND horizon_complete),
                           count(*) FILTER (WHERE label IS NOT NULL AND horizon_complete),
                           count(*) FILTER (WHERE label_status = 'unknown' OR (label AND NOT horizon_complete)),
                           count(*) FILTER (WHERE label_status = 'excluded_paying')
                    FROM conversion_labels WHERE snapshot_date BETWEEN ? AND ?
                    GROUP BY 1 ORDER BY 1""", [lo, dt.date.fromisoformat(keys[-1])]).fetchall()
        table = [{"entity": e, "positive": p, "known": k, "not_final": u, "excluded_paying": x,
                  "base_rate": f"{p / k:.2%}" if k else "-"} for e, p, k, u, x in rows]
        users = next((r for r in rows if r[0] == "user"), None)
        known = users[2] if users else 0
        if known < 100:
            return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.ERROR, metadata={
                "verdict": "insufficient data: fewer than 100 user labels with a complete horizon",
                "labels": dg.MetadataValue.md(md_table(table))})
        rate = users[1] / known
        ok = bounds.min <= rate <= bounds.max
        return dg.AssetCheckResult(passed=ok, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "base_rate": dg.MetadataValue.float(round(rate, 5)), "min": bounds.min, "max": bounds.max,
            "verdict": "ok" if ok else "base rate out of bounds",
            "labels": dg.MetadataValue.md(md_table(table))})

    @dg.asset_check(asset="training_set", name="leakage_guard", blocking=True, pool=POOL,
                    additional_deps=["user_features", "account_features"],
                    description="No feature saw data after its snapshot and no label window overlaps the features: "
                                "bookkeeping rules on every row, and the features of sampled snapshots recomputed "
                                "from source tables cut off at the snapshot must equal the stored rows.")
    def leakage(warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            if not table_exists(conn, "training_set"):
                return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                           metadata={"error": "training_set does not exist"})
            snaps = [r[0] for r in conn.execute(
                "SELECT DISTINCT snapshot_date FROM training_set ORDER BY 1").fetchall()]
            # the oldest, middle and newest training snapshots: different amounts of late data
            sample = sorted({snaps[0], snaps[len(snaps) // 2], snaps[-1]}) if snaps else []
            rep = leakage_guard(conn, feature_spec(settings), sample)
        meta = {
            "bookkeeping": dg.MetadataValue.md(md_table(
                [{"rule": k, "violating_rows": v} for k, v in rep.bookkeeping_violations.items()])),
            "recomputed_snapshots": ", ".join(str(d) for d in rep.recomputed_days) or "none (training set empty)",
            "recomputed_rows": rep.recomputed_rows,
            "mismatched_rows": dg.MetadataValue.json({k: v for k, v in rep.mismatched_rows.items()}),
        }
        if rep.samples:
            meta["mismatch_samples"] = dg.MetadataValue.json(rep.samples)
        return dg.AssetCheckResult(passed=rep.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=meta)

    user_cols = [c for c, _, _ in sigs.user_columns()]
    acct_cols = [c for c, _, _ in sigs.account_columns()]
    return [
        contract_check(settings, "user_features", fc, "user_features", daily, partition_column="snapshot_date"),
        contract_check(settings, "account_features", fc, "account_features", daily, partition_column="snapshot_date"),
        null_rate_check("user_features", user_cols),
        null_rate_check("account_features", acct_cols),
        current_definition_check("user_features"),
        current_definition_check("account_features"),
        contract_check(settings, "conversion_labels", lc, "conversion_labels", daily,
                       partition_column="snapshot_date"),
        label_base_rate,
        contract_check(settings, "training_set", tc, "training_set", None),
        contract_check(settings, "account_training_set", tc, "account_training_set", None),
        leakage,
        contract_check(settings, "activation_milestones", mc, "activation_milestones", None),
    ]
