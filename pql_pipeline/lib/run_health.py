"""Runs whose process died, and the pool slots they hold.

A run killed with SIGKILL, by the out-of-memory killer or by a container stop stays
``STARTED`` in the Dagster instance and keeps its ``duckdb_warehouse`` pool slot: every
later run waits for it forever. Dagster's run monitoring cannot tell that such a run is
dead (the default run launcher has no health check, and ``execute_in_process`` runs have
no launcher at all), and cancelling a run does not free its slots.

This module is the health check. Every run knows the process that executes it: the
``pql/pid`` and ``pql/host`` tags of a run started by the ``pql`` CLI, or the run worker's
"Started process for run (pid: N)" event of a run launched from the UI or the daemon. A run
whose process no longer exists on this host (or whose pid now belongs to a process that
started after the run) is dead: ``reap_dead_runs`` marks it failed and frees its slots and
pending claims, and frees those of any finished run too. The CLI calls it before each run
and while it waits for a slot; the ``pql_dead_run_reaper`` sensor calls it in ``make ui``.

A run on another host (a shared Postgres instance) is never judged from here.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES

PID_TAG, HOST_TAG = "pql/pid", "pql/host"
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
              dg.DagsterRunStatus.NOT_STARTED]
# a pid whose process started this long after the run did belongs to another process
START_SLACK_SECONDS = 5.0


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the run's owner."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            return next(float(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None


def process_started(pid: int) -> float | None:
    """The Unix time process ``pid`` started (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        boot = _boot_time()
        return None if boot is None else boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, since: float | None = None) -> bool:
    """Whether ``pid`` runs and, given ``since`` (the run's start), started before it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                       # exists, owned by someone else
    if os.path.exists(f"/proc/{pid}/stat"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False   # a zombie has ended; only its exit status is left
        except (OSError, IndexError):
            pass
    started = process_started(pid)
    return since is None or started is None or started <= since + START_SLACK_SECONDS


@dataclass
class Owner:
    pid: int
    host: str | None        # None: the run worker's pid event, judged on this host only with local storage


def run_owner(instance: dg.DagsterInstance, run: dg.DagsterRun) -> Owner | None:
    """The process executing ``run``, from its tags or its run worker's pid event."""
    if PID_TAG in run.tags:
        try:
            return Owner(int(run.tags[PID_TAG]), run.tags.get(HOST_TAG))
        except ValueError:
            return None
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        pid = (getattr(data, "metadata", None) or {}).get("pid")
        if pid is not None:
            try:
                return Owner(int(getattr(pid, "value", pid)), None)
            except (TypeError, ValueError):
                return None
    return None


def _local_storage(instance: dg.DagsterInstance) -> bool:
    return type(instance.run_storage).__name__.lower().startswith("sqlite")


def is_dead(instance: dg.DagsterInstance, record) -> str | None:
    """Why the unfinished run of ``record`` is dead, or None (alive, or not judged from here)."""
    run = record.dagster_run
    owner = run_owner(instance, run)
    if owner is None or owner.pid == os.getpid():
        return None
    if owner.host is not None and owner.host != socket.gethostname():
        return None
    if owner.host is None and not _local_storage(instance):
        return None
    since = record.start_time or record.create_timestamp.timestamp()
    if process_alive(owner.pid, since):
        return None
    return (f"its process (pid {owner.pid} on {owner.host or socket.gethostname()}) is gone: killed (SIGKILL, out of "
            "memory, a container stop) before the run could finish")


def reap_dead_runs(instance: dg.DagsterInstance, log=None) -> list[str]:
    """Mark failed every unfinished run whose process died, and free the pool slots and
    pending claims of those runs and of every finished run. Returns what it did, a line each."""
    done = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED)):
        why = is_dead(instance, record)
        if why is None:
            continue
        run = record.dagster_run
        instance.report_run_failed(run, f"Marked failed by pql: {why}.")
        done.append(f"run {run.run_id[:8]} ({run.job_name}) marked failed: {why}")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding = storage.get_concurrency_run_ids()
        if holding:
            for record in instance.get_run_records(dg.RunsFilter(run_ids=list(holding))):
                if record.dagster_run.status in FINISHED_STATUSES:
                    storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
                    done.append(f"freed the pool slots of run {record.dagster_run.run_id[:8]} "
                                f"({record.dagster_run.status.value.lower()})")
    for line in done:
        if log is not None:
            log(line)
    return done


@dataclass
class Holder:
    run_id: str
    job: str
    step: str
    since: dt.datetime | None
    owner: str


def pool_holders(instance: dg.DagsterInstance, pool: str, exclude_run: str | None = None) -> list[Holder]:
    """The runs holding ``pool``'s slots (other than ``exclude_run``), with their step and owner."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    info = storage.get_concurrency_info(pool)
    out = []
    for slot in info.claimed_slots:
        if slot.run_id == exclude_run:
            continue
        record = next(iter(instance.get_run_records(dg.RunsFilter(run_ids=[slot.run_id]), limit=1)), None)
        run = record.dagster_run if record else None
        owner = run_owner(instance, run) if run else None
        started = next((p.assigned_timestamp or p.enqueued_timestamp for p in info.pending_steps
                        if p.run_id == slot.run_id and p.step_key == slot.step_key), None)
        out.append(Holder(slot.run_id, run.job_name if run else "?", slot.step_key, started,
                          f"pid {owner.pid}" + (f" on {owner.host}" if owner.host else "") if owner else "owner unknown"))
    return out


def pool_free(instance: dg.DagsterInstance, pool: str) -> bool:
    """Whether a step of ``pool`` could claim a slot now (no limit counts as free)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return True
    info = storage.get_concurrency_info(pool)
    limit = info.slot_count or info.limit
    if limit is None:
        return True
    return len(info.claimed_slots) + info.pending_step_count < limit


def utc(t: dt.datetime) -> dt.datetime:
    """Dagster's SQLite storage returns naive UTC timestamps."""
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t


def describe(holders: list[Holder], pool: str) -> str:
    if not holders:
        return f"pool {pool}: its slots are taken by steps about to start"
    parts = [f"run {h.run_id[:8]} ({h.job}, step {h.step}"
             + (f", since {utc(h.since).astimezone(dt.timezone.utc):%H:%M:%S} UTC" if h.since else "") + f", {h.owner})"
             for h in holders]
    return f"pool {pool} is held by " + "; ".join(parts)
