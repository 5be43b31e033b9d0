"""Materialize the pipeline from the command line and summarise the result.

Runs go through the Dagster instance in ``DAGSTER_HOME`` (``make`` sets it to
``.dagster_home``), so everything done here shows up in the UI afterwards.

Before each run, runs whose process died are marked failed and their pool slots freed
(``lib/run_health.py``); a run that must wait for the ``duckdb_warehouse`` pool says on the
console which run holds it and since when, and Ctrl-C or SIGTERM stops it cleanly: before
it starts, or at the next step boundary (the run is then recorded as canceled, its claims
released); inside a step, Dagster fails the step and the CLI names it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from pql_pipeline.defs.ingest.loader import available_partitions
from pql_pipeline.lib import run_health
from pql_pipeline.lib.dagster_helpers import POOL
from pql_pipeline.lib.warehouse import Warehouse, table_exists
from pql_pipeline.settings import Settings


class PipelineRunError(RuntimeError):
    pass


class PipelineInterrupted(PipelineRunError):
    """Ctrl-C or SIGTERM stopped the pipeline (waiting for the pool, between steps, or inside one)."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class RunReport:
    partitions: list[str]
    run_ids: list[str] = field(default_factory=list)
    succeeded: bool = True
    checks: list[dict] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    plans: list = field(default_factory=list)   # run_plan.Plan of each planned job (run or skipped)
    seconds: float = 0.0          # wall time of the runs
    cpu_seconds: float = 0.0      # CPU time of this process meanwhile (the runs execute in it, DuckDB's threads too)


def materialize_all(settings: Settings, instance: dg.DagsterInstance, partitions: list[str] | None = None,
                    defs: dg.Definitions | None = None, log_level: str = "WARNING",
                    progress: bool = False, echo: Callable[[str], None] = _stderr, full: bool = False) -> RunReport:
    """Run the whole graph over every partition that has files, as single-run ranges: the
    events-to-training-sets job, the model, the scores. Each partitioned job computes only
    what changed since it last succeeded (``run_plan``); ``full`` recomputes everything."""
    from pql_pipeline import run_plan as rp
    from pql_pipeline.definitions import MODEL_JOB, PIPELINE_JOB, SCORING_JOB, build_definitions

    defs = defs or build_definitions(settings)
    parts = partitions if partitions is not None else available_partitions(settings.events_root, settings.source.pattern)
    first = settings.partitions.start_date.isoformat()
    if parts and parts[0] < first:
        raise PipelineRunError(
            f"event files start on {parts[0]} but partitions.start_date is {first}; "
            "set partitions.start_date in the configuration to a day on or before the first file")
    report = RunReport(partitions=parts)
    if not parts:
        raise PipelineRunError(
            f"no event files match {settings.source.pattern!r} under {settings.events_root}; "
            "run `pql generate` or point source.root at your Segment export")
    warehouse = Warehouse(database=str(settings.warehouse_path))
    if full:
        rp.forget_state(warehouse)
    days = all_days(parts[0], parts[-1])
    with timed(report):
        inputs = {d: rp.files_digest(settings.events_root, settings.source.pattern, d) for d in days}
        # the events-to-features graph
        pipeline = _plan(defs, instance, warehouse, PIPELINE_JOB, lambda st, ch, every: rp.plan_pipeline(
            PIPELINE_JOB, days, inputs, st, ch, every))
        if not _run_planned(defs, instance, warehouse, pipeline, report, inputs, log_level, progress, echo):
            return report
        # the (unpartitioned) model trained on it: it skips its own training when its inputs are unchanged
        if not execute(defs, MODEL_JOB, {}, instance, report, log_level, progress=progress, echo=echo):
            return report
        model = scoring_model_version(settings, warehouse)
        retry = outputs_to_retry(warehouse)
        scoring = _plan(defs, instance, warehouse, SCORING_JOB, lambda st, ch, every: rp.plan_scoring(
            SCORING_JOB, days, st, ch, every, model, pipeline.days[0] if pipeline.days else None, retry))
        _run_planned(defs, instance, warehouse, scoring, report, {}, log_level, progress, echo, model=model)
    return report


def all_days(first: str, last: str) -> list[str]:
    """Every calendar day from ``first`` to ``last`` (a range run covers days without files too)."""
    import datetime as dt

    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def _plan(defs, instance, warehouse, job_name, decide):
    """``decide(state, changed assets, all assets)``'s plan for ``job_name``, with what
    ``run_plan.record_state`` needs after the run."""
    from pql_pipeline import run_plan as rp

    graph = defs.resolve_asset_graph()
    keys = sorted(defs.resolve_job_def(job_name).asset_layer.selected_asset_keys)
    names = [k.to_user_string() for k in keys]
    current = rp.definitions(defs, keys, rp.output_modes())
    downstream = {k.to_user_string(): {c.to_user_string() for c in graph.get(k).child_keys} for k in keys}
    siblings = {k.to_user_string(): {s.to_user_string() for s in defs.resolve_assets_def(k).keys} for k in keys}
    state = rp.read_state(warehouse, job_name)
    changed = rp.changed_assets(state, current, rp.latest_runs(instance, names), downstream, siblings)
    plan = decide(state, changed, set(names))
    plan.current = current
    plan.complete, plan.previous = set(state.days) <= set(plan.days), state.definitions
    return plan


def _run_planned(defs, instance, warehouse, plan, report: RunReport, inputs: dict, log_level, progress, echo,
                 model: str | None = None) -> bool:
    """Run ``plan`` (or say why it is skipped) and record what it computed."""
    from pql_pipeline import run_plan as rp

    report.plans.append(plan)
    if plan.skip:
        return True
    selection = [dg.AssetKey(a) for a in plan.assets] if plan.assets is not None else None
    ok = execute(defs, plan.job, range_tags(plan.days), instance, report, log_level, progress=progress, echo=echo,
                 asset_selection=selection)
    run_id = report.run_ids[-1]
    done = {r.dagster_event.asset_key.to_user_string()
            for r in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)}
    rp.record_state(warehouse, plan.job, run_id, plan, plan.current, inputs, model, done)
    return ok


def scoring_model_version(settings: Settings, warehouse: Warehouse) -> str | None:
    """The model version that scores leads (the pinned one, else the champion)."""
    from pql_pipeline.defs.model import registry

    with warehouse.get_connection() as conn:
        if not table_exists(conn, registry.REGISTRY):
            return None
        row = registry.scoring_model(conn, settings.model.pinned_version)
    return row["version"] if row else None


def outputs_to_retry(warehouse: Warehouse) -> bool:
    """Whether an output destination holds records not yet delivered (failed, or pending
    from a run that died): they are retried even when nothing else changed."""
    from pql_pipeline.defs.activation import ledger

    with warehouse.get_connection() as conn:
        if not table_exists(conn, ledger.LEDGER):
            return False
        return bool(conn.execute(
            f"SELECT count(*) FROM {ledger.LEDGER} WHERE status IN ('failed', 'pending')").fetchall()[0][0])


@contextlib.contextmanager
def timed(report: RunReport):
    """Add the block's wall and CPU seconds to ``report`` (also when it raises)."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        report.seconds += time.perf_counter() - wall
        report.cpu_seconds += time.process_time() - cpu


def range_tags(days: list[str]) -> dict[str, str]:
    """One day: an ordinary partition run (checks record their partition); several: one single-run range."""
    return ({"dagster/partition": days[0]} if len(days) == 1 else
            {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]})


def execute(defs: dg.Definitions, job_name: str, tags: dict, instance: dg.DagsterInstance, report: RunReport,
            log_level: str = "WARNING", progress: bool = False, echo: Callable[[str], None] = _stderr,
            asset_selection: list[dg.AssetKey] | None = None) -> bool:
    """Run ``job_name`` in this process and add its run, checks and failed steps to ``report``.
    With ``progress``, a bar on stderr follows the run's steps (on a terminal only). Dead runs
    are reaped and the pool awaited first; see the module's docstring."""
    import uuid

    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def(job_name)
    if asset_selection is not None:     # the selected assets and their checks
        job = job.get_subset(asset_selection=set(asset_selection))
    run_id = str(uuid.uuid4())      # known before the run starts, so the progress bar can follow it
    wait_for_pool(instance, POOL, echo)
    # the full event log is in the Dagster instance (and the UI); the console shows warnings and errors
    with StepProgress(instance, run_id, job_name, len(job.graph.node_dict), enabled=progress), \
            PoolWatch(instance, run_id, POOL, echo), interruptible(instance, run_id) as interrupted:
        result = job.execute_in_process(
            instance=instance, tags={**tags, **run_health.owner_tags(run_id)}, raise_on_error=False, run_id=run_id,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
    report.run_ids.append(result.run_id)
    if interrupted:
        raise PipelineInterrupted(f"stopped by {interrupted[0]}: run {run_id[:8]} of {job_name} was canceled at a "
                                  "step boundary (the steps before it completed; run again to continue)")
    # an interrupt inside a step: Dagster fails the step (its uncommitted writes are rolled back)
    stopped_in = [e.step_key for e in result.all_events if e.is_step_failure and e.step_key
                  and getattr(getattr(e.event_specific_data, "error", None), "cls_name", "")
                  == "DagsterExecutionInterruptedError"]
    if stopped_in:
        raise PipelineInterrupted(f"stopped by an interrupt (Ctrl-C or SIGTERM) during step {stopped_in[0]} of run "
                                  f"{run_id[:8]} ({job_name}): that step failed, its uncommitted writes rolled back; "
                                  "the steps before it completed; run again to continue")
    report.succeeded &= result.success
    for ev in result.get_asset_check_evaluations():
        spec = graph.get_check_spec(dg.AssetCheckKey(ev.asset_key, ev.check_name))
        report.checks.append({"asset": ev.asset_key.to_user_string(), "check": ev.check_name,
                              "passed": ev.passed, "severity": ev.severity.value,
                              "blocking": bool(spec.blocking)})
    report.failed_steps += [e.step_key for e in result.all_events if e.is_step_failure and e.step_key]
    return result.success


SAY_EVERY_SECONDS = 30.0      # how often a waiting run repeats what it waits for


def wait_for_pool(instance: dg.DagsterInstance, pool: str, echo: Callable[[str], None], poll: float = 1.0) -> None:
    """Reap dead runs, then wait (saying for what, and since when) until ``pool`` has a free
    slot. Ctrl-C or SIGTERM while waiting raises PipelineInterrupted; nothing has run."""
    _reap(instance, echo)
    since, said = None, 0.0
    try:
        with _sigterm_as_interrupt():
            while not run_health.pool_free(instance, pool):
                now = time.monotonic()
                if since is None:
                    since = time.time()
                if now - said >= SAY_EVERY_SECONDS:
                    echo(f"pql: waiting since {time.strftime('%H:%M:%S', time.gmtime(since))} UTC for a slot: "
                         f"{run_health.describe(run_health.pool_holders(instance, pool), pool)} (Ctrl-C stops)")
                    said = now
                time.sleep(poll)
                _reap(instance, echo)
    except KeyboardInterrupt:
        raise PipelineInterrupted(f"stopped while waiting for a slot of pool {pool}; nothing was run") from None


def _reap(instance: dg.DagsterInstance, echo: Callable[[str], None]) -> None:
    """Reap dead runs (``run_health.reap_dead_runs``), saying what was done."""
    for line in run_health.reap_dead_runs(instance):
        echo(f"pql: {line}")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler, ``kill``, a container stop) stops a wait like Ctrl-C does."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signo, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interruptible(instance: dg.DagsterInstance, run_id: str):
    """Make Ctrl-C/SIGTERM stop an in-process run at the next step boundary or while it waits
    for a pool slot. Dagster's in-process executor captures the signal but only acts on it
    inside a step; its loop between steps (and its wait for a slot) would ignore it. Yields a
    list that holds the signal's name once the run was stopped by one."""
    from dagster._core.errors import DagsterExecutionInterruptedError
    from dagster._core.execution.plan.active import ActiveExecution
    from dagster._utils.interrupts import check_captured_interrupt

    stopped: list[str] = []
    original_events, original_sleep = ActiveExecution.concurrency_event_iterator, ActiveExecution.sleep_til_ready

    def stop_if_interrupted() -> None:
        if check_captured_interrupt() and not stopped:
            stopped.append("an interrupt (Ctrl-C or SIGTERM)")
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status not in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
                instance.report_run_canceling(run, message="Stopped by an interrupt (Ctrl-C or SIGTERM) at a step "
                                                            "boundary.")
            raise DagsterExecutionInterruptedError()

    def concurrency_event_iterator(self, plan_context):
        stop_if_interrupted()
        yield from original_events(self, plan_context)

    def sleep_til_ready(self) -> None:
        end = time.monotonic() + max(0.0, self.sleep_interval())
        while True:
            stop_if_interrupted()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left))

    ActiveExecution.concurrency_event_iterator = concurrency_event_iterator
    ActiveExecution.sleep_til_ready = sleep_til_ready
    try:
        yield stopped
    finally:
        ActiveExecution.concurrency_event_iterator, ActiveExecution.sleep_til_ready = original_events, original_sleep
        if stopped and instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)


class PoolWatch:
    """While a run executes: when one of its steps has waited for a pool slot for a few
    seconds, say on the console what holds the pool and since when (then every
    ``SAY_EVERY_SECONDS``), and reap runs that died holding it, so the wait ends by itself."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, pool: str, echo: Callable[[str], None],
                 poll: float = 1.0, quiet_seconds: float = 3.0):
        self.instance, self.run_id, self.pool, self.echo = instance, run_id, pool, echo
        self.poll, self.quiet_seconds = poll, quiet_seconds
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _waiting_since(self):
        info = self.instance.event_log_storage.get_concurrency_info(self.pool)
        return min((run_health.utc(p.enqueued_timestamp) for p in info.pending_steps
                    if p.run_id == self.run_id and p.assigned_timestamp is None), default=None)

    def _watch(self) -> None:
        said = 0.0
        while not self._stop.wait(self.poll):
            try:
                since = self._waiting_since()
                if since is None or time.time() - since.timestamp() < self.quiet_seconds:
                    continue
                _reap(self.instance, self.echo)
                if time.monotonic() - said >= SAY_EVERY_SECONDS:
                    holders = run_health.pool_holders(self.instance, self.pool, exclude_run=self.run_id)
                    self.echo(f"pql: run {self.run_id[:8]} waits since {since:%H:%M:%S} UTC for a slot: "
                              f"{run_health.describe(holders, self.pool)} (Ctrl-C stops it)")
                    said = time.monotonic()
            except Exception:  # noqa: BLE001 - watching never disturbs the run
                continue

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class StepProgress:
    """A progress bar over a run's steps, fed by the run's events in the instance (read every
    half second by a thread while the run executes in this process). tqdm shows it only on a
    terminal (``disable=None``), so logs and CI output stay clean."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, job_name: str, steps: int, enabled: bool = True):
        self.instance, self.run_id, self.job_name, self.steps, self.enabled = instance, run_id, job_name, steps, enabled
        self._stop = None

    def __enter__(self):
        if not self.enabled:
            return self
        import sys
        import threading

        from tqdm import tqdm

        self.bar = tqdm(total=self.steps, desc=self.job_name, unit="step", file=sys.stderr, disable=None, leave=False)
        if self.bar.disable:
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        from dagster import DagsterEventType as T

        kinds = {T.STEP_START, T.STEP_SUCCESS, T.STEP_FAILURE}
        while not self._stop.wait(0.5):
            try:
                events = [e.dagster_event for e in self.instance.all_logs(self.run_id, of_type=kinds)]
            except Exception:  # noqa: BLE001 - a progress bar never disturbs the run
                continue
            done = sum(1 for e in events if e.event_type in (T.STEP_SUCCESS, T.STEP_FAILURE))
            running = [e.step_key for e in events if e.event_type == T.STEP_START]
            self.bar.n = done
            self.bar.set_postfix_str(running[-1] if running else "", refresh=False)
            self.bar.refresh()

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
        if self.enabled:
            self.bar.close()


def backfill(settings: Settings, instance: dg.DagsterInstance, job_name: str, start: str, end: str,
             per_partition: bool = False, defs: dg.Definitions | None = None, echo=None,
             progress: bool = False) -> RunReport:
    """Materialize a partitioned job over ``start``..``end``: one single-run range (every asset
    processes the range in one pass), or one run per day with ``per_partition`` (stops at the
    first failed day)."""
    from pql_pipeline.definitions import build_definitions

    defs = defs or build_definitions(settings)
    try:
        job = defs.resolve_job_def(job_name)
    except Exception:
        jobs = sorted(j.name for j in defs.resolve_all_job_defs()
                      if j.partitions_def is not None and not j.name.startswith("__"))
        raise PipelineRunError(f"there is no job {job_name!r}; pass --job with one of: {', '.join(jobs)}") from None
    partitions = job.partitions_def
    if partitions is None:
        raise PipelineRunError(f"{job_name} is not partitioned: run it without a range (e.g. in the UI)")
    if end < start:
        raise PipelineRunError(f"--end {end} is before --start {start}; swap them")
    keys = partitions.get_partition_keys()
    days = [k for k in keys if start <= k <= end]
    if not days:
        first, last = (keys[0], keys[-1]) if keys else ("-", "-")
        raise PipelineRunError(f"no partition between {start} and {end}: partitions run from {first} to {last} "
                               "(partitions.start_date; the newest is yesterday, UTC)")
    report = RunReport(partitions=days)
    batches = [[d] for d in days] if per_partition else [days]
    with timed(report):
        for i, batch in enumerate(batches, start=1):
            ok = execute(defs, job_name, range_tags(batch), instance, report, progress=progress, echo=echo or _stderr)
            if echo is not None and per_partition:
                echo(f"[{i}/{len(batches)}] {batch[0]}: {'ok' if ok else 'FAILED'}")
            if not ok:
                break
    return report


def warehouse_summary(settings: Settings) -> dict[str, int]:
    wh = Warehouse(database=str(settings.warehouse_path))
    out = {}
    with wh.get_connection() as conn:
        for t in ("raw_events", "validated_events", "duplicate_events", "quarantined_events", "users", "accounts"):
            out[t] = conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] if table_exists(conn, t) else 0
        if table_exists(conn, "quarantined_events"):
            out["by_rule"] = conn.execute(
                "SELECT rule_id, count(*) FROM quarantined_events GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
        if table_exists(conn, "user_features"):
            out["features"] = conn.execute("""
                SELECT count(DISTINCT snapshot_date), CAST(max(snapshot_date) AS VARCHAR),
                       count(*) FILTER (WHERE snapshot_date = (SELECT max(snapshot_date) FROM user_features))
                FROM user_features""").fetchall()[0]
        if table_exists(conn, "account_features"):
            out["account_rows_latest"] = conn.execute("""
                SELECT count(*) FROM account_features
                WHERE snapshot_date = (SELECT max(snapshot_date) FROM account_features)""").fetchall()[0][0]
        if table_exists(conn, "training_set"):
            out["training"] = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE label), count(DISTINCT snapshot_date) FROM training_set"
            ).fetchall()[0]
        if table_exists(conn, "activation_milestones"):
            out["milestones"] = conn.execute("""
                SELECT direction, rank, candidate, min_count, within_days, lift, rate_with, rate_without
                FROM activation_milestones WHERE is_best_variant AND rank <= 3
                ORDER BY direction DESC, rank""").fetchall()
        if table_exists(conn, "pql_scores"):
            out["scores"] = conn.execute("""
                SELECT CAST(snapshot_date AS VARCHAR), count(*), count(*) FILTER (WHERE is_pql),
                       count(*) FILTER (WHERE route = 'sales'), count(*) FILTER (WHERE route = 'in_app')
                FROM pql_scores WHERE snapshot_date = (SELECT max(snapshot_date) FROM pql_scores) GROUP BY 1
            """).fetchall()
            out["top_leads"] = conn.execute("""
                SELECT user_id, probability, tier, route, reason_text FROM pql_scores
                WHERE snapshot_date = (SELECT max(snapshot_date) FROM pql_scores)
                ORDER BY probability DESC, user_id LIMIT 3""").fetchall()
        if table_exists(conn, "pql_account_scores"):
            out["account_scores"] = conn.execute("""
                SELECT count(*), count(*) FILTER (WHERE is_pql), count(*) FILTER (WHERE route = 'sales')
                FROM pql_account_scores WHERE snapshot_date = (SELECT max(snapshot_date) FROM pql_account_scores)
            """).fetchall()[0]
            out["top_accounts"] = conn.execute("""
                SELECT account_id, probability, tier, segment, route, reason_text FROM pql_account_scores
                WHERE snapshot_date = (SELECT max(snapshot_date) FROM pql_account_scores)
                ORDER BY probability DESC, account_id LIMIT 3""").fetchall()
        if table_exists(conn, "sync_runs"):
            out["sync"] = conn.execute("""
                SELECT destination || ' ' || object_type, dry_run, considered, sent, created, updated, unchanged,
                       rejected, failed, calls
                FROM sync_runs WHERE run_id IN (
                    SELECT arg_max(run_id, finished_at) FROM sync_runs GROUP BY destination)
                ORDER BY 1""").fetchall()
        if table_exists(conn, "drift_history"):
            out["drift"] = conn.execute("""
                SELECT CAST(report_day AS VARCHAR), part, count(*) FILTER (WHERE verdict = 'alert'),
                       count(*) FILTER (WHERE verdict = 'warn'), count(*) FILTER (WHERE verdict = 'ok'),
                       count(*) FILTER (WHERE verdict = 'insufficient_data')
                FROM drift_history WHERE report_day = (SELECT max(report_day) FROM drift_history)
                GROUP BY ALL ORDER BY part""").fetchall()
            out["drift_alerts"] = conn.execute("""
                SELECT part, item, reference, note FROM drift_history
                WHERE report_day = (SELECT max(report_day) FROM drift_history) AND verdict = 'alert'
                ORDER BY part, item, reference LIMIT 5""").fetchall()
        if table_exists(conn, "pql_performance"):
            from pql_pipeline.defs.model.performance import summary

            out["backtest"] = summary(conn.execute("SELECT * FROM pql_performance").df())
        if table_exists(conn, "model_registry"):
            out["models"] = conn.execute("""
                SELECT version, status, algorithm, roc_auc, reason FROM model_registry
                ORDER BY trained_at DESC LIMIT 3""").fetchall()
    return out


def format_summary(settings: Settings, report: RunReport) -> str:
    s = warehouse_summary(settings)
    raw = s["raw_events"]
    lines = [
        f"partitions      {report.partitions[0]} .. {report.partitions[-1]} ({len(report.partitions)} days)"
        if report.partitions else "partitions      none",
        *[f"{'computed' if i == 0 else '':<16}{p.job}: {p.describe()}" for i, p in enumerate(report.plans)],
        f"rows ingested   {raw:,}",
        f"validated       {s['validated_events']:,}",
        f"duplicates      {s['duplicate_events']:,}",
        f"quarantined     {s['quarantined_events']:,} ({(s['quarantined_events'] / raw if raw else 0):.2%})",
        "reconciles      "
        f"{'yes' if raw == s['validated_events'] + s['duplicate_events'] + s['quarantined_events'] else 'NO'}",
        f"users           {s['users']:,}",
        f"accounts        {s['accounts']:,}",
    ]
    if s.get("by_rule"):
        lines.append("quarantined by rule:")
        lines += [f"  {rule:<28} {n:,}" for rule, n in s["by_rule"]]
    if s.get("features"):
        n_snap, latest, n_users = s["features"]
        lines.append(f"features        {n_snap} snapshot days; on {latest}: {n_users:,} active users, "
                     f"{s.get('account_rows_latest', 0):,} accounts")
    if s.get("training"):
        rows, pos, snaps = s["training"]
        lines.append(f"training set    {rows:,} rows over {snaps} snapshots, {pos:,} converted "
                     f"({(pos / rows if rows else 0):.1%})")
    if s.get("milestones"):
        lines.append("milestones (did N times within D days of signup -> conversion rate with / without):")
        for direction, rank, cand, n, d, lift, rw, rwo in s["milestones"]:
            lines.append(f"  {direction[:3]} {rank}  {cand} >= {n} in {d} d: {rw:.1%} vs {rwo:.1%} ({lift:.1f}x)")
        from pql_pipeline.defs.features.assets import proposed_rule_path
        lines.append(f"proposed rule   {proposed_rule_path(settings)}")
    if s.get("models"):
        lines.append("models (newest first):")
        for version, status, algo, auc, reason in s["models"]:
            shown = "-" if auc is None else f"{auc:.3f}"
            lines.append(f"  {version}  {status:<9} {algo} ROC AUC {shown}: {reason}")
    if s.get("backtest"):
        lines.append("backtest        out of sample: conversion of PQLs vs the rest (lift), share of conversions caught")
        for b in sorted(s["backtest"], key=lambda b: b["definition"] != "model"):
            def pct(v, fmt=".1%"):
                return "-" if v is None else format(v, fmt)
            lift = "-" if b["lift"] is None else f"{b['lift']:.1f}x"
            lines.append(f"  {b['definition']:<14} {pct(b['conversion_pql'])} vs {pct(b['conversion_other'])} "
                         f"({lift}), recall {pct(b['recall'], '.0%')}, PQL rate {pct(b['pql_rate'])}")
    for day, n, pqls, sales, nudges in s.get("scores", []):
        lines.append(f"scores          {day}: {n:,} free users scored, {pqls:,} PQLs; {sales:,} to sales, "
                     f"{nudges:,} in-app nudges")
        for user, p, tier, rt, why in s.get("top_leads", []):
            lines.append(f"  {user}  {p:.2f} {tier:<5} -> {rt:<6} {why or ''}")
    if s.get("account_scores"):
        n, pqls, sales = s["account_scores"]
        lines.append(f"accounts scored {n:,}, {pqls:,} PQL accounts, {sales:,} to sales")
        for account, p, tier, segment, rt, why in s.get("top_accounts", []):
            lines.append(f"  {account}  {p:.2f} {tier:<5} {segment:<10} -> {rt:<6} {why or ''}")
    if s.get("drift"):
        lines.append(f"drift report    {s['drift'][0][0]}: " + "; ".join(
            f"{part} {alert} alert, {warn} warn, {ok} ok, {few} too few rows"
            for _, part, alert, warn, ok, few in s["drift"]))
        for part, item, reference, note in s.get("drift_alerts", []):
            lines.append(f"  alert  {part}: {item} vs {reference}" + (f" ({note})" if note else ""))
    for obj, dry, considered, sent, created, updated, unchanged, rejected, failed, calls in s.get("sync", []):
        how = "dry run, requests in sync_outbox" if dry else f"{calls} calls"
        lines.append(f"sync            {obj}: {considered:,} considered, {sent:,} sent ({created:,} created, "
                     f"{updated:,} updated), {unchanged:,} unchanged, {rejected:,} rejected, {failed:,} failed; {how}")
    lines.append("checks:")
    width = max((len(f"{c['asset']}.{c['check']}") for c in report.checks), default=10)
    for c in sorted(report.checks, key=lambda c: (c["asset"], c["check"])):
        if c["passed"]:
            verdict = "pass"
        elif c["severity"] == "ERROR" and c.get("blocking", True):
            verdict = "FAIL (blocks downstream)"
        else:
            verdict = ("FAIL" if c["severity"] == "ERROR" else "warn") + " (does not block; see its metadata in the UI)"
        lines.append(f"  {c['asset'] + '.' + c['check']:<{width}}  {verdict}")
    lines.append(f"warehouse       {settings.warehouse_path}")
    from pql_pipeline.defs.monitoring.pql_report import report_path

    report_file = report_path(settings)
    lines.append(f"PQL report      {report_file} (open it in a browser)" if report_file.exists() else
                 "PQL report      not written (nothing was scored)")
    if report.seconds:
        lines.append(f"time            {report.seconds:.1f} s wall, {report.cpu_seconds:.1f} CPU-s "
                     f"({len(report.run_ids)} run(s))")
    lines.append("result          " + ("success" if report.succeeded else
                                       "FAILED at " + ", ".join(sorted(set(report.failed_steps)))))
    return "\n".join(lines)
