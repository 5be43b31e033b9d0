"""A tracking outage (one event name stops) in real materializations of the daily job: the
event-stream check fails at ERROR and holds the CRM and in-app outputs, while everything
that does not depend on it still runs; the same data without the outage syncs."""

import datetime as dt
import shutil

import dagster as dg
import pytest

from pql_pipeline.definitions import DAILY_JOB
from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events
from pql_pipeline.defs.monitoring.alerts import AlertResource
from pql_pipeline_tests.defs.monitoring.fake_webhook import FakeWebhook
from pql_pipeline_tests.pipeline import Pipeline, make_pipeline, materialized

OUTAGE_EVENT = "Report Run"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("outage")
    report = generate_events(GeneratorConfig(n_accounts=80, days=21, start_date=dt.date(2026, 3, 2), seed=5,
                                             dirty_fraction=0.0), root / "normal")
    # the same files, except that the last day lost every OUTAGE_EVENT (a tracking bug in a release)
    shutil.copytree(root / "normal", root / "outage")
    last = report.partitions[-1]
    removed = 0
    for path in (root / "outage" / f"dt={last}").glob("*.jsonl*"):
        lines = path.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if f'"event": "{OUTAGE_EVENT}"' not in ln and f'"event":"{OUTAGE_EVENT}"' not in ln]
        removed += len(lines) - len(kept)
        path.write_text("".join(kept))
    assert removed > 20
    return root, report


def daily(monkeypatch, events, warehouse) -> tuple[Pipeline, dg.ExecuteInProcessResult]:
    p = make_pipeline(monkeypatch, events, warehouse)
    return p, p.run(REPORT_START, REPORT_END, job=DAILY_JOB)


REPORT_START, REPORT_END = "2026-03-02", "2026-03-22"


@pytest.mark.slow
def test_a_tracking_outage_holds_the_outputs_while_the_rest_runs(generated, tmp_path, monkeypatch):
    root, report = generated
    assert (REPORT_START, REPORT_END) == (report.partitions[0], report.partitions[-1])

    p, ok = daily(monkeypatch, root / "normal", tmp_path / "normal" / "pql.duckdb")
    assert ok.success
    checks = p.checks(ok)
    assert checks["drift_report:event_stream_stable"].passed, checks["drift_report:event_stream_stable"].metadata
    assert {"crm_sync", "in_app_nudges", "drift_report"} <= materialized(ok)

    p, out = daily(monkeypatch, root / "outage", tmp_path / "outage" / "pql.duckdb")
    assert not out.success
    stream = p.checks(out)["drift_report:event_stream_stable"]
    assert not stream.passed and stream.severity == dg.AssetCheckSeverity.ERROR
    assert OUTAGE_EVENT in stream.description and "tracking stopped" in stream.description
    done = materialized(out)
    # unaffected assets (and the report itself) still ran ...
    assert {"validated_events", "user_features", "account_features", "pql_scores", "drift_report"} <= done
    # ... the outputs did not
    assert not {"crm_sync", "in_app_nudges"} & done
    # the history keeps what was measured, one row per event name and day
    rows = p.query(f"""SELECT verdict, value, rows FROM drift_history WHERE part = 'stream'
                       AND item = '{OUTAGE_EVENT}' AND report_day = DATE '{REPORT_END}'""")
    assert rows == [("alert", 0.0, 0)]
    others = p.query(f"""SELECT count(*) FROM drift_history WHERE part = 'stream' AND verdict = 'alert'
                         AND report_day = DATE '{REPORT_END}'""")[0][0]
    assert others == 1
    # every day of the range has its stream report
    days = p.query("SELECT count(DISTINCT report_day) FROM drift_history WHERE part = 'stream'")[0][0]
    assert days == len(report.partitions)

    # the alerts: the failed run and the failed blocking check reach the webhook, nothing else
    with FakeWebhook() as hook:
        alerts = AlertResource(webhook_url=hook.url)
        repo = p.defs.get_repository_def()
        failure = dg.build_run_status_sensor_context(
            sensor_name="pql_run_failure_alert", dagster_instance=p.instance, dagster_run=out.dagster_run,
            dagster_event=out.get_run_failure_event(), resources={"alerts": alerts}, repository_def=repo,
        ).for_run_failure()
        repo.get_sensor_def("pql_run_failure_alert")(failure)
        checks_sensor = repo.get_sensor_def("pql_check_alerts")
        # the first evaluation starts from now (no flood of history); then it reads what follows
        first = checks_sensor.evaluate_tick(dg.build_sensor_context(
            instance=p.instance, resources={"alerts": alerts}, repository_def=repo))
        assert first.skip_message and hook.bodies[1:] == []
        checks_sensor.evaluate_tick(dg.build_sensor_context(
            instance=p.instance, cursor="0", resources={"alerts": alerts}, repository_def=repo))
        retrain = repo.get_sensor_def("pql_retrain_on_decay").evaluate_tick(dg.build_sensor_context(
            instance=p.instance, cursor="0", repository_def=repo))
    run_alert, *check_alerts = hook.bodies
    assert run_alert["text"].startswith(":red_circle: pql-pipeline run failed: daily_pql")
    assert "drift_report" in run_alert["blocks"][1]["text"]["text"]
    assert [b["text"] for b in check_alerts] == [
        f":red_circle: pql-pipeline check failed: drift_report.event_stream_stable (blocks the outputs): "
        f"{stream.description}"]
    assert retrain.run_requests == []          # no labelled cohort decayed: no retraining
