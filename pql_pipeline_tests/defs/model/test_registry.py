"""The registry keeps the model files it may need (champion, retired champions for rollback,
the newest rejected candidates) and says why a removed one cannot be loaded."""

import datetime as dt

import pytest

from pql_pipeline.defs.model import registry as R


def _record(conn, models_dir, version, status, minute):
    artifact, digest = R.save_artifact({"model": version}, models_dir, version)
    R.record(conn, {"version": version, "status": status, "reason": "test", "artifact": artifact,
                    "artifact_sha256": digest,
                    "trained_at": dt.datetime(2026, 3, 1, 0, minute, tzinfo=dt.timezone.utc)},
             promote=status == "champion")


def test_old_rejected_model_files_are_pruned_and_the_rest_kept(conn, tmp_path):
    for i, (version, status) in enumerate([("m1", "champion"), ("r1", "rejected"), ("r2", "rejected"),
                                           ("m2", "champion"), ("r3", "rejected"), ("r4", "rejected")]):
        _record(conn, tmp_path, version, status, i)
    assert {r["version"]: r["status"] for r in R.rows(conn)}["m1"] == "retired"
    pruned = R.prune_rejected(conn, keep=1, protect=("r2",))     # r2 is pinned somewhere: kept
    assert pruned == ["r1", "r3"]
    assert sorted(p.stem for p in tmp_path.glob("*.joblib")) == ["m1", "m2", "r2", "r4"]
    rows = {r["version"]: r for r in R.rows(conn)}
    assert len(rows) == 6 and rows["r1"]["artifact"] is None and rows["r4"]["artifact"]
    assert R.load_artifact(rows["m1"]) == {"model": "m1"}        # a retired champion can still be rolled back to
    with pytest.raises(FileNotFoundError, match="r1 was removed"):
        R.load_artifact(rows["r1"])
    assert R.prune_rejected(conn, keep=1, protect=("r2",)) == []  # idempotent


PASS = {"auc_floor": {"passed": True, "value": 0.8, "bound": 0.6},
        "calibration": {"passed": True, "value": 0.02, "bound": 0.05}}


@pytest.mark.parametrize("gates_, auc, champion, champion_auc, error, promote, reason", [
    ({**PASS, "calibration": {"passed": False, "value": 0.09, "bound": 0.05}}, 0.8, None, None, None, False,
     "failed gates: calibration (0.09 vs 0.05)"),
    ({k: {**v, "passed": False} for k, v in PASS.items()}, 0.9, "m1", 0.5, None, False,
     "failed gates: auc_floor (0.8 vs 0.6), calibration (0.02 vs 0.05)"),
    (PASS, 0.8, None, None, None, True, "first model that passes every gate"),
    (PASS, 0.8, "m1", None, "no such file", True, "the champion m1 could not be re-scored (no such file); "
                                                    "replaces it"),
    ({**PASS, "auc_floor": {"passed": False, "value": 0.5, "bound": 0.6}}, 0.5, "m1", None, "no such file", False,
     "the champion m1 could not be re-scored (no such file); failed gates: auc_floor (0.5 vs 0.6)"),
    (PASS, 0.8, "m1", None, None, True, "replaces it"),
    (PASS, 0.8, "m1", None, "", True, "the champion m1 could not be re-scored (); replaces it"),
    (PASS, 0.81, "m1", 0.8, None, True, "ROC AUC 0.8100 beats the champion m1 (0.8000) on the same holdout "
                                        "by at least 0.01"),
    (PASS, 0.805, "m1", 0.8, None, False, "ROC AUC 0.8050 does not beat the champion m1 (0.8000) on the same "
                                          "holdout by 0.01"),
    (PASS, None, "m1", 0.8, None, False, "ROC AUC 0.0000 does not beat the champion m1 (0.8000) on the same "
                                         "holdout by 0.01"),
])
def test_promotion_decides_every_branch_with_its_reason(gates_, auc, champion, champion_auc, error, promote, reason):
    from pql_pipeline.defs.model.registry import decide_promotion

    got = decide_promotion(gates_, auc, champion, champion_auc, 0.01, error)
    assert (got.promote, got.reason) == (promote, reason)
