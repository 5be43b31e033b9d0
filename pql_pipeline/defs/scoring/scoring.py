"""Scoring leads (pure functions; the asset is in assets.py).

For a snapshot day every free user with a feature row gets: the model's probability and its
percentile among that day's users, a tier (``scoring.tiers``), whether it is a PQL
(probability at or above ``model.pql_threshold``), **reasons** derived from the model for
that lead, the model version, the account's size segment at the snapshot, and a route.

Reasons are ablations: for each signal of signals.yaml that has a ``reason`` sentence, the
user's probability minus the probability with that signal set to its typical value in the
model's training data (median; the most common value for a category). The largest positive
contributions of positive signals are the reasons to call ("invited 3 teammates"); the
largest negative contributions of negative signals are the caveats ("opened 4 support
tickets about the basics"). Each comes with its contribution in probability points, so
sales can see how much it mattered.

Routing (``scoring.routing``): accounts whose size segment is a sales segment go to sales
when the lead's tier is a sales tier; the others get an in-app nudge when the tier is a
nudge tier. A nudge is suppressed while the account is worked by sales (one of its users is
routed to sales that day or was within ``suppress_days``) and capped at
``max_nudges_per_account`` per account and day (highest probability first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pql_pipeline.defs.features.signals import Signal


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
    """The size segment of each account by employee count (unknown if missing)."""
    def one(e):
        if e is None or (isinstance(e, float) and np.isnan(e)):
            return "unknown"
        for name, bound in segments:
            if bound is None or e <= bound:
                return name
        return "unknown"
    return pd.to_numeric(employees, errors="coerce").map(one)


def reference_values(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict:
    """Typical value of every input in the model's training rows (ablation baseline)."""
    ref = {c: float(frame[c].median()) if frame[c].notna().any() else np.nan for c in numeric}
    for c in categorical:
        mode = frame[c].mode()
        ref[c] = mode.iloc[0] if len(mode) else "(missing)"
    return ref


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
    mat = np.empty((len(x), len(cols)))
    x2 = x.copy()   # one copy; each column is set to its typical value and put back
    for j, (col, _, _) in enumerate(cols):
        kept = x2[col].copy()
        x2[col] = reference.get(col, np.nan)
        mat[:, j] = p - model.predict_proba(x2)[:, 1]
        x2[col] = kept
    reasons: list[list[dict]] = []
    for i in range(len(x)):
        pos = [(mat[i, j], j) for j, (_, s, _) in enumerate(cols) if s.polarity == "positive" and mat[i, j] > 0]
        neg = [(mat[i, j], j) for j, (_, s, _) in enumerate(cols)
               if s.polarity == "negative" and mat[i, j] <= -min_contribution]
        pos.sort(reverse=True)
        chosen = [t for t in pos if t[0] >= min_contribution][:top] or pos[:1]
        row, told = [], set()
        for c, j in chosen + sorted(neg)[:top]:
            col, s, prefix = cols[j]
            if s.name in told:   # the user's own value and the account's best: tell it once
                continue
            told.add(s.name)
            value = raw.iloc[i][col]
            detail_col = f"{s.name}_detail"
            detail = raw.iloc[i][detail_col] if not prefix and detail_col in raw.columns else None
            row.append({"signal": col, "polarity": s.polarity,
                        "value": None if pd.isna(value) else (value.item() if hasattr(value, "item") else value),
                        "contribution": round(float(c), 4), "text": prefix + _text(s, value, detail)})
        reasons.append(row)
    return p, reasons


def route(scores: pd.DataFrame, spec: ScoringSpec, worked_by_sales: set[str] | None = None) -> pd.DataFrame:
    """Adds ``route`` (sales | in_app | none) and ``route_note`` (why not, if suppressed or
    capped) to rows with account_id, segment, tier and probability."""
    out = scores.copy()
    sales = out["segment"].isin(spec.sales_segments) & out["tier"].isin(spec.sales_tiers)
    nudge = ~out["segment"].isin(spec.sales_segments) & out["tier"].isin(spec.nudge_tiers)
    out["route"] = np.where(sales, "sales", np.where(nudge, "in_app", "none"))
    out["route_note"] = None
    worked = set(worked_by_sales or set()) | set(out.loc[sales & out["account_id"].notna(), "account_id"])
    suppressed = (out["route"] == "in_app") & out["account_id"].isin(worked)
    out.loc[suppressed, ["route", "route_note"]] = ["none", "suppressed: the account is worked by sales"]
    nudges = out[out["route"] == "in_app"].sort_values(["probability", "user_id"], ascending=[False, True])
    rank = nudges.groupby(nudges["account_id"].fillna(nudges["user_id"])).cumcount()   # no account: per user
    capped = rank[rank >= spec.max_nudges_per_account].index
    out.loc[capped, ["route", "route_note"]] = [
        "none", f"capped: at most {spec.max_nudges_per_account} nudges per account and day"]
    return out
