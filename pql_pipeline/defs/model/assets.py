"""Model stage: training_set -> a retrained, gated conversion model in the registry."""

import datetime as dt

import dagster as dg
import yaml

from pql_pipeline.defs.features.assets import proposed_rule_path
from pql_pipeline.defs.features.specs import signal_set, training_contract
from pql_pipeline.defs.model import performance as P
from pql_pipeline.defs.model import registry as R
from pql_pipeline.defs.model.training import (
    ModelSpec,
    TrainingError,
    evaluate,
    prepare,
    reference_values,
    top_feature_share,
    train,
)
from pql_pipeline.lib.charts import calibration_chart, chart_md, decile_chart, lift_chart
from pql_pipeline.lib.dagster_helpers import OWNERS, POOL, md_table
from pql_pipeline.lib.warehouse import Warehouse, ensure_columns, registered, replace_rows, table_exists
from pql_pipeline.settings import Settings

GROUP = "model"
TAGS = {"pql/stage": "model"}
# bump when training or evaluation changes meaning (part of the asset's code_version)
MODEL_LOGIC_VERSION = "2"   # 2: only the chosen candidate is calibrated


def model_spec(settings: Settings) -> ModelSpec:
    m = settings.model
    embargo = m.embargo_days if m.embargo_days is not None else settings.labels.horizon_days
    return ModelSpec(holdout_snapshots=m.holdout_snapshots, embargo_days=embargo, candidates=tuple(m.candidates),
                     calibration=m.calibration, pql_threshold=m.pql_threshold,
                     classic_rule=tuple(sorted(m.classic_rule.items())), min_train_rows=m.min_train_rows,
                     min_train_positives=m.min_train_positives, exclude_features=tuple(m.exclude_features),
                     seed=m.seed)


def gates(settings: Settings) -> R.Gates:
    g = settings.model.gates
    return R.Gates(g.min_auc, g.min_auc_over_rules, g.max_calibration_error, g.max_top_feature_share)


def load_proposed_rule(settings: Settings) -> dict | None:
    """The rule activation_milestones proposed (None before it has run)."""
    path = proposed_rule_path(settings)
    if not path.exists():
        return None
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("proposed_pql_rule")


def oracle_roc_auc(settings: Settings, holdout) -> float | None:
    """On generated data (the generator's ``_ground_truth/users.csv`` beside the events): the
    ROC AUC of the users' true conversion probabilities on the holdout rows, the ceiling the
    model is compared with. None on real data."""
    import csv

    from sklearn.metrics import roc_auc_score

    path = settings.events_root / "_ground_truth" / "users.csv"
    if not path.exists() or holdout["label"].nunique() < 2:
        return None
    with open(path, newline="", encoding="utf-8") as f:
        truth = {r["user_id"]: float(r["true_conversion_probability"]) for r in csv.DictReader(f)}
    known = holdout["user_id"].isin(truth.keys())
    if not known.all():
        return None   # events that are not (only) the generator's
    return round(float(roc_auc_score(holdout["label"].astype(int), holdout["user_id"].map(truth))), 5)


def training_fingerprint(conn, settings: Settings, table: str = "training_set") -> str:
    """What a training's outcome depends on: the training set's rows (an order-free hash of
    every row), the model settings, the proposed rule, the signals' definitions, the training
    contract and the training code. Training is deterministic (seeded), so the same
    fingerprint trains the same model to the same verdict."""
    import hashlib
    import json

    rows, row_hash = conn.execute(f"SELECT count(*), CAST(sum(hash(t)) AS VARCHAR) FROM {table} AS t").fetchall()[0]
    contract = training_contract(settings)
    model = settings.model.model_dump(mode="json", exclude={"pinned_version", "keep_rejected_models"})
    parts = {"rows": rows, "row_hash": row_hash, "model": model, "rule": load_proposed_rule(settings),
             "signals": signal_set(settings).definition_hash, "contract": f"{contract.id}@{contract.version}",
             "code": MODEL_LOGIC_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def unchanged_since(conn, fingerprint: str) -> dict | None:
    """The last training's registry row (the last one recorded, whatever its trained_at says),
    if it was trained on exactly this fingerprint."""
    R.ensure_registry(conn)
    newest = conn.execute(f"SELECT version, status, training_fingerprint FROM {R.REGISTRY} "
                          "ORDER BY rowid DESC LIMIT 1").fetchall()
    if newest and newest[0][2] == fingerprint:
        return {"version": newest[0][0], "status": newest[0][1]}
    return None


def train_and_register(conn, settings: Settings, trained_at: dt.datetime | None = None,
                       spec: ModelSpec | None = None, table: str = "training_set",
                       fingerprint: str | None = None) -> dict:
    """Train a candidate, compare it with the champion on the candidate's holdout, record it
    (promoted or rejected, with the reason) and return its registry row. ``fingerprint``:
    the ``training_fingerprint`` when the caller has it already."""
    spec = spec or model_spec(settings)
    sigs = signal_set(settings)
    contract = training_contract(settings)
    fingerprint = fingerprint or training_fingerprint(conn, settings, table)
    result = train(conn, spec, load_proposed_rule(settings), table)
    oracle = oracle_roc_auc(settings, result.split.holdout)
    if oracle is not None:
        result.metrics["oracle_roc_auc"] = oracle
    trained_at = trained_at or dt.datetime.now(dt.timezone.utc)
    version = R.new_version(trained_at, result.feature_hash)
    share = top_feature_share(result.importance)
    gate = R.gate_results(result.metrics, result.baselines, share, gates(settings))
    R.ensure_registry(conn)
    current = R.champion(conn)
    champ_auc, champ_error = None, None
    if current is not None:
        try:
            old = R.load_artifact(current)
            x = prepare(result.split.holdout, current["features"]["numeric"], current["features"]["categorical"])
            champ_auc = evaluate(result.split.holdout["label"].astype(int).to_numpy(), old.predict_proba(x)[:, 1],
                                 spec.pql_threshold)["roc_auc"]
        except (FileNotFoundError, ValueError, KeyError) as e:
            champ_error = str(e)
    decision = R.decide_promotion(gate, result.metrics["roc_auc"], current["version"] if current else None,
                                  champ_auc, settings.model.champion_margin, champ_error)
    promote, reason = decision.promote, decision.reason
    artifact, digest = R.save_artifact(result.model, settings.models_dir, version)
    split = result.split
    row = {
        "version": version, "trained_at": trained_at, "status": "champion" if promote else "rejected",
        "reason": reason, "algorithm": result.algorithm,
        "train_start": split.train_snapshots[0], "train_end": split.train_snapshots[-1],
        "holdout_start": split.holdout_snapshots[0], "holdout_end": split.holdout_snapshots[-1],
        "train_rows": len(split.train), "train_positives": int(split.train["label"].sum()),
        "holdout_rows": len(split.holdout), "holdout_positives": int(split.holdout["label"].sum()),
        "features": {"numeric": result.numeric, "categorical": result.categorical},
        "feature_hash": result.feature_hash, "signals_definition_hash": sigs.definition_hash,
        "contract_version": f"{contract.id}@{contract.version}",
        "code_version": MODEL_LOGIC_VERSION, "roc_auc": result.metrics["roc_auc"], "metrics": result.metrics,
        "baselines": result.baselines, "candidates": result.candidates, "importance": result.importance,
        "gates": gate, "champion_compared": current["version"] if current else None,
        "seconds": result.seconds,   # shown in the asset's metadata, not kept in the registry
        "champion_roc_auc_same_holdout": champ_auc, "artifact": artifact, "artifact_sha256": digest,
        "training_fingerprint": fingerprint,
        "reference": _json_safe(reference_values(prepare(split.train, result.numeric, result.categorical),
                                                 result.numeric, result.categorical)),
    }
    R.record(conn, row, promote)
    R.prune_rejected(conn, settings.model.keep_rejected_models,
                     (settings.model.pinned_version,) if settings.model.pinned_version else ())
    return row


def _json_safe(ref: dict) -> dict:
    """NaN (no value in training) as null, numpy numbers as plain ones."""
    out = {}
    for k, v in ref.items():
        if isinstance(v, float) and v != v:
            out[k] = None
        else:
            out[k] = v.item() if hasattr(v, "item") else v
    return out


def _metrics_table(row: dict) -> str:
    lines = [{"model": f"{row['algorithm']} (this version)", **_summary(row["metrics"])}]
    for name, m in row["candidates"].items():
        if name != row["algorithm"]:
            uncalibrated = m.get("calibrated") is False
            lines.append({"model": name + (" (not chosen: fitted once, uncalibrated; ranking only)"
                                           if uncalibrated else ""), **_summary(m)})
    for name, m in row["baselines"].items():
        lines.append({"model": name.replace("_", " "), **_summary(m)})
    if row["metrics"].get("accounts"):
        lines.append({"model": "accounts, 1 - prod(1 - p) of their users (vs account labels)",
                      **_summary(row["metrics"]["accounts"])})
    return md_table(lines)


def _summary(m: dict) -> dict:
    def f(v):
        return "-" if v is None else f"{v:.3f}"
    return {"ROC AUC": f(m.get("roc_auc")), "CV AUC, training part": f(m.get("selection_roc_auc")),
            "PR AUC": f(m.get("pr_auc")), "Brier": f(m.get("brier")),
            "calib. error": f(m.get("calibration_error")), "precision@thr": f(m.get("precision_at_threshold")),
            "recall@thr": f(m.get("recall_at_threshold")), "flagged": "-" if m.get("flagged") is None else m["flagged"]}


def build_model_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    code_version = f"{MODEL_LOGIC_VERSION}-{signal_set(settings).definition_hash}"

    @dg.asset(
        name="conversion_model",
        deps=["training_set", "activation_milestones"],
        group_name=GROUP, kinds={"sklearn", "duckdb"}, owners=OWNERS, tags=TAGS, pool=POOL,
        code_version=code_version,
        metadata={"dagster/table_name": R.REGISTRY},
    )
    def conversion_model(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """Retrains the conversion model on training_set with a time split, compares gradient boosting and
        logistic regression with the classic and the proposed rule on the holdout, and promotes the new model to
        champion only if it passes every gate and beats the champion on the same holdout by the margin; otherwise
        the champion stays and the candidate is recorded as rejected with the reason. When nothing the
        training depends on changed since the last training (training_fingerprint), it is not repeated."""
        with warehouse.get_connection() as conn:
            if not table_exists(conn, "training_set"):
                raise TrainingError("training_set does not exist yet: materialize the features stage first")
            fingerprint = training_fingerprint(conn, settings)
            same = unchanged_since(conn, fingerprint)
            if same is not None:
                scoring = R.scoring_model(conn, settings.model.pinned_version)
                reason = (f"not retrained: the training set, model settings, proposed rule, signals and code are "
                          f"unchanged since {same['version']} ({same['status']}), which a new training would repeat")
                context.log.info(reason)
                return dg.MaterializeResult(metadata={
                    "status": "not retrained", "reason": reason, "same_as": same["version"],
                    "scoring_version": scoring["version"] if scoring else "none"})
            try:
                row = train_and_register(conn, settings, fingerprint=fingerprint)
            except TrainingError as e:
                # not enough history yet: nothing is trained, the champion (if any) keeps scoring and
                # the gates say whether anything may score
                R.ensure_registry(conn)
                scoring = R.scoring_model(conn, settings.model.pinned_version)
                context.log.warning(f"no model trained: {e}")
                return dg.MaterializeResult(metadata={
                    "status": "not trained", "reason": str(e),
                    "scoring_version": scoring["version"] if scoring else "none"})
            scoring = R.scoring_model(conn, settings.model.pinned_version)
        m = row["metrics"]
        context.log.info(f"model {row['version']}: {row['status']} ({row['reason']})")
        deciles = [{"decile": d["decile"], "rows": d["rows"], "conversion": f"{d['conversion_rate']:.1%}",
                    "lift": d["lift"]} for d in m["deciles"]]
        calib = [{"bin": c["bin"], "rows": c["rows"], "predicted": f"{c['mean_predicted']:.3f}",
                  "observed": f"{c['observed']:.3f}"} for c in m["calibration_curve"]]
        return dg.MaterializeResult(metadata={
            "version": row["version"], "status": row["status"], "reason": row["reason"],
            "algorithm": row["algorithm"], "scoring_version": scoring["version"] if scoring else "none",
            "roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "brier": m["brier"],
            "account_roc_auc": (m.get("accounts") or {}).get("roc_auc"),
            **({"oracle_roc_auc": m["oracle_roc_auc"]} if "oracle_roc_auc" in m else {}),
            "calibration_error": m["calibration_error"],
            "train_window": f"{row['train_start']} .. {row['train_end']} ({row['train_rows']} rows, "
                            f"{row['train_positives']} conversions)",
            "holdout_window": f"{row['holdout_start']} .. {row['holdout_end']} ({row['holdout_rows']} rows, "
                              f"{row['holdout_positives']} conversions)",
            "comparison": dg.MetadataValue.md(_metrics_table(row)),
            "deciles": dg.MetadataValue.md(chart_md(lambda: decile_chart(m["deciles"]), "lift by decile",
                                                    md_table(deciles), context.log)),
            "calibration_curve": dg.MetadataValue.md(chart_md(lambda: calibration_chart(m["calibration_curve"]),
                                                              "calibration curve", md_table(calib), context.log)),
            "top_features": dg.MetadataValue.md(md_table(
                [{"feature": f, "ROC AUC drop": v} for f, v in row["importance"][:10]])),
            "gates": dg.MetadataValue.md(md_table(
                [{"gate": k, "passed": v["passed"], "value": v["value"], "bound": v["bound"]}
                 for k, v in row["gates"].items()])),
            "seconds_per_step": dg.MetadataValue.md(md_table(
                [{"step": k, "seconds": v} for k, v in row["seconds"].items()])),
        })

    @dg.asset(
        name="pql_performance",
        deps=["conversion_model", "training_set", "activation_milestones"],
        group_name=GROUP, kinds={"sklearn", "duckdb"}, owners=OWNERS, tags=TAGS, pool=POOL,
        code_version=code_version, metadata={"dagster/table_name": "pql_performance"},
    )
    def pql_performance(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """Backtest of the scoring model, the proposed rule and the classic rule over every labelled snapshot: PQL
        rate, conversion rate of PQLs vs the others (lift; PLG teams expect 2-5x), precision and recall. Snapshots
        the model trained on are marked in_sample."""
        with warehouse.get_connection() as conn:
            R.ensure_registry(conn)
            row = R.scoring_model(conn, settings.model.pinned_version)
            if row is None or not table_exists(conn, "training_set"):
                context.log.warning("no scoring model yet: nothing to backtest")
                return dg.MaterializeResult(metadata={"dagster/row_count": 0})
            perf = P.backtest(conn, row, R.load_artifact(row), settings.model.pql_threshold,
                              settings.model.classic_rule, load_proposed_rule(settings))
            ensure_columns(conn, "pql_performance", P.COLUMNS)
            with registered(conn, "fx_perf", perf):
                replace_rows(conn, "pql_performance", [c for c, _ in P.COLUMNS], "fx_perf")
        oos = perf[~perf["in_sample"].astype(bool)]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(perf), "model_version": row["version"],
            "out_of_sample": dg.MetadataValue.md(md_table(P.summary(perf))),
            "lift_per_snapshot": dg.MetadataValue.md(chart_md(
                lambda: lift_chart(oos.to_dict("records")), "lift per snapshot, out of sample", log=context.log)
                if len(oos) else "_no out-of-sample snapshot yet_")})

    return [conversion_model, pql_performance]


def build_model_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """The gates, on the model that will score leads (the champion, or the pinned version):
    a rejected candidate does not block scoring while a champion that passes them exists; a
    scoring model that fails one (a pinned version, or gates tightened since) blocks (ERROR).
    With no model at all yet (too little history) they warn."""
    specs = {
        "auc_floor": "ROC AUC on the holdout at or above model.gates.min_auc",
        "beats_rules": "ROC AUC above the best rule baseline's (classic and proposed rule) plus the margin",
        "calibration": "expected calibration error at or below model.gates.max_calibration_error",
        "no_dominant_feature": "no single feature carries more than model.gates.max_top_feature_share of the "
                               "permutation importance (a leak smell)",
    }

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(name, asset="conversion_model", blocking=True, description=desc)
               for name, desc in specs.items()],
        can_subset=False,
    )
    def model_gates(warehouse: Warehouse):
        with warehouse.get_connection() as conn:
            R.ensure_registry(conn)
            row = R.scoring_model(conn, settings.model.pinned_version)
        for name in specs:
            if row is None:
                # not enough history has been seen to train one: a warning (scoring then has no model
                # to use), not a failure of the run
                yield dg.AssetCheckResult(check_name=name, asset_key="conversion_model", passed=False,
                                          severity=dg.AssetCheckSeverity.WARN,
                                          description="no model has passed the gates yet (see the asset's reason); "
                                                      "no lead is scored by a model",
                                          metadata={"scoring_version": "none"})
                continue
            # the stored metrics against the gates as configured now (they may have been tightened)
            g = R.gate_results(row["metrics"], row["baselines"], top_feature_share(row["importance"]),
                               gates(settings))[name]
            yield dg.AssetCheckResult(
                check_name=name, asset_key="conversion_model", passed=bool(g["passed"]),
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"scoring_version": row["version"], "value": g["value"],
                          "bound": g["bound"] if g["bound"] is not None else "none"})

    @dg.asset_check(asset="pql_performance", blocking=False,
                    description="Out of sample, the model's PQLs convert at least 2x as often as the other users "
                                "(PLG teams expect 2-5x); below that the scores are not worth a sales call.")
    def pql_lift(warehouse: Warehouse):
        with warehouse.get_connection() as conn:
            if not table_exists(conn, "pql_performance"):
                return dg.AssetCheckResult(passed=False, metadata={"note": "no backtest yet"})
            perf = conn.execute("SELECT * FROM pql_performance").df()
        rows = {r["definition"]: r for r in P.summary(perf)} if len(perf) else {}
        model = rows.get("model")
        if model is None or model["lift"] is None:
            return dg.AssetCheckResult(passed=False, metadata={"note": "no out-of-sample snapshot to judge"})
        return dg.AssetCheckResult(passed=model["lift"] >= 2.0, metadata={
            "lift": model["lift"], "conversion_pql": model["conversion_pql"],
            "conversion_other": model["conversion_other"],
            **{f"lift_{k}": v["lift"] for k, v in rows.items() if k != "model" and v["lift"] is not None}})

    return [model_gates, pql_lift]
