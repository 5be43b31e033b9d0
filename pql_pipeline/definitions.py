"""The pql-pipeline code location: every stage's assets, checks, jobs and resources."""

from __future__ import annotations

import os
import warnings

import dagster as dg

from pql_pipeline.defs.activation.assets import (
    HubSpotResource,
    InAppResource,
    build_activation_assets,
    build_activation_checks,
    build_nudge_assets,
)
from pql_pipeline.defs.features.assets import build_feature_assets
from pql_pipeline.defs.features.checks import build_feature_checks
from pql_pipeline.defs.ingest.assets import build_ingest_assets
from pql_pipeline.defs.ingest.checks import build_ingest_checks
from pql_pipeline.defs.ingest.resources import EventSource
from pql_pipeline.defs.model.assets import build_model_assets, build_model_checks
from pql_pipeline.defs.monitoring.alerts import AlertResource, build_alert_sensors
from pql_pipeline.defs.monitoring.assets import build_monitoring_assets, build_monitoring_checks, monitoring_gates
from pql_pipeline.defs.monitoring.automation import build_automation, with_automation
from pql_pipeline.defs.scoring.assets import build_scoring_assets, build_scoring_checks
from pql_pipeline.lib.versions import code_version
from pql_pipeline.lib.warehouse import Warehouse
from pql_pipeline.settings import Settings, get_settings

# backfill_policy and pools are marked beta in 1.13; they are what this pipeline relies on.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

INGEST_JOB = "ingest_events"
DIMENSIONS_JOB = "build_dimensions"
FEATURES_JOB = "build_features"
MODEL_JOB = "train_model"
SCORING_JOB = "score_leads"
PIPELINE_JOB = "pql_pipeline"
ACTIVATION_JOB = "sync_outputs"
DAILY_JOB = "daily_pql"
RETRAIN_JOB = "retrain_model"


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    # One shared partitions definition for every daily asset: mismatched start dates
    # split single-run backfills.
    return dg.DailyPartitionsDefinition(start_date=settings.partitions.start_date.isoformat(), timezone="UTC")


def build_resources(settings: Settings) -> dict:
    return {
        "warehouse": Warehouse(database=str(settings.warehouse_path), memory_limit=settings.warehouse.memory_limit,
                               threads=settings.warehouse.threads),
        "event_source": EventSource(root=str(settings.events_root), pattern=settings.source.pattern,
                                    format=settings.source.format),
        # the token is read from the environment when a run starts (never stored in the definitions);
        # without it the sync is a dry run
        "hubspot": HubSpotResource(access_token=_env("HUBSPOT_ACCESS_TOKEN")),
        "in_app": InAppResource(secret=_env("INTERCOM_ACCESS_TOKEN" if settings.activation.in_app.channel == "intercom"
                                            else "PQL_WEBHOOK_SECRET")),
        # a Slack incoming-webhook URL is a credential too: read when a run or sensor starts
        "alerts": AlertResource(webhook_url=_env("PQL_ALERT_WEBHOOK_URL"),
                                timeout_seconds=settings.monitoring.alert_timeout_seconds),
    }


def _env(name: str):
    """An EnvVar (read when a run starts, never stored) if the variable is set, else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_definitions(settings: Settings) -> dg.Definitions:
    daily = daily_partitions(settings)
    upstream = (build_ingest_checks(settings, daily) + build_feature_checks(settings, daily)
                + build_model_checks(settings) + build_scoring_checks(settings, daily))
    monitoring = build_monitoring_assets(settings, daily)
    # the outputs run only while every blocking check before them passes, also across runs
    gates = [spec.key for c in upstream for spec in c.check_specs if spec.blocking] + monitoring_gates(monitoring)
    assets = (build_ingest_assets(settings, daily) + build_feature_assets(settings, daily)
              + build_model_assets(settings) + build_scoring_assets(settings, daily) + monitoring
              + build_activation_assets(settings, daily, gates) + build_nudge_assets(settings, daily, gates))
    checks = upstream + build_activation_checks(settings) + build_monitoring_checks(settings)
    # (name, selection, daily-partitioned, description)
    job_specs = [
        (DAILY_JOB, dg.AssetSelection.groups("ingest", "features", "scoring", "monitoring", "activation"), True,
         "The daily run (scheduled for the day before): events to features, scores, the drift report and the CRM "
         "and in-app outputs. Blocking checks (contracts, scores, event-stream drift) hold the outputs."),
        (PIPELINE_JOB, dg.AssetSelection.groups("ingest", "features"), True,
         "The whole graph for a partition or a range: events to features, labels and milestones. "
         "Blocking checks stop everything downstream of a failure."),
        (INGEST_JOB, dg.AssetSelection.groups("ingest"), True,
         "Load, validate and quarantine a partition (or a range) of events, then refresh the "
         "users and accounts dimensions. Blocking checks stop the dimensions if the events fail."),
        (DIMENSIONS_JOB, dg.AssetSelection.assets("users", "accounts"), False,
         "Rebuild the users and accounts dimensions from validated events."),
        (FEATURES_JOB, dg.AssetSelection.groups("features"), True,
         "Point-in-time features, conversion labels (refreshing earlier horizons), training sets "
         "and milestone discovery for a partition (snapshot day) or a range."),
        (MODEL_JOB, dg.AssetSelection.groups("model"), False,
         "Retrain the conversion model on training_set and promote it only if it passes the gates and "
         "beats the champion (weekly, or on demand)."),
        (RETRAIN_JOB, dg.AssetSelection.assets("conversion_labels", "training_set", "account_training_set")
         | dg.AssetSelection.groups("model"),
         True, "Weekly retraining: refresh the labels and training set of the day (or a range), then retrain the "
               "model on every labelled snapshot and promote it only if it passes the gates and beats the champion."),
        (SCORING_JOB, dg.AssetSelection.groups("scoring", "monitoring", "activation"), True,
         "Score the free users of a day (or a range) with the scoring model: probability, tier, reasons, route; "
         "the drift report; then sync the sales leads to the CRM. Blocking score and drift checks stop the sync."),
        (ACTIVATION_JOB, dg.AssetSelection.groups("activation"), True,
         "Sync the day's sales leads to the CRM again (e.g. after fixing rejected records or setting a token)."),
    ]
    jobs = [dg.define_asset_job(name, selection=sel, partitions_def=daily if partitioned else None, description=d)
            for name, sel, partitioned, d in job_specs]
    schedules, sensors = build_automation(settings, daily, DAILY_JOB, RETRAIN_JOB)
    sensors += build_alert_sensors(MODEL_JOB, settings.monitoring.performance.retrain_on_decay,
                                   settings.monitoring.automation.running)
    defs = dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=build_resources(settings),
        # One process per run: DuckDB allows a single writing process per file, and
        # Great Expectations' import (seconds) is paid once per run instead of per step.
        executor=dg.in_process_executor,
    )
    defs = with_automation(defs, settings)
    # every asset's code version: its logic version plus the configuration and contracts it is defined by
    return defs.map_resolved_asset_specs(func=lambda spec: spec.replace_attributes(
        code_version=code_version(settings, spec.key.to_user_string(), spec.code_version)))


defs = build_definitions(get_settings())
