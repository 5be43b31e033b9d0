"""Nothing changed, nothing recomputed (``run_plan``): the planner's decisions, then real
runs through ``materialize_all`` on a real instance and warehouse: a repeat computes
nothing, new days compute from the first new day and give the tables of a run over every
day, a changed signal recomputes what it defines and not the ingest, a run from elsewhere
(the UI, a schedule) makes its assets count as changed, ``full`` recomputes everything."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import pytest
import yaml

from pql_pipeline import run_plan as rp
from pql_pipeline.definitions import INGEST_JOB, PIPELINE_JOB, SCORING_JOB, build_definitions
from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events
from pql_pipeline.lib.warehouse import Warehouse
from pql_pipeline.runner import materialize_all
from pql_pipeline.settings import PROJECT_ROOT, load_settings

DAYS = [f"2026-03-{d:02d}" for d in range(2, 9)]
INPUTS = {d: f"files-{d}" for d in DAYS}
ASSETS = {"raw_events", "validated_events", "user_features"}


def state(days=INPUTS, definitions=None, model=None) -> rp.JobState:
    return rp.JobState(definitions=dict(definitions or {}), days=dict(days), model=model)


# --- the planner ------------------------------------------------------------------------------

def test_first_run_and_nothing_changed():
    assert rp.plan_pipeline("p", DAYS, INPUTS, rp.JobState(), set(), ASSETS).days == DAYS
    plan = rp.plan_pipeline("p", DAYS, INPUTS, state(), set(), ASSETS)
    assert plan.skip and plan.describe() == "skipped: nothing changed"
    assert rp.plan_pipeline("p", [], {}, state(), set(), ASSETS).skip


def test_new_or_changed_days_run_from_the_first_of_them_with_every_asset():
    inputs = {**INPUTS, "2026-03-05": "edited", "2026-03-08": "new"}
    plan = rp.plan_pipeline("p", DAYS, inputs, state({d: INPUTS[d] for d in DAYS[:-1]}), set(), ASSETS)
    assert plan.days == DAYS[3:] and plan.assets is None
    assert "2 day(s)" in plan.reason and "from 2026-03-05" in plan.reason


def test_a_changed_definition_runs_every_day_for_its_assets_only():
    plan = rp.plan_pipeline("p", DAYS, INPUTS, state(), {"user_features"}, ASSETS)
    assert plan.days == DAYS and plan.assets == ["user_features"]
    # both at once: everything, every day
    plan = rp.plan_pipeline("p", DAYS, {**INPUTS, DAYS[-1]: "x"}, state(), {"user_features"}, ASSETS)
    assert plan.days == DAYS and plan.assets is None
    # every asset changed: the whole job, no selection
    assert rp.plan_pipeline("p", DAYS, INPUTS, state(), set(ASSETS), ASSETS).assets is None


def test_changed_assets_follow_definitions_foreign_runs_downstream_and_siblings():
    current = {"raw": "r1", "validated": "v1", "quarantined": "v1", "features": "f2", "labels": "l1"}
    st = rp.JobState(definitions={"raw": "r1", "validated": "v1", "quarantined": "v1", "features": "f1",
                                  "labels": "l1"},
                     runs={a: "run-1" for a in current})
    downstream = {"raw": {"validated", "quarantined"}, "validated": {"features"}, "features": {"labels"}}
    siblings = {"validated": {"validated", "quarantined"}, "quarantined": {"validated", "quarantined"}}
    ours = {a: "run-1" for a in current}
    assert rp.changed_assets(st, current, ours, downstream, siblings) == {"features", "labels"}
    # a run from elsewhere wrote 'quarantined': its step's other table and everything downstream
    assert rp.changed_assets(st, {**current, "features": "f1"}, {**ours, "quarantined": "ui-run"}, downstream,
                             siblings) == {"validated", "quarantined", "features", "labels"}
    assert rp.changed_assets(st, {**current, "features": "f1"}, ours, downstream, siblings) == set()


def test_scoring_follows_the_model_the_features_and_the_outputs_retries():
    scored = state({d: "" for d in DAYS}, model="m1")
    every = {"pql_scores", "crm_sync", "in_app_nudges"}
    assert rp.plan_scoring("s", DAYS, scored, set(), every, "m1", None, False).skip
    assert rp.plan_scoring("s", DAYS, scored, set(), every, "m2", None, False).days == DAYS
    plan = rp.plan_scoring("s", DAYS, scored, set(), every, "m1", "2026-03-07", False)
    assert plan.days == DAYS[5:] and plan.assets is None
    new_day = rp.plan_scoring("s", DAYS + ["2026-03-09"], scored, set(), every, "m1", None, False)
    assert new_day.days == ["2026-03-09"]
    plan = rp.plan_scoring("s", DAYS, scored, {"pql_scores"}, every, "m1", None, False)
    assert plan.days == DAYS and plan.assets == ["pql_scores"]
    retry = rp.plan_scoring("s", DAYS, scored, set(), every, "m1", None, True)
    assert retry.days == DAYS[-1:] and retry.assets == ["crm_sync", "in_app_nudges"]


def test_what_a_run_did_not_materialize_is_computed_next_time(tmp_path):
    """The state in a real warehouse file: a failed step (or one a blocking check stopped)
    counts as changed; a run over a part of the days keeps the definitions recorded before."""
    wh = Warehouse(database=str(tmp_path / "wh.duckdb"))
    current = {"raw_events": "r1", "validated_events": "v1", "user_features": "f1"}
    plan = rp.Plan("p", DAYS)
    rp.record_state(wh, "p", "run-1", plan, current, INPUTS, done={"raw_events", "validated_events"})
    st = rp.read_state(wh, "p")
    assert st.days == INPUTS and st.definitions == {**current, "user_features": ""}
    runs = {a: "run-1" for a in current}
    downstream = {"raw_events": {"validated_events"}, "validated_events": {"user_features"}}
    assert rp.changed_assets(st, current, runs, downstream) == {"user_features"}
    # the next run completes it; then a part of the days with a changed definition
    rp.record_state(wh, "p", "run-2", rp.Plan("p", DAYS, ["user_features"]), current, INPUTS)
    assert rp.changed_assets(rp.read_state(wh, "p"), current, {**runs, "user_features": "run-2"}, downstream) == set()
    part = rp.Plan("p", DAYS[-2:], ["user_features"], complete=False, previous=rp.read_state(wh, "p").definitions)
    rp.record_state(wh, "p", "run-3", part, {**current, "user_features": "f2"}, INPUTS)
    st = rp.read_state(wh, "p")
    assert st.definitions["user_features"] == "f1" and st.runs["user_features"] == "run-3"
    assert rp.changed_assets(st, {**current, "user_features": "f2"}, {**runs, "user_features": "run-3"},
                             downstream) == {"user_features"}


def test_setting_a_token_after_a_dry_run_makes_the_outputs_run_again(monkeypatch):
    """Only whether a secret is set counts (never its value), and only for its output."""
    for name in ("HUBSPOT_ACCESS_TOKEN", "INTERCOM_ACCESS_TOKEN", "PQL_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    defs = build_definitions(load_settings())
    keys = sorted(defs.resolve_job_def(SCORING_JOB).asset_layer.selected_asset_keys)
    dry = rp.definitions(defs, keys, rp.output_modes())
    monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", "pat-1")
    live = rp.definitions(defs, keys, rp.output_modes())
    assert {a for a in dry if dry[a] != live[a]} == {"crm_sync"}
    monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", "pat-2")      # another token: the same mode
    assert rp.definitions(defs, keys, rp.output_modes()) == live
    assert "pat" not in json.dumps(rp.output_modes())


# --- real runs --------------------------------------------------------------------------------

PIPELINE_TABLES = ("raw_events", "validated_events", "quarantined_events", "duplicate_events", "users", "accounts",
                   "user_features", "account_features", "conversion_labels", "training_set", "account_training_set")


def tables(settings) -> dict:
    with Warehouse(database=str(settings.warehouse_path)).get_connection() as c:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in PIPELINE_TABLES}


def latest_run(instance, asset: str) -> str | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.run_id if event else None


@pytest.mark.slow
def test_runs_compute_what_changed_and_nothing_else(tmp_path, monkeypatch):
    events = tmp_path / "events"
    generate_events(GeneratorConfig(n_accounts=12, days=9, start_date=dt.date(2026, 3, 2), seed=5,
                                    dirty_fraction=0.01), events)
    held = tmp_path / "held"
    held.mkdir()
    for d in ("dt=2026-03-09", "dt=2026-03-10"):          # two days land later
        shutil.move(str(events / d), str(held / d))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PQL_EVENTS_DIR", str(events))
    monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "wh" / "pql.duckdb"))
    settings = load_settings()
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        def run(s=settings, d=defs, **kw):
            report = materialize_all(s, instance, defs=d, **kw)
            # on a history this small the drift report's blocking check may stop the outputs; the
            # events-to-features job and the model always succeed
            assert set(report.failed_steps) <= {"drift_report"}, report.failed_steps
            return {p.job: p for p in report.plans}, report

        plans, _ = run()
        assert plans[PIPELINE_JOB].reason == "first run" and len(plans[PIPELINE_JOB].days) == 7
        first = tables(settings)
        raw_run = latest_run(instance, "raw_events")

        # 1. nothing changed: nothing runs but the model job (which skips its own training)
        plans, report = run()
        assert plans[PIPELINE_JOB].skip and plans[SCORING_JOB].skip
        assert len(report.run_ids) == 1 and tables(settings) == first
        assert latest_run(instance, "raw_events") == raw_run

        # 2. two new days: computed from the first of them, equal to one run over every day
        for d in ("dt=2026-03-09", "dt=2026-03-10"):
            shutil.move(str(held / d), str(events / d))
        plans, _ = run()
        assert plans[PIPELINE_JOB].days == ["2026-03-09", "2026-03-10"] and plans[PIPELINE_JOB].assets is None
        assert plans[SCORING_JOB].days[0] == "2026-03-09"
        incremental = tables(settings)
        # the same history computed in one go, in another warehouse and instance
        monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "wh_full" / "pql.duckdb"))
        full = load_settings()
        with dg.instance_for_test() as other:
            assert set(materialize_all(full, other, defs=build_definitions(full)).failed_steps) <= {"drift_report"}
        for t in PIPELINE_TABLES:
            assert incremental[t] == tables(full)[t], t

        # 3. one signal changes: the features and what reads them, every day; the ingest is untouched
        raw_run = latest_run(instance, "raw_events")
        signals = yaml.safe_load(settings.signals_path.read_text())
        signals["signals"][0]["window_days"] = 21
        (tmp_path / "signals.yaml").write_text(yaml.safe_dump(signals, sort_keys=False))
        changed = settings.model_copy(update={"features": settings.features.model_copy(
            update={"signals": str(tmp_path / "signals.yaml")})})
        plans, _ = run(changed, build_definitions(changed))
        selected = set(plans[PIPELINE_JOB].assets)
        assert {"user_features", "account_features", "training_set"} <= selected
        assert not selected & {"raw_events", "validated_events", "quarantined_events", "users", "accounts"}
        assert len(plans[PIPELINE_JOB].days) == 9
        assert latest_run(instance, "raw_events") == raw_run
        assert plans[SCORING_JOB].days                     # scores read the features: recomputed

        # 4. a run from elsewhere (the UI, a schedule) rewrote a day of the ingest: the ingest and
        #    everything downstream count as changed
        ui = defs.resolve_job_def(INGEST_JOB).execute_in_process(
            instance=instance, tags={"dagster/partition": "2026-03-05"}, raise_on_error=False)
        assert ui.success
        plans, _ = run(changed, build_definitions(changed))
        assert plans[PIPELINE_JOB].assets is None or "raw_events" in plans[PIPELINE_JOB].assets
        assert len(plans[PIPELINE_JOB].days) == 9

        # 5. full (`--full`): the state is forgotten, so the next run computes everything
        wh = Warehouse(database=str(settings.warehouse_path))
        assert rp.read_state(wh, PIPELINE_JOB).days
        rp.forget_state(wh)
        assert rp.read_state(wh, PIPELINE_JOB) == rp.JobState()
        assert rp.plan_pipeline(PIPELINE_JOB, DAYS, INPUTS, rp.read_state(wh, PIPELINE_JOB), set(),
                                ASSETS).reason == "first run"
