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
