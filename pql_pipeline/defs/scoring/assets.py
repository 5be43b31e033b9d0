"""Scoring stage: the latest features and the scoring model -> pql_scores (daily)."""

import dagster as dg

from pql_pipeline.defs.features.specs import signal_set
from pql_pipeline.defs.model import registry as R
from pql_pipeline.defs.model.assets import MODEL_LOGIC_VERSION
from pql_pipeline.defs.scoring.batch import (
    ACCOUNT_COLUMNS,
    SCORE_COLUMNS,
    score_days,
    scoring_spec,
    training_reference,
)
from pql_pipeline.defs.scoring.history import HISTORY, update_history
from pql_pipeline.lib.charts import chart_md, pqls_per_day_chart, score_distribution_chart
from pql_pipeline.lib.dagster_helpers import OWNERS, POOL, md_table, partition_days, table_spec
from pql_pipeline.lib.trends import day_probabilities, pqls_by_day, ratio_to_median
from pql_pipeline.lib.warehouse import Warehouse, ensure_columns, table_exists
from pql_pipeline.settings import Settings

GROUP = "scoring"
SCORING_LOGIC_VERSION = "2"   # 2: gradient boosting's reasons are its path attribution
TAGS = {"pql/stage": "scoring"}


def build_scoring_assets(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    code_version = f"{MODEL_LOGIC_VERSION}.{SCORING_LOGIC_VERSION}-{signal_set(settings).definition_hash}"
    deps = ["user_features", "account_features", "conversion_labels", "conversion_model"]

    @dg.multi_asset(
        specs=[
            table_spec("pql_scores", GROUP, "Every free user with a feature row on the day, scored by the scoring "
                       "model (champion or pinned): probability, percentile, tier, PQL flag, whether the proposed "
                       "rule fires, the reasons to call and the caveats (each signal's contribution to the "
                       "probability, in the signals' own sentences), model version, size segment and route (sales, "
                       "in-app nudge or none, with why not).", deps, partition_expr="snapshot_date",
                       kinds={"sklearn", "duckdb"}, code_version=code_version),
            table_spec("pql_account_scores", GROUP, "Every account with a scored user on the day: the probability "
                       "that it converts (1 - prod(1 - p) over its free users), percentile, tier, PQL flag, its PQL "
                       "users and most likely user, the reasons of its most likely users, and its route (sales with "
                       "its contacts, in-app when its users are nudged, or none).", deps,
                       partition_expr="snapshot_date", kinds={"sklearn", "duckdb"}, code_version=code_version),
        ],
        partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run(), pool=POOL, can_subset=False,
    )
    def pql_scores(context: dg.AssetExecutionContext, warehouse: Warehouse):
        days = partition_days(context)
        spec = scoring_spec(settings)
        with warehouse.get_connection() as conn:
            ensure_columns(conn, "pql_scores", SCORE_COLUMNS)
            ensure_columns(conn, "pql_account_scores", ACCOUNT_COLUMNS)
            R.ensure_registry(conn)
            row = R.scoring_model(conn, settings.model.pinned_version)
            if row is None:
                context.log.warning("no model has passed the gates yet: nothing is scored")
                for key in ("pql_scores", "pql_account_scores"):
                    yield dg.MaterializeResult(asset_key=key,
                                               metadata={"dagster/row_count": 0, "model_version": "none"})
                return
            done = score_days(conn, settings, days, row, R.load_artifact(row), training_reference(conn, row))
            per_day, rerouted = done.per_day, done.rerouted
            if rerouted:
                context.log.info(f"{rerouted} routes of days scored after {days[-1]} changed with this run's "
                                 "sales accounts (suppression window)")
            top = conn.execute("""
                SELECT user_id, account_id, round(probability, 3) AS p, tier, segment, route, reason_text
                FROM pql_scores WHERE snapshot_date = ? ORDER BY probability DESC, user_id LIMIT 10""",
                               [days[-1]]).df()
            top_accounts = conn.execute("""
                SELECT account_id, round(probability, 3) AS p, tier, segment, pql_users, route, reason_text
                FROM pql_account_scores WHERE snapshot_date = ? ORDER BY probability DESC, account_id LIMIT 10""",
                                        [days[-1]]).df()
            probabilities = day_probabilities(conn, days[-1])
            pql_days, pql_routes = pqls_by_day(conn, days[-1])
        distribution = chart_md(lambda: score_distribution_chart(probabilities, dict(spec.tiers), str(days[-1])),
                                "score distribution", log=context.log)
        per_day_chart = chart_md(lambda: pqls_per_day_chart(pql_days, pql_routes), "PQLs per day", log=context.log)
        common = {"model_version": row["version"], "per_day": dg.MetadataValue.md(md_table(per_day[-31:])),
                  "later_routes_changed": rerouted}
        yield dg.MaterializeResult(asset_key="pql_scores", metadata={
            "dagster/row_count": done.users, **common,
            "top_leads": dg.MetadataValue.md(md_table(top.astype(str).to_dict("records"))),
            "score_distribution": dg.MetadataValue.md(distribution),
            "pqls_per_day": dg.MetadataValue.md(per_day_chart)})
        yield dg.MaterializeResult(asset_key="pql_account_scores", metadata={
            "dagster/row_count": done.accounts, **common,
            "top_accounts": dg.MetadataValue.md(md_table(top_accounts.astype(str).to_dict("records")))})

    @dg.asset(
        name="pql_history",
        deps=["pql_scores", "pql_account_scores"],
        partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP, kinds={"duckdb"}, owners=OWNERS, tags=TAGS, pool=POOL,
        metadata={"dagster/table_name": HISTORY},
    )
    def pql_history(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """Each account's and user's verdict over time (tier, PQL flag, route, model version) with valid_from /
        valid_to and the reasons of the day it started: when did this account become a PQL, and why. Replayed from
        the run's first day, so re-scoring a range rewrites exactly what follows from it."""
        run_days = partition_days(context)
        with warehouse.get_connection() as conn:
            if not table_exists(conn, "pql_scores"):
                return dg.MaterializeResult(metadata={"days_replayed": 0})
            stats = update_history(conn, run_days[0], run_days)
            became = conn.execute(f"""
                SELECT entity_type, entity_id, CAST(valid_from AS VARCHAR) AS since, tier, route, reason_text
                FROM {HISTORY} WHERE is_pql AND valid_to IS NULL
                ORDER BY valid_from DESC, entity_type, entity_id LIMIT 10""").df()
            rows = conn.execute(f"SELECT count(*) FROM {HISTORY}").fetchall()[0][0]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": rows, **stats,
            "current_pqls_newest_first": dg.MetadataValue.md(md_table(became.astype(str).to_dict("records")))})

    return [pql_scores, pql_history]


def volume_verdict(counts: list[int], min_ratio: float, max_ratio: float,
                   min_median: float = 0) -> tuple[bool, dict]:
    """``counts``: PQLs of the newest day first, then the days before it. Passes if the newest is
    within [min_ratio, max_ratio] of the median of the others, or if that median is below
    ``min_median`` (too few PQLs a day to tell a problem from chance)."""
    today = counts[0]
    median, ratio = ratio_to_median(today, counts[1:])
    meta = {"pqls": today, "median_before": median, "ratio": round(ratio, 3) if ratio != float("inf") else "inf",
            "bounds": f"{min_ratio}-{max_ratio}"}
    if median < min_median:
        meta["note"] = f"median below {min_median} PQLs a day: too few to judge"
        return True, meta
    return min_ratio <= ratio <= max_ratio, meta


def _query_scores(warehouse: Warehouse, sql: str, params: list | None = None) -> list[tuple] | None:
    """Rows of ``sql`` over pql_scores, or None before the table exists."""
    with warehouse.get_connection() as conn:
        return conn.execute(sql, params or []).fetchall() if table_exists(conn, "pql_scores") else None


def build_scoring_checks(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="pql_scores", blocking=True,
                    description="Every scored lead has a model version and a probability in [0, 1], and every lead "
                                "anyone acts on (a PQL or a tier above cold) has at least one reason to open with.")
    def scores_valid(warehouse: Warehouse):
        found = _query_scores(warehouse, """
            SELECT count(*) FILTER (WHERE model_version IS NULL),
                   count(*) FILTER (WHERE probability IS NULL OR probability < 0 OR probability > 1),
                   count(*) FILTER (WHERE (is_pql OR tier <> 'cold') AND reason_text IS NULL), count(*)
            FROM pql_scores""")
        if found is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows": 0})
        no_version, bad_p, no_reason, rows = found[0]
        return dg.AssetCheckResult(
            passed=not (no_version or bad_p or no_reason), severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows": rows, "without_model_version": no_version, "probability_out_of_range": bad_p,
                      "leads_without_reason": no_reason})

    @dg.asset_check(asset="pql_account_scores", blocking=True,
                    description="Every scored account has a model version and a probability in [0, 1] no lower than "
                                "its most likely user's, every PQL account has a reason, and each account's count "
                                "of scored users matches its rows in pql_scores that day.")
    def account_scores_valid(warehouse: Warehouse):
        with warehouse.get_connection() as conn:
            if not table_exists(conn, "pql_account_scores") or not table_exists(conn, "pql_scores"):
                return dg.AssetCheckResult(passed=True, metadata={"rows": 0})
            rows, no_version, bad_p, no_reason = conn.execute("""
                SELECT count(*), count(*) FILTER (WHERE model_version IS NULL),
                       count(*) FILTER (WHERE probability IS NULL OR probability < 0 OR probability > 1
                                        OR probability < top_user_probability - 1e-6),
                       count(*) FILTER (WHERE is_pql AND reason_text IS NULL)
                FROM pql_account_scores""").fetchall()[0]
            unreconciled = conn.execute("""
                SELECT count(*) FROM pql_account_scores AS a
                FULL JOIN (SELECT snapshot_date, account_id, count(*) AS n FROM pql_scores
                           WHERE account_id IS NOT NULL GROUP BY 1, 2) AS u
                  ON u.snapshot_date = a.snapshot_date AND u.account_id = a.account_id
                WHERE a.users_scored IS DISTINCT FROM u.n""").fetchall()[0][0]
        return dg.AssetCheckResult(
            passed=not (no_version or bad_p or no_reason or unreconciled), severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows": rows, "without_model_version": no_version, "probability_invalid": bad_p,
                      "pql_accounts_without_reason": no_reason, "accounts_not_matching_user_rows": unreconciled})

    vol = settings.scoring.volume

    @dg.asset_check(asset="pql_scores", blocking=True,
                    description="The newest day's PQL count against the median of the previous days' "
                                "(scoring.volume bounds): a jump or a collapse usually means a tracking or model "
                                "problem, not a change in the market, and must not reach sales unexamined "
                                "(ERROR; WARN with scoring.volume.blocking: false).")
    def pql_volume(warehouse: Warehouse):
        per_day = _query_scores(warehouse, """
            SELECT snapshot_date, count(*) FILTER (WHERE is_pql) FROM pql_scores
            GROUP BY 1 ORDER BY 1 DESC LIMIT ?""", [vol.lookback_days + 1]) or []
        if len(per_day) < 2:
            return dg.AssetCheckResult(passed=True, metadata={"days": len(per_day), "note": "no earlier day yet"})
        passed, meta = volume_verdict([n for _, n in per_day], vol.min_ratio, vol.max_ratio, vol.min_median)
        return dg.AssetCheckResult(
            passed=passed, severity=dg.AssetCheckSeverity.ERROR if vol.blocking else dg.AssetCheckSeverity.WARN,
            metadata={"day": str(per_day[0][0]), **meta})

    return [scores_valid, account_scores_valid, pql_volume]
