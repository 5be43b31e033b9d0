"""What a CLI run (``pql materialize``, ``make run``) must recompute, and what it may skip.

A run's cost must follow what changed, not the history. Before each job the runner compares
what defines the job's tables with what they were last computed from:

- each asset's **definition**: its code version (logic version, the configuration keys and
  contracts that define its rows; ``lib/versions.py``), a digest of the package's source
  (an edit that forgot to bump a logic version still counts) and, transitively, the
  definitions of the assets it reads;
- each day's **input files**: name, size and modification time of the day's event files;
- for the scores, the **model** that scores them (the champion, or the pinned version);
- for the outputs, whether their secrets are set: setting ``HUBSPOT_ACCESS_TOKEN`` after a
  dry run sends the newest day for real on the next run;
- whether another run (the UI, a schedule, a backfill) materialized an asset since: its
  tables may hold what that run wrote, so the asset counts as changed.

The plan (pure: ``plan_pipeline`` and ``plan_scoring``) then runs

- nothing, when nothing changed;
- the changed or new days and every later day (features are cumulative; labels refresh
  the earlier snapshots a new day completes, as the daily run does), all assets;
- every day, for exactly the assets whose definition changed and those that read them
  (a changed signal recomputes the features, labels, training sets and scores, not the
  ingest).

The state is the ``pipeline_state`` table in the warehouse, written after each job that
succeeded; a deleted or replaced warehouse has none, so everything is computed. The
model job always runs: it skips its training itself when its training set is unchanged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import dagster as dg

from pql_pipeline.defs.ingest.loader import partition_files
from pql_pipeline.lib.warehouse import Warehouse, table_exists, transaction

STATE_TABLE = "pipeline_state"
PACKAGE = Path(__file__).resolve().parent
# the outputs and the secrets that make them send for real instead of to the dry-run outbox
ACTIVATION_ASSETS = {"crm_sync": ("HUBSPOT_ACCESS_TOKEN",),
                     "in_app_nudges": ("INTERCOM_ACCESS_TOKEN", "PQL_WEBHOOK_SECRET")}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def source_digest() -> str:
    """The package's own files (code, templates, packaged defaults)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".html", ".j2", ".yaml", ".yml", ".json", ".sql"} \
                and "__pycache__" not in path.parts:
            h.update(path.relative_to(PACKAGE).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def files_digest(root: Path, pattern: str, day: str) -> str:
    """A day's input files as the loader sees them: names, sizes, modification times."""
    return _digest([(f.relative, f.size, f.path.stat().st_mtime_ns) for f in partition_files(root, pattern, day)])


def output_modes() -> dict[str, str]:
    """Per output asset, whether its secrets are set (a dry run becomes a real send, or the
    reverse: the outputs run again). Only whether each is set; never a value."""
    return {a: _digest({n: bool((os.environ.get(n) or "").strip()) for n in names})
            for a, names in ACTIVATION_ASSETS.items()}


def definitions(defs: dg.Definitions, keys: Iterable[dg.AssetKey], modes: dict[str, str] | None = None) -> dict[str, str]:
    """Each asset's definition digest: its code version, the package source, how it runs
    (``modes``, e.g. an output's dry run) and the definitions of everything upstream of it."""
    graph = defs.resolve_asset_graph()
    memo: dict[dg.AssetKey, str] = {}

    def of(key: dg.AssetKey) -> str:
        if key not in memo:
            node = graph.get(key)
            name = key.to_user_string()
            memo[key] = _digest([name, node.code_version, source_digest(), (modes or {}).get(name),
                                 sorted(of(p) for p in node.parent_keys if graph.has(p))])
        return memo[key]

    return {k.to_user_string(): of(k) for k in keys}


@dataclass
class JobState:
    """What a job's tables were last computed from (read from ``pipeline_state``)."""
    definitions: dict[str, str] = field(default_factory=dict)   # asset -> definition digest
    runs: dict[str, str] = field(default_factory=dict)          # asset -> run that last materialized it
    days: dict[str, str] = field(default_factory=dict)          # day -> input digest
    model: str | None = None                                    # scoring: the model version used


@dataclass
class Plan:
    """One job's work: ``days`` (empty: skip) over ``assets`` (None: all of the job's)."""
    job: str
    days: list[str]
    assets: list[str] | None = None
    reason: str = ""
    current: dict[str, str] = field(default_factory=dict)   # the job's asset definitions now
    # whether the days cover every day computed before: only then do the assets' definitions
    # (and the model) hold for all their rows (``pql materialize --start/--end`` runs a part)
    complete: bool = True
    previous: dict[str, str] = field(default_factory=dict)  # the definitions recorded before

    @property
    def skip(self) -> bool:
        return not self.days

    def describe(self) -> str:
        if self.skip:
            return f"skipped: {self.reason}"
        what = "all assets" if self.assets is None else ", ".join(self.assets)
        span = self.days[0] if len(self.days) == 1 else f"{self.days[0]} .. {self.days[-1]} ({len(self.days)} days)"
        return f"{span}, {what} ({self.reason})"


def changed_assets(state: JobState, current: dict[str, str], latest_runs: dict[str, str | None],
                   downstream: dict[str, set[str]], siblings: dict[str, set[str]] | None = None) -> set[str]:
    """Assets whose definition changed, or that a run other than the recorded one
    materialized, with everything downstream of them in the job, and the other outputs of
    the steps that write them (a multi-asset step writes all of its tables)."""
    out = {a for a, d in current.items()
           if state.definitions.get(a) != d or latest_runs.get(a) != state.runs.get(a)}
    todo = list(out)
    while todo:
        a = todo.pop()
        for other in (*downstream.get(a, ()), *(siblings or {}).get(a, ())):
            if other in current and other not in out:
                out.add(other)
                todo.append(other)
    return out


def plan_pipeline(job: str, days: list[str], inputs: dict[str, str], state: JobState, changed: set[str],
                  all_assets: set[str]) -> Plan:
    """The events-to-training-sets job: changed days onwards, or changed assets over every day."""
    if not days:
        return Plan(job, [], reason="no event files")
    if not state.days and not state.definitions:
        return Plan(job, days, reason="first run")
    new = [d for d in days if state.days.get(d) != inputs[d]]
    if new and changed:
        return Plan(job, days, reason=f"{len(new)} day(s) with new or changed files and {len(changed)} changed asset(s)")
    if new:
        start = new[0]
        return Plan(job, [d for d in days if d >= start],
                    reason=f"{len(new)} day(s) with new or changed files, from {start}")
    if changed:
        return Plan(job, days, sorted(changed) if changed != all_assets else None,
                    reason=f"changed: {', '.join(sorted(changed))}")
    return Plan(job, [], reason="nothing changed")


def plan_scoring(job: str, days: list[str], state: JobState, changed: set[str], all_assets: set[str],
                 model: str | None, recomputed_from: str | None, retry_outputs: bool) -> Plan:
    """Scores, monitoring and outputs: the days whose features were recomputed or never
    scored, every day for a new model or changed assets, else only the outputs' retries."""
    if not days:
        return Plan(job, [], reason="no event files")
    if model != state.model:
        return Plan(job, days, reason="first run" if state.model is None and not state.days else "a new scoring model")
    unscored = [d for d in days if d not in state.days]
    starts = [d for d in (recomputed_from, unscored[0] if unscored else None) if d]
    if starts and changed:
        return Plan(job, days, reason=f"new features and {len(changed)} changed asset(s)")
    if starts:
        start = min(starts)
        return Plan(job, [d for d in days if d >= start], reason=f"features recomputed or unscored from {start}")
    if changed:
        return Plan(job, days, sorted(changed) if changed != all_assets else None,
                    reason=f"changed: {', '.join(sorted(changed))}")
    if retry_outputs:
        return Plan(job, days[-1:], sorted(a for a in ACTIVATION_ASSETS if a in all_assets),
                    reason="outputs left records to retry")
    return Plan(job, [], reason="nothing changed")


# --- state in the warehouse -------------------------------------------------------------------

def read_state(warehouse: Warehouse, job: str) -> JobState:
    state = JobState()
    with warehouse.get_connection() as conn:
        if not table_exists(conn, STATE_TABLE):
            return state
        for kind, key, value, run_id in conn.execute(
                f"SELECT kind, key, value, run_id FROM {STATE_TABLE} WHERE job = ?", [job]).fetchall():
            if kind == "asset":
                state.definitions[key], state.runs[key] = value, run_id
            elif kind == "day":
                state.days[key] = value
            elif kind == "model":
                state.model = value
    return state


def record_state(warehouse: Warehouse, job: str, run_id: str, plan: Plan, current: dict[str, str],
                 inputs: dict[str, str], model: str | None = None, done: set[str] | None = None) -> None:
    """After a run of ``plan``: the assets it materialized (``done``, default all) are up to
    date over its days; the others (a failed step, a blocking check that stopped them) are
    recorded as not computed, so the next run computes them and what reads them."""
    assets = plan.assets if plan.assets is not None else list(current)
    done = set(assets) if done is None else done
    now = dt.datetime.now(dt.timezone.utc)
    # this run is the assets' latest; after a part of the days, they keep the definitions recorded
    # before, so the next run over every day computes the other days with a changed one
    rows = [(job, "asset", a, (current[a] if plan.complete else plan.previous.get(a, "")) if a in done else "",
             run_id, now) for a in assets]
    if plan.assets is None or not inputs:
        rows += [(job, "day", d, inputs.get(d, ""), run_id, now) for d in plan.days]
    if model is not None and plan.assets is None and plan.complete:
        rows.append((job, "model", "", model, run_id, now))
    with warehouse.get_connection() as conn:
        conn.execute(f"""CREATE TABLE IF NOT EXISTS {STATE_TABLE} (job VARCHAR, kind VARCHAR, key VARCHAR,
                         value VARCHAR, run_id VARCHAR, recorded_at TIMESTAMPTZ)""")
        with transaction(conn):
            conn.executemany(f"DELETE FROM {STATE_TABLE} WHERE job = ? AND kind = ? AND key = ?",
                             [r[:3] for r in rows])
            conn.executemany(f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?, ?)", rows)


def forget_state(warehouse: Warehouse) -> None:
    """Everything is computed again on the next run (``--full``)."""
    with warehouse.get_connection() as conn:
        if table_exists(conn, STATE_TABLE):
            conn.execute(f"DELETE FROM {STATE_TABLE}")


def latest_runs(instance: dg.DagsterInstance, assets: Iterable[str]) -> dict[str, str | None]:
    """The run that last materialized each asset (any partition)."""
    out = {}
    for a in assets:
        event = instance.get_latest_materialization_event(dg.AssetKey(a))
        out[a] = event.run_id if event else None
    return out
