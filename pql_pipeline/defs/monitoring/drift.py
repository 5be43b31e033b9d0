"""Drift metrics (pure functions; the assets and checks that use them come with the
monitoring stage).

Effect sizes, never p-values (those fire on trivial shifts at large n), with a minimum
sample size below which the verdict is ``insufficient_data``:

- numeric: the population stability index (PSI) over quantile bins fixed on the
  reference (missing values are a bin of their own), with the Wasserstein distance
  divided by the reference's standard deviation as secondary information;
- categorical: the Jensen-Shannon distance (base 2, in [0, 1]) between the category
  shares, and the share of current rows whose category the reference never had;
- the alert-fatigue guard: a feature is an incident only if it alerted in at least
  ``need`` of the last ``of`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

EPS = 1e-4   # share given to an empty bin, so that PSI stays finite


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's quantiles, duplicates removed (a value that fills
    several quantiles is one bin)."""
    ref = reference[~np.isnan(reference)]
    if len(ref) == 0:
        return np.array([])
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin (right-closed bins between the edges) plus the missing ones."""
    missing = np.isnan(values)
    idx = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return counts / max(len(values), 1)


def psi(reference, current, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``:
    sum over bins of (c - r) * ln(c / r), bins from the reference's quantiles."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    edges = quantile_edges(ref, bins)
    r, c = _shares(ref, edges), _shares(cur, edges)
    r, c = np.clip(r, EPS, None), np.clip(c, EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def wasserstein_normed(reference, current) -> float | None:
    """Wasserstein distance over the reference's standard deviation (None if it has none)."""
    from scipy.stats import wasserstein_distance

    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref) < 2 or len(cur) == 0 or np.std(ref) == 0:
        return None
    return float(wasserstein_distance(ref, cur) / np.std(ref))


def js_distance(reference, current) -> float:
    """Jensen-Shannon distance (base 2) between the category shares (missing is a category)."""
    from scipy.spatial.distance import jensenshannon

    ref = pd.Series(reference, dtype=object).fillna("(missing)")
    cur = pd.Series(current, dtype=object).fillna("(missing)")
    cats = sorted(set(ref) | set(cur), key=str)
    p = ref.value_counts().reindex(cats, fill_value=0).to_numpy(dtype=float)
    q = cur.value_counts().reindex(cats, fill_value=0).to_numpy(dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def unseen_share(reference, current) -> float:
    """Share of current rows whose category never occurs in the reference."""
    seen = set(pd.Series(reference, dtype=object).dropna())
    cur = pd.Series(current, dtype=object).dropna()
    return float((~cur.isin(seen)).mean()) if len(cur) else 0.0


@dataclass(frozen=True)
class Thresholds:
    psi_warn: float = 0.1
    psi_alert: float = 0.25
    js_warn: float = 0.1
    js_alert: float = 0.2
    unseen_warn: float = 0.01   # share of rows in a category the reference never had (e.g. a new plan)
    min_rows: int = 1000


def verdict(value: float, warn: float, alert: float) -> str:
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str],
                  t: Thresholds = Thresholds()) -> pd.DataFrame:
    """One row per feature: kind, metric, value, secondary value, thresholds and verdict
    (ok | warn | alert | insufficient_data)."""
    rows = []
    small = min(len(reference), len(current)) < t.min_rows
    for col in numeric:
        if small:
            rows.append({"feature": col, "kind": "numeric", "metric": "psi", "value": None, "secondary": None,
                         "warn": t.psi_warn, "alert": t.psi_alert, "verdict": "insufficient_data"})
            continue
        v = psi(reference[col], current[col])
        rows.append({"feature": col, "kind": "numeric", "metric": "psi", "value": round(v, 5),
                     "secondary": _round(wasserstein_normed(reference[col], current[col])),
                     "warn": t.psi_warn, "alert": t.psi_alert, "verdict": verdict(v, t.psi_warn, t.psi_alert)})
    for col in categorical:
        if small:
            rows.append({"feature": col, "kind": "categorical", "metric": "js_distance", "value": None,
                         "secondary": None, "warn": t.js_warn, "alert": t.js_alert, "verdict": "insufficient_data"})
            continue
        v = js_distance(reference[col], current[col])
        unseen = unseen_share(reference[col], current[col])
        level = verdict(v, t.js_warn, t.js_alert)
        if level == "ok" and unseen >= t.unseen_warn:
            level = "warn"
        rows.append({"feature": col, "kind": "categorical", "metric": "js_distance", "value": round(v, 5),
                     "secondary": round(unseen, 5), "warn": t.js_warn, "alert": t.js_alert, "verdict": level})
    return pd.DataFrame(rows, columns=["feature", "kind", "metric", "value", "secondary", "warn", "alert", "verdict"])


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


def is_incident(verdicts: list[str], need: int = 2, of: int = 3) -> bool:
    """Alert-fatigue guard: ``verdicts`` newest first; an incident only if at least ``need``
    of the newest ``of`` runs alerted (insufficient data counts as no alert)."""
    return sum(v == "alert" for v in verdicts[:of]) >= need
