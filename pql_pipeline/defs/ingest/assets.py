"""Ingest stage: raw_events -> validated_events (+ quarantined / duplicate events) -> users, accounts."""

from pathlib import Path

import dagster as dg

from pql_pipeline.defs.ingest.dimensions import build_accounts, build_users
from pql_pipeline.defs.ingest.raw import ensure_raw_events, load_partitions
from pql_pipeline.defs.ingest.resources import EventSource
from pql_pipeline.defs.ingest.validation import PARTITION_TABLES, validate_partitions
from pql_pipeline.lib.charts import chart_md, quarantine_chart
from pql_pipeline.lib.contracts import load_contract
from pql_pipeline.lib.dagster_helpers import OWNERS, POOL, contract, md_table, partition_days, table_schema, table_spec
from pql_pipeline.lib.trends import quarantine_by_day
from pql_pipeline.lib.warehouse import Warehouse, dates_sql, ensure_tables
from pql_pipeline.settings import Settings

# 2: a line is judged and parsed as it is loaded; only a line that broke a rule keeps its text
RAW_LOGIC_VERSION = "2"


def build_ingest_assets(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    raw_c, val_c = contract("raw_events"), contract("validated_events")
    users_c, accounts_c = contract("users"), contract("accounts")

    @dg.asset(
        name="raw_events",
        group_name="ingest",
        kinds={"duckdb", "json"},
        owners=OWNERS,
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=POOL,
        code_version=RAW_LOGIC_VERSION,
        metadata={"partition_expr": "partition_date", "contract": raw_c.id,
                  "dagster/table_name": "raw_events", "dagster/column_schema": table_schema(raw_c, "raw_events")},
        tags={"pql/stage": "ingest"},
    )
    def raw_events(context: dg.AssetExecutionContext, warehouse: Warehouse, event_source: EventSource):
        """Every line of the partition's event files, with file and line number, judged by the
        inbound contract's row rules and parsed once: a good line as its typed envelope, a
        line that broke a rule verbatim, with its rules and reasons.

        Nothing is dropped here; re-running a partition replaces it.
        """
        per_partition, unreadable = [], []
        total = files = nbytes = bad = 0
        seg = load_contract(settings.contract_path)
        with warehouse.get_connection() as conn:
            ensure_raw_events(conn, raw_c, seg)
            loads = load_partitions(conn, Path(event_source.root), event_source.pattern, event_source.format,
                                    sorted(context.partition_keys), seg)
            for r in loads:
                key = r.partition
                if not r.files:
                    context.log.warning(f"partition {key}: no files match {event_source.pattern} under {event_source.root}")
                for note in r.unreadable:
                    context.log.warning(f"partition {key}: {note} (quarantined as file.unreadable)")
                    unreadable.append(note)
                per_partition.append({"partition": key, "files": len(r.files), "lines": r.rows,
                                      "bytes": r.bytes, "invalid_utf8": r.invalid_utf8})
                total += r.rows
                files += len(r.files)
                nbytes += r.bytes
                bad += r.invalid_utf8
        return dg.MaterializeResult(metadata={
            "dagster/row_count": total,
            "files": files,
            "bytes": nbytes,
            "invalid_utf8_lines": bad,
            "unreadable_files": dg.MetadataValue.json(unreadable),
            "partitions": dg.MetadataValue.md(md_table(per_partition[-31:])),
        })

    @dg.multi_asset(
        specs=[
            table_spec("validated_events", "ingest", "Contract-valid events: typed, deduplicated by messageId (first "
                       "wins), UTC timestamps, anonymousId resolved to userId, user resolved to account.",
                       ["raw_events"], partition_expr="partition_date", contract=val_c),
            table_spec("quarantined_events", "ingest", "Lines that broke the inbound contract, with rule ids and "
                       "reasons; never dropped.", ["raw_events"], partition_expr="partition_date", contract=val_c,
                       names_contract=False),
            table_spec("duplicate_events", "ingest", "Re-sent messages removed by deduplication, pointing at the kept "
                       "copy.", ["raw_events"], partition_expr="partition_date", contract=val_c,
                       names_contract=False),
        ],
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=POOL,
        can_subset=False,
    )
    def validate_events(context: dg.AssetExecutionContext, warehouse: Warehouse):
        seg = load_contract(settings.contract_path)
        rows = []
        totals = {"raw": 0, "validated": 0, "duplicates": 0, "quarantined": 0}
        with warehouse.get_connection() as conn:
            ensure_raw_events(conn, raw_c, seg)
            ensure_tables(conn, val_c, *PARTITION_TABLES)
            for c in validate_partitions(conn, seg, sorted(context.partition_keys),
                                         settings.validation.dedup_lookback_days):
                key = c.partition
                rows.append({"partition": key, "raw": c.raw, "validated": c.validated,
                             "duplicates": c.duplicates, "quarantined": c.quarantined,
                             "reconciles": "yes" if c.reconciles else "**NO**"})
                for k, v in (("raw", c.raw), ("validated", c.validated), ("duplicates", c.duplicates),
                             ("quarantined", c.quarantined)):
                    totals[k] += v
            later = [r["partition"] for r in rows if r["partition"] not in set(context.partition_keys)]
            if later:
                context.log.info(f"{len(later)} later day(s) validated again, {later[0]} .. {later[-1]}: their "
                                 "deduplication looks back at this run's days")
            keys = dates_sql(context.partition_keys)
            by_rule = conn.execute(f"""
                SELECT rule_id, count(*) AS n FROM quarantined_events
                WHERE partition_date IN ({keys}) GROUP BY rule_id ORDER BY n DESC, rule_id
            """).fetchall()
            q_days, q_rates = quarantine_by_day(conn, partition_days(context)[-1])
        rate = totals["quarantined"] / totals["raw"] if totals["raw"] else 0.0
        q = settings.checks.quarantine_rate
        q_chart = dg.MetadataValue.md(chart_md(lambda: quarantine_chart(q_days, q_rates, q.warn_above, q.error_above),
                                               "quarantine rate per day", log=context.log))
        yield dg.MaterializeResult(asset_key="validated_events", metadata={
            "dagster/row_count": totals["validated"],
            "raw_rows": totals["raw"],
            "duplicates_removed": totals["duplicates"],
            "quarantined": totals["quarantined"],
            "quarantine_rate": dg.MetadataValue.float(round(rate, 6)),
            "contract_version": seg.version,
            "reconciliation": dg.MetadataValue.md(md_table(rows[-31:])),
            "quarantine_rate_per_day": q_chart,
        })
        yield dg.MaterializeResult(asset_key="quarantined_events", metadata={
            "dagster/row_count": totals["quarantined"],
            "quarantine_rate": dg.MetadataValue.float(round(rate, 6)),
            "by_rule": dg.MetadataValue.md(md_table([{"rule_id": r, "rows": n} for r, n in by_rule])),
            "quarantine_rate_per_day": q_chart,
        })
        yield dg.MaterializeResult(asset_key="duplicate_events", metadata={
            "dagster/row_count": totals["duplicates"],
        })

    @dg.asset(
        name="users",
        deps=["validated_events"],
        group_name="ingest",
        kinds={"duckdb"},
        owners=OWNERS,
        pool=POOL,
        tags={"pql/stage": "ingest"},
        metadata={"contract": users_c.id, "dagster/table_name": "users",
                  "dagster/column_schema": table_schema(users_c, "users")},
    )
    def users(warehouse: Warehouse):
        """Users with their latest identify traits and account; full history in users_history (SCD-2)."""
        with warehouse.get_connection() as conn:
            ensure_tables(conn, val_c, "validated_events", "account_memberships")
            n = build_users(conn)
            versions, identified = conn.execute(
                "SELECT count(*), count(DISTINCT user_id) FROM users_history").fetchall()[0]
        return dg.MaterializeResult(metadata={"dagster/row_count": n, "history_versions": versions,
                                              "identified_users": identified})

    @dg.asset(
        name="accounts",
        deps=["validated_events"],
        group_name="ingest",
        kinds={"duckdb"},
        owners=OWNERS,
        pool=POOL,
        tags={"pql/stage": "ingest"},
        metadata={"contract": accounts_c.id, "dagster/table_name": "accounts",
                  "dagster/column_schema": table_schema(accounts_c, "accounts")},
    )
    def accounts(warehouse: Warehouse):
        """Accounts (Segment groups) with latest firmographics and size segment; history in accounts_history."""
        with warehouse.get_connection() as conn:
            ensure_tables(conn, val_c, "validated_events", "account_memberships")
            n = build_accounts(conn, settings.segments)
            seg = conn.execute("SELECT size_segment, count(*) FROM accounts GROUP BY 1 ORDER BY 1").fetchall()
        return dg.MaterializeResult(metadata={
            "dagster/row_count": n,
            "by_segment": dg.MetadataValue.md(md_table([{"segment": s, "accounts": c} for s, c in seg])),
        })

    return [raw_events, validate_events, users, accounts]
