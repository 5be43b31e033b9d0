"""When things run: the daily schedule, weekly retraining, the sensor that picks up newly
landed event files, declarative automation of the derived assets, and freshness policies."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import dagster as dg

from pql_pipeline.settings import Settings

# assets that follow their inputs on their own (re-scoring a day in the UI refreshes the drift
# report, and the outputs once every blocking check upstream passed)
AUTOMATED = ("drift_report", "pql_history", "pql_report", "crm_sync", "in_app_nudges")


def status(running: bool, kind: str):
    cls = dg.DefaultScheduleStatus if kind == "schedule" else dg.DefaultSensorStatus
    return cls.RUNNING if running else cls.STOPPED


def gated_eager() -> dg.AutomationCondition:
    """eager() does not wait for blocking checks: the outputs must."""
    return dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


def freshness_policies(settings: Settings) -> dict[str, dg.FreshnessPolicy]:
    f = settings.monitoring.freshness
    events = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=f.events_hours))
    scores = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=f.scores_hours))
    outputs = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=f.outputs_hours))
    return {"validated_events": events, "pql_scores": scores, "pql_account_scores": scores,
            "crm_sync": outputs, "in_app_nudges": outputs}


def with_automation(defs: dg.Definitions, settings: Settings) -> dg.Definitions:
    """Freshness policies on the inputs, scores and outputs; gated eager automation on the
    derived assets."""
    policies = freshness_policies(settings)

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        if name in policies:
            spec = dg.apply_freshness_policy(spec, policies[name])
        if name in AUTOMATED:
            spec = spec.replace_attributes(automation_condition=gated_eager())
        return spec

    return defs.map_resolved_asset_specs(func=apply, selection=[*policies, *AUTOMATED])


def partition_pattern(pattern: str) -> re.Pattern:
    """The regular expression of ``source.pattern`` (glob with ``{date}``) capturing the day."""
    out = ""
    for part in re.split(r"(\{date\}|\*\*|\*|\?)", pattern):
        out += {"{date}": r"(?P<date>\d{4}-\d{2}-\d{2})", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            part, re.escape(part))
    return re.compile(out + "$")


def landed_partitions(root: Path, pattern: str, settled_before: float | None = None) -> dict[str, str]:
    """Day -> fingerprint (file names, sizes and modification times) of every partition with
    files under ``root``; with ``settled_before`` (a timestamp) only partitions none of whose
    files changed after it (files still landing wait)."""
    regex = partition_pattern(pattern)
    files: dict[str, list[tuple[str, int, int]]] = {}
    if not root.is_dir():
        return {}
    for path in root.glob(pattern.replace("{date}", "*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        m = regex.match(rel)
        if not m:
            continue
        st = path.stat()
        files.setdefault(m.group("date"), []).append((rel, st.st_size, int(st.st_mtime_ns)))
    if settled_before is not None:
        files = {d: fs for d, fs in files.items() if max(m for _, _, m in fs) <= settled_before * 1e9}
    return {day: hashlib.sha256(json.dumps(sorted(fs)).encode()).hexdigest()[:16] for day, fs in files.items()}


def day_before(context: dg.ScheduleEvaluationContext) -> str:
    """The partition a scheduled run processes: the UTC day before its scheduled time."""
    return (context.scheduled_execution_time.astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()


def build_automation(settings: Settings, daily: dg.PartitionsDefinition, daily_job: str,
                     retrain_job: str) -> tuple[list, list]:
    """(schedules, sensors)."""
    a = settings.monitoring.automation

    @dg.schedule(name="pql_daily", cron_schedule=f"{a.daily_minute} {a.daily_hour} * * *", job_name=daily_job,
                 execution_timezone="UTC", default_status=status(a.running, "schedule"),
                 description="Every day: ingest, validate, features, score, drift report and outputs for the day "
                             "before (the newest complete partition).")
    def pql_daily(context: dg.ScheduleEvaluationContext):
        day = day_before(context)
        return dg.RunRequest(partition_key=day, run_key=f"daily-{day}")

    @dg.schedule(name="pql_weekly_retrain", cron_schedule=a.retrain_cron, job_name=retrain_job,
                 execution_timezone="UTC", default_status=status(a.running, "schedule"),
                 description="Weekly: refresh the labels and training set of the day before, then retrain the "
                             "model (promoted only if it passes its gates and beats the champion).")
    def pql_weekly_retrain(context: dg.ScheduleEvaluationContext):
        day = day_before(context)
        return dg.RunRequest(partition_key=day, run_key=f"retrain-{day}")

    root, pattern = settings.events_root, settings.source.pattern
    first = settings.partitions.start_date

    @dg.sensor(name="pql_new_event_files", job_name=daily_job, minimum_interval_seconds=a.landing_interval_seconds,
               default_status=status(a.running, "sensor"),
               description="Runs the daily job for a finished day when its event files land or change (source.root / "
                           "source.pattern) and then stay unchanged for landing_settle_minutes. Partitions already "
                           "materialized when the sensor starts are left alone.")
    def pql_new_event_files(context: dg.SensorEvaluationContext):
        seen = json.loads(context.cursor) if context.cursor else None
        now = dt.datetime.now(dt.timezone.utc)
        # only finished days (today is not a partition yet) whose files stopped changing
        landed = {d: fp for d, fp in landed_partitions(
                      root, pattern, settled_before=now.timestamp() - a.landing_settle_minutes * 60).items()
                  if first <= dt.date.fromisoformat(d) < now.date() and daily.has_partition_key(d)}
        if seen is None:
            # first evaluation: partitions validated before are the baseline, not news
            done = context.instance.get_materialized_partitions(dg.AssetKey("validated_events"))
            seen = {d: fp for d, fp in landed.items() if d in done}
        changed = sorted(d for d, fp in landed.items() if seen.get(d) != fp)
        requests_ = []
        for d in changed[:a.landing_max_runs_per_tick]:
            requests_.append(dg.RunRequest(partition_key=d, run_key=f"files-{d}-{landed[d]}",
                                           tags={"pql/trigger": "new_event_files"}))
            seen[d] = landed[d]
        context.update_cursor(json.dumps(seen, sort_keys=True))
        if not requests_:
            return dg.SkipReason(f"no new or changed event files under {settings.source.root}")
        if len(changed) > len(requests_):
            context.log.info(f"{len(changed) - len(requests_)} more partitions waiting for the next tick; for a "
                             "long history, launch a backfill in the UI instead")
        return requests_

    automation = dg.AutomationConditionSensorDefinition(
        "pql_automation", target=dg.AssetSelection.assets(*AUTOMATED),
        default_status=status(a.running, "sensor"),
        description="Declarative automation of the drift report, PQL history and outputs: they follow a re-scored "
                    "day once every blocking check upstream passed.")
    return [pql_daily, pql_weekly_retrain], [pql_new_event_files, automation, dead_run_reaper()]


def dead_run_reaper() -> dg.SensorDefinition:
    """Runs by default: a run whose process died (SIGKILL, out of memory, a container stop)
    would otherwise stay STARTED and hold its pool slot, so every later run waits forever."""
    from pql_pipeline.lib.run_health import reap_dead_runs

    @dg.sensor(name="pql_dead_run_reaper", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Marks failed the runs whose process is gone and frees the pool slots of finished runs "
                           "(Dagster keeps both otherwise).")
    def pql_dead_run_reaper(context: dg.SensorEvaluationContext):
        done = reap_dead_runs(context.instance, log=context.log.warning)
        return dg.SkipReason("; ".join(done) if done else "no dead run holds a slot")

    return pql_dead_run_reaper
