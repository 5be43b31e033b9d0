"""The pql-pipeline code location: every stage's assets, checks, jobs and resources."""

from __future__ import annotations

import warnings

import dagster as dg

from pql_pipeline.defs.features.assets import build_feature_assets
from pql_pipeline.defs.features.checks import build_feature_checks
from pql_pipeline.defs.ingest.assets import build_ingest_assets
from pql_pipeline.defs.ingest.checks import build_ingest_checks
from pql_pipeline.defs.ingest.resources import EventSource
from pql_pipeline.defs.model.assets import build_model_assets, build_model_checks
from pql_pipeline.lib.warehouse import Warehouse
from pql_pipeline.settings import Settings, get_settings

# backfill_policy and pools are marked beta in 1.13; they are what this pipeline relies on.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

INGEST_JOB = "ingest_events"
DIMENSIONS_JOB = "build_dimensions"
FEATURES_JOB = "build_features"
MODEL_JOB = "train_model"
PIPELINE_JOB = "pql_pipeline"


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
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    daily = daily_partitions(settings)
    assets = build_ingest_assets(settings, daily) + build_feature_assets(settings, daily) + build_model_assets(settings)
    checks = (build_ingest_checks(settings, daily) + build_feature_checks(settings, daily)
              + build_model_checks(settings))
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.groups("ingest"),
        partitions_def=daily,
        description="Load, validate and quarantine a partition (or a range) of events, then refresh the "
                    "users and accounts dimensions. Blocking checks stop the dimensions if the events fail.",
    )
    dims_job = dg.define_asset_job(
        DIMENSIONS_JOB,
        selection=dg.AssetSelection.assets("users", "accounts"),
        description="Rebuild the users and accounts dimensions from validated events.",
    )
    features_job = dg.define_asset_job(
        FEATURES_JOB,
        selection=dg.AssetSelection.groups("features"),
        partitions_def=daily,
        description="Point-in-time features, conversion labels (refreshing earlier horizons), training sets "
                    "and milestone discovery for a partition (snapshot day) or a range.",
    )
    model_job = dg.define_asset_job(
        MODEL_JOB,
        selection=dg.AssetSelection.groups("model"),
        description="Retrain the conversion model on training_set and promote it only if it passes the gates and "
                    "beats the champion (weekly, or on demand).",
    )
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.groups("ingest", "features"),
        partitions_def=daily,
        description="The whole graph for a partition or a range: events to features, labels and milestones. "
                    "Blocking checks stop everything downstream of a failure.",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[pipeline_job, ingest_job, dims_job, features_job, model_job],
        resources=build_resources(settings),
        # One process per run: DuckDB allows a single writing process per file, and
        # Great Expectations' import (seconds) is paid once per run instead of per step.
        executor=dg.in_process_executor,
    )


defs = build_definitions(get_settings())
