"""Asset checks of the ingest stage.

Contract checks are generated from ``data_contracts/`` (see lib/contract_checks.py).
Checks of daily assets are partitioned like their assets and evaluate every partition
of the run they execute in (a single day, or a whole range in a single-run backfill),
reporting per partition in their metadata. Dagster 1.13 records a range run's
evaluation without a partition key, so after a range backfill the UI lists those checks
as skipped per partition while the run's evaluation (Execution history) holds the
result; a daily run records its partition as usual.
Blocking checks fail with ERROR severity, which is what stops downstream assets;
WARN results are shown but let the pipeline continue.
"""

import dagster as dg

from pql_pipeline.defs.ingest.validation import partitions_counts, reconcile_partitions
from pql_pipeline.lib.dagster_helpers import POOL, contract, contract_check, md_table, run_partitions
from pql_pipeline.lib.trends import ratio_to_median
from pql_pipeline.lib.warehouse import Warehouse, dates_sql
from pql_pipeline.settings import Settings


def build_ingest_checks(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    raw_c, val_c = contract("raw_events"), contract("validated_events")
    users_c, accounts_c = contract("users"), contract("accounts")
    qr = settings.checks.quarantine_rate
    vol = settings.checks.volume

    @dg.asset_check(asset="validated_events", blocking=True, partitions_def=daily, pool=POOL,
                    description="Every raw line is accounted for exactly once: raw = validated + duplicates "
                                "removed + quarantined, matched line by line, per partition.")
    def reconciliation(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        rows, ok = [], True
        with warehouse.get_connection() as conn:
            for r in reconcile_partitions(conn, run_partitions(context, conn, "raw_events")):
                ok &= r["ok"]
                rows.append({**r, "ok": "yes" if r["ok"] else "**NO**"})
        return dg.AssetCheckResult(passed=ok, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "raw_rows": sum(r["raw"] for r in rows),
            "accounted_rows": sum(r["validated"] + r["duplicates"] + r["quarantined"] for r in rows),
            "partitions": dg.MetadataValue.md(md_table(rows[-31:] if ok else [r for r in rows if r["ok"] != "yes"][:31])),
        })

    @dg.asset_check(asset="validated_events", blocking=True, partitions_def=daily, pool=POOL,
                    description=f"Share of raw lines quarantined: warn above {qr.warn_above:.1%}, "
                                f"block downstream above {qr.error_above:.1%}; a file not readable to its end "
                                f"(its rest quarantined as file.unreadable): {qr.unreadable_file}.")
    def quarantine_rate(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        rows, worst = [], 0.0
        with warehouse.get_connection() as conn:
            keys = run_partitions(context, conn, "raw_events")
            in_keys = dates_sql(keys)
            tops: dict[str, list] = {}
            for key, rule, n in conn.execute(f"""
                    SELECT CAST(partition_date AS VARCHAR), rule_id, n FROM (
                        SELECT partition_date, rule_id, count(*) AS n FROM quarantined_events
                        WHERE partition_date IN ({in_keys}) GROUP BY ALL)
                    QUALIFY row_number() OVER (PARTITION BY partition_date ORDER BY n DESC, rule_id) <= 3
                    ORDER BY 1, 3 DESC, 2""").fetchall():
                tops.setdefault(key, []).append((rule, n))
            for c in partitions_counts(conn, keys):
                rate = c.quarantined / c.raw if c.raw else 0.0
                worst = max(worst, rate)
                rows.append({"partition": c.partition, "raw": c.raw, "quarantined": c.quarantined,
                             "rate": f"{rate:.3%}",
                             "top_rules": ", ".join(f"{r} ({n})" for r, n in tops.get(c.partition, [])) or "-"})
            samples = conn.execute(f"""
                SELECT partition_date::VARCHAR, source_file, line_no, rule_id, reasons[1], left(raw_line, 200)
                FROM quarantined_events WHERE partition_date IN ({in_keys})
                ORDER BY partition_date, source_file, line_no LIMIT {settings.checks.sample_rows}""").fetchall()
            unreadable = conn.execute(f"""
                SELECT partition_date::VARCHAR, source_file, reasons[1] FROM quarantined_events
                WHERE partition_date IN ({in_keys}) AND rule_id = 'file.unreadable'
                ORDER BY 1, 2""").fetchall()
        # between the two thresholds: a warning; above error_above (or passing): the blocking level;
        # an unreadable file: as checks.quarantine_rate.unreadable_file says
        passed = worst <= qr.warn_above and not unreadable
        blocks = worst > qr.error_above or (bool(unreadable) and qr.unreadable_file == "error")
        severity = dg.AssetCheckSeverity.WARN if not passed and not blocks else dg.AssetCheckSeverity.ERROR
        return dg.AssetCheckResult(passed=passed, severity=severity, metadata={
            "unreadable_files": dg.MetadataValue.json([{"partition": u[0], "file": u[1], "reason": u[2]}
                                                       for u in unreadable]),
            "max_quarantine_rate": dg.MetadataValue.float(round(worst, 6)),
            "warn_above": qr.warn_above,
            "error_above": qr.error_above,
            "partitions": dg.MetadataValue.md(md_table(rows[-31:])),
            "sample_bad_rows": dg.MetadataValue.json([
                {"partition": s[0], "file": s[1], "line": s[2], "rule": s[3], "reason": s[4], "raw": s[5]}
                for s in samples]),
        })

    def volume_check(asset: str, table: str):
        @dg.asset_check(asset=asset, name=f"{asset}_volume", blocking=False, partitions_def=daily, pool=POOL,
                        description=f"Rows per partition vs the median of the previous {vol.lookback_partitions} "
                                    f"non-empty partitions (warn outside {vol.min_ratio}x-{vol.max_ratio}x).")
        def _volume(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
            rows, ok = [], True
            with warehouse.get_connection() as conn:
                for key in run_partitions(context, conn, table):
                    n = conn.execute(f"SELECT count(*) FROM {table} WHERE partition_date = DATE '{key}'").fetchall()[0][0]
                    hist = [r[0] for r in conn.execute(f"""
                        SELECT count(*) FROM {table} WHERE partition_date < DATE '{key}'
                        GROUP BY partition_date ORDER BY partition_date DESC LIMIT {vol.lookback_partitions}
                    """).fetchall()]
                    med, ratio = ratio_to_median(n, hist)
                    if med is None:
                        verdict = "no history" if n else "**empty**"
                        good = n > 0
                    else:
                        good = vol.min_ratio <= ratio <= vol.max_ratio
                        verdict = "ok" if good else "**out of range**"
                    ok &= good
                    rows.append({"partition": key, "rows": n, "baseline_median": med if med is not None else "-",
                                 "ratio": f"{ratio:.2f}" if ratio is not None else "-", "verdict": verdict})
            return dg.AssetCheckResult(passed=ok, severity=dg.AssetCheckSeverity.WARN, metadata={
                "partitions": dg.MetadataValue.md(md_table(rows[-31:])),
                "min_ratio": vol.min_ratio, "max_ratio": vol.max_ratio,
            })
        return _volume

    return [
        contract_check(settings, "raw_events", raw_c, "raw_events", daily),
        volume_check("raw_events", "raw_events"),
        contract_check(settings, "validated_events", val_c, "validated_events", daily),
        reconciliation,
        quarantine_rate,
        volume_check("validated_events", "validated_events"),
        contract_check(settings, "quarantined_events", val_c, "quarantined_events", daily),
        contract_check(settings, "duplicate_events", val_c, "duplicate_events", daily),
        contract_check(settings, "users", users_c, "users", None),
        contract_check(settings, "users", users_c, "users_history", None),
        contract_check(settings, "accounts", accounts_c, "accounts", None),
        contract_check(settings, "accounts", accounts_c, "accounts_history", None),
    ]
