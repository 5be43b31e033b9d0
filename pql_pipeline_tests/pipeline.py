"""Helpers for tests that run real Dagster materializations on a temporary warehouse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from pql_pipeline.definitions import INGEST_JOB, PIPELINE_JOB, build_definitions
from pql_pipeline.lib.warehouse import Warehouse
from pql_pipeline.settings import Settings, load_settings


@dataclass
class Pipeline:
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance

    def run(self, start: str, end: str | None = None, job: str = INGEST_JOB) -> dg.ExecuteInProcessResult:
        tags = ({"dagster/partition": start} if end in (None, start) else
                {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=tags, raise_on_error=False)

    def checks(self, result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
        return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}

    def query(self, sql: str) -> list[tuple]:
        with Warehouse(database=str(self.settings.warehouse_path)).get_connection() as c:
            return c.execute(sql).fetchall()


def run_all(p: "Pipeline", start: str, end: str | None = None) -> dg.ExecuteInProcessResult:
    """The whole graph (ingest and features) over a partition or a range."""
    return p.run(start, end, job=PIPELINE_JOB)


def make_pipeline(monkeypatch, events: Path, warehouse: Path) -> Pipeline:
    monkeypatch.setenv("PQL_EVENTS_DIR", str(events))
    monkeypatch.setenv("PQL_WAREHOUSE", str(warehouse))
    settings = load_settings()
    return Pipeline(settings, build_definitions(settings), dg.DagsterInstance.ephemeral())


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
            for e in [e.event_specific_data.materialization]}


def generated_pipeline(root: Path, n_accounts: int = 1500, days: int = 120):
    """Generated events (seed 42, 1 % dirty lines) and the whole graph run over them as one
    range, in ``root``; returns (pipeline, run result, generator report, monkeypatch to undo)."""
    import datetime as dt

    import pytest

    from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events

    report = generate_events(GeneratorConfig(n_accounts=n_accounts, days=days, start_date=dt.date(2026, 1, 1),
                                             seed=42, dirty_fraction=0.01), root / "events")
    mp = pytest.MonkeyPatch()
    p = make_pipeline(mp, root / "events", root / "wh" / "pql.duckdb")
    return p, run_all(p, report.partitions[0], report.partitions[-1]), report, mp
