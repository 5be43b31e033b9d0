"""The alert resource against a local webhook standing in for Slack: the payload, retries,
the dry run, redaction, and which check failures alert."""

import dagster as dg

from pql_pipeline.defs.monitoring.alerts import Alert, AlertResource, check_alert, run_failure_alert, should_alert
from pql_pipeline_tests.defs.monitoring.fake_webhook import FakeWebhook, slack_error


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, msg):
        self.lines.append(("info", msg))

    def warning(self, msg):
        self.lines.append(("warning", msg))


def test_a_check_alert_is_posted_as_slack_json():
    alert = check_alert("drift_report", "event_stream_stable", "ERROR",
                        "Event stream changed: Report Run: no events on the day, about 60 expected",
                        "2026-03-22", "6b920a85-a2d3-453d-bf4f-f4624008606a",
                        {"day": "2026-03-22", "verdict": "alert", "alerts": 1}, incident=False)
    with FakeWebhook() as hook:
        assert AlertResource(webhook_url=hook.url).send(alert) == "sent"
    [body] = hook.bodies
    assert body["text"].startswith(":red_circle: pql-pipeline check failed: drift_report.event_stream_stable "
                                   "(blocks the outputs)")
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section"]
    assert "Report Run: no events on the day" in body["blocks"][1]["text"]["text"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in body["blocks"][2]["fields"]}
    assert fields == {"*asset*": "drift_report", "*check*": "event_stream_stable", "*severity*": "ERROR",
                      "*run*": "6b920a85", "*partition*": "2026-03-22", "*day*": "2026-03-22",
                      "*verdict*": "alert", "*alerts*": "1"}
    assert body["pql_level"] == "error"


def test_long_messages_stay_within_slack_limits():
    alert = run_failure_alert("daily_pql", "r" * 36, "x" * 10_000, ui_url="http://127.0.0.1:3000/")
    assert slack_error(alert.payload()) is None
    assert alert.payload()["blocks"][-1]["elements"][0]["text"] == f"<http://127.0.0.1:3000/runs/{'r' * 36}|open the run>"


def test_server_errors_are_retried_and_a_rejection_is_logged_not_raised():
    log = Log()
    with FakeWebhook() as hook:
        hook.faults.extend([500, 429])
        assert AlertResource(webhook_url=hook.url).send(Alert("t", "error", ["m"]), log) == "sent"
        assert len(hook.raw) == 3 and len(hook.bodies) == 1
        hook.faults.extend([400])
        assert AlertResource(webhook_url=hook.url).send(Alert("t", "error", ["m"]), log) == "failed"
        assert len(hook.raw) == 4                                     # a 400 is not retried
    assert log.lines[-1][0] == "warning" and "HTTP 400" in log.lines[-1][1]
    assert hook.url not in log.lines[-1][1]


def test_without_a_webhook_alerts_go_to_the_log():
    log = Log()
    assert AlertResource().send(Alert("pql-pipeline run failed: daily_pql", "error", ["boom"]), log) == "dry_run"
    assert log.lines == [("info", "alert (dry run, PQL_ALERT_WEBHOOK_URL not set): :red_circle: pql-pipeline run "
                                  "failed: daily_pql: boom")]


def test_secrets_never_leave_in_an_alert(monkeypatch):
    token = "pat-na1-0f9e8d7c-SECRET"
    monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", token)
    alert = run_failure_alert("daily_pql", "abc12345", f"HTTP 401 for token {token}; header Authorization: "
                                                      "Bearer eyJhbGciOi.J9abc; see https://hooks.slack.com/services/T/B/x")
    with FakeWebhook() as hook:
        AlertResource(webhook_url=hook.url).send(alert)
    raw = hook.raw[0].decode()
    assert token not in raw and "eyJhbGciOi" not in raw and "hooks.slack.com" not in raw
    assert "[redacted]" in raw


def test_which_failures_alert():
    # a failed blocking check always; a warning only once it is an incident (2 of the last 3 days)
    assert should_alert("ERROR", {}) == (True, False)
    assert should_alert("WARN", {"incident": dg.MetadataValue.bool(False)}) == (False, False)
    assert should_alert("WARN", {"incident": dg.MetadataValue.bool(True)}) == (True, True)
    assert should_alert("WARN", {}) == (False, False)


def test_the_resource_reads_its_url_from_the_environment(monkeypatch):
    from pql_pipeline.definitions import build_resources
    from pql_pipeline.settings import load_settings

    monkeypatch.delenv("PQL_ALERT_WEBHOOK_URL", raising=False)
    assert build_resources(load_settings())["alerts"].webhook_url is None
    monkeypatch.setenv("PQL_ALERT_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/secret")
    resource = build_resources(load_settings())["alerts"]
    assert isinstance(resource.webhook_url, dg.EnvVar)       # read when a run starts, never stored
