"""Runs whose process died, and the pool slots they hold.

A run killed with SIGKILL, by the out-of-memory killer or by a container stop stays
``STARTED`` in the Dagster instance and keeps its ``duckdb_warehouse`` pool slot: every
later run waits for it forever. Dagster's run monitoring cannot tell that such a run is
dead (the default run launcher has no health check, and ``execute_in_process`` runs have
no launcher at all), and cancelling a run does not free its slots.

This module is the health check. Every run knows the process that executes it: the
``pql/owner`` tag of a run started by the ``pql`` CLI (its run id, pid, host, and the
machine's boot and pid namespace, so a copied tag or another container's pid never counts),
or the run worker's "Started process for run (pid: N)" event of a run launched from the UI
or the daemon. A run whose process no longer exists here, or whose pid now belongs to a
process that started after the owner was recorded, is dead: ``reap_dead_runs`` marks it
failed and frees its slots and pending claims. It also frees the slots a finished run still
holds once its process is gone or ``FREE_AFTER_END_SECONDS`` after it ended (what Dagster's
own run monitoring does under the daemon). The CLI calls it before each run and while it
waits for a slot; the ``pql_dead_run_reaper`` sensor calls it in ``make ui``.

A run owned on another host, boot or pid namespace (a shared Postgres instance, another
container) is never judged from here.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES

OWNER_TAG = "pql/owner"
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
              dg.DagsterRunStatus.NOT_STARTED]
# a pid whose process started this long after its owner was recorded belongs to another process
START_SLACK_SECONDS = 5.0
# the slots a finished run still holds are freed this long after it ended even if its process lives
FREE_AFTER_END_SECONDS = 60.0


def _namespace() -> str:
    """This machine's boot and pid namespace: a pid means the same process only within both."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return "unknown"


def owner_tags(run_id: str) -> dict[str, str]:
    """The tag naming this process as the owner of run ``run_id``."""
    return {OWNER_TAG: f"{run_id}|{os.getpid()}|{socket.gethostname()}|{_namespace()}"}


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
    host: str
    local: bool             # the pid can be judged from this process (same host, boot and pid namespace)
    since: float | None     # the owner process existed at this time (Unix seconds)


def run_owner(instance: dg.DagsterInstance, record) -> Owner | None:
    """The process executing the run of ``record``: its ``pql/owner`` tag, if the tag was
    written for this run (a re-execution copies its parent's tags), else its run worker's
    pid event (judged on this host only with the embedded SQLite storage)."""
    run = record.dagster_run
    parts = run.tags.get(OWNER_TAG, "").split("|")
    if len(parts) == 4 and parts[0] == run.run_id and parts[1].isdigit():
        local = parts[2] == socket.gethostname() and parts[3] == _namespace() and parts[3] != "unknown"
        # the CLI process existed before it created the run
        return Owner(int(parts[1]), parts[2], local, record.create_timestamp.timestamp())
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records
    for rec in records:
        entry = rec.event_log_entry
        event = entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        pid = (getattr(data, "metadata", None) or {}).get("pid")
        if pid is not None:
            try:
                pid_ = int(getattr(pid, "value", pid))
            except (TypeError, ValueError):
                return None
            # the worker existed when it wrote the event
            return Owner(pid_, socket.gethostname(), _local_storage(instance), entry.timestamp)
    return None


def _local_storage(instance: dg.DagsterInstance) -> bool:
    return type(instance.run_storage).__name__.lower().startswith("sqlite")


def is_dead(instance: dg.DagsterInstance, record) -> str | None:
    """Why the run of ``record`` has no live process, or None (alive, or not judged from here)."""
    owner = run_owner(instance, record)
    if owner is None or not owner.local or owner.pid == os.getpid():
        return None
    if process_alive(owner.pid, owner.since):
        return None
    return (f"its process (pid {owner.pid} on {owner.host}) is gone: killed (SIGKILL, out of memory, a container "
            "stop) before the run could finish")


def reap_dead_runs(instance: dg.DagsterInstance, log=None) -> list[str]:
    """Mark failed every unfinished run whose process died, and free the pool slots and
    pending claims of those runs, and of finished runs whose process is gone or that ended
    ``FREE_AFTER_END_SECONDS`` ago. Returns what it did, a line each."""
    done = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED)):
        why = is_dead(instance, record)
        if why is None:
            continue
        # read again: a run that finished meanwhile keeps its own end
        run = instance.get_run_by_id(record.dagster_run.run_id)
        if run is None or run.status not in UNFINISHED:
            continue
        instance.report_run_failed(run, f"Marked failed by pql: {why}.")
        done.append(f"run {run.run_id[:8]} ({run.job_name}) marked failed: {why}")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding = storage.get_concurrency_run_ids()
        if holding:
            now = dt.datetime.now(dt.timezone.utc).timestamp()
            for record in instance.get_run_records(dg.RunsFilter(run_ids=list(holding))):
                run = record.dagster_run
                if run.status not in FINISHED_STATUSES:
                    continue
                owner = run_owner(instance, record)
                gone = owner is not None and owner.local and not process_alive(owner.pid, owner.since)
                if gone or (record.end_time or now) <= now - FREE_AFTER_END_SECONDS:
                    storage.free_concurrency_slots_for_run(run.run_id)
                    done.append(f"freed the pool slots of run {run.run_id[:8]} ({run.status.value.lower()})")
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
        owner = run_owner(instance, record) if record else None
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
