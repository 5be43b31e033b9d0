"""Runs whose process died, and runs that wait for the warehouse pool: real Dagster runs on
a real instance (SQLite storage, the project's pool of one slot), real processes killed
with SIGKILL, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from pql_pipeline.lib import run_health
from pql_pipeline.lib.dagster_helpers import POOL
from pql_pipeline.runner import PoolWatch, interruptible, wait_for_pool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instance(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as inst:
        yield inst


@pytest.fixture
def other_process():
    """A live process standing for another run's worker."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def holding_run(instance, pid: int, step: str = "crm_sync") -> str:
    """A STARTED run owned by ``pid`` on this host, holding the pool's only slot."""
    run_id = str(uuid.uuid4())
    tag = run_health.owner_tags(run_id)[run_health.OWNER_TAG].split("|")
    tag[1] = str(pid)
    run = instance.add_run(dg.DagsterRun(job_name="daily_pql", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                         tags={run_health.OWNER_TAG: "|".join(tag)}))
    instance.handle_run_event(run.run_id, dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name, message="started"))
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(POOL)     # as a run's first claim does
    assert storage.claim_concurrency_slot(POOL, run_id, step).is_claimed
    assert not run_health.pool_free(instance, POOL)
    return run_id


def test_a_dead_holder_is_found_and_its_slot_freed_while_the_next_run_waits(instance, other_process):
    holder = holding_run(instance, other_process.pid)
    assert run_health.reap_dead_runs(instance) == []          # alive: left alone
    said = []
    threading.Timer(2.0, other_process.kill).start()            # the holder dies (SIGKILL) while we wait
    t0 = time.monotonic()
    with _short_say(0.5):
        wait_for_pool(instance, POOL, said.append, poll=0.2)
    assert time.monotonic() - t0 < 20
    text = "\n".join(said)
    assert f"held by run {holder[:8]} (daily_pql, step crm_sync" in text and "waiting since" in text
    assert f"pid {other_process.pid} on {socket.gethostname()}" in text
    assert f"run {holder[:8]} (daily_pql) marked failed" in text
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
    assert run_health.pool_free(instance, POOL)


def test_a_reused_pid_does_not_keep_a_dead_run_alive(instance, other_process):
    """The holder's pid now belongs to a process that started after the run: the run is dead."""
    run_id = holding_run(instance, os.getppid())   # a process older than the run: alive
    assert run_health.reap_dead_runs(instance) == []
    record = instance.get_run_records(dg.RunsFilter(run_ids=[run_id]))[0]
    assert run_health.process_alive(other_process.pid, since=record.start_time)
    assert not run_health.process_alive(other_process.pid, since=record.start_time - 3600)


def test_a_copied_owner_tag_never_makes_a_live_run_dead(instance):
    """A re-execution copies its parent's tags: the dead parent's pid is not the new run's."""
    parent = str(uuid.uuid4())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = run_health.owner_tags(parent)[run_health.OWNER_TAG].split("|")
    tag[1] = str(dead.pid)
    child = instance.add_run(dg.DagsterRun(job_name="daily_pql", run_id=str(uuid.uuid4()),
                                           status=dg.DagsterRunStatus.STARTED,
                                           tags={run_health.OWNER_TAG: "|".join(tag)}))
    assert run_health.reap_dead_runs(instance) == []
    assert instance.get_run_by_id(child.run_id).status == dg.DagsterRunStatus.STARTED


def test_a_run_worker_that_started_after_its_run_was_queued_is_alive(instance, monkeypatch):
    """A queued run's worker starts long after the run was created: its pid event, not the
    run's creation, says since when the process exists."""
    from dagster._core.events import EngineEventData

    monkeypatch.setattr(run_health, "START_SLACK_SECONDS", 0.0)     # "long after", without waiting long
    run = instance.add_run(dg.DagsterRun(job_name="daily_pql", run_id=str(uuid.uuid4()),
                                         status=dg.DagsterRunStatus.STARTING))
    time.sleep(2.0)          # /proc tells a process's start to within about a second
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        instance.report_engine_event(f"Started process for run (pid: {late.pid}).", run,
                                     EngineEventData.in_process(late.pid))
        record = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))[0]
        # judged from the run's creation, the worker would look like a reused pid
        assert not run_health.process_alive(late.pid, since=record.create_timestamp.timestamp())
        assert run_health.reap_dead_runs(instance) == []
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTING
    finally:
        late.kill()
        late.wait()


def test_a_cancelled_run_s_slot_is_freed_once_its_process_is_gone(instance, other_process):
    run_id = holding_run(instance, other_process.pid)
    instance.report_run_canceled(instance.get_run_by_id(run_id), message="cancelled in the UI")
    # its process may still be writing: the slot stays (Dagster frees it 60 s after the end)
    assert run_health.reap_dead_runs(instance) == [] and not run_health.pool_free(instance, POOL)
    other_process.kill()
    other_process.wait()
    assert any("freed the pool slots" in line for line in run_health.reap_dead_runs(instance))
    assert run_health.pool_free(instance, POOL)


def test_a_run_blocked_on_the_pool_says_why_and_sigterm_cancels_it_cleanly(instance, other_process):
    holder = holding_run(instance, other_process.pid)
    ran = []

    @dg.op
    def before():
        # the signal arrives while the next step waits for the pool (not inside a step)
        threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        ran.append("before")
        return 1

    @dg.op(pool=POOL)
    def writer(upstream):
        ran.append("writer")

    @dg.job
    def job():
        writer(before())

    run_id, said = str(uuid.uuid4()), []
    with _short_say(0.5), PoolWatch(instance, run_id, POOL, said.append, poll=0.2, quiet_seconds=1.0), \
            interruptible(instance, run_id) as stopped:
        result = job.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False)
    assert ran == ["before"] and stopped and not result.success
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    assert any(f"run {run_id[:8]} waits since" in s and f"held by run {holder[:8]}" in s for s in said)
    info = instance.event_log_storage.get_concurrency_info(POOL)
    assert [p for p in info.pending_steps if p.run_id == run_id] == []      # its claim is gone
    assert [s.run_id for s in info.claimed_slots] == [holder]


def test_the_reaper_sensor_finds_a_dead_run_worker_launched_by_the_daemon(instance, other_process):
    """A run launched from the UI has no pql tags: its worker's pid comes from the run's
    "Started process for run" event, as the run worker records it."""
    from dagster._core.events import EngineEventData

    from pql_pipeline.defs.monitoring.automation import dead_run_reaper

    run = instance.add_run(dg.DagsterRun(job_name="daily_pql", run_id=str(uuid.uuid4()),
                                         status=dg.DagsterRunStatus.STARTED))
    instance.report_engine_event(f"Started process for run (pid: {other_process.pid}).", run,
                                 EngineEventData.in_process(other_process.pid))
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(POOL)
    assert storage.claim_concurrency_slot(POOL, run.run_id, "validate_events").is_claimed
    sensor = dead_run_reaper()
    assert "no dead run" in sensor(dg.build_sensor_context(instance=instance)).skip_message
    other_process.kill()
    other_process.wait()
    message = sensor(dg.build_sensor_context(instance=instance)).skip_message
    assert f"run {run.run_id[:8]} (daily_pql) marked failed" in message and "freed the pool slots" in message
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert run_health.pool_free(instance, POOL)


def test_an_interrupt_inside_a_step_stops_the_cli_run_with_what_happened(instance):
    from pql_pipeline.runner import PipelineInterrupted, RunReport, execute

    @dg.op
    def long_step():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    @dg.op
    def after(_x):
        raise AssertionError("must not run")

    @dg.job
    def job():
        after(long_step())

    report = RunReport(partitions=[])
    with pytest.raises(PipelineInterrupted, match="during step long_step of run .*: that step failed"):
        execute(dg.Definitions(jobs=[job]), "job", {}, instance, report)
    assert instance.get_run_by_id(report.run_ids[0]).status == dg.DagsterRunStatus.FAILURE


class _short_say:
    """Say what a wait is for every half second instead of every 30 s."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        import pql_pipeline.runner as r

        self.before, r.SAY_EVERY_SECONDS = r.SAY_EVERY_SECONDS, self.seconds

    def __exit__(self, *exc):
        import pql_pipeline.runner as r

        r.SAY_EVERY_SECONDS = self.before


# ----------------------------------------------------------- a real sync killed mid-step
DAY = "2026-03-31"
TOKEN = "pat-na1-kill-test-TOKEN-5150"
SCRIPT = textwrap.dedent("""
    import sys
    import dagster as dg
    from pql_pipeline.definitions import ACTIVATION_JOB, build_definitions
    from pql_pipeline.runner import PipelineInterrupted, RunReport, execute
    from pql_pipeline.settings import load_settings

    settings = load_settings()
    report = RunReport(partitions=[sys.argv[1]])
    try:
        ok = execute(build_definitions(settings), ACTIVATION_JOB, {"dagster/partition": sys.argv[1]},
                     dg.DagsterInstance.get(), report)
    except PipelineInterrupted as exc:
        print(f"pql: {exc}", file=sys.stderr)
        sys.exit(130)
    print("RESULT", "success" if ok else "failed", report.run_ids[-1], flush=True)
""")


def scored_accounts(warehouse: Path, n: int) -> None:
    import duckdb

    from pql_pipeline.defs.scoring.batch import SCORE_COLUMNS
    from pql_pipeline.defs.scoring.scoring import ACCOUNT_COLUMNS
    from pql_pipeline.lib.warehouse import ensure_columns

    with duckdb.connect(str(warehouse)) as conn:
        ensure_columns(conn, "pql_scores", SCORE_COLUMNS)
        ensure_columns(conn, "pql_account_scores", ACCOUNT_COLUMNS)
        conn.execute("CREATE TABLE users (user_id VARCHAR, email VARCHAR)")
        for i in range(n):
            conn.execute("INSERT INTO pql_account_scores (snapshot_date, account_id, probability, tier, is_pql, "
                         "reason_text, pql_users, top_user_id, model_version, segment, route) VALUES "
                         "(?, ?, 0.8, 'hot', TRUE, 'invited 3 teammates', 1, ?, 'm1', 'enterprise', 'sales')",
                         [DAY, f"acc_{i:03d}", f"usr_{i:03d}"])
            conn.execute("INSERT INTO pql_scores (snapshot_date, user_id, account_id, probability, tier, is_pql, "
                         "route, reason_text, model_version, segment) VALUES "
                         "(?, ?, ?, 0.8, 'hot', TRUE, 'sales', 'invited 3 teammates', 'm1', 'enterprise')",
                         [DAY, f"usr_{i:03d}", f"acc_{i:03d}"])
            conn.execute("INSERT INTO users VALUES (?, ?)", [f"usr_{i:03d}", f"usr_{i:03d}@example.com"])


@pytest.mark.slow
def test_a_run_killed_mid_sync_is_reaped_by_the_next_run_which_completes_it(tmp_path):
    from pql_pipeline_tests.defs.activation.fake_hubspot import FakeHubSpot

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    warehouse = tmp_path / "pql.duckdb"
    scored_accounts(warehouse, 60)
    (tmp_path / "script.py").write_text(SCRIPT)
    with FakeHubSpot(token=TOKEN) as hub:
        (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(f"""
            activation:
              crm: {{base_url: "{hub.url}", batch_size: 10, concurrency: 1, max_attempts: 2, backoff_seconds: 0.01,
                     timeout_seconds: 60, sync_contacts: false}}
              in_app: {{enabled: false}}
        """))
        env = {**os.environ, "DAGSTER_HOME": str(home), "PQL_CONFIG": str(tmp_path / "pipeline.yaml"),
               "PQL_WAREHOUSE": str(warehouse), "HUBSPOT_ACCESS_TOKEN": TOKEN}

        def start():
            return subprocess.Popen([sys.executable, str(tmp_path / "script.py"), DAY], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # run A: its third batch is applied by HubSpot, whose answer takes long; A is killed waiting for it
        hub.timeout_sleep = 30
        hub.faults.extend(["ok", "ok", "slow"])
        a = start()
        _until(lambda: len(hub.calls()) >= 3, a, "run A's third batch")
        # run B starts while A holds the warehouse pool: it says what it waits for, and SIGTERM stops it
        b = start()
        line = _read_until(b, "waiting since")
        assert "held by run" in line and "sync_outputs, step crm_sync" in line and f"pid {a.pid}" in line
        b.send_signal(signal.SIGTERM)
        _, b_err = b.communicate(timeout=60)
        assert b.returncode == 130 and "stopped while waiting for a slot of pool duckdb_warehouse" in b_err
        a.kill()                                           # SIGKILL mid-step
        a.communicate(timeout=60)
        hub.faults.clear()
        # run C: no manual step; it reaps A, then sends what A left unconfirmed
        c = start()
        out, err = c.communicate(timeout=300)
        assert c.returncode == 0 and "RESULT success" in out, err[-3000:]
        assert "marked failed: its process" in err and f"pid {a.pid}" in err
    with dg.DagsterInstance.from_config(str(home)) as inst:
        runs = {r.run_id: r for r in inst.get_runs()}
        dead = [r for r in runs.values() if f"|{a.pid}|" in r.tags.get(run_health.OWNER_TAG, "")]
        assert len(dead) == 1 and dead[0].status == dg.DagsterRunStatus.FAILURE
        assert run_health.pool_free(inst, POOL)
    # nothing lost, nothing sent twice beyond the batch in flight when A died
    assert {k for t, k in hub.objects if t == "companies"} == {f"acc_{i:03d}" for i in range(60)}
    twice = [k for k, n in hub.upserts.items() if n > 1]
    assert len(twice) == 10 and max(hub.upserts.values()) == 2
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True) as conn:
        rows = conn.execute("SELECT status, sent, created + updated, failed, error FROM sync_runs "
                            "WHERE object_type = 'companies' ORDER BY started_at").fetchall()
        assert [r[0] for r in rows] == ["interrupted", "completed"]
        # A had marked its 60 records pending; 20 were confirmed, 40 left unconfirmed (10 of them applied)
        assert rows[0][1:4] == (60, 20, 40) and "40 record(s) left pending" in rows[0][4]
        assert rows[1][1:4] == (40, 40, 0)
        assert conn.execute("SELECT count(*) FROM sync_ledger WHERE status = 'synced'").fetchall()[0][0] == 60


def _until(cond, proc, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _read_until(proc, needle: str, timeout: float = 120) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r} from the waiting run")
