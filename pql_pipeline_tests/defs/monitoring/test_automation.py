"""Schedules, the file-landing sensor, declarative automation and freshness policies,
evaluated with Dagster's test helpers against the real definitions."""

import datetime as dt
import json
import os

import dagster as dg
import pytest

from pql_pipeline.definitions import DAILY_JOB, RETRAIN_JOB, build_definitions
from pql_pipeline.defs.monitoring.automation import AUTOMATED, gated_eager, landed_partitions, partition_pattern
from pql_pipeline.settings import load_settings

UTC = dt.timezone.utc


@pytest.fixture
def defs_and_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PQL_EVENTS_DIR", str(tmp_path / "events"))
    monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "wh" / "pql.duckdb"))
    settings = load_settings()
    return build_definitions(settings), tmp_path / "events", settings


def land(root, day: str, name: str = "events-0000.jsonl", body: str = '{"type": "track"}\n', settled: bool = True):
    """A file of ``day``; ``settled``: last written an hour ago (past the settle time)."""
    path = root / f"dt={day}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    if settled:
        t = dt.datetime.now(UTC).timestamp() - 3600
        os.utime(path, (t, t))
    return path


def test_the_daily_schedule_runs_the_day_before_and_its_request_is_valid(defs_and_root):
    defs, _, _ = defs_and_root
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("pql_daily")
    assert schedule.job_name == DAILY_JOB and schedule.cron_schedule == "0 6 * * *"
    ctx = dg.build_schedule_context(repository_def=repo, scheduled_execution_time=dt.datetime(2026, 3, 23, 6, 0, tzinfo=UTC))
    [request] = schedule.evaluate_tick(ctx).run_requests
    assert request.partition_key == "2026-03-22"
    job = defs.resolve_job_def(DAILY_JOB)
    dg.validate_run_config(job, request.run_config)
    # the job is partitioned (the UI launches backfills of it) and spans ingestion to the outputs
    assert job.partitions_def is not None
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"validated_events", "user_features", "pql_scores", "drift_report", "crm_sync", "in_app_nudges"} <= selected

    retrain = repo.get_schedule_def("pql_weekly_retrain")
    assert retrain.job_name == RETRAIN_JOB and retrain.cron_schedule == "0 8 * * 1"
    [request] = retrain.evaluate_tick(dg.build_schedule_context(
        repository_def=repo, scheduled_execution_time=dt.datetime(2026, 3, 23, 5, 0, tzinfo=UTC))).run_requests
    assert request.partition_key == "2026-03-22"
    job = defs.resolve_job_def(RETRAIN_JOB)
    assert job.partitions_def is not None
    assert {"training_set", "conversion_model", "pql_performance"} <= {
        k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    # schedules start stopped unless monitoring.automation.running
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_the_pattern_of_the_source_finds_the_day():
    rx = partition_pattern("dt={date}/*.jsonl*")
    assert rx.match("dt=2026-03-02/events-0000.jsonl.gz").group("date") == "2026-03-02"
    assert not rx.match("dt=2026-03-02/sub/events.jsonl")
    assert partition_pattern("{date}/**/*.parquet").match("2026-03-02/a/b/part-1.parquet")


def test_newly_landed_files_launch_their_partition_once(defs_and_root):
    defs, root, _ = defs_and_root
    sensor = defs.get_repository_def().get_sensor_def("pql_new_event_files")
    instance = dg.DagsterInstance.ephemeral()
    land(root, "2026-03-01")
    land(root, "2026-03-02")
    land(root, "2024-12-31")                                        # before the first partition: ignored
    (root / "dt=2026-03-03").mkdir()                                # no file yet
    # a partition validated before the sensor started is the baseline, not news
    instance.report_runless_asset_event(dg.AssetMaterialization("validated_events", partition="2026-03-01"))

    first = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance))
    assert [r.partition_key for r in first.run_requests] == ["2026-03-02"]
    assert first.run_requests[0].tags["pql/trigger"] == "new_event_files"
    cursor = first.cursor
    assert set(json.loads(cursor)) == {"2026-03-01", "2026-03-02"}

    again = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance,
                                                         cursor=cursor))
    assert again.run_requests == [] and again.skip_message

    # a late file for an old day, and a new day: both run, the old one with a new run key
    land(root, "2026-03-01", name="events-0001.jsonl")
    land(root, "2026-03-03")
    third = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance,
                                                         cursor=again.cursor or cursor))
    assert sorted(r.partition_key for r in third.run_requests) == ["2026-03-01", "2026-03-03"]
    assert len({r.run_key for r in first.run_requests + third.run_requests}) == 3

    # the fingerprint is stable across processes (no per-process hash seed)
    assert landed_partitions(root, "dt={date}/*.jsonl*") == landed_partitions(root, "dt={date}/*.jsonl*")
    land(root, "2026-03-02", body='{"type": "track"}\n{"type": "page"}\n')
    fourth = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance,
                                                          cursor=third.cursor))
    assert [r.partition_key for r in fourth.run_requests] == ["2026-03-02"]


def test_today_and_files_still_landing_wait(defs_and_root):
    defs, root, _ = defs_and_root
    sensor = defs.get_repository_def().get_sensor_def("pql_new_event_files")
    instance = dg.DagsterInstance.ephemeral()
    today = dt.datetime.now(UTC).date()
    land(root, today.isoformat())                                     # not a partition before midnight
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    land(root, yesterday, settled=False)                              # written just now: still landing
    first = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(),
                                                         instance=instance))
    assert first.run_requests == []
    land(root, yesterday)                                             # unchanged for an hour
    second = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(),
                                                          instance=instance, cursor=first.cursor))
    assert [r.partition_key for r in second.run_requests] == [yesterday]


def test_a_flood_of_partitions_is_spread_over_ticks(defs_and_root, monkeypatch):
    defs, root, settings = defs_and_root
    for d in range(14):
        land(root, (dt.date(2026, 3, 1) + dt.timedelta(days=d)).isoformat())
    sensor = defs.get_repository_def().get_sensor_def("pql_new_event_files")
    instance = dg.DagsterInstance.ephemeral()
    first = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance))
    assert len(first.run_requests) == settings.monitoring.automation.landing_max_runs_per_tick == 10
    second = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance,
                                                          cursor=first.cursor))
    assert len(second.run_requests) == 4


def _latest_day(defs) -> str:
    return defs.resolve_job_def(DAILY_JOB).partitions_def.get_last_partition_key()


def _report(instance, asset: str, day: str, defs=None) -> None:
    """A materialization of ``asset``'s partition ``day``, and its blocking checks passing."""
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=day))
    if defs is None:
        return
    graph = defs.resolve_asset_graph()
    for key in graph.asset_check_keys:
        spec = graph.get_check_spec(key)
        if key.asset_key == dg.AssetKey(asset) and spec.blocking:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=key.asset_key, check_name=key.name, passed=True, severity=dg.AssetCheckSeverity.ERROR,
                partition=day if spec.partitions_def is not None else None))


def test_derived_assets_follow_rescored_scores_only_while_blocking_checks_pass(defs_and_root):
    """Declarative automation: eager() alone would run after a failed blocking check; the
    condition of the drift report, PQL history and outputs also requires every upstream
    blocking check to pass. Evaluated on pql_history, whose inputs' checks are table-wide."""
    defs, _, _ = defs_and_root
    graph = defs.resolve_asset_graph()
    for name in AUTOMATED:
        assert graph.get(dg.AssetKey(name)).automation_condition == gated_eager(), name
    assert graph.get(dg.AssetKey("pql_scores")).automation_condition is None     # the daily job scores
    sensor = defs.get_repository_def().get_sensor_def("pql_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED            # monitoring.automation.running

    # the same graph with eager() alone on pql_history, evaluated alongside (its own cursor)
    eager_only = defs.map_resolved_asset_specs(
        func=lambda spec: spec.replace_attributes(automation_condition=dg.AutomationCondition.eager()),
        selection=["pql_history"])
    instance = dg.DagsterInstance.ephemeral()
    day = _latest_day(defs)
    history = dg.AssetSelection.assets("pql_history")
    cursors = {"gated": None, "eager": None}

    def tick() -> dict[str, set]:
        out = {}
        for name, d in (("gated", defs), ("eager", eager_only)):
            r = dg.evaluate_automation_conditions(defs=d, instance=instance, asset_selection=history,
                                                  cursor=cursors[name])
            cursors[name] = r.cursor
            out[name] = r.get_requested_partitions(dg.AssetKey("pql_history"))
        return out

    assert tick() == {"gated": set(), "eager": set()}

    # the day is re-scored and its blocking checks pass: the history follows
    for asset in ("pql_scores", "pql_account_scores"):
        _report(instance, asset, day, defs)
    assert tick() == {"gated": {day}, "eager": {day}}
    _report(instance, "pql_history", day)
    assert tick() == {"gated": set(), "eager": set()}

    # re-scored again, but the PQL volume check fails at ERROR: only eager() alone would follow
    for asset in ("pql_scores", "pql_account_scores"):
        _report(instance, asset, day, defs)
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("pql_scores"), check_name="pql_volume", passed=False,
        severity=dg.AssetCheckSeverity.ERROR))
    assert tick() == {"gated": set(), "eager": {day}}


def test_freshness_policies_are_on_inputs_scores_and_outputs(defs_and_root):
    defs, _, settings = defs_and_root
    graph = defs.resolve_asset_graph()
    hours = {k: graph.get(dg.AssetKey(k)).freshness_policy for k in
             ("validated_events", "pql_scores", "pql_account_scores", "crm_sync", "in_app_nudges")}
    assert all(p is not None for p in hours.values())
    assert hours["pql_scores"].fail_window.to_timedelta() == dt.timedelta(hours=settings.monitoring.freshness.scores_hours)
    assert hours["crm_sync"].fail_window.to_timedelta() == dt.timedelta(
        hours=settings.monitoring.freshness.outputs_hours)
    assert graph.get(dg.AssetKey("user_features")).freshness_policy is None


def test_a_performance_decay_requests_retraining_and_an_incident_alerts(defs_and_root):
    from pql_pipeline.definitions import MODEL_JOB
    from pql_pipeline.defs.monitoring.alerts import AlertResource
    from pql_pipeline_tests.defs.monitoring.fake_webhook import FakeWebhook

    defs, _, _ = defs_and_root
    repo = defs.get_repository_def()
    instance = dg.DagsterInstance.ephemeral()

    def evaluate(check: str, passed: bool, **metadata):
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("drift_report"), check_name=check, passed=passed,
            severity=dg.AssetCheckSeverity.WARN, metadata=metadata))

    retrain = repo.get_sensor_def("pql_retrain_on_decay")
    assert retrain.job_name == MODEL_JOB
    started = retrain.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repo))
    evaluate("performance_decay", True, retrain_requested=False)
    evaluate("performance_decay", False, retrain_requested=True)
    evaluate("performance_decay", False, retrain_requested=True)
    tick = retrain.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=started.cursor,
                                                         repository_def=repo))
    [request] = tick.run_requests                   # one retraining for two decayed evaluations
    assert request.tags["pql/trigger"] == "performance_decay"
    again = retrain.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor,
                                                          repository_def=repo))
    assert again.run_requests == []

    # warnings alert only once they are incidents (repeated in 2 of the last 3 days)
    alerts_sensor = repo.get_sensor_def("pql_check_alerts")
    with FakeWebhook() as hook:
        resources = {"alerts": AlertResource(webhook_url=hook.url)}
        first = alerts_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources,
                                                                    repository_def=repo))
        evaluate("feature_drift", False, incident=False, day="2026-03-21")
        evaluate("feature_drift", False, incident=True, day="2026-03-22", incidents="projects_14d (training)")
        alerts_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                            resources=resources, repository_def=repo))
    [body] = hook.bodies
    assert body["text"].startswith(":large_orange_circle: pql-pipeline check failed: drift_report.feature_drift "
                                   "(repeated: an incident)")
    assert "projects_14d (training)" in str(body["blocks"])
