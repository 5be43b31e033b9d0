"""Monitoring stage: the drift report and the checks that gate the outputs on it."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd

from pql_pipeline.defs.features.specs import signal_set
from pql_pipeline.defs.model import registry as R
from pql_pipeline.defs.model.training import prepare
from pql_pipeline.defs.monitoring import report as M
from pql_pipeline.defs.monitoring.drift import Thresholds, is_incident
from pql_pipeline.defs.monitoring.pql_report import report_path, template_version, verify_report, write_report
from pql_pipeline.defs.scoring.batch import candidates_sql
from pql_pipeline.lib.charts import chart_md, drift_chart
from pql_pipeline.lib.dagster_helpers import OWNERS, POOL, md_table, partition_days
from pql_pipeline.lib.warehouse import Warehouse, ensure_columns, registered, replace_rows, table_exists
from pql_pipeline.settings import Settings

GROUP = "monitoring"
TAGS = {"pql/stage": "monitoring"}
MONITORING_LOGIC_VERSION = "1"
KEYS = {"snapshot_date", "user_id", "account_id", "signup_date", "definition_hash", "label", "label_status"}

STREAM_CHECK = "event_stream_stable"
FEATURE_CHECK = "feature_drift"
TOP_FEATURE_CHECK = "top_feature_drift"
PREDICTION_CHECK = "prediction_drift"
PERFORMANCE_CHECK = "performance_decay"
REPORT_CHECK = "report_matches_scores"


def thresholds(settings: Settings) -> Thresholds:
    d = settings.monitoring.drift
    return Thresholds(psi_warn=d.psi_warn, psi_alert=d.psi_alert, js_warn=d.js_warn, js_alert=d.js_alert,
                      unseen_warn=d.unseen_warn, min_rows=d.min_rows)


def stream_bounds(settings: Settings) -> M.StreamBounds:
    # the bounds are the settings' fields (blocking is the check's severity, not a bound)
    return M.StreamBounds(**settings.monitoring.stream.model_dump(exclude={"blocking"}))


def _days_with(conn, table: str, days: list[dt.date]) -> list[dt.date]:
    if not days or not table_exists(conn, table):
        return []
    found = conn.execute(f"SELECT DISTINCT snapshot_date FROM {table} WHERE snapshot_date IN "
                         f"({', '.join('?' for _ in days)})", days).fetchall()
    return sorted(d for (d,) in found)


def feature_part(conn, settings: Settings, day: dt.date, model: dict | None) -> list[dict]:
    """The day's scoring inputs against the model's training rows and the trailing weeks."""
    d, t = settings.monitoring.drift, thresholds(settings)
    version = model["version"] if model else None
    if not _days_with(conn, "user_features", [day]) or not table_exists(conn, "conversion_labels"):
        return [M.row(day, "features", "(all features)", "-", "-", None, None, None, None, "insufficient_data", 0,
                      "no features on the day", model_version=version)]
    sigs = signal_set(settings)
    current = conn.execute(M.sample_sql(candidates_sql(sigs, day), d.sample_rows)).df()
    references: dict[str, pd.DataFrame] = {}
    if model and table_exists(conn, "training_set"):
        references["training"] = conn.execute(M.sample_sql(
            f"SELECT * FROM training_set WHERE label IS NOT NULL AND snapshot_date BETWEEN "
            f"DATE '{model['train_start']}' AND DATE '{model['train_end']}'", d.sample_rows)).df()
    trailing = _days_with(conn, "user_features", M.trailing_days(day, d.reference_weeks))
    if trailing:
        per_day = max(d.sample_rows // len(trailing), 1)
        references["trailing_weeks"] = pd.concat(
            [conn.execute(M.sample_sql(candidates_sql(sigs, t_day), per_day)).df() for t_day in trailing],
            ignore_index=True)
    else:
        references["trailing_weeks"] = current.iloc[0:0]
    if model:
        numeric, categorical = model["features"]["numeric"], model["features"]["categorical"]
    else:
        cols = [c for c in current.columns if c not in KEYS]
        numeric = [c for c in cols
                   if pd.api.types.is_numeric_dtype(current[c]) or pd.api.types.is_bool_dtype(current[c])]
        categorical = [c for c in cols if c not in numeric]
    frames = {name: prepare(ref, numeric, categorical) for name, ref in references.items()}
    return M.feature_drift_rows(day, prepare(current, numeric, categorical), frames, numeric, categorical, t,
                                version)


def prediction_part(conn, settings: Settings, day: dt.date, model: dict | None) -> list[dict]:
    d, t = settings.monitoring.drift, thresholds(settings)
    version = model["version"] if model else None
    if not _days_with(conn, "pql_scores", [day]):
        return [M.row(day, "predictions", "probability", "trailing_weeks", "psi", None, None, t.psi_warn,
                      t.psi_alert, "insufficient_data", 0, "no scores on the day", model_version=version)]
    trailing = _days_with(conn, "pql_scores", M.trailing_days(day, d.reference_weeks))

    def scores(days: list[dt.date]) -> np.ndarray:
        if not days:
            return np.array([])
        sql = (f"SELECT probability FROM pql_scores WHERE snapshot_date IN "
               f"({', '.join(repr(x.isoformat()) for x in days)})")
        return conn.execute(M.sample_sql(sql, d.sample_rows)).df()["probability"].to_numpy(dtype=float)

    rates = dict(conn.execute(
        "SELECT snapshot_date, avg(is_pql::INT) FROM pql_scores WHERE snapshot_date IN "
        f"({', '.join('?' for _ in [day, *trailing])}) GROUP BY 1", [day, *trailing]).fetchall())
    return M.prediction_drift_rows(day, scores([day]), scores(trailing), rates.get(day),
                                   [rates[x] for x in trailing if x in rates], t, d.max_pql_rate_change, version)


def performance_part(conn, settings: Settings, day: dt.date, model: dict | None) -> list[dict]:
    p = settings.monitoring.performance
    version = model["version"] if model else None
    holdout = model["metrics"] if model else {}
    cohort = None
    if model and table_exists(conn, "pql_scores") and table_exists(conn, "conversion_labels"):
        cohort = conn.execute("""
            SELECT max(s.snapshot_date) FROM pql_scores AS s
            JOIN conversion_labels AS l ON l.entity_type = 'user' AND l.entity_id = s.user_id
                                       AND l.snapshot_date = s.snapshot_date
            WHERE s.snapshot_date <= ? AND l.label IS NOT NULL AND l.horizon_complete""", [day]).fetchall()[0][0]
    if cohort is None:
        y, prob, flagged = np.array([]), np.array([]), np.array([], dtype=bool)
    else:
        frame = conn.execute("""
            SELECT l.label::INT AS y, s.probability, s.is_pql FROM pql_scores AS s
            JOIN conversion_labels AS l ON l.entity_type = 'user' AND l.entity_id = s.user_id
                                       AND l.snapshot_date = s.snapshot_date
            WHERE s.snapshot_date = ? AND l.label IS NOT NULL AND l.horizon_complete""", [cohort]).df()
        y, prob = frame["y"].to_numpy(), frame["probability"].to_numpy(dtype=float)
        flagged = frame["is_pql"].fillna(False).to_numpy(dtype=bool)
        # judged against the holdout of the model that scored the cohort (it may have been replaced since)
        scored_by = conn.execute("SELECT mode(model_version) FROM pql_scores WHERE snapshot_date = ?",
                                 [cohort]).fetchall()[0][0]
        if scored_by and scored_by != version:
            found = R.rows(conn, "version = ?", [scored_by])
            if found:
                version, holdout = scored_by, found[-1]["metrics"]
    return M.performance_rows(day, cohort, y, prob, flagged, holdout, p.max_auc_drop, p.max_precision_drop,
                              p.min_rows, p.min_positives, version)


def write_history(conn, rows: list[dict], days: list[dt.date], parts: tuple[str, ...]) -> None:
    """Replace the report's rows of ``days`` x ``parts`` (idempotent per day and part)."""
    ensure_columns(conn, M.HISTORY, M.HISTORY_COLUMNS)
    cols = [c for c, _ in M.HISTORY_COLUMNS]
    frame = pd.DataFrame(rows, columns=cols)
    frame["computed_at"] = pd.Timestamp.now(tz="UTC")
    with registered(conn, "drift_rows", frame):
        replace_rows(conn, M.HISTORY, cols, "drift_rows",
                     f"report_day IN ({', '.join('?' for _ in days)}) AND part IN "
                     f"({', '.join('?' for _ in parts)})", [*days, *parts])


def incidents(conn, day: dt.date, need: int, of: int) -> list[dict]:
    """Items whose alert repeats in ``need`` of the newest ``of`` report days up to ``day``
    (the alert-fatigue guard: a single alerting day is not an incident)."""
    frame = conn.execute(f"""
        SELECT part, item, reference, verdict, report_day FROM {M.HISTORY}
        WHERE report_day <= ? AND report_day IN (SELECT DISTINCT report_day FROM {M.HISTORY} WHERE report_day <= ?
                                                 ORDER BY report_day DESC LIMIT ?)
        ORDER BY report_day DESC""", [day, day, of]).df()
    frame["report_day"] = pd.to_datetime(frame["report_day"]).dt.date
    out = []
    for (part, item, ref), g in frame.groupby(["part", "item", "reference"], sort=True):
        if g["report_day"].iloc[0] == day and g["verdict"].iloc[0] == "alert" and \
                is_incident(list(g["verdict"]), need, of):
            out.append({"part": part, "item": item, "reference": ref,
                        "alerts": int((g["verdict"] == "alert").sum()), "days": len(g)})
    return out


def _md(rows: list[dict], limit: int = 40) -> str:
    order = {"alert": 0, "warn": 1, "ok": 2, "insufficient_data": 3}
    shown = sorted(rows, key=lambda r: (order.get(r["verdict"], 4), r["part"], r["item"], r["reference"]))[:limit]
    return md_table([{"item": r["item"], "reference": r["reference"], "metric": r["metric"],
                      "value": "" if r["value"] is None else round(r["value"], 4),
                      "warn": "" if r["warn"] is None else r["warn"], "alert": "" if r["alert"] is None else r["alert"],
                      "verdict": r["verdict"], "note": r.get("note") or ""} for r in shown])


def feature_drift_md(settings: Settings, features: list[dict], log=None) -> str:
    """The numeric features' PSI against the training rows as a chart, then every feature
    row (both references, categorical features' Jensen-Shannon distances) as a table."""
    t = settings.monitoring.drift
    psi_rows = [(r["item"], r["value"]) for r in features
                if r["reference"] == "training" and r["metric"] == "psi" and r["value"] is not None]
    table = _md(features, limit=60)
    if not psi_rows:
        return table
    return chart_md(lambda: drift_chart(psi_rows, t.psi_warn, t.psi_alert, "the training rows"),
                    "feature drift", table, log)


def top_features(model: dict | None, n: int) -> list[str]:
    if not model or not model.get("importance"):
        return []
    return [name for name, value in model["importance"][:n] if value > 0]


def judge(settings: Settings, day: dt.date, rows: list[dict], found_incidents: list[dict],
          model: dict | None) -> list[dg.AssetCheckResult]:
    """The four check results of the newest day's report."""
    m = settings.monitoring
    by_part = {p: [r for r in rows if r["part"] == p] for p in M.PARTS}
    inc = {p: [f"{i['item']} ({i['reference']})" for i in found_incidents if i["part"] == p] for p in M.PARTS}

    def meta(part: str, extra: dict | None = None) -> dict:
        r = by_part[part]
        return {"day": str(day), "verdict": M.worst(x["verdict"] for x in r),
                "alerts": sum(x["verdict"] == "alert" for x in r), "warnings": sum(x["verdict"] == "warn" for x in r),
                "incident": bool(inc[part]), "incidents": ", ".join(inc[part]) or "none",
                "report": dg.MetadataValue.md(_md(r)), **(extra or {})}

    stream_alerts = [r for r in by_part["stream"] if r["verdict"] == "alert"]
    results = [dg.AssetCheckResult(
        check_name=STREAM_CHECK, passed=not stream_alerts,
        severity=dg.AssetCheckSeverity.ERROR if m.stream.blocking else dg.AssetCheckSeverity.WARN,
        description=("Event stream as usual." if not stream_alerts else
                     "Event stream changed: " + "; ".join(f"{r['item']}: {r['note']}" for r in stream_alerts[:5])),
        metadata=meta("stream"))]

    top = top_features(model, m.drift.block_top_features)
    vs_training = {r["item"] for r in by_part["features"] if r["reference"] == "training" and r["verdict"] == "alert"}
    alerting = [r for r in by_part["features"] if r["verdict"] == "alert"]
    results.append(dg.AssetCheckResult(
        check_name=FEATURE_CHECK, passed=not alerting, severity=dg.AssetCheckSeverity.WARN,
        description=("No feature drifted past its alert threshold." if not alerting else
                     f"{len({r['item'] for r in alerting})} feature(s) drifted: "
                     + ", ".join(sorted({f"{r['item']} ({r['reference']})" for r in alerting})[:8])),
        metadata=meta("features")))
    share = (len(vs_training & set(top)) / len(top)) if top else 0.0
    severe = bool(m.drift.block_share is not None and top and share >= m.drift.block_share)
    results.append(dg.AssetCheckResult(
        check_name=TOP_FEATURE_CHECK, passed=not severe, severity=dg.AssetCheckSeverity.ERROR,
        description=(f"{share:.0%} of the model's top {len(top)} features drifted past their alert threshold "
                     "against its training data" + (": the outputs are held until the model is retrained"
                                                     if severe else "")),
        metadata={"day": str(day), "top_features": ", ".join(top) or "none (no model yet)",
                  "alerting_vs_training": ", ".join(sorted(vs_training & set(top))) or "none",
                  "share": round(share, 3),
                  "block_share": m.drift.block_share if m.drift.block_share is not None else "never"}))

    pred_alerts = [r for r in by_part["predictions"] if r["verdict"] == "alert"]
    results.append(dg.AssetCheckResult(
        check_name=PREDICTION_CHECK, passed=not pred_alerts, severity=dg.AssetCheckSeverity.WARN,
        description="Scores and PQL rate as in the trailing weeks." if not pred_alerts else
        "; ".join(f"{r['item']}: {r['metric']} {r['value']:.3g} ({r.get('note') or ''})" for r in pred_alerts),
        metadata=meta("predictions")))

    perf_alerts = [r for r in by_part["performance"] if r["verdict"] == "alert"]
    # a cohort scored by a model that has been replaced since says nothing about the current one
    current = model["version"] if model else None
    retrain = bool(perf_alerts) and m.performance.retrain_on_decay and \
        all(r.get("model_version") == current for r in perf_alerts)
    results.append(dg.AssetCheckResult(
        check_name=PERFORMANCE_CHECK, passed=not perf_alerts, severity=dg.AssetCheckSeverity.WARN,
        description="Realised performance as on the holdout (or not measurable yet)." if not perf_alerts else
        "Performance decayed: " + "; ".join(f"{r['item']} {r['value']:.3f} vs {r['reference_value']:.3f} on the "
                                             f"holdout" for r in perf_alerts) + " - retraining requested",
        metadata=meta("performance", {"retrain_requested": retrain})))
    return results


def check_specs(settings: Settings) -> list[dg.AssetCheckSpec]:
    """Blocking means ERROR here: a spec is blocking exactly when its result can be an ERROR
    (declarative automation counts any failure of a blocking check, whatever its severity)."""
    return [
        dg.AssetCheckSpec(STREAM_CHECK, asset="drift_report", blocking=settings.monitoring.stream.blocking,
                          description="Each event name's share of the day, the day's volume (vs the same weekday), "
                                      "the identified share and the account-mapped share are within bounds "
                                      "(monitoring.stream). A tracking outage holds the CRM and in-app outputs "
                                      "(ERROR; WARN with stream.blocking: false)."),
        dg.AssetCheckSpec(FEATURE_CHECK, asset="drift_report", blocking=False,
                          description="No scoring feature drifted past its alert threshold against the model's "
                                      "training rows or the trailing weeks (PSI / Jensen-Shannon; warns)."),
        dg.AssetCheckSpec(TOP_FEATURE_CHECK, asset="drift_report", blocking=True,
                          description="Fewer than monitoring.drift.block_share of the model's most important "
                                      "features drifted against its training data; else the outputs are held "
                                      "(ERROR) until the model is retrained on current data."),
        dg.AssetCheckSpec(PREDICTION_CHECK, asset="drift_report", blocking=False,
                          description="The score distribution (PSI) and the PQL rate are close to the trailing weeks."),
        dg.AssetCheckSpec(PERFORMANCE_CHECK, asset="drift_report", blocking=False,
                          description="On the newest cohort whose labels have arrived, realised ROC AUC and PQL "
                                      "precision are within bounds of the holdout of the model that scored it; a "
                                      "decay of the current model requests retraining (pql_retrain_on_decay)."),
    ]


def build_monitoring_assets(settings: Settings, daily: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(
        name="drift_report",
        deps=["validated_events", "user_features", "account_features", "pql_scores", "conversion_labels"],
        partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP, kinds={"duckdb"},
        owners=OWNERS, tags=TAGS, pool=POOL, code_version=MONITORING_LOGIC_VERSION, check_specs=check_specs(settings),
        metadata={"dagster/table_name": M.HISTORY},
    )
    def drift_report(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """Drift of the day against its references, kept in drift_history: the event stream (every day of the
        run), and for the newest day the scoring features (vs the model's training rows and the trailing weeks),
        the predictions and the realised performance of the newest labelled cohort. Its checks gate the CRM
        and in-app outputs."""
        days = partition_days(context)
        newest = days[-1]
        bounds = stream_bounds(settings)
        with warehouse.get_connection() as conn:
            model = None
            if table_exists(conn, R.REGISTRY):
                model = R.scoring_model(conn, settings.model.pinned_version)
            stream = []
            if table_exists(conn, "validated_events"):
                # one scan and one pivot for the whole range
                tables = M.StreamTables.of(M.stream_counts(conn, days[0], newest, bounds))
                stream = [r for d in days for r in M.stream_drift(conn, d, bounds, tables=tables)]
            rows = (feature_part(conn, settings, newest, model) + prediction_part(conn, settings, newest, model)
                    + performance_part(conn, settings, newest, model))
            write_history(conn, stream, days, ("stream",))
            write_history(conn, rows, [newest], ("features", "predictions", "performance"))
            found = incidents(conn, newest, settings.monitoring.incident.need, settings.monitoring.incident.of)
        newest_rows = [r for r in stream if r["report_day"] == newest] + rows
        alerting_days = sorted({str(r["report_day"]) for r in stream if r["verdict"] == "alert"})
        results = judge(settings, newest, newest_rows, found, model)
        features = [r for r in rows if r["part"] == "features"]
        return dg.MaterializeResult(
            metadata={
                "day": str(newest), "days_in_run": len(days), "model_version": model["version"] if model else "none",
                "dagster/row_count": len(stream) + len(rows),
                "verdict": M.worst(r["verdict"] for r in newest_rows),
                "stream_alert_days": ", ".join(alerting_days) or "none",
                "incidents": dg.MetadataValue.md(md_table(found) if found else "_none_"),
                "features": dg.MetadataValue.md(feature_drift_md(settings, features, context.log)),
                "stream": dg.MetadataValue.md(_md([r for r in newest_rows if r["part"] == "stream"])),
                "predictions_and_performance": dg.MetadataValue.md(
                    _md([r for r in rows if r["part"] in ("predictions", "performance")])),
            },
            check_results=results)

    @dg.asset(
        name="pql_report",
        deps=["pql_scores", "pql_account_scores", "pql_history", "conversion_model", "pql_performance"],
        partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP,
        kinds={"duckdb", "html"}, owners=OWNERS, tags=TAGS, pool=POOL,
        code_version=f"{MONITORING_LOGIC_VERSION}-{template_version()}",
        check_specs=[dg.AssetCheckSpec(
            REPORT_CHECK, asset="pql_report",
            description="The written page read back: its PQL accounts and users match pql_account_scores and "
                        "pql_scores for the day, and every chart is an image (warns; nothing depends on it).")],
    )
    def pql_report(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """A static HTML page for the growth team (opens from disk, no server): the day's PQLs by tier and route
        with their reasons, the active PQL definition and its backtest (rule vs model), the model card and the
        data health (quarantine, drift). Written for the newest day of the run to warehouse/reports/ as
        pql_report_<day>.html and, when it is the newest scored day, pql_report.html. It does not depend on
        drift_report, so a drift alert that holds the outputs is shown here instead of stopping the page (the
        executor runs drift_report first: it is one level closer to the scores)."""
        day = partition_days(context)[-1]
        with warehouse.get_connection() as conn:
            path, data = write_report(conn, settings, day)
            found = verify_report(conn, path, day)
        for problem in data["problems"]:
            context.log.warning(problem)
        current = report_path(settings)
        context.log.info(f"PQL report of {day}: {path}" + (f" (also {current})" if data["is_current"] else ""))
        return dg.MaterializeResult(metadata={
            "day": str(day),
            "path": dg.MetadataValue.path(str(path)),
            "url": dg.MetadataValue.url(path.resolve().as_uri()),
            "current_report": dg.MetadataValue.path(str(current)) if data["is_current"] else "not replaced: an older day",
            "pql_accounts": data.get("pql_accounts", 0), "pql_users": data.get("pql_users", 0),
            "sales_accounts": data.get("sales_accounts", 0), "nudged_users": data.get("nudged_users", 0),
            "model_version": (data.get("model") or {}).get("version", "none"),
            "backtest": (data.get("lift_verdict") or {}).get("text", "no backtest yet"),
            "drift": (data.get("drift") or {}).get("worst", "no drift report for the day"),
            "charts": found["charts"],
        }, check_results=[dg.AssetCheckResult(
            check_name=REPORT_CHECK, passed=not found["problems"], severity=dg.AssetCheckSeverity.WARN,
            metadata={"problems": "; ".join(found["problems"]) or "none", "charts_in_page": found["charts"],
                      "pqls_shown": dg.MetadataValue.json(found["shown"]),
                      "pqls_in_warehouse": dg.MetadataValue.json(found["expected"])})])

    return [drift_report, pql_report]


def waiting_hours(conn, destination: str, now: dt.datetime) -> dict | None:
    """How long the oldest event that arrived after the newest sync to ``destination`` has
    been waiting for the next one (0 when none is waiting). None before any event or sync:
    lateness counts from the first sync on."""
    if not table_exists(conn, "validated_events") or not table_exists(conn, "sync_runs"):
        return None
    # sync_runs names the destination alone (dry runs are a column), as latest_counts reads it
    last = conn.execute("SELECT max(finished_at) FROM sync_runs WHERE destination = ?", [destination]).fetchall()[0][0]
    if last is None:
        return None
    # events arrive in the partition of their received day: the days before the sync cannot hold later arrivals
    oldest = conn.execute("""
        SELECT min(coalesce(received_at, event_ts)) FROM validated_events
        WHERE partition_date >= CAST(? AS DATE) - INTERVAL 1 DAY AND coalesce(received_at, event_ts) > ?""",
                          [last, last]).fetchall()[0][0]
    waiting = 0.0 if oldest is None else max((now - oldest).total_seconds() / 3600, 0.0)
    return {"last_sync_finished": str(last), "oldest_event_waiting": str(oldest) if oldest else "none",
            "hours_waiting": round(waiting, 2)}


def timely_check(output: str, destination: str, hours: float) -> dg.AssetChecksDefinition:
    # on the drift report, which runs every day whether or not the outputs run (a check on the
    # output itself would only run after a successful sync, when nothing can be late)
    @dg.asset_check(asset="drift_report", name=f"{output}_timely", blocking=False,
                    description=f"No event has waited more than {hours:g} hours for {output} to send it to "
                                f"{destination} (events that arrived after its last sync): leads reach sales and "
                                "users quickly, also while a gate holds the outputs.")
    def timely(warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            found = waiting_hours(conn, destination, dt.datetime.now(dt.timezone.utc))
        if found is None:
            return dg.AssetCheckResult(passed=True, metadata={"note": "no sync yet: lateness counts from the first"})
        return dg.AssetCheckResult(passed=found["hours_waiting"] <= hours, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={**found, "max_hours": hours})

    return timely


def build_monitoring_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """<output>_timely: the newest event reaches each output within monitoring.freshness.outputs_hours."""
    hours = settings.monitoring.freshness.outputs_hours
    return [timely_check("crm_sync", settings.activation.crm.destination, hours),
            timely_check("in_app_nudges", settings.activation.in_app.channel, hours)]


def monitoring_gates(assets: list[dg.AssetsDefinition]) -> list[dg.AssetCheckKey]:
    return [spec.key for a in assets for spec in a.check_specs if spec.blocking]

