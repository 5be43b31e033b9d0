"""The whole graph materialized on generated data: features, labels, training sets,
milestone discovery against the generator's planted truth, and the leakage guard."""

import csv
import datetime as dt

import dagster as dg
import pytest
import yaml

from pql_pipeline.definitions import build_resources
from pql_pipeline.defs.features.assets import proposed_rule_path
from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.features.specs import feature_spec
from pql_pipeline.defs.features.training import leakage_guard
from pql_pipeline.lib.warehouse import Warehouse
from pql_pipeline_tests.pipeline import generated_pipeline, materialized, run_all

FEATURE_ASSETS = {"user_features", "account_features", "conversion_labels", "training_set", "account_training_set",
                  "activation_milestones"}
# the generator's planted positive milestones, strongest first, as (candidate, N, D) of the discovery grid
PLANTED_POSITIVE = [("invited_2_teammates", "Teammate Invited", 2, 30),
                    ("integration_connected", "Integration Connected", 1, 30),
                    ("projects_3_in_14d", "Project Created", 3, 14)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """1,500 accounts over 120 days (about a million lines): enough users for stable milestone ranks."""
    root = tmp_path_factory.mktemp("features_e2e")
    p, result, report, mp = generated_pipeline(root)
    yield p, result, report, root
    mp.undo()


def truth_users(report_root):
    with open(report_root / "events" / "_ground_truth" / "users.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_whole_graph_materializes_and_every_feature_check_passes(built):
    p, result, report, _ = built
    assert result.success
    assert FEATURE_ASSETS <= materialized(result)
    checks = p.checks(result)
    for name, ev in checks.items():
        asset = name.split(":")[0]
        if asset in FEATURE_ASSETS:
            assert ev.passed, (name, {k: v.value for k, v in ev.metadata.items()})
    guard = checks["training_set:leakage_guard"]
    assert guard.metadata["recomputed_rows"].value > 1000
    # one feature row per active user per snapshot day, keys unique
    n, distinct = p.query("SELECT count(*), count(DISTINCT (user_id, snapshot_date)) FROM user_features")[0]
    assert n == distinct > 0
    days = p.query("SELECT count(DISTINCT snapshot_date) FROM user_features")[0][0]
    assert days == len(report.partitions)


@pytest.mark.slow
def test_derived_feature_tables_carry_column_lineage(built):
    """The UI's column lineage: account rollups from their user signal, training columns from
    the user or account feature of the same name, the label from conversion_labels; every
    column named exists in both tables."""
    p, result, _, _ = built
    mats = {e.asset_key.to_user_string(): e.metadata for e in
            (ev.event_specific_data.materialization for ev in result.get_asset_materialization_events())}
    tables = {t: {c for (c,) in p.query(f"SELECT column_name FROM information_schema.columns "
                                        f"WHERE table_name = '{t}'")}
              for t in ("user_features", "account_features", "conversion_labels", "training_set",
                        "account_training_set")}
    for asset in ("account_features", "training_set", "account_training_set"):
        lineage = mats[asset]["dagster/column_lineage"].value.deps_by_column
        assert lineage
        for column, deps in lineage.items():
            assert column in tables[asset], (asset, column)
            for d in deps:
                assert d.column_name in tables[d.asset_key.to_user_string()], (asset, column, d)
    acct = mats["account_features"]["dagster/column_lineage"].value.deps_by_column
    assert [d.column_name for d in acct["avg_avg_session_seconds_30d"]] == ["avg_session_seconds_30d"]
    train = mats["training_set"]["dagster/column_lineage"].value.deps_by_column
    assert train["acct_best_onboarding_steps"][0].asset_key == dg.AssetKey("account_features")
    assert train["label"][0].asset_key == dg.AssetKey("conversion_labels")


@pytest.mark.slow
def test_labels_follow_the_ground_truth(built):
    p, _, _, root = built
    converted_at = {u["user_id"]: u["converted_at"] for u in truth_users(root) if u["converted"] == "1"}
    rows = p.query("""
        SELECT entity_id, snapshot_date, label_status, CAST(converted_at AS VARCHAR) FROM conversion_labels
        WHERE entity_type = 'user' AND label_status IN ('positive', 'negative')""")
    assert rows
    for user, snap, status, conv in rows:
        truth = converted_at.get(user)
        if status == "positive":
            assert truth is not None and truth[:10] == conv[:10], (user, snap, truth, conv)
            assert snap < dt.date.fromisoformat(truth[:10]) <= snap + dt.timedelta(days=30)
        else:  # a negative never converted within the horizon
            assert truth is None or not (snap < dt.date.fromisoformat(truth[:10]) <= snap + dt.timedelta(days=30))
    # the training set uses only complete horizons and never a paying user
    bad = p.query("""
        SELECT count(*) FROM training_set t JOIN conversion_labels l
          ON l.entity_type = 'user' AND l.entity_id = t.user_id AND l.snapshot_date = t.snapshot_date
        WHERE NOT l.horizon_complete OR t.is_paying OR l.label_status = 'excluded_paying'""")[0][0]
    assert bad == 0


@pytest.mark.slow
def test_milestone_discovery_recovers_the_planted_milestones(built):
    p, _, _, root = built
    ranked = p.query("""
        SELECT candidate, rank FROM activation_milestones
        WHERE is_best_variant AND direction = 'positive' ORDER BY rank""")
    rank = dict(ranked)
    order = [rank.get(c) for _, c, _, _ in PLANTED_POSITIVE]
    assert None not in order, ranked
    assert order == sorted(order), f"planted order not recovered: {ranked}"
    assert order[0] == 1, ranked
    negatives = {c for c, in p.query("""
        SELECT candidate FROM activation_milestones WHERE is_best_variant AND direction = 'negative'""")}
    assert "Support Ticket Opened (category=basics)" in negatives and "Error Shown" in negatives, negatives
    # lift of the planted definitions vs the generator's truth (flag rate ratio over all users)
    users = truth_users(root)
    for flag, cand, n, d in PLANTED_POSITIVE:
        with_ = [u for u in users if u[flag] == "1"]
        without = [u for u in users if u[flag] == "0"]
        truth = (sum(u["converted"] == "1" for u in with_) / len(with_)) / (
            sum(u["converted"] == "1" for u in without) / len(without))
        lift, lo, hi = p.query(f"""
            SELECT lift, lift_low, lift_high FROM activation_milestones
            WHERE candidate = '{cand}' AND min_count = {n} AND within_days = {d}""")[0]
        assert abs(lift / truth - 1) < 0.3, (cand, lift, truth)
        assert lo < hi and lo <= lift <= hi


@pytest.mark.slow
def test_the_proposed_rule_is_yaml_in_signal_vocabulary(built):
    p, _, _, _ = built
    doc = yaml.safe_load(proposed_rule_path(p.settings).read_text())
    rule = doc["proposed_pql_rule"]
    assert rule["match"] == "any"
    first = rule["conditions"][0]
    assert first["event"] == "Teammate Invited" and first["kind"] == "count"
    assert first["threshold"] >= 1 and first["within_days_of_signup"] >= 1
    assert first["evidence"]["lift_interval"][0] > 1
    assert any(c.get("where") == {"category": "basics"} or c.get("event") == "Error Shown" for c in rule["unless"])


@pytest.mark.slow
def test_a_daily_run_after_the_backfill_passes_its_gates(built):
    """The next day's run computes one snapshot (from the cache) and refreshes the labels whose
    horizon it completes; its label base rate is judged on complete horizons only (early
    positives of recent snapshots would otherwise inflate it)."""
    p, _, report, _ = built
    before = p.query("SELECT count(*) FROM user_features")[0][0]
    result = run_all(p, report.partitions[-1])
    checks = p.checks(result)
    assert result.success, {k: v.passed for k, v in checks.items() if not v.passed}
    assert checks["conversion_labels:label_base_rate"].passed
    assert "base_rate" in checks["conversion_labels:label_base_rate"].metadata
    assert p.query("SELECT count(*) FROM user_features")[0][0] == before
    assert p.query("SELECT count(*) FROM feature_cache_partitions")[0][0] == len(report.partitions)


@pytest.mark.slow
def test_the_cache_gives_the_features_computed_from_events(built):
    """The pipeline run built the feature cache from the validated partitions; recomputing every
    snapshot straight from validated_events gives the same rows."""
    p, _, report, _ = built
    wh = Warehouse(database=str(p.settings.warehouse_path))
    days = [dt.date.fromisoformat(d) for d in report.partitions]
    with wh.get_connection() as conn:
        cached = conn.execute("SELECT count(*) FROM feature_cache_partitions").fetchall()[0][0]
        assert cached == len(days)
        dump = "SELECT * FROM {} ORDER BY ALL"
        before = {t: conn.execute(dump.format(t)).fetchall() for t in ("user_features", "account_features")}
        run = compute_features(conn, feature_spec(p.settings), days, use_cache=False)
        assert run.cache_partitions_built == 0 and run.user_rows == len(before["user_features"])
        after = {t: conn.execute(dump.format(t)).fetchall() for t in before}
    for t in before:
        diff = [(a, b) for a, b in zip(before[t], after[t]) if a != b]
        # doubles are rounded to 6 decimals; a sum in another order may land on the other side of a rounding
        for a, b in diff:
            assert all(x == y or (isinstance(x, float) and abs(x - y) <= 1.5e-6) for x, y in zip(a, b)), (t, a, b)
        assert len(before[t]) == len(after[t])


@pytest.mark.slow
def test_the_leakage_guard_catches_a_leak_and_blocks(built, tmp_path):
    p, _, _, _ = built
    wh = Warehouse(database=str(p.settings.warehouse_path))
    with wh.get_connection() as conn:
        snap = conn.execute("SELECT max(snapshot_date) FROM training_set").fetchall()[0][0]
        user = conn.execute("SELECT min(user_id) FROM training_set WHERE snapshot_date = ?", [snap]).fetchall()[0][0]
        # a feature that counted an invitation sent after the snapshot
        conn.execute("UPDATE user_features SET teammates_invited = teammates_invited + 1 "
                     "WHERE snapshot_date = ? AND user_id = ?", [snap, user])
        rep = leakage_guard(conn, feature_spec(p.settings), [snap])
        assert not rep.passed
        assert rep.mismatched_rows[f"user_features@{snap}"] == 1
        assert "teammates_invited" in rep.samples[0]["differing_columns"]
    # through Dagster: the blocking check fails with ERROR when the training set is rebuilt
    defs = p.defs
    result = dg.materialize(
        [defs.get_assets_def("training_set"), *[c for c in defs.asset_checks
                                                 if any(k.name == "leakage_guard" for k in c.check_keys)]],
        selection=dg.AssetSelection.assets("training_set", "account_training_set"),
        resources=build_resources(p.settings), instance=p.instance, raise_on_error=False)
    evs = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evs["leakage_guard"].passed
    assert evs["leakage_guard"].severity == dg.AssetCheckSeverity.ERROR
    assert not result.success
    with wh.get_connection() as conn:  # undo for other tests of the module
        conn.execute("UPDATE user_features SET teammates_invited = teammates_invited - 1 "
                     "WHERE snapshot_date = ? AND user_id = ?", [snap, user])
