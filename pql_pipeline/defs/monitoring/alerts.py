"""Alerts: a webhook resource that posts Slack-compatible JSON, and the sensors that use it
(a failed run; a failed blocking check or a drift incident; a performance decay that
requests retraining).

The webhook URL comes from PQL_ALERT_WEBHOOK_URL through an EnvVar (a Slack incoming-webhook
URL is itself a credential); without it every alert is written to the log instead (dry run).
Messages carry job, run, asset, check and the check's description, never configuration
values: known secrets and bearer tokens are redacted from any text that goes out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import dagster as dg
import requests
from pydantic import Field

from pql_pipeline.lib.secrets import redact

MAX_TEXT = 2900   # Slack section text is limited to 3000 characters


@dataclass
class Alert:
    title: str
    level: str                      # error | warning | info
    lines: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    link: str | None = None

    def payload(self) -> dict:
        """Slack-compatible JSON (incoming webhooks; also read by Teams/Mattermost/Discord-Slack
        bridges): ``text`` for notifications and clients without blocks, ``blocks`` for layout."""
        icon = {"error": ":red_circle:", "warning": ":large_orange_circle:"}.get(self.level, ":large_blue_circle:")
        title = redact(self.title)
        body = redact("\n".join(self.lines))[:MAX_TEXT]
        blocks = [{"type": "header", "text": {"type": "plain_text", "text": f"{title}"[:150], "emoji": True}}]
        if body:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": body}})
        if self.fields:
            blocks.append({"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*{k}*\n{redact(v)}"[:2000]} for k, v in list(self.fields.items())[:10]]})
        if self.link:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": self.link}]})
        return {"text": f"{icon} {title}" + (f": {body.splitlines()[0]}" if body else ""), "blocks": blocks,
                "pql_level": self.level}


class AlertResource(dg.ConfigurableResource):
    """Where alerts go: ``webhook_url`` from PQL_ALERT_WEBHOOK_URL (Slack incoming webhook or
    anything that accepts its JSON); without it alerts are logged (dry run)."""

    webhook_url: str | None = Field(None, description="Alert webhook URL (from PQL_ALERT_WEBHOOK_URL).")
    timeout_seconds: float = 10.0
    max_attempts: int = 3

    @property
    def dry_run(self) -> bool:
        return not (self.webhook_url or "").strip()

    def send(self, alert: Alert, log=None) -> str:
        """Posts ``alert``; returns 'sent', 'dry_run' or 'failed' (an alert that cannot be
        delivered is logged, never raised: alerting must not fail the thing it reports on)."""
        payload = alert.payload()
        if self.dry_run:
            if log is not None:
                log.info(f"alert (dry run, PQL_ALERT_WEBHOOK_URL not set): {payload['text']}")
            return "dry_run"
        url = self.webhook_url.strip()
        for attempt in range(1, self.max_attempts + 1):
            try:
                r = requests.post(url, json=payload, timeout=self.timeout_seconds)
                if r.status_code < 300:
                    return "sent"
                retry = r.status_code == 429 or r.status_code >= 500
                reason = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                retry, reason = True, type(e).__name__
            if not retry or attempt == self.max_attempts:
                break
            time.sleep(min(2 ** (attempt - 1), 5))
        if log is not None:
            log.warning(f"alert not delivered to the webhook ({reason}); it was: {payload['text']}")
        return "failed"


def run_failure_alert(job: str, run_id: str, message: str, ui_url: str | None = None) -> Alert:
    return Alert(title=f"pql-pipeline run failed: {job}", level="error",
                 lines=[message.strip()[:1500] or "the run failed"],
                 fields={"job": job, "run": run_id[:8]},
                 link=f"<{ui_url.rstrip('/')}/runs/{run_id}|open the run>" if ui_url else None)


def check_alert(asset: str, check: str, severity: str, description: str | None, partition: str | None,
                run_id: str, metadata: dict, incident: bool) -> Alert:
    blocking = severity == "ERROR"
    what = "blocks the outputs" if blocking else "repeated: an incident" if incident else "warning"
    fields = {"asset": asset, "check": check, "severity": severity, "run": run_id[:8]}
    if partition:
        fields["partition"] = partition
    for key in ("day", "verdict", "alerts", "incidents"):
        if key in metadata and key not in fields:
            fields[key] = str(metadata[key])
    return Alert(title=f"pql-pipeline check failed: {asset}.{check} ({what})",
                 level="error" if blocking else "warning",
                 lines=[description or f"{asset}.{check} failed"], fields=fields)


def _meta_value(v):
    return getattr(v, "value", v)


def should_alert(severity: str, metadata: dict) -> tuple[bool, bool]:
    """(alert?, incident?): every failed ERROR check, and a WARN check only when it is an
    incident (its alert repeated in 2 of the last 3 days: the fatigue guard)."""
    incident = bool(_meta_value(metadata.get("incident", False)))
    return severity == "ERROR" or incident, incident


def check_evaluations(instance: dg.DagsterInstance, after: int, limit: int = 200):
    """(storage_id, evaluation, run_id) of asset-check evaluations stored after ``after``, oldest first."""
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=limit, ascending=True)
    out = []
    for r in records:
        event = r.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event is not None else None
        if evaluation is not None and hasattr(evaluation, "passed"):
            out.append((r.storage_id, evaluation, r.event_log_entry.run_id))
    return out


def latest_storage_id(instance: dg.DagsterInstance) -> int:
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), limit=1, ascending=False)
    return records[0].storage_id if records else 0


TICK_BUDGET_SECONDS = 40     # a sensor evaluation times out at 60 s: stop sending before that
MAX_ALERTS_PER_TICK = 20


def build_alert_sensors(model_job: str, retrain_on_decay: bool, automation_running: bool = False
                        ) -> list[dg.SensorDefinition]:
    @dg.run_failure_sensor(name="pql_run_failure_alert", default_status=dg.DefaultSensorStatus.RUNNING,
                           description="Posts every failed run of this code location to the alert webhook "
                                       "(PQL_ALERT_WEBHOOK_URL; logged without it).")
    def pql_run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertResource):
        message = context.failure_event.message if context.failure_event else "the run failed"
        status = alerts.send(run_failure_alert(context.dagster_run.job_name, context.dagster_run.run_id,
                                               message or "the run failed"), context.log)
        context.log.info(f"run {context.dagster_run.run_id[:8]} failure alert: {status}")

    @dg.sensor(name="pql_check_alerts", minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Posts failed ERROR checks, and warnings that became incidents (an alert "
                           "in 2 of the last 3 days), to the alert webhook. Starts after the newest evaluation "
                           "the first time it runs (no flood of history).")
    def pql_check_alerts(context: dg.SensorEvaluationContext, alerts: AlertResource):
        if context.cursor is None:
            context.update_cursor(str(latest_storage_id(context.instance)))
            return dg.SkipReason("started: alerts on check evaluations from now on")
        cursor = int(context.cursor)
        sent, started = 0, time.monotonic()
        for storage_id, ev, run_id in check_evaluations(context.instance, cursor):
            if sent >= MAX_ALERTS_PER_TICK or time.monotonic() - started > TICK_BUDGET_SECONDS:
                break             # the rest on the next tick: the cursor stops before them
            if not ev.passed:
                severity = ev.severity.value if ev.severity else "ERROR"
                ok, incident = should_alert(severity, ev.metadata)
                if ok:
                    alerts.send(check_alert(ev.asset_key.to_user_string(), ev.check_name, severity, ev.description,
                                            ev.partition, run_id, {k: _meta_value(v) for k, v in ev.metadata.items()},
                                            incident), context.log)
                    sent += 1
            # advanced per evaluation, so a later failure of the tick re-sends nothing already sent
            cursor = storage_id
            context.update_cursor(str(cursor))
        if not sent:
            return dg.SkipReason("no failed check to report")
        return None

    sensors = [pql_run_failure_alert, pql_check_alerts]
    if retrain_on_decay:
        @dg.sensor(name="pql_retrain_on_decay", job_name=model_job, minimum_interval_seconds=300,
                   default_status=dg.DefaultSensorStatus.RUNNING if automation_running
                   else dg.DefaultSensorStatus.STOPPED,
                   description="Launches the model job when drift_report's performance_decay check fails with "
                               "retraining requested (realised performance below the holdout's).")
        def pql_retrain_on_decay(context: dg.SensorEvaluationContext):
            cursor = int(context.cursor) if context.cursor else latest_storage_id(context.instance)
            if context.cursor is None:
                context.update_cursor(str(cursor))
                return dg.SkipReason("started: watching performance_decay from now on")
            requests_ = []
            for storage_id, ev, run_id in check_evaluations(context.instance, cursor):
                cursor = storage_id
                if ev.check_name == "performance_decay" and not ev.passed and \
                        bool(_meta_value(ev.metadata.get("retrain_requested", False))):
                    requests_.append(dg.RunRequest(run_key=f"decay-{storage_id}",
                                                   tags={"pql/trigger": "performance_decay",
                                                         "pql/decay_run": run_id[:8]}))
            context.update_cursor(str(cursor))
            # one retraining, however many decayed days were found in this tick
            return requests_[-1:] or dg.SkipReason("no performance decay")

        sensors.append(pql_retrain_on_decay)
    return sensors
