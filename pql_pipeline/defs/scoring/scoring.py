"""Scoring leads (pure functions; the asset is in assets.py).

For a snapshot day every free user with a feature row gets: the model's probability and its
percentile among that day's users, a tier (``scoring.tiers``), whether it is a PQL
(probability at or above ``model.pql_threshold``), **reasons** derived from the model for
that lead, the model version, the account's size segment at the snapshot, and a route.

Reasons are contributions: for each signal of signals.yaml that has a ``reason`` sentence,
the probability points it adds to the user's probability against the typical lead (every
input at its typical value in the model's training data: median; the most common value for
a category). For a logistic regression that is the ablation (the probability minus the
probability with that signal set to its typical value), in closed form. For gradient
boosting it is the path attribution: what the trees' splits on that signal add to the raw
score along the user's path, less what they add along the typical lead's, taken out of the
score through the calibration (for a linear model the two are the same number). Ablating a
tree model costs a prediction per signal, far too slow for a day of 700 k users. Any other
model is ablated by prediction. The largest positive contributions of positive signals are
the reasons to call ("invited 3 teammates"); the largest negative contributions of
negative signals are the caveats ("opened 4 support tickets about the basics"). Each comes
with its contribution in probability points, so sales can see how much it mattered.

Accounts are scored from their free users: P(the account converts) = 1 - prod(1 - p) over
them (it converts when any of them does; on generated data this ranks accounts better than
a model trained on account features alone). An account's reasons are its most likely
users' reasons, naming how many of its users are PQLs.

Routing (``scoring.routing``): an account whose size segment is a sales segment goes to
sales when its tier is a sales tier, with the users whose own tier is a sales tier (or, if
none is, its most likely user) as the contacts; users of other accounts get an in-app
nudge when their tier is a nudge tier. A nudge is suppressed while the account is worked by
sales (routed to sales that day or within ``suppress_days``) and capped at
``max_nudges_per_account`` per account and day (highest probability first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pql_pipeline.defs.model.training import account_probability
from pql_pipeline.signals import Signal


@dataclass(frozen=True)
class ScoringSpec:
    tiers: tuple[tuple[str, float], ...] = (("hot", 0.3), ("warm", 0.1))   # highest first; below all: cold
    pql_threshold: float = 0.3
    reasons: int = 3
    min_contribution: float = 0.005
    segments: tuple[tuple[str, int | None], ...] = (("solo", 1), ("smb", 50), ("mid_market", 1000),
                                                     ("enterprise", None))
    sales_segments: tuple[str, ...] = ("mid_market", "enterprise")
    sales_tiers: tuple[str, ...] = ("hot",)
    nudge_tiers: tuple[str, ...] = ("hot", "warm")
    max_nudges_per_account: int = 2
    suppress_days: int = 30


def tier_of(p: np.ndarray, tiers) -> np.ndarray:
    out = np.full(len(p), "cold", dtype=object)
    for name, threshold in sorted(tiers, key=lambda t: t[1]):   # lowest first: higher tiers overwrite
        out[p >= threshold] = name
    return out


def segment_of(employees: pd.Series, segments) -> pd.Series:
    """The size segment of each account by employee count (unknown if missing): the first
    segment whose bound the count does not exceed (a segment without a bound takes any)."""
    e = pd.to_numeric(employees, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    out = np.full(len(e), "unknown", dtype=object)
    left = ~np.isnan(e)
    for name, bound in segments:
        hit = left & (True if bound is None else e <= bound)
        out[hit] = name
        left &= ~hit
    return pd.Series(out, index=employees.index)


def _text(s: Signal, value, detail) -> str:
    try:
        v = float(value) if value is not None and not isinstance(value, str) else value
        if isinstance(v, float) and v.is_integer() and "{value:" not in (s.reason or ""):
            v = int(v)
        return s.reason.format(value=v, detail=detail if detail is not None else "")
    except (ValueError, TypeError):
        return f"{s.name}: {value}"


def explainable(signals: list[Signal], account_signals: list[Signal], columns) -> list[tuple[str, Signal, str]]:
    """(input column, signal, prefix of its sentence) for every input a reason can be told
    about: user signals, the best member's value of each (``acct_best_*``) and account
    signals, each with a ``reason`` sentence and a polarity."""
    out = []
    for s in signals:
        if s.reason and s.polarity != "neutral":
            out.append((s.name, s, ""))
            if "max" in s.rollups:
                out.append((f"acct_best_{s.name}", s, "someone in the account "))
    for s in account_signals:
        if s.reason and s.polarity != "neutral":
            out.append((f"acct_{s.name}", s, ""))
    return [t for t in out if t[0] in columns]


def _at_reference(values: pd.Series, ref) -> np.ndarray:
    """Rows whose value already is the typical one (missing counts as equal to a missing
    reference): their ablation changes nothing, so it is not predicted."""
    if isinstance(ref, float) and np.isnan(ref):
        return values.isna().to_numpy()
    return (values == ref).fillna(False).to_numpy(dtype=bool)


def _pipeline_parts(model):
    """(column transformer, estimator, calibration of the estimator's raw score) of a pipeline
    as ``training.build_model`` makes it, calibrated by one sigmoid or isotonic calibrator or
    not at all (then the raw score is a logit), else None."""
    from scipy.special import expit

    calibrate = expit
    try:
        if hasattr(model, "calibrated_classifiers_"):
            if len(model.calibrated_classifiers_) != 1:
                return None
            cc = model.calibrated_classifiers_[0]
            if cc.method not in ("sigmoid", "isotonic") or len(cc.calibrators) != 1:
                return None
            model, calibrate = cc.estimator, cc.calibrators[0].predict
        return model.named_steps["prepare"], model.named_steps["model"], calibrate
    except (AttributeError, KeyError, TypeError):
        return None


def _linear_parts(model):
    """(column transformer, weights, intercept, calibration) of a (calibrated) logistic
    regression pipeline as ``training.build_model`` makes it, else None."""
    from sklearn.linear_model import LogisticRegression

    parts = _pipeline_parts(model)
    if parts is None:
        return None
    pre, est, calibrate = parts
    if not isinstance(est, LogisticRegression) or est.coef_.shape[0] != 1:
        return None
    return pre, est.coef_[0].astype(float), float(est.intercept_[0]), calibrate


def _input_columns(pre) -> list[str] | None:
    """The input column behind each output column of the pipeline's ColumnTransformer."""
    out: list[str] = []
    for name, trans, cols in pre.transformers_:
        if name == "remainder" or trans == "drop":
            continue
        cols = list(cols)
        if trans == "passthrough":
            out += cols
        elif name == "num":
            # imputed values (all-missing columns dropped), then the missing indicators
            names = trans.get_feature_names_out(cols)
            out += [n.removeprefix("missingindicator_") for n in names]
        elif name == "cat" and hasattr(trans, "_n_features_outs"):
            for col, n in zip(cols, trans._n_features_outs):
                out += [col] * n
        else:
            return None
    return out


def _typical_row(x: pd.DataFrame, reference: dict) -> pd.DataFrame:
    """One row of ``x``'s columns, each at its typical value (missing where none is known)."""
    typical = x.iloc[:1].copy()
    for col in x.columns:
        typical[col] = reference.get(col, np.nan)
    return typical


def _taken_out(x: pd.DataFrame, p: np.ndarray, columns: list[str], reference: dict, sources: list[str],
               raw: np.ndarray, calibrate, parts: np.ndarray) -> np.ndarray:
    """Per row and column of ``columns``: the probability ``p`` minus the probability with the
    column's ``parts`` (per model input, what it adds to the raw score ``raw`` against the
    typical lead; ``sources`` names the column behind each input) taken out of the raw score,
    through ``calibrate``. Rows already at the typical value contribute 0."""
    src = np.array(sources)
    mat = np.zeros((len(x), len(columns)))
    for j, col in enumerate(columns):
        k = np.flatnonzero(src == col)
        rows = np.flatnonzero(~_at_reference(x[col], reference.get(col, np.nan)))
        if len(k) and len(rows):
            change = parts[np.ix_(rows, k)].sum(axis=1)
            mat[rows, j] = p[rows] - np.asarray(calibrate(raw[rows] - change), dtype=float)
    return mat


def linear_ablation(model, x: pd.DataFrame, p: np.ndarray, columns: list[str], reference: dict,
                    check_rows: int = 64) -> np.ndarray | None:
    """The ablations of a logistic regression in closed form: a column set to its typical
    value changes only the transformed inputs it produces, so the ablated logit is the row's
    logit minus their weighted change, and the calibration maps it to the probability: one
    transform and one calibration call instead of one prediction per column. Checked against
    real ablations of the first rows; None (ablate) when the model is not such a pipeline or
    the check disagrees by more than 1e-9."""
    parts = _linear_parts(model)
    if parts is None or not len(x):
        return None
    pre, w, b, calibrate = parts
    sources = _input_columns(pre)
    if sources is None or len(sources) != len(w):
        return None
    t = np.asarray(pre.transform(x), dtype=float)
    t_ref = np.asarray(pre.transform(_typical_row(x, reference)), dtype=float)[0]
    mat = _taken_out(x, p, columns, reference, sources, t @ w + b, calibrate, (t - t_ref) * w)
    head = x.iloc[:check_rows]
    slow = _ablate(model, head, p[:check_rows], columns, reference)
    return mat if np.allclose(slow, mat[:len(head)], rtol=0, atol=1e-9) else None


def _tree_expectations(nodes) -> tuple[np.ndarray, np.ndarray]:
    """(expected raw score at each node, parent of each node) of one tree of sklearn's
    histogram gradient boosting: a leaf's value, and for a split the mean of its children
    weighted by the training rows that reached them (children follow their parent in the
    node array, so one backward pass fills every node)."""
    leaf = nodes["is_leaf"].astype(bool)
    value = nodes["value"].astype(float)
    count = nodes["count"].astype(float)
    left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
    parent = np.full(len(nodes), -1, dtype=np.int64)
    for i in range(len(nodes) - 1, -1, -1):
        if not leaf[i]:
            lo, hi = left[i], right[i]
            weight = count[lo] + count[hi]
            if weight > 0:
                value[i] = (count[lo] * value[lo] + count[hi] * value[hi]) / weight
            parent[lo] = parent[hi] = i
    return value, parent


def path_contributions(est, t: np.ndarray) -> tuple[np.ndarray, float]:
    """Path attribution of a fitted ``HistGradientBoostingClassifier`` (binary) on its
    inputs ``t``: per row and input, what the splits on that input add to the raw score
    (logit) along the row's path through every tree (each step from a node to its child
    adds the child's expected value minus the node's), and the base every row starts from
    (the baseline plus each tree's expected value). Per row, base + the row's sum = the raw
    score. A tree's leaf for every row comes from sklearn's own compiled predictor, run on a
    copy of the tree whose node values are the node numbers; a leaf's contributions are
    summed once per tree, so the cost is one prediction plus one lookup per row, tree and
    input the tree splits on."""
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    t = np.ascontiguousarray(t, dtype=np.float64)
    out = np.zeros((t.shape[1], len(t)))        # input-major: each lookup adds to one contiguous row
    known, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    threads = _openmp_effective_n_threads()
    base = float(np.ravel(est._baseline_prediction)[0])
    for (tree,) in est._predictors:
        nodes = tree.nodes
        value, parent = _tree_expectations(nodes)
        base += value[0]
        split_on = nodes["feature_idx"].astype(np.int64)
        inputs = np.unique(split_on[~nodes["is_leaf"].astype(bool)])
        slot = np.full(t.shape[1], -1, dtype=np.int64)
        slot[inputs] = np.arange(len(inputs))
        path = np.zeros((len(nodes), len(inputs)))      # per node: the path to it, per input
        for i in range(1, len(nodes)):
            up = parent[i]
            path[i] = path[up]
            path[i, slot[split_on[up]]] += value[i] - value[up]
        numbered = nodes.copy()
        numbered["value"] = np.arange(len(nodes))
        leaf = TreePredictor(numbered, tree.binned_left_cat_bitsets, tree.raw_left_cat_bitsets).predict(
            t, known, f_idx_map, threads).astype(np.int64)
        for k, f in enumerate(inputs):
            out[f] += path[leaf, k]
    return out.T, base


def tree_attribution(model, x: pd.DataFrame, p: np.ndarray, columns: list[str],
                     reference: dict) -> np.ndarray | None:
    """Per row and column of a gradient-boosting pipeline (``training.build_model``): the
    probability minus the probability with the column's path contribution
    (``path_contributions``, the one-hot columns of a category summed) taken out of the raw
    score, as far as it differs from the typical lead's (the row of ``reference`` values),
    through the calibration. This is what ``linear_ablation`` computes for a logistic
    regression, whose path contribution is its weight times its input; rows already at the
    typical value contribute 0, as in an ablation. None (ablate) when the model is not such
    a pipeline or the contributions do not add up to every row's probability within 1e-9."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    parts = _pipeline_parts(model)
    if parts is None or not len(x):
        return None
    pre, est, calibrate = parts
    if (not isinstance(est, HistGradientBoostingClassifier) or getattr(est, "n_trees_per_iteration_", 0) != 1
            or not hasattr(est, "_predictors")):
        return None
    sources = _input_columns(pre)
    t = np.asarray(pre.transform(x), dtype=float)
    if sources is None or len(sources) != t.shape[1]:
        return None
    try:
        phi, base = path_contributions(est, t)
    except (AttributeError, ImportError, TypeError, ValueError):   # sklearn's private tree layout changed
        return None
    raw = base + phi.sum(axis=1)
    if not np.allclose(np.asarray(calibrate(raw), dtype=float), p, rtol=0, atol=1e-9):
        return None
    phi_ref, _ = path_contributions(est, np.asarray(pre.transform(_typical_row(x, reference)), dtype=float))
    return _taken_out(x, p, columns, reference, sources, raw, calibrate, phi - phi_ref)


def contribution_matrix(model, x: pd.DataFrame, p: np.ndarray, columns: list[str], reference: dict,
                        batch_rows: int = 100_000) -> np.ndarray:
    """Per row and column: the probability points the column adds to the row's probability.
    A logistic regression's is its ablation in closed form (``linear_ablation``: the
    probability minus the probability with the column at its typical value); gradient
    boosting's is its path attribution against the typical lead's (``tree_attribution``);
    any other model's is its ablation by prediction (``_ablate``). Rows already at the
    typical value contribute 0."""
    fast = linear_ablation(model, x, p, columns, reference)
    if fast is None:
        fast = tree_attribution(model, x, p, columns, reference)
    return fast if fast is not None else _ablate(model, x, p, columns, reference, batch_rows)


def _ablate(model, x: pd.DataFrame, p: np.ndarray, columns: list[str], reference: dict,
            batch_rows: int = 100_000) -> np.ndarray:
    """The ablations predicted: the ablated copies of all columns go through the model
    together, in batches of about ``batch_rows`` rows (a prediction call costs far more than
    a row), and rows already at the typical value are not predicted."""
    mat = np.zeros((len(x), len(columns)))
    pending: list[tuple[int, np.ndarray]] = []
    parts: list[pd.DataFrame] = []
    size = 0

    def flush():
        nonlocal pending, parts, size
        if not parts:
            return
        q = model.predict_proba(pd.concat(parts, ignore_index=True))[:, 1]
        at = 0
        for j, rows in pending:
            mat[rows, j] = p[rows] - q[at:at + len(rows)]
            at += len(rows)
        pending, parts, size = [], [], 0

    for j, col in enumerate(columns):
        ref = reference.get(col, np.nan)
        rows = np.flatnonzero(~_at_reference(x[col], ref))
        for chunk in np.array_split(rows, max(1, -(-len(rows) // batch_rows))) if len(rows) else []:
            part = x.iloc[chunk].copy()
            part[col] = ref
            pending.append((j, chunk))
            parts.append(part)
            size += len(chunk)
            if size >= batch_rows:
                flush()
    flush()
    return mat


def explain(model, x: pd.DataFrame, raw: pd.DataFrame, signals: list[Signal], reference: dict,
            top: int = 3, min_contribution: float = 0.005,
            account_signals: list[Signal] | None = None) -> tuple[np.ndarray, list[list[dict]]]:
    """Probabilities and, per row, the reasons: dicts with signal, polarity, value, contribution
    (probability points the input adds against its typical value) and text. A row whose
    probability rests on no single input by ``min_contribution`` gets its largest positive
    contributor anyway, so that no lead goes out without a reason."""
    p = model.predict_proba(x)[:, 1]
    cols = explainable(signals, account_signals or [], x.columns)
    if not cols:
        return p, [[] for _ in range(len(x))]
    mat = contribution_matrix(model, x, p, [c for c, _, _ in cols], reference)
    return p, tell(mat, raw, cols, top, min_contribution)


def tell(mat: np.ndarray, raw: pd.DataFrame, cols: list[tuple[str, Signal, str]], top: int = 3,
         min_contribution: float = 0.005) -> list[list[dict]]:
    """The reasons of each row of ``raw`` from its row of the contribution matrix ``mat`` (one column
    per entry of ``cols``, as ``explainable`` lists them): the ``top`` positive contributors
    (at least the largest one) and the ``top`` negative ones, in the signals' own sentences
    with the row's values."""
    positive = np.array([s.polarity == "positive" for _, s, _ in cols])
    negative = np.array([s.polarity == "negative" for _, s, _ in cols])
    values = {col: raw[col].to_numpy(dtype=object) for col, _, _ in cols}
    details = {s.name: raw[f"{s.name}_detail"].to_numpy(dtype=object)
               for _, s, prefix in cols if not prefix and f"{s.name}_detail" in raw.columns}
    # contributions are ranked and cut at 1e-9: two ways of computing one (closed form,
    # prediction) differ by ~1e-13 and must choose alike; equal ones rank as before (the
    # later-listed signal first among positives, the earlier among caveats)
    ranked = np.round(mat, 9)
    column = np.broadcast_to(np.arange(ranked.shape[1]), ranked.shape)
    ups = np.where(positive & (ranked > 0), ranked, -np.inf)
    up_order = np.lexsort((-column, -ups), axis=-1)[:, :top]            # largest first
    up_value = np.take_along_axis(ups, up_order, axis=-1)
    # the strong ones (a prefix of the order), else the largest positive one
    up_kept = (up_value >= min_contribution) | ((np.arange(up_order.shape[1]) == 0) & (up_value > -np.inf)
                                                 & ~(up_value[:, :1] >= min_contribution))
    downs = np.where(negative & (ranked <= -min_contribution), ranked, np.inf)
    down_order = np.lexsort((column, downs), axis=-1)[:, :top]           # most negative first
    down_kept = np.take_along_axis(downs, down_order, axis=-1) < np.inf
    picks = np.concatenate([up_order, down_order], axis=1)
    kept = np.concatenate([up_kept, down_kept], axis=1)
    texts: dict[tuple, str] = {}      # a sentence per (column, value, detail): values repeat a lot
    reasons: list[list[dict]] = []
    for i, (row_picks, row_kept) in enumerate(zip(picks.tolist(), kept.tolist())):
        row, told = [], set()
        for j, keep in zip(row_picks, row_kept):
            if not keep:
                continue
            col, s, prefix = cols[j]
            if s.name in told:   # the user's own value and the account's best: tell it once
                continue
            told.add(s.name)
            given = values[col][i]
            value = None if pd.isna(given) else (given.item() if hasattr(given, "item") else given)
            detail = details[s.name][i] if not prefix and s.name in details else None
            key = (j, value, detail)
            text = texts.get(key)
            if text is None:
                text = texts[key] = prefix + _text(s, given, detail)
            row.append({"signal": col, "polarity": s.polarity, "value": value,
                        "contribution": round(float(mat[i, j]), 4), "text": text})
        reasons.append(row)
    return reasons


def _days(frame: pd.DataFrame) -> list[str]:
    """The day column of a frame of several days (``snapshot_date``), else none: routing,
    account scores and percentiles are per day."""
    return ["snapshot_date"] if "snapshot_date" in frame.columns else []


def _rows_mask(arg, values: pd.Series) -> np.ndarray:
    """A per-row mask from None (no row), a boolean mask aligned with the rows, or a set of
    values that ``values`` is tested against."""
    if arg is None:
        return np.zeros(len(values), dtype=bool)
    if isinstance(arg, (np.ndarray, pd.Series)) and np.asarray(arg).dtype == bool:
        return np.asarray(arg, dtype=bool)
    return values.isin(arg).to_numpy()


def _pairs_in(frame: pd.DataFrame, keys: list[str], pairs: pd.DataFrame) -> np.ndarray:
    """Per row of ``frame``: are its ``keys`` among the rows of ``pairs`` (missing keys never are)."""
    if pairs.empty or frame.empty:
        return np.zeros(len(frame), dtype=bool)
    found = frame[keys].merge(pairs[keys].drop_duplicates().assign(_in=True), on=keys, how="left")["_in"]
    return found.notna().to_numpy() & frame[keys].notna().all(axis=1).to_numpy()


def sales_rows(scores: pd.DataFrame, spec: ScoringSpec, sales_contacts=None) -> np.ndarray:
    """The users routed to sales: in a sales segment with a sales tier, or a contact of an
    account that goes to sales on its own score (``account_routes``). Suppression and the
    nudge cap never touch them, so a day's sales accounts are known before its nudges."""
    sales = scores["segment"].isin(spec.sales_segments) & scores["tier"].isin(spec.sales_tiers)
    return sales.to_numpy() | _rows_mask(sales_contacts, scores["user_id"])


def route(scores: pd.DataFrame, spec: ScoringSpec, worked_by_sales=None, sales_contacts=None) -> pd.DataFrame:
    """Adds ``route`` (sales | in_app | none) and ``route_note`` (why not, if suppressed or
    capped) to rows with user_id, account_id, segment, tier and probability (and
    snapshot_date, when the rows are of several days: each day is routed on its own).
    ``worked_by_sales``: the accounts sales worked in the days before, as a set of account
    ids or a per-row mask. ``sales_contacts``: users routed to sales as the contact of an
    account that goes to sales on its own score (``account_routes``), a set of user ids or
    a per-row mask."""
    out = scores.copy()
    sales = sales_rows(out, spec, sales_contacts)
    nudge = ~out["segment"].isin(spec.sales_segments) & out["tier"].isin(spec.nudge_tiers)
    out["route"] = np.where(sales, "sales", np.where(nudge, "in_app", "none"))
    out["route_note"] = None
    days = _days(out)
    keys = days + ["account_id"]
    # worked by sales: in the days before (given) or the same day (this day's sales rows)
    worked = _rows_mask(worked_by_sales, out["account_id"]) | _pairs_in(out, keys, out.loc[sales, keys])
    suppressed = (out["route"] == "in_app").to_numpy() & worked
    out.loc[suppressed, ["route", "route_note"]] = ["none", "suppressed: the account is worked by sales"]
    nudges = out[out["route"] == "in_app"].sort_values(["probability", "user_id"], ascending=[False, True])
    rank = nudges.groupby([nudges[c] for c in days] +
                          [nudges["account_id"].fillna(nudges["user_id"])]).cumcount()   # no account: per user
    capped = rank[rank >= spec.max_nudges_per_account].index
    out.loc[capped, ["route", "route_note"]] = [
        "none", f"capped: at most {spec.max_nudges_per_account} nudges per account and day"]
    return out


ACCOUNT_COLUMNS = [
    ("snapshot_date", "DATE"), ("account_id", "VARCHAR"), ("probability", "DOUBLE"), ("percentile", "DOUBLE"),
    ("tier", "VARCHAR"), ("is_pql", "BOOLEAN"), ("users_scored", "BIGINT"), ("pql_users", "BIGINT"),
    ("top_user_id", "VARCHAR"), ("top_user_probability", "DOUBLE"), ("reasons", "JSON"), ("reason_text", "VARCHAR"),
    ("caveat_text", "VARCHAR"), ("model_version", "VARCHAR"), ("segment", "VARCHAR"), ("route", "VARCHAR"),
    ("route_note", "VARCHAR"), ("scored_at", "TIMESTAMPTZ"),
]


def account_scores(users: pd.DataFrame, reasons: list[list[dict]], spec: ScoringSpec) -> pd.DataFrame:
    """One row per account (and day, for rows of several days) from its scored users (rows
    with account_id, user_id, probability, is_pql, segment; ``reasons`` aligned with them):
    the account's probability, percentile, tier and PQL flag, how many users were scored and
    are PQLs, its most likely user, and the reasons of its most likely users (up to
    ``spec.reasons`` sentences, one per signal)."""
    days = _days(users)
    keys = days + ["account_id"]
    keep = users["account_id"].notna().to_numpy()
    rows = users[keep].reset_index(drop=True)
    if rows.empty:
        return pd.DataFrame(columns=days + [c for c, _ in ACCOUNT_COLUMNS
                                            if c not in days + ["route", "route_note", "scored_at"]])
    told_of = [r for r, k in zip(reasons, keep) if k]
    rows["_row"] = np.arange(len(rows))
    rows = rows.sort_values(keys + ["probability", "user_id"], ascending=[True] * len(keys) + [False, True])
    g = rows.groupby(keys, sort=True)
    acc = pd.DataFrame({
        "probability": np.round(account_probability(rows, keys), 6),
        "users_scored": g.size(), "pql_users": g["is_pql"].sum().astype(int),
        "top_user_id": g["user_id"].first(), "top_user_probability": np.round(g["probability"].first(), 6),
        "segment": g["segment"].first()}).reset_index()
    # the reasons of each account's most likely users (only users with reasons are looked at);
    # accounts by number: a row's group number is its account's row in ``acc``
    group = g.ngroup().to_numpy()
    told: list[dict | None] = [None] * len(acc)
    user_ids, probabilities, at = rows["user_id"].tolist(), rows["probability"].tolist(), rows["_row"].tolist()
    has = np.flatnonzero(np.fromiter((bool(told_of[i]) for i in at), bool, len(rows)))
    first = has[pd.Series(group[has]).groupby(group[has]).cumcount().to_numpy() < spec.reasons]
    for k in first.tolist():
        a = told[group[k]]
        if a is None:
            a = told[group[k]] = {"users": [], "positive": [], "negative": [], "signals": set()}
        i = at[k]
        a["users"].append({"user_id": user_ids[k], "probability": round(float(probabilities[k]), 6),
                           "reasons": told_of[i]})
        for r in told_of[i]:
            # one sentence per signal: the most likely user's ("invited 20 teammates", not also
            # another user's "invited 2 teammates")
            signal = r["signal"].removeprefix("acct_best_")
            if signal not in a["signals"]:
                a["signals"].add(signal)
                a["positive" if r["polarity"] == "positive" else "negative"].append(r["text"])
    none = {"users": [], "positive": [], "negative": []}
    told = [a or none for a in told]
    reason_text, caveat_text = [], []
    for a, n_pql, n, p in zip(told, acc["pql_users"].tolist(), acc["users_scored"].tolist(),
                              acc["probability"].tolist()):
        t = a["positive"][:spec.reasons]
        if n_pql > 1:
            t = [f"{n_pql} of its users qualify as PQLs"] + t
        if not t and p >= spec.pql_threshold:
            t = [f"{n} users together make a purchase likely; none stands out alone"]
        reason_text.append("; ".join(t) or None)
        caveat_text.append("; ".join(a["negative"][:spec.reasons]) or None)
    acc["reasons"] = [a["users"] for a in told]
    acc["reason_text"], acc["caveat_text"] = reason_text, caveat_text
    acc["percentile"] = np.round(percentile(acc, days), 6)
    acc["tier"] = tier_of(acc["probability"].to_numpy(), spec.tiers)
    acc["is_pql"] = acc["probability"] >= spec.pql_threshold
    return acc


def percentile(frame: pd.DataFrame, days: list[str]) -> np.ndarray:
    """Each row's ``probability`` as its percentile among the rows of its day (the highest rank of ties)."""
    probability = frame.groupby(days)["probability"] if days else frame["probability"]
    return probability.rank(pct=True, method="max").to_numpy()


def account_routes(accounts: pd.DataFrame, users: pd.DataFrame, spec: ScoringSpec) -> tuple[pd.Series, np.ndarray]:
    """Which accounts go to sales on their own score (sales segment, sales tier), and a mask
    over ``users`` of their contacts: those whose own tier is a sales tier, else the
    account's most likely user (per day, for rows of several days)."""
    days = _days(users)
    keys = days + ["account_id"]
    sales = accounts["segment"].isin(spec.sales_segments) & accounts["tier"].isin(spec.sales_tiers)
    going = accounts.loc[sales, keys + ["top_user_id"]]
    hot = _pairs_in(users, keys, going) & users["tier"].isin(spec.sales_tiers).to_numpy()
    # an account going to sales without a user of a sales tier: its most likely user
    quiet = going[~_pairs_in(going, keys, users.loc[hot, keys])]
    top = quiet[days + ["top_user_id"]].rename(columns={"top_user_id": "user_id"})
    return sales, hot | _pairs_in(users, days + ["user_id"], top)


def finish_account_routes(accounts: pd.DataFrame, users: pd.DataFrame, sales: pd.Series) -> pd.DataFrame:
    """The account's route: sales (its own verdict), in_app when any of its users is nudged,
    else none; route_note counts the users behind it."""
    out = accounts.copy()
    keys = _days(users) + ["account_id"]

    def count(route: str) -> np.ndarray:
        per = users[users["route"] == route].groupby(keys).size().rename("_n").reset_index()
        return out[keys].merge(per, on=keys, how="left")["_n"].fillna(0).astype(int).to_numpy()

    n, c = count("in_app"), count("sales")
    out["route"] = np.where(sales, "sales", np.where(n > 0, "in_app", "none"))
    out["route_note"] = np.where(sales, pd.Series(c).astype(str).to_numpy() + " contact(s)",
                                 np.where(n > 0, pd.Series(n).astype(str).to_numpy() + " user(s) nudged", None))
    return out
