"""The model registry: every trained model, its evidence and its status.

``model_registry`` (DuckDB) has one row per trained model: version, training and holdout
windows, feature list and hash, the signal-definition hash (the contract of its inputs),
code version, holdout metrics of the model, of the rules and of the champion it was
compared with, status and the reason for it. ``contract_version`` is the training_set
data contract (id@version) the inputs were read under. The fitted model is a joblib file under the
models folder beside the warehouse (``<version>.joblib``) with a SHA-256 kept in the row.

Statuses: ``champion`` (scores leads; at most one), ``rejected`` (a candidate that did not
beat the champion by the margin or failed a gate; the reason says which), ``retired`` (a
former champion). A candidate becomes champion only if it passes every gate and beats the
current champion's ROC AUC on the candidate's own holdout by ``champion_margin``; the
champion is re-scored on that holdout, so both are judged on the same rows.
``model.pinned_version`` overrides the choice for scoring (rollback by one config line).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "model_registry"
COLUMNS = [
    ("version", "VARCHAR"), ("trained_at", "TIMESTAMPTZ"), ("status", "VARCHAR"), ("reason", "VARCHAR"),
    ("algorithm", "VARCHAR"), ("train_start", "DATE"), ("train_end", "DATE"), ("holdout_start", "DATE"),
    ("holdout_end", "DATE"), ("train_rows", "BIGINT"), ("train_positives", "BIGINT"), ("holdout_rows", "BIGINT"),
    ("holdout_positives", "BIGINT"), ("features", "JSON"), ("feature_hash", "VARCHAR"),
    ("signals_definition_hash", "VARCHAR"), ("contract_version", "VARCHAR"), ("code_version", "VARCHAR"),
    ("roc_auc", "DOUBLE"),
    ("metrics", "JSON"), ("baselines", "JSON"), ("candidates", "JSON"), ("importance", "JSON"), ("gates", "JSON"),
    ("champion_compared", "VARCHAR"), ("champion_roc_auc_same_holdout", "DOUBLE"), ("artifact", "VARCHAR"),
    ("artifact_sha256", "VARCHAR"), ("training_fingerprint", "VARCHAR"),
    # typical input values of the training rows (the baseline of the per-lead reasons)
    ("reference", "JSON"),
]
JSON_COLUMNS = ("features", "metrics", "baselines", "candidates", "importance", "gates", "reference")


@dataclass(frozen=True)
class Gates:
    min_auc: float
    min_auc_over_rules: float
    max_calibration_error: float
    max_top_feature_share: float


def gate_results(metrics: dict, baselines: dict, top_share: float | None, gates: Gates) -> dict[str, dict]:
    """Each gate: passed, the value and the bound, as the checks show them."""
    auc = metrics.get("roc_auc")
    rule_aucs = [b["roc_auc"] for b in baselines.values() if b.get("roc_auc") is not None]
    best_rule = max(rule_aucs) if rule_aucs else None
    ece = metrics.get("calibration_error")
    return {
        "auc_floor": {"passed": auc is not None and auc >= gates.min_auc, "value": auc, "bound": gates.min_auc},
        "beats_rules": {"passed": auc is not None
                        and (best_rule is None or auc >= best_rule + gates.min_auc_over_rules),
                        "value": auc,
                        "bound": None if best_rule is None else round(best_rule + gates.min_auc_over_rules, 5)},
        "calibration": {"passed": ece is not None and ece <= gates.max_calibration_error, "value": ece,
                        "bound": gates.max_calibration_error},
        "no_dominant_feature": {"passed": top_share is None or top_share <= gates.max_top_feature_share,
                                "value": top_share, "bound": gates.max_top_feature_share},
    }


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str


def decide_promotion(gates: dict[str, dict], candidate_auc: float | None, champion: str | None,
                     champion_auc: float | None, margin: float, champion_error: str | None = None) -> Promotion:
    """Champion or rejected, and why: a candidate is promoted only if it passes every gate
    (``gate_results``) and, when there is a champion (its version, ``champion``), beats the
    champion's ROC AUC on the candidate's holdout by ``margin``. A champion that could not be
    re-scored on that holdout (``champion_error``) is replaced by a candidate that passes."""
    reason = (f"the champion {champion} could not be re-scored ({champion_error}); "
              if champion_error is not None else "")
    failed = [k for k, v in gates.items() if not v["passed"]]
    auc = candidate_auc or 0.0
    if failed:
        return Promotion(False, reason + "failed gates: " + ", ".join(
            f"{k} ({gates[k]['value']} vs {gates[k]['bound']})" for k in failed))
    if champion is None:
        return Promotion(True, "first model that passes every gate")
    if champion_auc is None:
        return Promotion(True, reason + "replaces it")
    if auc >= champion_auc + margin:
        return Promotion(True, f"ROC AUC {auc:.4f} beats the champion {champion} ({champion_auc:.4f}) on "
                               f"the same holdout by at least {margin}")
    return Promotion(False, f"ROC AUC {auc:.4f} does not beat the champion {champion} ({champion_auc:.4f}) on the "
                            f"same holdout by {margin}")


def ensure_registry(conn) -> None:
    from pql_pipeline.lib.warehouse import ensure_columns

    ensure_columns(conn, REGISTRY, COLUMNS)


def new_version(trained_at: dt.datetime, feature_hash: str) -> str:
    """Unique per training: time to the microsecond, the feature hash and a random part."""
    import uuid

    return f"m{trained_at.strftime('%Y%m%dT%H%M%S%f')}-{feature_hash[:6]}-{uuid.uuid4().hex[:6]}"


def save_artifact(model, models_dir: Path, version: str) -> tuple[str, str]:
    import joblib

    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{version}.joblib"
    if path.exists():
        raise FileExistsError(f"model file {path} already exists; versions must be unique")
    joblib.dump(model, path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


def load_artifact(row: dict):
    """The fitted model of a registry row; refuses a file whose checksum changed."""
    import joblib

    if not row.get("artifact"):
        raise FileNotFoundError(f"the model file of version {row['version']} was removed (a rejected candidate "
                                "beyond model.keep_rejected_models)")
    path = Path(row["artifact"])
    if not path.exists():
        raise FileNotFoundError(f"model file {path} of version {row['version']} is missing")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != row["artifact_sha256"]:
        raise ValueError(f"model file {path} does not match the checksum recorded for version {row['version']}")
    return joblib.load(path)


def prune_rejected(conn, keep: int, protect: tuple[str, ...] = ()) -> list[str]:
    """Delete the model files of rejected candidates but the newest ``keep`` (and any version
    in ``protect``, e.g. a pinned one); their registry rows stay, with the artifact cleared.
    Champions and retired champions keep their files (rollback). Returns the versions pruned."""
    old = rows(conn, "status = 'rejected' AND artifact IS NOT NULL")
    old = [r for r in old[:max(len(old) - keep, 0)] if r["version"] not in protect]
    for r in old:
        Path(r["artifact"]).unlink(missing_ok=True)
        conn.execute(f"UPDATE {REGISTRY} SET artifact = NULL WHERE version = ?", [r["version"]])
    return [r["version"] for r in old]


def rows(conn, where: str = "TRUE", params: list | None = None) -> list[dict]:
    cur = conn.execute(f"SELECT * FROM {REGISTRY} WHERE {where} ORDER BY trained_at", params or [])
    names = [d[0] for d in cur.description]
    out = []
    for r in cur.fetchall():
        d = dict(zip(names, r))
        for k in JSON_COLUMNS:
            if isinstance(d.get(k), str):
                d[k] = json.loads(d[k])
        out.append(d)
    return out


def champion(conn) -> dict | None:
    found = rows(conn, "status = 'champion'")
    return found[-1] if found else None


def scoring_model(conn, pinned_version: str | None) -> dict | None:
    """The registry row that scores leads: the pinned version if set, else the champion."""
    if pinned_version:
        found = rows(conn, "version = ?", [pinned_version])
        if not found:
            raise ValueError(f"model.pinned_version {pinned_version!r} is not in {REGISTRY}; versions: "
                             + ", ".join(r["version"] for r in rows(conn)))
        return found[-1]
    return champion(conn)


def record(conn, row: dict, promote: bool) -> None:
    """Insert a trained model's row; if ``promote``, retire the previous champion, in one transaction."""
    ensure_registry(conn)
    names = [c for c, _ in COLUMNS]
    values = [json.dumps(row.get(c), default=str) if c in JSON_COLUMNS else row.get(c) for c in names]
    conn.execute("BEGIN TRANSACTION")
    try:
        if promote:
            conn.execute(f"UPDATE {REGISTRY} SET status = 'retired', reason = ? WHERE status = 'champion'",
                         [f"replaced by {row['version']}"])
        conn.execute(f"INSERT INTO {REGISTRY} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})", values)
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
