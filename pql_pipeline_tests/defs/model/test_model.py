"""The conversion model trained on generated data through real materializations: the time
split, the comparison with the rule baselines and the generator's oracle, the registry's
champion/challenger decision, rollback by pinning a version, and the gates."""

import base64
import csv
import datetime as dt
import io
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from markupsafe import escape as html_escape
from sklearn.metrics import roc_auc_score

from pql_pipeline.definitions import MODEL_JOB, SCORING_JOB, build_definitions
from pql_pipeline.defs.model import registry as R
from pql_pipeline.defs.model.assets import model_spec, train_and_register
from pql_pipeline.defs.model.training import feature_columns, load_frame, time_split
from pql_pipeline.defs.monitoring.pql_report import report_path
from pql_pipeline.defs.scoring.batch import score_days, training_reference
from pql_pipeline.lib.charts import decode_md_images
from pql_pipeline.lib.warehouse import Warehouse
from pql_pipeline_tests.defs.activation import spec
from pql_pipeline_tests.pipeline import generated_pipeline, materialized


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """5,000 accounts over 120 days (enough users for the model to come within 0.02 of the
    generator's oracle), the whole graph, then the model job."""
    root = tmp_path_factory.mktemp("model")
    p, run, _, mp = generated_pipeline(root, n_accounts=5000)
    assert run.success
    result = p.defs.resolve_job_def(MODEL_JOB).execute_in_process(instance=p.instance, raise_on_error=False)
    yield p, result, root
    mp.undo()


def quick(settings, algorithm: str = "logistic_regression", **model):
    """``settings`` whose model job trains one algorithm (logistic regression: seconds, not
    minutes), without choosing between candidates: for the tests of what happens around a
    training, not of the model chosen."""
    return settings.model_copy(update={"model": settings.model.model_copy(
        update={"candidates": [algorithm], **model})})


def registry_rows(p):
    with Warehouse(database=str(p.settings.warehouse_path)).get_connection() as c:
        return R.rows(c)


@pytest.mark.slow
def test_the_model_trains_passes_its_gates_and_beats_the_rules(trained):
    p, result, root = trained
    assert result.success
    assert "conversion_model" in materialized(result)
    checks = p.checks(result)
    assert {k: v.passed for k, v in checks.items()} == {
        **{f"conversion_model:{g}": True for g in ("auc_floor", "beats_rules", "calibration", "no_dominant_feature")},
        "pql_performance:pql_lift": True}
    [row] = registry_rows(p)
    assert row["status"] == "champion" and row["reason"] == "first model that passes every gate"
    assert row["contract_version"] == "urn:pql-pipeline:contract:training-set@1.0.0"
    m = row["metrics"]
    # the time split: training snapshots end an embargo (the label horizon) before the holdout
    assert (row["holdout_start"] - row["train_end"]).days >= p.settings.labels.horizon_days
    assert m["roc_auc"] >= 0.70
    assert m["roc_auc"] >= max(b["roc_auc"] for b in row["baselines"].values()) + 0.10
    assert set(row["baselines"]) == {"classic_rule", "proposed_rule"}
    # the algorithm was chosen by cross-validation inside the training part, not on the holdout
    sel = {name: c["selection_roc_auc"] for name, c in row["candidates"].items()}
    assert set(sel) == {"gradient_boosting", "logistic_regression"} and all(0.5 < v < 1 for v in sel.values())
    assert row["algorithm"] == max(sel, key=sel.get)
    # only the chosen candidate is calibrated; the other reports its ranking beside it
    [other] = [c for name, c in row["candidates"].items() if name != row["algorithm"]]
    assert other["calibrated"] is False and 0.5 < other["roc_auc"] < 1 and "brier" not in other
    assert "brier" in row["candidates"][row["algorithm"]]
    # accounts scored from their users rank the holdout's account labels well
    acc = m["accounts"]
    assert acc["roc_auc"] >= 0.85 and acc["rows"] > 1000 and acc["accounts_without_scored_users"] < acc["rows"] / 20
    assert sum(d["rows"] for d in m["deciles"]) == row["holdout_rows"]
    assert m["deciles"][0]["conversion_rate"] > m["deciles"][-1]["conversion_rate"]
    # the planted behaviour is what the model leans on
    top = [f for f, _ in row["importance"][:5]]
    assert "teammates_invited" in top, top
    # the artifact is where the registry says, with the recorded checksum
    assert R.load_artifact(row) is not None


@pytest.mark.slow
def test_the_backtest_compares_the_model_and_the_rules_out_of_sample(trained):
    p, _, _ = trained
    [row] = registry_rows(p)
    perf = p.query("""SELECT definition, in_sample, sum(users), sum(pqls), sum(conversions), sum(pql_conversions)
                      FROM pql_performance GROUP BY 1, 2 ORDER BY 1, 2""")
    assert {r[0] for r in perf} == {"model", "classic_rule", "proposed_rule"}
    snaps = p.query("SELECT count(DISTINCT snapshot_date), min(snapshot_date) FILTER (WHERE NOT in_sample) "
                    "FROM pql_performance")[0]
    assert snaps[1] > row["train_end"]
    # every definition sees the same users and conversions on each snapshot
    assert len({(r[1], r[2], r[4]) for r in perf}) == 2
    lift = {}
    for name, in_sample, users, pqls, conv, pconv in perf:
        if not in_sample:
            lift[name] = (pconv / pqls) / ((conv - pconv) / (users - pqls))
    assert lift["model"] >= 2.0 and lift["model"] > lift["classic_rule"]
    recall = {r[0]: r[5] / r[4] for r in perf if not r[1]}
    assert recall["model"] > recall["classic_rule"]


@pytest.mark.slow
def test_leads_are_scored_with_reasons_tiers_and_routes(trained):
    p, _, root = trained
    last = p.query("SELECT max(snapshot_date) FROM user_features")[0][0].isoformat()
    result = p.run(last, job=SCORING_JOB)
    assert result.success and p.checks(result)["pql_scores:scores_valid"].passed
    [champ] = [r for r in registry_rows(p) if r["status"] == "champion"]
    n, pqls, versions, no_reason, bad_p = p.query(f"""
        SELECT count(*), count(*) FILTER (WHERE is_pql), count(DISTINCT model_version),
               count(*) FILTER (WHERE is_pql AND reason_text IS NULL),
               count(*) FILTER (WHERE probability < 0 OR probability > 1)
        FROM pql_scores WHERE snapshot_date = DATE '{last}'""")[0]
    # every free user with a feature row that day is scored, by the champion
    free = p.query(f"""SELECT count(*) FROM user_features AS u JOIN conversion_labels AS l
        ON l.entity_type = 'user' AND l.entity_id = u.user_id AND l.snapshot_date = u.snapshot_date
        WHERE u.snapshot_date = DATE '{last}' AND l.label_status <> 'excluded_paying'""")[0][0]
    assert n == free > 0 and 0 < pqls < n and versions == 1 and no_reason == 0 and bad_p == 0
    assert p.query(f"SELECT DISTINCT model_version FROM pql_scores WHERE snapshot_date = DATE '{last}'"
                   )[0][0] == champ["version"]
    # the proposed rule's verdict comes with the milestones reached
    fired, fired_without, hits = p.query(f"""
        SELECT count(*) FILTER (WHERE rule_fired), count(*) FILTER (WHERE rule_fired AND milestones_hit IS NULL),
               count(*) FILTER (WHERE milestones_hit LIKE '%Teammate Invited >= %')
        FROM pql_scores WHERE snapshot_date = DATE '{last}'""")[0]
    assert fired > 0 and fired_without == 0 and hits > 0
    # the planted behaviour is what sales is told about PQLs
    reasons = " ".join(r[0] for r in p.query(
        f"SELECT reason_text FROM pql_scores WHERE snapshot_date = DATE '{last}' AND is_pql"))
    assert "invited" in reasons and ("integration" in reasons or "projects" in reasons)
    # PQLs are the users the generator made likely to convert (that day's outcomes lie beyond the data)
    with open(root / "events" / "_ground_truth" / "users.csv", newline="") as f:
        truth = {r["user_id"]: float(r["true_conversion_probability"]) for r in csv.DictReader(f)}
    flags = p.query(f"SELECT user_id, is_pql FROM pql_scores WHERE snapshot_date = DATE '{last}'")
    mean_p = {flag: np.mean([truth.get(u, 0.0) for u, f in flags if f == flag]) for flag in (True, False)}
    assert mean_p[True] >= 2 * mean_p[False] > 0, mean_p
    tiers = dict(p.query(f"SELECT tier, count(*) FROM pql_scores WHERE snapshot_date = DATE '{last}' GROUP BY 1"))
    assert set(tiers) <= {"hot", "warm", "cold"} and tiers.get("cold", 0) > tiers.get("hot", 0)
    routes = dict(p.query(f"SELECT route, count(*) FROM pql_scores WHERE snapshot_date = DATE '{last}' GROUP BY 1"))
    assert routes.get("sales", 0) > 0 and routes.get("in_app", 0) > 0
    assert p.query(f"""SELECT count(*) FROM pql_scores WHERE snapshot_date = DATE '{last}' AND route = 'sales'
                       AND segment NOT IN ('mid_market', 'enterprise')""")[0][0] == 0
    # accounts: one row per account with a scored user, checked; sales gets big hot accounts with contacts
    assert p.checks(result)["pql_account_scores:account_scores_valid"].passed
    n_acc, acc_pqls, acc_sales = p.query(f"""
        SELECT count(*), count(*) FILTER (WHERE is_pql), count(*) FILTER (WHERE route = 'sales')
        FROM pql_account_scores WHERE snapshot_date = DATE '{last}'""")[0]
    assert n_acc == p.query(f"SELECT count(DISTINCT account_id) FROM pql_scores WHERE snapshot_date = DATE '{last}'"
                            )[0][0] > 0
    assert 0 < acc_pqls < n_acc and acc_sales > 0
    assert p.query(f"""SELECT count(*) FROM pql_account_scores AS a WHERE snapshot_date = DATE '{last}'
        AND route = 'sales' AND (segment NOT IN ('mid_market', 'enterprise') OR NOT EXISTS (
            SELECT 1 FROM pql_scores AS s WHERE s.snapshot_date = a.snapshot_date AND s.account_id = a.account_id
            AND s.route = 'sales'))""")[0][0] == 0
    # PQL accounts are the accounts the generator made likely to convert
    with open(root / "events" / "_ground_truth" / "users.csv", newline="") as f:
        by_account = {}
        for r in csv.DictReader(f):
            by_account.setdefault(r["account_id"], []).append(float(r["true_conversion_probability"]))
    acc_p = {a: 1 - np.prod([1 - x for x in ps]) for a, ps in by_account.items()}
    acc_flags = p.query(f"SELECT account_id, is_pql FROM pql_account_scores WHERE snapshot_date = DATE '{last}'")
    mean_acc = {flag: np.mean([acc_p.get(a, 0.0) for a, f in acc_flags if f == flag]) for flag in (True, False)}
    assert mean_acc[True] >= 1.5 * mean_acc[False] > 0, mean_acc
    # the history opens one row per scored user and account; re-scoring the day replaces its rows and
    # replays the history
    history = "SELECT count(*), count(*) FILTER (WHERE valid_to IS NULL), count(*) FILTER (WHERE is_pql) FROM pql_history"
    assert p.query(history + " WHERE entity_type = 'user'")[0] == (n, n, pqls)
    assert p.query(history + " WHERE entity_type = 'account'")[0] == (n_acc, n_acc, acc_pqls)
    assert p.run(last, job=SCORING_JOB).success
    assert p.query(f"SELECT count(*) FROM pql_scores WHERE snapshot_date = DATE '{last}'")[0][0] == n
    assert p.query(history + " WHERE entity_type = 'user'")[0] == (n, n, pqls)
    assert p.query(history + " WHERE entity_type = 'account'")[0] == (n_acc, n_acc, acc_pqls)


CHARTS = {"validated_events": ["quarantine_rate_per_day"], "quarantined_events": ["quarantine_rate_per_day"],
          "conversion_model": ["deciles", "calibration_curve"], "pql_performance": ["lift_per_snapshot"],
          "pql_scores": ["score_distribution", "pqls_per_day"], "drift_report": ["features"]}


def png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        im.verify()
    with Image.open(io.BytesIO(png)) as im:
        return im.size


@pytest.mark.slow
def test_a_scored_range_equals_its_days_scored_one_by_one(trained):
    """A range is scored a group of days at a time (read, predicted, routed in date order
    against the accounts sales worked the days before, written at once); one run per day
    reads those routes back from the warehouse. Both give the same rows."""
    p, _, _ = trained
    days = [r[0].isoformat() for r in p.query(
        "SELECT DISTINCT snapshot_date FROM user_features ORDER BY 1 DESC LIMIT 4")][::-1]
    assert p.settings.scoring.routing.suppress_days > 0
    cols = "* EXCLUDE (scored_at)"

    def scored():
        return {t: p.query(f"SELECT {cols} FROM {t} WHERE snapshot_date >= DATE '{days[0]}' ORDER BY ALL")
                for t in ("pql_scores", "pql_account_scores")}

    job = p.defs.resolve_job_def(SCORING_JOB)
    scores = [dg.AssetKey("pql_scores"), dg.AssetKey("pql_account_scores")]   # not the outputs: no ledger

    def score(first, last):
        tags = ({"dagster/partition": first} if first == last else
                {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
        assert job.execute_in_process(instance=p.instance, tags=tags, asset_selection=scores,
                                      raise_on_error=False).success

    # run alone, this test is the first to score (no pql_scores table yet)
    before = p.query("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pql_scores'")[0][0] and p.query(
        f"SELECT count(*) FROM pql_scores WHERE snapshot_date >= DATE '{days[0]}' AND snapshot_date < DATE '{days[-1]}'"
    )[0][0]
    try:
        score(days[0], days[-1])
        ranged = scored()
        for day in days:
            score(day, day)
        assert scored() == ranged
        # the planner: the range in one group (the defaults), or every day a batch and a group of its own
        # (one candidate row per group allowed): the same rows either way
        s = p.settings
        one_by_one = s.model_copy(update={"scoring": s.scoring.model_copy(update={"batch_rows": 1}),
                                          "features": s.features.model_copy(update={"snapshot_batch_days": 1})})
        dates = [dt.date.fromisoformat(d) for d in days]
        with Warehouse(database=str(s.warehouse_path)).get_connection() as c:
            model_row = R.scoring_model(c, None)
            for settings, groups in ((s, [dates]), (one_by_one, [[d] for d in dates])):
                done = score_days(c, settings, dates, model_row, R.load_artifact(model_row),
                                  training_reference(c, model_row))
                assert done.groups == groups
                assert done.users == len(ranged["pql_scores"]) and done.accounts == len(ranged["pql_account_scores"])
                assert [r["snapshot"] for r in done.per_day] == days
        assert scored() == ranged
        assert len({r[0] for r in ranged["pql_scores"]}) == len(days)
        # the days before each day of the range had sales accounts to suppress nudges for (that the
        # memory and the warehouse agree on them is test_the_sales_worked_in_memory_equal_...)
        assert p.query(f"""SELECT count(DISTINCT snapshot_date) FROM pql_account_scores
                           WHERE snapshot_date >= DATE '{days[0]}' AND route = 'sales'""")[0][0] == len(days)
    finally:
        # the other tests of this module score the newest day alone: leave the days before it unscored
        if not before:
            for table in ("pql_scores", "pql_account_scores"):
                p.query(f"DELETE FROM {table} WHERE snapshot_date >= DATE '{days[0]}' "
                        f"AND snapshot_date < DATE '{days[-1]}' RETURNING 1")
            score(days[-1], days[-1])


@pytest.mark.slow
def test_the_ui_metadata_and_the_pql_report_show_charts(trained):
    """After scoring the newest day (the test above): every chart of the metadata is a real
    image beside its numbers, and the PQL report of the day is a page with its PQLs, reasons,
    definition, model card and data health, charts inline."""
    p, _, _ = trained
    for asset, entries in CHARTS.items():
        event = p.instance.get_latest_materialization_event(dg.AssetKey(asset))
        meta = event.asset_materialization.metadata
        for entry in entries:
            text = meta[entry].value
            [png] = decode_md_images(text)
            width, height = png_size(png)
            assert width >= 600 and height >= 300, (asset, entry)
            assert "could not be drawn" not in text
    deciles = p.instance.get_latest_materialization_event(dg.AssetKey("conversion_model")) \
        .asset_materialization.metadata["deciles"].value
    assert "| decile | rows | conversion | lift |" in deciles      # the numbers stay beside the chart

    last = p.query("SELECT max(snapshot_date) FROM pql_scores")[0][0]
    meta = p.instance.get_latest_materialization_event(dg.AssetKey("pql_report")).asset_materialization.metadata
    path = Path(meta["path"].value)
    assert path.name == f"pql_report_{last}.html" and meta["day"].value == str(last)
    assert meta["current_report"].value == str(report_path(p.settings))
    assert report_path(p.settings).read_text() == path.read_text()
    html = path.read_text(encoding="utf-8")
    images = [base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)]
    assert len(images) == meta["charts"].value == 7 and all(png_size(i)[0] >= 600 for i in images)
    # the day's PQLs: every account routed to sales, with its reasons (escaped as HTML)
    sales = p.query(f"SELECT account_id, reason_text FROM pql_account_scores "
                    f"WHERE snapshot_date = DATE '{last}' AND route = 'sales' ORDER BY probability DESC, account_id")
    assert sales and meta["sales_accounts"].value == len(sales)
    if len(sales) > 50:
        assert f"the 50 most likely of {len(sales):,}" in html and sales[50][0] not in html
    for account, reason in sales[:50]:
        assert account in html and str(html_escape(reason)) in html
    pql_users = p.query(f"SELECT count(*) FROM pql_scores WHERE snapshot_date = DATE '{last}' AND is_pql")[0][0]
    assert meta["pql_users"].value == pql_users
    [champ] = [r for r in registry_rows(p) if r["status"] == "champion"]
    for text in (champ["version"], "Rule proposed by milestone discovery", "Backtest out of sample",
                 "product-led teams expect", "Drift report of", "quarantined on"):
        assert text in html, text
    assert meta["model_version"].value == champ["version"]
    check = p.instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("pql_report"), "report_matches_scores")).event.dagster_event.event_specific_data
    assert check.passed and check.metadata["charts_in_page"].value == 7


@pytest.mark.slow
def test_the_model_is_compared_with_the_generators_oracle(trained):
    """The generator's true conversion probability ranks the holdout better than anything
    trained on it can; the model's gap to it is recorded, and bounded."""
    p, _, root = trained
    [row] = registry_rows(p)
    with Warehouse(database=str(p.settings.warehouse_path)).get_connection() as c:
        df = load_frame(c)
    spec = model_spec(p.settings)
    hold = time_split(df, spec.holdout_snapshots, spec.embargo_days).holdout
    with open(root / "events" / "_ground_truth" / "users.csv", newline="") as f:
        truth = {r["user_id"]: float(r["true_conversion_probability"]) for r in csv.DictReader(f)}
    oracle = roc_auc_score(hold["label"].astype(int), hold["user_id"].map(truth).fillna(0).to_numpy())
    assert len(hold) == row["holdout_rows"]
    assert row["metrics"]["oracle_roc_auc"] == round(oracle, 5)     # recorded with the model
    assert oracle > row["roc_auc"] - 0.01          # nothing beats the truth by more than noise
    # 0.898 vs 0.912 on this data. The oracle knows every user's whole future behaviour (the
    # milestones still to come); the model sees the features at the snapshot.
    assert row["roc_auc"] >= oracle - 0.02


@pytest.mark.slow
def test_a_worse_candidate_is_rejected_and_the_champion_keeps_scoring(trained):
    p, _, _ = trained
    with Warehouse(database=str(p.settings.warehouse_path)).get_connection() as c:
        before = R.champion(c)
        # the same rows, but the candidate may not use any behaviour: tenure and firmographics only
        numeric, categorical = feature_columns(c)
        allowed = {"days_since_signup", "acct_n_members", "acct_employees", "acct_industry", "acct_country"}
        worse = p.settings.model.model_copy(update={"exclude_features": [x for x in numeric + categorical
                                                                         if x not in allowed]})
        row = train_and_register(c, p.settings.model_copy(update={"model": worse}))
        assert row["features"]["numeric"] + row["features"]["categorical"] != numeric + categorical
        assert row["status"] == "rejected"
        assert row["champion_compared"] == before["version"]
        assert row["roc_auc"] < before["roc_auc"]
        assert R.champion(c)["version"] == before["version"]
        assert R.scoring_model(c, None)["version"] == before["version"]


@pytest.mark.slow
def test_a_better_model_replaces_the_champion_and_pinning_rolls_back(trained):
    p, _, _ = trained
    with Warehouse(database=str(p.settings.warehouse_path)).get_connection() as c:
        old = R.champion(c)
        # the champion's algorithm: the tests after this one score with the same kind of model
        settings = quick(p.settings, old["algorithm"], champion_margin=-1.0)
        new = train_and_register(c, settings, trained_at=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
        assert new["status"] == "champion" and "beats the champion" in new["reason"]
        statuses = {r["version"]: r["status"] for r in R.rows(c)}
        assert statuses[old["version"]] == "retired" and statuses[new["version"]] == "champion"
        assert list(statuses.values()).count("champion") == 1
        # rollback is one line of configuration
        assert R.scoring_model(c, old["version"])["version"] == old["version"]
        with pytest.raises(ValueError, match="not in model_registry"):
            R.scoring_model(c, "m-no-such-version")


@pytest.mark.slow
def test_tightened_gates_block_the_scoring_model(trained, monkeypatch):
    p, _, _ = trained
    settings = quick(p.settings, gates=p.settings.model.gates.model_copy(update={"min_auc": 0.99}))
    defs = build_definitions(settings)
    result = defs.resolve_job_def(MODEL_JOB).execute_in_process(instance=p.instance, raise_on_error=False)
    checks = p.checks(result)
    assert not checks["conversion_model:auc_floor"].passed
    assert checks["conversion_model:auc_floor"].severity.value == "ERROR"
    assert checks["conversion_model:calibration"].passed
    # the candidate of that run failed the gate and was not promoted
    [mat] = result.asset_materializations_for_node("conversion_model")
    version = mat.metadata["version"].value
    [row] = [r for r in registry_rows(p) if r["version"] == version]
    assert row["status"] == "rejected" and "auc_floor" in row["reason"]


@pytest.mark.slow
def test_an_unchanged_training_is_not_repeated_and_a_change_retrains(trained):
    """Same training set, settings, rule, signals and code: the same (seeded) training would
    give the same model and verdict, so the model job records nothing new."""
    p, _, _ = trained
    defs = build_definitions(quick(p.settings))
    first = defs.resolve_job_def(MODEL_JOB).execute_in_process(instance=p.instance, raise_on_error=False)
    before = registry_rows(p)
    again = defs.resolve_job_def(MODEL_JOB).execute_in_process(instance=p.instance, raise_on_error=False)
    [mat] = again.asset_materializations_for_node("conversion_model")
    assert mat.metadata["status"].value == "not retrained"
    [trained_first] = first.asset_materializations_for_node("conversion_model")
    last = (trained_first.metadata.get("version") or trained_first.metadata["same_as"]).value
    assert mat.metadata["same_as"].value == last and registry_rows(p) == before
    assert p.checks(again)["conversion_model:auc_floor"].passed == p.checks(first)["conversion_model:auc_floor"].passed
    # a changed model setting trains again (tightened gates: the candidate is rejected, the champion stays)
    strict = quick(p.settings, gates=p.settings.model.gates.model_copy(update={"min_auc": 0.99}))
    changed = build_definitions(strict).resolve_job_def(MODEL_JOB).execute_in_process(
        instance=p.instance, raise_on_error=False)
    [mat] = changed.asset_materializations_for_node("conversion_model")
    assert mat.metadata["status"].value == "rejected" and len(registry_rows(p)) == len(before) + 1


def test_gate_results_name_each_bound():
    g = R.Gates(min_auc=0.7, min_auc_over_rules=0.05, max_calibration_error=0.1, max_top_feature_share=0.5)
    res = R.gate_results({"roc_auc": 0.74, "calibration_error": 0.2}, {"rule": {"roc_auc": 0.7}}, 0.8, g)
    assert {k: v["passed"] for k, v in res.items()} == {
        "auc_floor": True, "beats_rules": False, "calibration": False, "no_dominant_feature": False}
    assert res["beats_rules"]["bound"] == 0.75
    assert R.gate_results({"roc_auc": 0.9, "calibration_error": 0.0}, {}, None, g)["beats_rules"]["passed"]
    assert np.isclose(R.gate_results({"roc_auc": 0.75, "calibration_error": 0.1}, {"r": {"roc_auc": 0.7}}, 0.5,
                                     g)["beats_rules"]["bound"], 0.75)


@pytest.mark.slow
def test_sales_leads_reach_the_crm_dry_run_first_then_for_real_once(trained, monkeypatch):
    """crm_sync in real materializations against a local HubSpot stand-in: without a token the
    exact requests go to the outbox; with one, companies and contacts are upserted, and a
    second run sends nothing. In-app nudges (no Intercom token) stay a dry run."""
    monkeypatch.delenv("INTERCOM_ACCESS_TOKEN", raising=False)
    import json as _json

    from pql_pipeline_tests.defs.activation.fake_hubspot import FakeHubSpot

    p, _, _ = trained
    instance = dg.DagsterInstance.ephemeral()    # no check results of the other tests' runs
    last = p.query("SELECT max(snapshot_date) FROM user_features")[0][0].isoformat()
    token = "pat-na1-test-SECRET-9f8e7d"
    with FakeHubSpot(token=token) as hub:
        crm = p.settings.activation.crm.model_copy(update={"base_url": hub.url, "backoff_seconds": 0.01})
        settings = p.settings.model_copy(update={"activation": p.settings.activation.model_copy(update={"crm": crm})})
        monkeypatch.delenv("HUBSPOT_ACCESS_TOKEN", raising=False)
        dry = build_definitions(settings).resolve_job_def(SCORING_JOB).execute_in_process(
            instance=instance, tags={"dagster/partition": last}, raise_on_error=False)
        assert dry.success and hub.requests == []
        [nudges] = dry.asset_materializations_for_node("in_app_nudges")
        in_app = p.query(f"SELECT count(*) FROM pql_scores WHERE snapshot_date = DATE '{last}' AND route = 'in_app'"
                         )[0][0]
        assert nudges.metadata["dry_run"].value is True and nudges.metadata["considered"].value == in_app > 0
        [mat] = dry.asset_materializations_for_node("crm_sync")
        assert mat.metadata["dry_run"].value is True and mat.metadata["outbox_requests"].value > 0
        sales_accounts = p.query(f"SELECT count(*) FROM pql_account_scores WHERE snapshot_date = DATE '{last}' "
                                 "AND route = 'sales'")[0][0]
        bodies = [_json.loads(b) for (b,) in p.query(
            f"SELECT body FROM sync_outbox WHERE run_id = '{mat.metadata['run_id'].value}' AND object_type = 'companies'")]
        assert sum(len(b["inputs"]) for b in bodies) == sales_accounts > 0
        assert all(len(b["inputs"]) <= 100 for b in bodies)
        # every request the run would make is valid against the destinations' published schemas
        outbox = p.query("SELECT object_type, body, headers FROM sync_outbox")
        assert {t for t, _, _ in outbox} >= {"companies", "contacts", "nudges"}
        for object_type, body, headers in outbox:
            if object_type == "nudges":
                assert spec.problems(spec.INTERCOM, "create_data_event_request", _json.loads(body)) == []
                assert _json.loads(headers)["Intercom-Version"] == spec.intercom_version()
            else:
                assert spec.problems(spec.HUBSPOT, "BatchInputSimplePublicObjectBatchInputUpsert", _json.loads(body)) == []
        first = bodies[0]["inputs"][0]
        assert first["idProperty"] == "pql_account_id" and set(first["properties"]) >= {
            "pql_score", "pql_tier", "pql_is_pql", "pql_reasons", "pql_model_version", "pql_scored_on"}

        monkeypatch.setenv("HUBSPOT_ACCESS_TOKEN", token)
        real_defs = build_definitions(settings)
        real = real_defs.resolve_job_def(SCORING_JOB).execute_in_process(
            instance=instance, tags={"dagster/partition": last}, raise_on_error=False)
        assert real.success and p.checks(real)["crm_sync:crm_sync_reconciles"].passed
        companies = {k for t, k in hub.objects if t == "companies"}
        assert len(companies) == sales_accounts
        contacts = [k for t, k in hub.objects if t == "contacts"]
        assert contacts and all("@" in c for c in contacts)
        # the reason sales opens with travels with the lead
        some = hub.objects[("companies", sorted(companies)[0])]["properties"]
        assert some["pql_reasons"] and some["pql_tier"] in ("hot", "warm", "cold")
        calls = len(hub.requests)
        again = real_defs.resolve_job_def(SCORING_JOB).execute_in_process(
            instance=instance, tags={"dagster/partition": last}, raise_on_error=False)
        assert again.success and len(hub.requests) == calls       # nothing changed: no call
        assert hub.spec_violations == []
        # the token went to HubSpot only
        assert all(r["headers"]["Authorization"] == f"Bearer {token}" for r in hub.requests)
        stored = " ".join(str(v) for t in ("sync_ledger", "sync_outbox", "sync_runs", "sync_rejections")
                          for row in p.query(f"SELECT * FROM {t}") for v in row)
        assert token not in stored
        for res in (dry, real, again):
            for m in res.asset_materializations_for_node("crm_sync"):
                assert token not in str(m.metadata)


@pytest.mark.slow
def test_a_failed_blocking_score_check_keeps_leads_from_the_crm(trained):
    """The PQL volume check (blocking) fails on an impossible bound: the sync does not run."""
    p, _, _ = trained
    last = p.query("SELECT max(snapshot_date) FROM user_features")[0][0]
    prev = (last - dt.timedelta(days=1)).isoformat()
    vol = p.settings.scoring.volume.model_copy(update={"min_ratio": 50.0, "min_median": 0})
    settings = p.settings.model_copy(update={"scoring": p.settings.scoring.model_copy(update={"volume": vol})})
    result = build_definitions(settings).resolve_job_def(SCORING_JOB).execute_in_process(
        instance=p.instance, tags={"dagster/asset_partition_range_start": prev,
                                   "dagster/asset_partition_range_end": last.isoformat()}, raise_on_error=False)
    checks = p.checks(result)
    assert not checks["pql_scores:pql_volume"].passed and checks["pql_scores:pql_volume"].severity.value == "ERROR"
    assert "pql_scores" in materialized(result)
    assert not {"crm_sync", "in_app_nudges"} & materialized(result)


@pytest.mark.slow
def test_a_blocking_check_failed_in_an_earlier_run_keeps_leads_from_the_outputs(trained):
    """The model job (a separate run) fails a blocking gate: the next scoring run scores, but
    sends nothing to the CRM or in-app until the gate passes again."""
    p, _, _ = trained
    instance = dg.DagsterInstance.ephemeral()
    last = p.query("SELECT max(snapshot_date) FROM user_features")[0][0].isoformat()
    strict = quick(p.settings, gates=p.settings.model.gates.model_copy(update={"min_auc": 0.99}))
    failed = build_definitions(strict).resolve_job_def(MODEL_JOB).execute_in_process(
        instance=instance, raise_on_error=False)
    assert not p.checks(failed)["conversion_model:auc_floor"].passed
    defs = build_definitions(p.settings)
    blocked = defs.resolve_job_def(SCORING_JOB).execute_in_process(
        instance=instance, tags={"dagster/partition": last}, raise_on_error=False)
    assert "pql_scores" in materialized(blocked) and not {"crm_sync", "in_app_nudges"} & materialized(blocked)
    failures = [e for e in blocked.all_events if e.event_type_value == "STEP_FAILURE"]
    assert any("conversion_model.auc_floor" in str(e.event_specific_data.error) for e in failures)
    # the gates pass again (the model job with the configured gates): the outputs run
    assert build_definitions(quick(p.settings)).resolve_job_def(MODEL_JOB).execute_in_process(
        instance=instance, raise_on_error=False).success
    passed = defs.resolve_job_def(SCORING_JOB).execute_in_process(
        instance=instance, tags={"dagster/partition": last}, raise_on_error=False)
    assert passed.success and {"crm_sync", "in_app_nudges"} <= materialized(passed)


@pytest.mark.slow
def test_the_drift_report_measures_a_labelled_cohort_against_the_holdout(trained):
    """Scoring a day whose labels have arrived: the drift report measures the realised ROC AUC
    against the champion's holdout, and every model feature against both references."""
    p, _, _ = trained
    last = p.query("SELECT max(snapshot_date) FROM user_features")[0][0]
    day = last - dt.timedelta(days=40)
    result = p.defs.resolve_job_def(SCORING_JOB).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), tags={"dagster/partition": day.isoformat()}, raise_on_error=False)
    assert result.success
    checks = p.checks(result)
    assert checks["drift_report:performance_decay"].passed
    [champion] = [r for r in registry_rows(p) if r["status"] == "champion"]
    rows = {(part, item, ref): (value, verdict, n) for part, item, ref, value, verdict, n in p.query(f"""
        SELECT part, item, reference, value, verdict, rows FROM drift_history WHERE report_day = DATE '{day}'""")}
    auc, verdict, n = rows[("performance", "roc_auc", "holdout")]
    assert verdict in ("ok", "warn") and n > 1000
    assert abs(auc - champion["metrics"]["roc_auc"]) < 0.05
    features = champion["features"]["numeric"] + champion["features"]["categorical"]
    for ref in ("training", "trailing_weeks"):
        measured = {item for (part, item, r), (_, v, _) in rows.items()
                    if part == "features" and r == ref and v != "insufficient_data"}
        assert measured == set(features), ref
    assert rows[("predictions", "probability", "trailing_weeks")][1] != "insufficient_data" or \
        not p.query(f"SELECT count(*) FROM pql_scores WHERE snapshot_date = DATE '{day - dt.timedelta(days=7)}'")[0][0]
