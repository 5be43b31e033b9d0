"""Training and evaluating the conversion model (pure functions; the asset is in assets.py).

The model learns P(user converts within the label horizon | features at the snapshot) from
``training_set``. Evaluation is honest about time:

- **time split**: the newest ``holdout_snapshots`` labelled snapshots are the holdout; the
  model trains only on snapshots at least ``embargo_days`` (default: the label horizon)
  before the first holdout snapshot, so no training label was observed during the holdout
  period;
- **candidates**: gradient boosting (``HistGradientBoostingClassifier``) and logistic
  regression, each calibrated on the training part (``CalibratedClassifierCV``). The one
  with the best ROC AUC in a cross-validation *inside the training part* (folds by user, so
  no user is on both sides) is the candidate: the holdout judges the chosen model (gates,
  champion comparison) and is never used to choose it;
- **baselines**: the classic hand-made rule (``model.classic_rule``: every listed feature at
  or above its value) and the rule ``activation_milestones`` proposed, scored on the same
  holdout rows (a rule's score is 0/1);
- **metrics** for each: ROC AUC, PR AUC (average precision), Brier score, expected
  calibration error and the calibration curve, conversion rate and lift per decile,
  precision and recall at the PQL threshold, PQLs per snapshot;
- **accounts**: an account's probability is 1 - prod(1 - p) over its free users (it converts
  when any of them does); it is evaluated against the account labels of the holdout
  snapshots (``metrics["accounts"]``);
- **importance**: permutation importance on the holdout (ROC AUC drop), whose top share is
  the leak smell the gates check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# columns of training_set that are keys, bookkeeping or the label, never model inputs
NOT_FEATURES = {
    "snapshot_date", "user_id", "account_id", "signup_date", "is_paying", "max_event_ts", "max_partition_date",
    "definition_hash", "acct_signup_date", "acct_is_paying", "acct_max_event_ts", "acct_max_partition_date",
    "label", "converted_at", "label_window_start", "label_window_end",
}
NUMERIC_TYPES = ("BIGINT", "INTEGER", "DOUBLE", "FLOAT", "HUGEINT", "DECIMAL", "BOOLEAN", "SMALLINT", "TINYINT")


@dataclass(frozen=True)
class ModelSpec:
    holdout_snapshots: int = 2
    embargo_days: int = 30
    candidates: tuple[str, ...] = ("gradient_boosting", "logistic_regression")
    calibration: str = "isotonic"
    pql_threshold: float = 0.3
    classic_rule: tuple[tuple[str, float], ...] = ()
    min_train_rows: int = 200
    min_train_positives: int = 20
    exclude_features: tuple[str, ...] = ()
    seed: int = 7


@dataclass
class Split:
    train: pd.DataFrame
    holdout: pd.DataFrame
    train_snapshots: list[dt.date]
    holdout_snapshots: list[dt.date]


@dataclass
class TrainResult:
    algorithm: str
    model: object
    numeric: list[str]
    categorical: list[str]
    split: Split
    metrics: dict                      # the chosen model's holdout metrics
    candidates: dict[str, dict]        # every candidate's holdout metrics
    baselines: dict[str, dict]         # every rule's holdout metrics
    importance: list[tuple[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)   # wall time of each step

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    @property
    def feature_hash(self) -> str:
        return hashlib.sha256(json.dumps([self.numeric, self.categorical]).encode()).hexdigest()[:16]


class TrainingError(ValueError):
    """The data cannot train a model (too few rows or positives); the message says what is missing."""


def feature_columns(conn, table: str = "training_set", exclude: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Numeric and categorical model inputs: every column of ``table`` but keys, bookkeeping,
    the label and ``exclude`` (so a signal added to signals.yaml becomes an input without code)."""
    numeric, categorical = [], []
    for name, dtype, *_ in conn.execute(f"DESCRIBE {table}").fetchall():
        if name in NOT_FEATURES or name in exclude:
            continue
        if dtype.split("(")[0] in NUMERIC_TYPES:
            numeric.append(name)
        elif dtype == "VARCHAR":
            categorical.append(name)
    return numeric, categorical


def load_frame(conn, table: str = "training_set") -> pd.DataFrame:
    df = conn.execute(f"SELECT * FROM {table} WHERE label IS NOT NULL ORDER BY snapshot_date, user_id").df()
    df["snapshot_date"] = pd.to_datetime(df["snapshot_date"]).dt.date
    return df


def prepare(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Model inputs: numbers as floats (booleans 0/1, missing NaN), categories as strings."""
    x = pd.DataFrame(index=df.index)
    for c in numeric:
        x[c] = pd.to_numeric(df[c].astype("float64"), errors="coerce")
    for c in categorical:
        x[c] = df[c].astype("object").where(df[c].notna(), "(missing)").astype(str)
    return x


def time_split(df: pd.DataFrame, holdout_snapshots: int, embargo_days: int) -> Split:
    snaps = sorted(df["snapshot_date"].unique())
    if len(snaps) <= holdout_snapshots:
        raise TrainingError(f"{len(snaps)} labelled snapshot(s) in training_set; a time split needs more than "
                            f"model.holdout_snapshots={holdout_snapshots}")
    hold = snaps[-holdout_snapshots:]
    cutoff = hold[0] - dt.timedelta(days=embargo_days)
    train_snaps = [s for s in snaps if s <= cutoff]
    if not train_snaps:
        raise TrainingError(f"no labelled snapshot lies {embargo_days} days (the embargo) before the holdout, "
                            f"which starts {hold[0]}; more history is needed")
    return Split(df[df["snapshot_date"].isin(train_snaps)], df[df["snapshot_date"].isin(hold)], train_snaps, hold)


def build_model(algorithm: str, numeric: list[str], categorical: list[str], calibration: str, seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cat = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, sparse_output=False)
    if algorithm == "gradient_boosting":
        pre = ColumnTransformer([("num", "passthrough", numeric), ("cat", cat, categorical)])
        est = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                             min_samples_leaf=20, l2_regularization=1.0, random_state=seed)
    elif algorithm == "logistic_regression":
        num = Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())])
        pre = ColumnTransformer([("num", num, numeric), ("cat", cat, categorical)])
        est = LogisticRegression(C=0.5, max_iter=2000)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    pipe = Pipeline([("prepare", pre), ("model", est)])
    if calibration == "none":
        return pipe
    # ensemble=False: the calibration is fitted on out-of-fold predictions and one model trained
    # on all rows predicts (three times cheaper to score than an ensemble of the folds' models,
    # which ranked no better on generated data)
    return CalibratedClassifierCV(pipe, method=calibration, cv=3, ensemble=False)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(err)


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float, snapshots: pd.Series | None = None) -> dict:
    """Holdout metrics of scores ``p`` (probabilities, or 0/1 for a rule) against labels ``y``."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    both = len(set(y)) == 2
    base = float(y.mean()) if len(y) else 0.0
    flagged = p >= threshold
    out = {
        "rows": int(len(y)), "positives": int(y.sum()), "base_rate": round(base, 5),
        "roc_auc": round(float(roc_auc_score(y, p)), 5) if both else None,
        "pr_auc": round(float(average_precision_score(y, p)), 5) if both else None,
        "brier": round(float(brier_score_loss(y, np.clip(p, 0, 1))), 5),
        "calibration_error": round(expected_calibration_error(y, np.clip(p, 0, 1)), 5),
        "flagged": int(flagged.sum()),
        "precision_at_threshold": round(float(y[flagged].mean()), 5) if flagged.any() else None,
        "recall_at_threshold": round(float(y[flagged].sum() / max(y.sum(), 1)), 5),
    }
    # deciles by score; tied scores are ranked in the rows' order, so callers pass rows in a
    # fixed order (by snapshot and entity), never a table's storage order
    order = pd.Series(p).rank(method="first", ascending=False).to_numpy()
    dec = np.ceil(order / max(len(p), 1) * 10).astype(int)
    out["deciles"] = [
        {"decile": d, "rows": int((dec == d).sum()), "conversion_rate": round(float(y[dec == d].mean()), 5),
         "lift": round(float(y[dec == d].mean() / base), 3) if base else None,
         "min_score": round(float(p[dec == d].min()), 5)}
        for d in range(1, 11) if (dec == d).any()]
    # calibration curve: mean predicted vs observed per probability decile bin
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    out["calibration_curve"] = [
        {"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "rows": int((idx == b).sum()),
         "mean_predicted": round(float(p[idx == b].mean()), 5), "observed": round(float(y[idx == b].mean()), 5)}
        for b in range(10) if (idx == b).any()]
    if snapshots is not None:
        per = pd.Series(flagged).groupby(np.asarray(snapshots)).sum()
        out["pqls_per_snapshot"] = {str(k): int(v) for k, v in per.items()}
    return out


def classic_rule_scores(df: pd.DataFrame, rule: dict[str, float]) -> np.ndarray:
    """1 where every listed feature is at or above its value (missing features never fire)."""
    hit = np.ones(len(df), dtype=bool)
    for col, v in rule.items():
        if col not in df.columns:
            raise TrainingError(f"model.classic_rule uses {col!r}, which is not a feature column; "
                                f"features are the signals of signals.yaml")
        hit &= pd.to_numeric(df[col].astype("float64"), errors="coerce").fillna(-np.inf).to_numpy() >= v
    return hit.astype(float)


def proposed_rule_scores(conn, rows: pd.DataFrame, rule: dict) -> np.ndarray:
    """1 where the user reached any milestone of the proposed rule (``match: any``; all with
    ``match: all``) and none of its ``unless`` ones, counting only events known by the
    snapshot: "event >= N times within D days of signup" as milestone discovery defines it."""
    return proposed_rule_hits(conn, rows, rule)[0]


def _milestone_name(c: dict) -> str:
    return f"{c.get('milestone') or c.get('event')} >= {int(c['threshold'])} in {int(c['within_days_of_signup'])} d"


def proposed_rule_hits(conn, rows: pd.DataFrame, rule: dict) -> tuple[np.ndarray, list[list[str]]]:
    """The rule's verdict per row (1/0) and the milestones (conditions and unless ones) each
    row reached, named "<milestone> >= N in D d". ``rows`` carry user_id, snapshot_date and
    signup_date (the features' signup day)."""
    from pql_pipeline.defs.features.milestones import ACTIVE_DAYS
    from pql_pipeline.defs.features.sql import event_condition, events_sql, visible
    from pql_pipeline.lib.warehouse import registered
    from pql_pipeline.signals import Signal

    conds = list(rule.get("conditions") or [])
    unless = list(rule.get("unless") or [])
    if rows.empty or not (conds or unless):
        return np.zeros(len(rows)), [[] for _ in range(len(rows))]
    keys = rows[["user_id", "snapshot_date", "signup_date"]].copy().reset_index(drop=True)
    keys["row"] = np.arange(len(keys))
    last = max(keys["snapshot_date"])
    # one pass: only the events a condition counts, of the rows' users, joined to the rows and
    # counted per condition (an event counts if known by the row's snapshot, on or after the
    # signup day and within the condition's days). Each event's conditions are judged once; the
    # join keeps only the events known by the row's snapshot and inside the longest window, so
    # a row meets the events of its user's first days, not of the user's whole history.
    flags, cols = [], []
    for i, c in enumerate(conds + unless):
        if c.get("event") in (None, ACTIVE_DAYS) and c.get("milestone") == ACTIVE_DAYS:
            cond = "e.event_type IN ('track', 'page', 'screen')"
            count = "COUNT(DISTINCT e.day) FILTER (WHERE {cond} AND {window})"
        else:
            # the same filter as the signal it came from (booleans and numbers compared as the features do)
            cond = event_condition(Signal(name="milestone", kind="count", event=c["event"],
                                          where=c.get("where") or None))
            count = "COUNT(*) FILTER (WHERE {cond} AND {window})"
        # the join below keeps only events known by the row's snapshot, on or after its signup day
        window = f"DATE_DIFF('day', r.signup_date, e.day) < {int(c['within_days_of_signup'])}"
        flags.append(f"coalesce({cond}, FALSE) AS f{i}")
        cols.append(f"{count.format(cond=f'e.f{i}', window=window)} >= {int(c['threshold'])} AS c{i}")
    longest = max(int(c["within_days_of_signup"]) for c in conds + unless)
    any_flag = " OR ".join(f"f{i}" for i in range(len(flags)))
    with registered(conn, "ml_rule_rows", keys):
        hits = conn.execute(f"""
            WITH e AS (
                SELECT * FROM (
                    SELECT e.user_id, e.day, e.avail_day, e.until_day, {', '.join(flags)}
                    FROM ({events_sql(last)}) AS e
                    WHERE e.user_id IN (SELECT user_id FROM ml_rule_rows))
                WHERE {any_flag})
            SELECT r.row, {', '.join(cols)}
            FROM ml_rule_rows AS r LEFT JOIN e ON e.user_id = r.user_id AND {visible('e', 'r.snapshot_date')}
                 AND e.day >= r.signup_date AND e.day < r.signup_date + INTERVAL {longest} DAY
            GROUP BY r.row ORDER BY r.row""").df()
    pos = hits[[f"c{i}" for i in range(len(conds))]].fillna(False).to_numpy(dtype=bool)
    neg = hits[[f"c{i}" for i in range(len(conds), len(conds) + len(unless))]].fillna(False).to_numpy(dtype=bool)
    fired = (pos.all(axis=1) if rule.get("match") == "all" else pos.any(axis=1)) if conds else np.ones(len(rows), bool)
    if unless:
        fired &= ~neg.any(axis=1)
    names = [_milestone_name(c) for c in conds + unless]
    both = np.hstack([pos, neg]) if unless else pos
    return fired.astype(float), [[n for n, hit in zip(names, r) if hit] for r in both]


# what a candidate that was not chosen reports from its single, uncalibrated fit
RANKING_METRICS = ("roc_auc", "pr_auc", "rows", "positives", "base_rate")
SELECTION_FOLDS = 3
SELECTION_MAX_ROWS = 200_000   # the cross-validation that chooses the algorithm samples users beyond this


def selection_scores(spec: ModelSpec, x: pd.DataFrame, y: np.ndarray, users: pd.Series,
                     numeric: list[str], categorical: list[str]) -> dict[str, float]:
    """Mean ROC AUC of each candidate (uncalibrated: calibration keeps the ranking) over
    folds of the training rows grouped by user. Large training parts are sampled by user
    down to about SELECTION_MAX_ROWS rows first."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    if len(x) > SELECTION_MAX_ROWS:
        ids = users.unique()
        keep = np.random.default_rng(spec.seed).choice(ids, int(len(ids) * SELECTION_MAX_ROWS / len(x)), replace=False)
        mask = users.isin(keep).to_numpy()
        x, y, users = x[mask], y[mask], users[mask]
    if users.nunique() < SELECTION_FOLDS:
        return {name: None for name in spec.candidates}   # too few users to fold: the first candidate
    folds = GroupKFold(n_splits=SELECTION_FOLDS)
    out = {}
    for name in spec.candidates:
        aucs = []
        for a, b in folds.split(x, y, users):
            if len(set(y[b])) < 2 or len(set(y[a])) < 2:
                continue
            m = build_model(name, numeric, categorical, "none", spec.seed).fit(x.iloc[a], y[a])
            aucs.append(roc_auc_score(y[b], m.predict_proba(x.iloc[b])[:, 1]))
        out[name] = round(float(np.mean(aucs)), 5) if aucs else 0.0
    return out


def account_probability(users: pd.DataFrame, keys) -> pd.Series:
    """P(the account converts) = 1 - prod(1 - p) over its users' ``probability``, per group
    of ``keys`` (summed in log space)."""
    q = np.clip(users["probability"].to_numpy(dtype=float), 0.0, 1.0 - 1e-12)
    return 1.0 - np.exp(users.assign(_log_q=np.log1p(-q)).groupby(keys)["_log_q"].sum())


def reference_values(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict:
    """Typical value of every input in the model's training rows (ablation baseline)."""
    ref = {c: float(frame[c].median()) if frame[c].notna().any() else np.nan for c in numeric}
    for c in categorical:
        mode = frame[c].mode()
        ref[c] = mode.iloc[0] if len(mode) else "(missing)"
    return ref


def account_metrics(conn, holdout: pd.DataFrame, p: np.ndarray, threshold: float,
                    table: str = "account_training_set") -> dict | None:
    """The holdout's accounts scored by their users (1 - prod(1 - p), as scoring does) against
    the account labels of the same snapshots; None without account labels."""
    from pql_pipeline.lib.warehouse import table_exists

    if not table_exists(conn, table) or holdout.empty:
        return None
    snaps = sorted(holdout["snapshot_date"].unique())
    labels = conn.execute(
        f"SELECT snapshot_date, account_id, label FROM {table} WHERE label IS NOT NULL AND snapshot_date IN "
        f"({', '.join('?' for _ in snaps)}) ORDER BY snapshot_date, account_id", list(snaps)).df()
    if labels.empty:
        return None
    labels["snapshot_date"] = pd.to_datetime(labels["snapshot_date"]).dt.date
    users = holdout[["snapshot_date", "account_id"]].assign(probability=p).dropna(subset=["account_id"])
    acct = account_probability(users, ["snapshot_date", "account_id"]).rename("p").reset_index()
    j = labels.merge(acct, on=["snapshot_date", "account_id"], how="inner")
    out = evaluate(j["label"].astype(int).to_numpy(), j["p"].to_numpy(), threshold,
                   j["snapshot_date"].astype(str).to_numpy())
    out["accounts_without_scored_users"] = int(len(labels) - len(j))
    return out


IMPORTANCE_MAX_ROWS = 50_000   # permutation importance samples the holdout beyond this


def permutation_importance_top(model, x: pd.DataFrame, y: np.ndarray, seed: int) -> list[tuple[str, float]]:
    """Mean ROC AUC drop when each input column is shuffled, largest first (on a sample of
    IMPORTANCE_MAX_ROWS holdout rows, stratified by label, when the holdout is larger)."""
    from sklearn.inspection import permutation_importance

    if len(set(y)) < 2:
        return []
    if len(x) > IMPORTANCE_MAX_ROWS:
        from sklearn.model_selection import train_test_split

        x, _, y, _ = train_test_split(x, y, train_size=IMPORTANCE_MAX_ROWS, random_state=seed,
                                      stratify=y if np.bincount(y).min() >= 2 else None)
    r = permutation_importance(model, x, y, scoring="roc_auc", n_repeats=3, random_state=seed)
    pairs = sorted(zip(x.columns, r.importances_mean), key=lambda t: -t[1])
    return [(c, round(float(v), 5)) for c, v in pairs]


def top_feature_share(importance: list[tuple[str, float]]) -> float | None:
    pos = [v for _, v in importance if v > 0]
    return round(max(pos) / sum(pos), 4) if pos else None


def train(conn, spec: ModelSpec, proposed_rule: dict | None = None, table: str = "training_set") -> TrainResult:
    """Split; choose the algorithm by cross-validation inside the training part; fit every
    candidate and evaluate it, the baselines and the chosen model's account scores on the
    holdout."""
    numeric, categorical = feature_columns(conn, table, spec.exclude_features)
    df = load_frame(conn, table)
    split = time_split(df, spec.holdout_snapshots, spec.embargo_days)
    n_pos = int(split.train["label"].sum())
    if len(split.train) < spec.min_train_rows or n_pos < spec.min_train_positives:
        raise TrainingError(f"the training part has {len(split.train)} rows and {n_pos} conversions; "
                            f"model.min_train_rows={spec.min_train_rows} and "
                            f"model.min_train_positives={spec.min_train_positives} are needed")
    x_train, x_hold = prepare(split.train, numeric, categorical), prepare(split.holdout, numeric, categorical)
    y_train = split.train["label"].astype(int).to_numpy()
    y_hold = split.holdout["label"].astype(int).to_numpy()
    snaps = split.holdout["snapshot_date"].astype(str).to_numpy()
    clock = _Clock()
    chosen_by = (selection_scores(spec, x_train, y_train, split.train["user_id"], numeric, categorical)
                 if len(spec.candidates) > 1 else {spec.candidates[0]: None})
    clock.lap("choose algorithm (cross-validation)")
    best = max(spec.candidates, key=lambda n: (chosen_by[n] or 0, -spec.candidates.index(n)))
    fitted, scores, probs = {}, {}, {}
    for name in spec.candidates:
        # only the chosen candidate is calibrated (cv=3: four fits); the others are fitted once, for
        # their holdout ranking beside it (calibration keeps the ranking, not the probabilities)
        model = build_model(name, numeric, categorical, spec.calibration if name == best else "none", spec.seed)
        model.fit(x_train, y_train)
        fitted[name] = model
        clock.lap(f"fit {name}")
        probs[name] = model.predict_proba(x_hold)[:, 1]
        scores[name] = evaluate(y_hold, probs[name], spec.pql_threshold, snaps)
        if name != best:
            scores[name] = {k: scores[name][k] for k in RANKING_METRICS if k in scores[name]}
            scores[name]["calibrated"] = False
        scores[name]["selection_roc_auc"] = chosen_by[name]
        clock.lap(f"evaluate {name}")
    baselines = {}
    if spec.classic_rule:
        baselines["classic_rule"] = evaluate(y_hold, classic_rule_scores(split.holdout, dict(spec.classic_rule)),
                                             0.5, snaps)
    if proposed_rule and proposed_rule.get("conditions"):
        baselines["proposed_rule"] = evaluate(
            y_hold, proposed_rule_scores(conn, split.holdout, proposed_rule), 0.5, snaps)
    accounts = account_metrics(conn, split.holdout, probs[best], spec.pql_threshold)
    if accounts is not None:
        scores[best]["accounts"] = accounts
    clock.lap("baselines and accounts")
    importance = permutation_importance_top(fitted[best], x_hold, y_hold, spec.seed)
    clock.lap("permutation importance")
    return TrainResult(best, fitted[best], numeric, categorical, split, scores[best], scores, baselines, importance,
                       clock.laps)


class _Clock:
    def __init__(self):
        import time

        self._time = time.perf_counter
        self._last = self._time()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._time()
        self.laps[name] = round(now - self._last, 2)
        self._last = now
