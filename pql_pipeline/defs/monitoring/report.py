"""What the drift report measures for one day, from the warehouse (plain functions over a
DuckDB connection; the asset and its checks in ``assets.py`` call them, tests call them
directly).

- **event stream**: each event name's count on the day against the median of the days
  before (a tracking bug that stops one event must not silently lower every score), and
  the shares of events from identified users and of events mapped to an account;
- **features**: the day's scoring inputs against the scoring model's training rows and
  against the same weekday of the trailing weeks (PSI / Jensen-Shannon, ``drift.py``);
- **predictions**: the day's score distribution (PSI) and PQL rate against the trailing weeks;
- **performance**: on the newest cohort whose labels have arrived, the realised ROC AUC and
  PQL precision against the model's holdout metrics.

Every part returns rows of one long table (``drift_history``): day, part, item, reference,
metric, value, the reference value, thresholds and a verdict (ok | warn | alert |
insufficient_data).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pql_pipeline.defs.monitoring.drift import Thresholds, feature_drift, psi, verdict
from pql_pipeline.lib.trends import ratio_to_median

HISTORY = "drift_history"
HISTORY_COLUMNS = [
    ("report_day", "DATE"), ("part", "VARCHAR"), ("item", "VARCHAR"), ("reference", "VARCHAR"),
    ("metric", "VARCHAR"), ("value", "DOUBLE"), ("reference_value", "DOUBLE"), ("warn", "DOUBLE"),
    ("alert", "DOUBLE"), ("verdict", "VARCHAR"), ("rows", "BIGINT"), ("note", "VARCHAR"),
    ("model_version", "VARCHAR"), ("computed_at", "TIMESTAMPTZ"),
]
PARTS = ("stream", "features", "predictions", "performance")


@dataclass(frozen=True)
class StreamBounds:
    lookback_days: int = 7          # event shares: the median of this many days before
    lookback_weeks: int = 4         # the day's volume: the same weekday of this many weeks before
    min_ratio: float = 0.3          # an event name below this share of its usual daily count: alert
    max_ratio: float = 3.0          # above this multiple: alert (duplicated tracking, a bot)
    warn_margin: float = 0.5        # warn when a ratio is this far (relatively) towards a bound
    min_median_events: int = 50     # event names expected fewer times on the day are not judged
    max_share_drop: float = 0.1     # identified / account-mapped share this much below its median: alert


def row(day: dt.date, part: str, item: str, reference: str, metric: str, value, reference_value, warn, alert,
        level: str, rows: int | None = None, note: str | None = None, model_version: str | None = None) -> dict:
    return {"report_day": day, "part": part, "item": item, "reference": reference, "metric": metric,
            "value": None if value is None else float(value),
            "reference_value": None if reference_value is None else float(reference_value),
            "warn": warn, "alert": alert, "verdict": level, "rows": rows, "note": note,
            "model_version": model_version}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else 0.0


def stream_counts(conn, first: dt.date, last: dt.date, b: StreamBounds = StreamBounds()) -> pd.DataFrame:
    """Events per day and event name (with identified and account-mapped counts) for the days
    ``first``..``last`` and the reference days before them: one scan, a small frame."""
    start = first - dt.timedelta(days=max(b.lookback_days, 7 * b.lookback_weeks))
    counts = conn.execute("""
        SELECT partition_date, coalesce(event_name, '(' || event_type || ')') AS name, count(*) AS n,
               count(user_id) AS identified, count(account_id) AS mapped
        FROM validated_events WHERE partition_date BETWEEN ? AND ?
        GROUP BY ALL""", [start, last]).df()
    counts["partition_date"] = pd.to_datetime(counts["partition_date"]).dt.date
    return counts


@dataclass(frozen=True)
class StreamTables:
    """``stream_counts`` summed per day (``per_day``: n, identified, mapped) and per day and
    event name (``names``), once for every day of a range."""
    per_day: pd.DataFrame
    names: pd.DataFrame

    @classmethod
    def of(cls, counts: pd.DataFrame) -> "StreamTables":
        per_day = counts.groupby("partition_date")[["n", "identified", "mapped"]].sum()
        names = counts.pivot_table(index="partition_date", columns="name", values="n", aggfunc="sum", fill_value=0)
        return cls(per_day, names)


def stream_drift(conn, day: dt.date, b: StreamBounds = StreamBounds(), tables: StreamTables | None = None
                 ) -> list[dict]:
    """Event-stream health of ``day`` (from ``tables`` of ``stream_counts`` when a range's days
    are judged, else one scan of validated_events over the day and its reference days).

    Weekly seasonality (quiet weekends) is kept out of the comparison: the day's total is
    compared with the same weekday of the weeks before, and each event name by its **share**
    of the day's events against its median share of the days before (a weekend lowers every
    event alike; an outage lowers one)."""
    if tables is None:
        tables = StreamTables.of(stream_counts(conn, day, day, b))
    first = day - dt.timedelta(days=max(b.lookback_days, 7 * b.lookback_weeks))
    window = (tables.per_day.index >= first) & (tables.per_day.index <= day)
    if not window.any():
        return [row(day, "stream", "(all events)", "-", "count_ratio", None, None, None, None,
                    "insufficient_data", 0, "no validated events on the day or the days before")]
    per_day = tables.per_day[window]
    recent = sorted(d for d in per_day.index if day - dt.timedelta(days=b.lookback_days) <= d < day)
    total = int(per_day.loc[day, "n"]) if day in per_day.index else 0
    if not recent:
        return [row(day, "stream", "(all events)", "-", "count_ratio", None, None, None, None,
                    "insufficient_data", total, "no earlier day to compare with")]
    lo_warn = b.min_ratio + (1 - b.min_ratio) * b.warn_margin
    hi_warn = b.max_ratio - (b.max_ratio - 1) * b.warn_margin

    def ratio_verdict(ratio: float) -> str:
        return ("alert" if ratio < b.min_ratio or ratio > b.max_ratio
                else "warn" if ratio < lo_warn or ratio > hi_warn else "ok")

    # the day's volume against the same weekday of the weeks before (else the days before)
    same_weekday = [d for d in (day - dt.timedelta(days=7 * w) for w in range(1, b.lookback_weeks + 1))
                    if d in per_day.index]
    base_days, reference = (same_weekday, "same_weekday") if same_weekday else (recent, "previous_days")
    usual = _median([float(per_day.loc[d, "n"]) for d in base_days])
    if usual < b.min_median_events:
        out = [row(day, "stream", "(all events)", reference, "count_ratio", None, usual, None, None,
                   "insufficient_data", total, f"fewer than {b.min_median_events} events a day usually")]
    else:
        ratio = total / usual
        level = ratio_verdict(ratio)
        out = [row(day, "stream", "(all events)", reference, "count_ratio", ratio, usual, b.min_ratio, b.max_ratio,
                   level, total, None if level == "ok" else
                   f"{total} events, {ratio:.2f}x the usual {usual:.0f} ({len(base_days)} {reference} day(s))")]

    # each event name's share of the day against its median share of the days before (the
    # event names seen in the window)
    names = tables.names[window]
    names = names.loc[:, (names > 0).any()]
    shares = names.div(per_day["n"], axis=0)
    today = names.loc[day] if day in names.index else pd.Series(0, index=names.columns)
    usual_shares = shares.loc[recent].median()
    seen_before = (shares[shares.index < day] != 0).any()
    for name in sorted(shares.columns):
        n = int(today.get(name, 0))
        usual_share = float(usual_shares[name])
        expected = usual_share * total
        if not seen_before[name]:
            out.append(row(day, "stream", name, "previous_days", "share_ratio", None, 0, None, None,
                           "warn" if n else "ok", n, "a new event name: not in the days before" if n else None))
            continue
        if expected < b.min_median_events:
            out.append(row(day, "stream", name, "previous_days", "share_ratio", None, usual_share, None, None,
                           "insufficient_data", n, f"about {expected:.0f} expected: fewer than "
                                                   f"{b.min_median_events}, not judged"))
            continue
        ratio = n / expected
        level = ratio_verdict(ratio)
        note = None
        if n == 0:
            note = f"no events on the day, about {expected:.0f} expected (tracking stopped?)"
        elif level != "ok":
            note = f"{n} events, {ratio:.2f}x the {expected:.0f} its usual share predicts"
        out.append(row(day, "stream", name, "previous_days", "share_ratio", ratio, usual_share, b.min_ratio,
                       b.max_ratio, level, n, note))

    for metric, column, what in (("identified_share", "identified", "events from identified users"),
                                 ("account_mapped_share", "mapped", "events mapped to an account")):
        median = _median([float(per_day.loc[d, column] / per_day.loc[d, "n"]) for d in recent])
        if not total:
            out.append(row(day, "stream", metric, "previous_days", metric, None, median, None, None,
                           "insufficient_data", 0, "no events on the day"))
            continue
        share = float(per_day.loc[day, column] / total)
        level = verdict(median - share, b.max_share_drop / 2, b.max_share_drop)
        out.append(row(day, "stream", metric, "previous_days", metric, share, median,
                       round(median - b.max_share_drop / 2, 5), round(median - b.max_share_drop, 5), level, total,
                       f"{what}: {share:.1%} vs {median:.1%} usually" if level != "ok" else None))
    return out


def sample_sql(sql: str, rows: int, seed: int = 7) -> str:
    """``sql`` reduced to at most ``rows`` rows by a reproducible reservoir sample."""
    return f"SELECT * FROM ({sql}) USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({seed})"


def feature_drift_rows(day: dt.date, current: pd.DataFrame, references: dict[str, pd.DataFrame],
                       numeric: list[str], categorical: list[str], t: Thresholds,
                       model_version: str | None) -> list[dict]:
    """Per feature and reference: PSI (numeric) or Jensen-Shannon distance (categorical)."""
    out = []
    for name, ref in references.items():
        frame = feature_drift(ref, current, numeric, categorical, t)
        for r in frame.to_dict("records"):
            note = None
            if r["verdict"] == "insufficient_data":
                note = f"fewer than {t.min_rows} rows (current {len(current)}, reference {len(ref)})"
            elif r["kind"] == "numeric" and r["secondary"] is not None and not pd.isna(r["secondary"]):
                note = f"wasserstein/std {r['secondary']}"
            elif r["kind"] == "categorical" and r["secondary"] is not None and not pd.isna(r["secondary"]):
                note = f"unseen categories {r['secondary']:.2%}"
            out.append(row(day, "features", r["feature"], name, r["metric"], r["value"], None, r["warn"],
                           r["alert"], r["verdict"], len(current), note, model_version=model_version))
    return out


def prediction_drift_rows(day: dt.date, current: np.ndarray, reference: np.ndarray, pql_rate: float | None,
                          reference_rates: list[float], t: Thresholds, max_rate_ratio: float,
                          model_version: str | None) -> list[dict]:
    """The score distribution (PSI) and the PQL rate (ratio to the trailing median) of the day."""
    if min(len(current), len(reference)) < t.min_rows:
        return [row(day, "predictions", "probability", "trailing_weeks", "psi", None, None, t.psi_warn, t.psi_alert,
                    "insufficient_data", len(current), f"fewer than {t.min_rows} scores (reference {len(reference)})",
                    model_version=model_version)]
    v = psi(reference, current)
    out = [row(day, "predictions", "probability", "trailing_weeks", "psi", round(v, 5), None, t.psi_warn,
               t.psi_alert, verdict(v, t.psi_warn, t.psi_alert), len(current), model_version=model_version)]
    median, ratio = ratio_to_median(pql_rate or 0.0, reference_rates)
    if pql_rate is not None and median:
        change = max(ratio, 1 / ratio) if ratio > 0 else float("inf")
        level = verdict(change, 1 + (max_rate_ratio - 1) / 2, max_rate_ratio)
        out.append(row(day, "predictions", "pql_rate", "trailing_weeks", "rate_change", min(change, 1e6), median,
                       round(1 + (max_rate_ratio - 1) / 2, 5), max_rate_ratio, level, len(current),
                       f"PQL rate {pql_rate:.2%} vs {median:.2%}", model_version=model_version))
    return out


def performance_rows(day: dt.date, cohort: dt.date | None, y: np.ndarray, p: np.ndarray, flagged: np.ndarray,
                     holdout: dict, max_auc_drop: float, max_precision_drop: float, min_rows: int,
                     min_positives: int, model_version: str | None) -> list[dict]:
    """Realised ROC AUC and PQL precision on a labelled cohort against the model's holdout."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=int)
    label = f"cohort {cohort}" if cohort else "no labelled cohort"
    if cohort is None or len(y) < min_rows or y.sum() < min_positives or y.sum() == len(y):
        return [row(day, "performance", "roc_auc", "holdout", "roc_auc", None, holdout.get("roc_auc"), None, None,
                    "insufficient_data", len(y), f"{label}: needs {min_rows} rows and {min_positives} conversions "
                                                 f"(has {len(y)}, {int(y.sum())})", model_version=model_version)]
    out = []
    auc = float(roc_auc_score(y, p))
    ref_auc = holdout.get("roc_auc")
    if ref_auc is not None:
        drop = ref_auc - auc
        out.append(row(day, "performance", "roc_auc", "holdout", "roc_auc", round(auc, 5), ref_auc,
                       round(ref_auc - max_auc_drop / 2, 5), round(ref_auc - max_auc_drop, 5),
                       verdict(drop, max_auc_drop / 2, max_auc_drop), len(y), label, model_version=model_version))
    ref_precision = holdout.get("precision_at_threshold")
    if ref_precision is not None and flagged.sum() < min_positives:
        out.append(row(day, "performance", "pql_precision", "holdout", "precision", None, ref_precision, None, None,
                       "insufficient_data", int(flagged.sum()), f"{label}: fewer than {min_positives} PQLs",
                       model_version=model_version))
    elif ref_precision is not None:
        precision = float(y[flagged].mean())
        drop = ref_precision - precision
        out.append(row(day, "performance", "pql_precision", "holdout", "precision", round(precision, 5),
                       ref_precision, round(ref_precision - max_precision_drop / 2, 5),
                       round(ref_precision - max_precision_drop, 5),
                       verdict(drop, max_precision_drop / 2, max_precision_drop), int(flagged.sum()),
                       f"{label}: conversion rate of its PQLs", model_version=model_version))
    return out


def worst(verdicts) -> str:
    order = {"alert": 3, "warn": 2, "ok": 1, "insufficient_data": 0}
    vs = list(verdicts)
    return max(vs, key=lambda v: order.get(v, 0)) if vs else "insufficient_data"


def trailing_days(day: dt.date, weeks: int) -> list[dt.date]:
    """The same weekday in each of the ``weeks`` weeks before ``day`` (weekly seasonality
    kept; consecutive days would mostly repeat each other's cumulative features)."""
    return [day - dt.timedelta(days=7 * w) for w in range(1, weeks + 1)]
