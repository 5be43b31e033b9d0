"""Features stage: validated events -> point-in-time features, conversion labels,
training sets and activation-milestone discovery."""

import math
from pathlib import Path

import dagster as dg
import yaml

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.features.labels import compute_labels
from pql_pipeline.defs.features.milestones import MILESTONE_COLUMNS, discover, proposed_rule
from pql_pipeline.defs.features.specs import (
    FEATURES_LOGIC_VERSION,
    column_lineage,
    feature_contract,
    feature_spec,
    label_spec,
    milestone_spec,
    signal_set,
    training_contract,
)
from pql_pipeline.defs.features.training import build_training_sets
from pql_pipeline.lib.dagster_helpers import OWNERS, POOL, contract, md_table, partition_days, table_schema, table_spec
from pql_pipeline.lib.warehouse import Warehouse, ensure_columns, registered, replace_rows, table_exists
from pql_pipeline.settings import Settings

GROUP = "features"
TAGS = {"pql/stage": "features"}


def proposed_rule_path(settings: Settings) -> Path:
    """Where the proposed rule-based PQL definition is written (next to the warehouse)."""
    return settings.warehouse_path.parent / "proposed_pql_rule.yaml"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def build_feature_assets(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    sigs = signal_set(settings)
    fc = feature_contract(settings)
    tc = training_contract(settings)
    lc = contract("conversion_labels")
    mc = contract("activation_milestones")
    lspec = label_spec(settings)
    code_version = f"{FEATURES_LOGIC_VERSION}-{sigs.definition_hash}"
    lineage = column_lineage(settings)
    kinds = {"duckdb", "spark"} if settings.features.engine == "spark" else {"duckdb"}

    @dg.multi_asset(
        specs=[
            table_spec("user_features", GROUP, "One row per active user per snapshot day: every signal of "
                       "signals.yaml, computed only from events known by the end of that day.", ["validated_events"],
                       partition_expr="snapshot_date", contract=fc, kinds=kinds, code_version=code_version),
            table_spec("account_features", GROUP, "One row per account with an active user per snapshot day: users "
                       "rolled up (best user, averages), seats, active users, breadth, firmographics as of the day.",
                       ["validated_events"], partition_expr="snapshot_date", contract=fc, kinds=kinds,
                       code_version=code_version),
        ],
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=POOL,
        can_subset=False,
    )
    def features(context: dg.AssetExecutionContext, warehouse: Warehouse):
        days = partition_days(context)
        spark = None
        if settings.features.engine == "spark":
            from pql_pipeline.lib.spark import SparkFeatures

            spark = SparkFeatures(settings.features.spark, settings.spark_staging)
            context.log.info(f"computing features on Spark (master {settings.features.spark.master})")
        with warehouse.get_connection() as conn:
            run = compute_features(conn, feature_spec(settings), days, settings.features.snapshot_batch_days,
                                   spark=spark)
            per_day = conn.execute("""
                SELECT CAST(snapshot_date AS VARCHAR), count(*), count(*) FILTER (WHERE is_paying)
                FROM user_features WHERE snapshot_date BETWEEN ? AND ? GROUP BY 1 ORDER BY 1""",
                                   [days[0], days[-1]]).fetchall()
        if run.schema_changes:
            context.log.info("feature tables changed: " + ", ".join(run.schema_changes))
        common = {"snapshots": len(days), "signals_definition_hash": sigs.definition_hash,
                  "schema_changes": ", ".join(run.schema_changes or []) or "none",
                  "cache_partitions_built": run.cache_partitions_built,
                  # days advanced from the previous day's state instead of computed from the history
                  "snapshots_advanced": len(run.incremental or []),
                  "users_recomputed": sum(i["users_recomputed"] for i in run.incremental or []),
                  "engine": settings.features.engine}
        if run.staging is not None:
            common.update({"spark_partitions_staged": run.staging["partitions_staged"],
                           "spark_partitions_reused": run.staging["partitions_reused"]})
        yield dg.MaterializeResult(asset_key="user_features", metadata={
            "dagster/row_count": run.user_rows, **common,
            "signals": len(sigs.signals),
            "rows_per_snapshot": dg.MetadataValue.md(md_table(
                [{"snapshot": d, "users": n, "paying": p} for d, n, p in per_day[-31:]])),
        })
        yield dg.MaterializeResult(asset_key="account_features", metadata={
            "dagster/row_count": run.account_rows, **common, "account_signals": len(sigs.account_signals),
            "dagster/column_lineage": lineage["account_features"]})

    @dg.asset(
        name="conversion_labels",
        deps=["user_features", "account_features"],
        partitions_def=daily,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP, kinds={"duckdb"}, owners=OWNERS, tags=TAGS, pool=POOL,
        code_version=f"{FEATURES_LOGIC_VERSION}-{lspec.definition_hash}",
        metadata={"partition_expr": "snapshot_date", "contract": lc.id, "dagster/table_name": "conversion_labels",
                  "dagster/column_schema": table_schema(lc, "conversion_labels")},
    )
    def conversion_labels(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """Whether each user / account converted within the horizon after each snapshot: positive, negative,
        unknown (horizon not observed yet) or excluded (already paying). A run also refreshes the labels of
        the earlier snapshots whose horizon its days complete."""
        with warehouse.get_connection() as conn:
            run = compute_labels(conn, lspec, partition_days(context))
        refreshed = len(run.snapshot_days) - len(context.partition_keys)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(run.counts.values()),
            "observed_until": str(run.observed_until),
            "horizon_days": lspec.horizon_days,
            "conversion_events": ", ".join(lspec.conversion_events),
            "earlier_snapshots_refreshed": refreshed,
            "labels": dg.MetadataValue.md(md_table([{"entity_status": k, "rows": v} for k, v in run.counts.items()])),
        })

    @dg.multi_asset(
        specs=[
            table_spec("training_set", GROUP, "User features (and their account's, prefixed acct_) at the training "
                       "snapshots joined with known labels; guarded against leakage.",
                       ["conversion_labels", "user_features", "account_features"], contract=tc,
                       code_version=code_version),
            table_spec("account_training_set", GROUP, "Account features at the training snapshots joined with known "
                       "account labels.", ["conversion_labels", "account_features"], contract=tc,
                       code_version=code_version),
        ],
        pool=POOL,
        can_subset=False,
    )
    def training_sets(context: dg.AssetExecutionContext, warehouse: Warehouse):
        t = settings.training
        with warehouse.get_connection() as conn:
            if not table_exists(conn, "conversion_labels"):
                raise dg.Failure("conversion_labels does not exist yet: materialize the features group first")
            out = build_training_sets(conn, feature_spec(settings), settings.partitions.start_date,
                                      t.snapshot_every_days, t.lookback_days, lspec.definition_hash)
        for key in ("training_set", "account_training_set"):
            o = out[key]
            yield dg.MaterializeResult(asset_key=key, metadata={
                "dagster/row_count": o["rows"], "positives": o["positives"], "snapshots": o["snapshots"],
                "base_rate": dg.MetadataValue.float(round(o["positives"] / o["rows"], 4) if o["rows"] else 0.0),
                "snapshot_every_days": t.snapshot_every_days, "lookback_days": t.lookback_days,
                "dagster/column_lineage": lineage[key]})

    @dg.asset(
        name="activation_milestones",
        deps=["validated_events"],
        group_name=GROUP, kinds={"duckdb"}, owners=OWNERS, tags=TAGS, pool=POOL, code_version=code_version,
        metadata={"contract": mc.id, "dagster/table_name": "activation_milestones",
                  "dagster/column_schema": table_schema(mc, "activation_milestones")},
    )
    def activation_milestones(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """'Did X at least N times within D days of signup' for every candidate X, N and D: coverage,
        conversion with vs without, lift with confidence intervals; the strongest become a proposed
        rule-based PQL definition (YAML)."""
        spec = milestone_spec(settings)
        with warehouse.get_connection() as conn:
            df, until = discover(conn, spec)
            ensure_columns(conn, "activation_milestones", MILESTONE_COLUMNS)
            with registered(conn, "milestones_df", df):
                replace_rows(conn, "activation_milestones", [c for c, _ in MILESTONE_COLUMNS], "milestones_df")
        rule = proposed_rule(df, spec, until)
        text = yaml.safe_dump({"proposed_pql_rule": rule}, sort_keys=False, allow_unicode=True)
        path = proposed_rule_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Proposed by activation_milestones; review before adopting it as the baseline rule.\n"
                        + text, encoding="utf-8")
        best = df[df.is_best_variant.fillna(False).astype(bool)] if len(df) else df
        shown = [{"rank": f"{r.direction[:3]} {int(r.rank)}", "milestone": r.candidate,
                  "N": int(r.min_count), "D days": int(r.within_days), "coverage": f"{r.coverage:.1%}",
                  "conv. with": f"{r.rate_with:.1%}", "conv. without": f"{r.rate_without:.1%}",
                  "lift": _fmt(r.lift), f"lift {spec.confidence:.0%} CI": f"{_fmt(r.lift_low)}-{_fmt(r.lift_high)}",
                  "phi": f"{r.phi:.3f}", "cohort": int(r.cohort_users)}
                 for r in best.itertuples(index=False)]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(df),
            "observed_until": str(until),
            "candidates": int(df.candidate.nunique()) if len(df) else 0,
            "ranked_milestones": dg.MetadataValue.md(md_table(shown) if shown else
                                                     "_no cohort has been observed long enough yet_"),
            "proposed_rule": dg.MetadataValue.md(f"```yaml\n{text}```"),
            "proposed_rule_path": dg.MetadataValue.path(str(path)),
        })

    return [features, conversion_labels, training_sets, activation_milestones]
