"""Activation-milestone discovery: which early behaviours go with conversion, and by how much.

A candidate milestone is "did X at least N times within D days of signup", for every
candidate X and every N and D of the configured grid. X is a tracked event (all events
seen, minus the configured exclusions and the conversion events), an event with a
property filter taken from a ``where`` signal in signals.yaml (e.g. support tickets
about the basics), or "active days" (distinct days with activity).

Users are placed in time by their signup event (``signup_event``; users without one in
the data, e.g. users older than the data, are left out) or, if none is configured, by
their first event. For a given D the cohort is every user whose signup lies far enough back that
``D + outcome_days`` days after it (plus the late-arrival allowance) have been observed,
minus users who converted within the first D days (a milestone must come before the
conversion it predicts). The outcome is a conversion within ``outcome_days`` after day D.

For every (X, N, D): coverage (share of the cohort that did it), conversion rate with
and without it (Wilson intervals), lift = rate with / rate without with a Katz
log-ratio interval, the phi correlation and a Benjamini-Hochberg q-value over every
variant tested. A variant is conclusive if its lift interval excludes 1 and its q-value
is below 1 - confidence. Candidates are ranked by the strength of the association
(|phi|) among their conclusive, eligible variants, each represented by its strongest
(N, D); the top ones become a proposed rule-based PQL definition.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

import pandas as pd
from scipy.stats import norm

from pql_pipeline.defs.features.sql import WAREHOUSE, Sources, event_condition, events_sql
from pql_pipeline.lib.engine import DuckDBEngine, sql_literal
from pql_pipeline.signals import Signal, SignalSet

ACTIVE_DAYS = "active days"
MILESTONE_COLUMNS = [
    ("candidate", "VARCHAR"), ("event", "VARCHAR"), ("where_filter", "VARCHAR"), ("min_count", "BIGINT"),
    ("within_days", "BIGINT"), ("cohort_users", "BIGINT"), ("users_with", "BIGINT"), ("coverage", "DOUBLE"),
    ("conversions_with", "BIGINT"), ("conversions_without", "BIGINT"),
    ("rate_with", "DOUBLE"), ("rate_with_low", "DOUBLE"), ("rate_with_high", "DOUBLE"),
    ("rate_without", "DOUBLE"), ("rate_without_low", "DOUBLE"), ("rate_without_high", "DOUBLE"),
    ("lift", "DOUBLE"), ("lift_low", "DOUBLE"), ("lift_high", "DOUBLE"), ("phi", "DOUBLE"), ("q_value", "DOUBLE"),
    ("direction", "VARCHAR"), ("eligible", "BOOLEAN"), ("is_best_variant", "BOOLEAN"), ("rank", "BIGINT"),
    ("observed_until", "DATE"), ("definition_hash", "VARCHAR"),
]


@dataclass(frozen=True)
class MilestoneSpec:
    signals: SignalSet
    conversion_events: tuple[str, ...]
    min_counts: tuple[int, ...] = (1, 2, 3, 5, 10)
    within_days: tuple[int, ...] = (1, 3, 7, 14, 30)
    outcome_days: int = 30
    late_arrival_days: int = 1
    exclude_events: tuple[str, ...] = ()
    min_coverage: float = 0.02
    min_users: int = 30
    confidence: float = 0.95
    top: int = 3


@dataclass(frozen=True)
class Candidate:
    name: str
    event: str | None
    where: dict | None
    condition: str

    @property
    def where_json(self) -> str | None:
        return json.dumps(self.where, sort_keys=True) if self.where else None


def candidates(conn, spec: MilestoneSpec, src: Sources = WAREHOUSE) -> list[Candidate]:
    skip = set(spec.exclude_events) | set(spec.conversion_events)
    if spec.signals.signup_event:
        skip.add(spec.signals.signup_event)
    names = [r[0] for r in conn.execute(
        f"SELECT DISTINCT event_name FROM {src.validated_events} WHERE event_type = 'track' "
        "AND event_name IS NOT NULL ORDER BY 1").fetchall() if r[0] not in skip]
    out = [Candidate(n, n, None, event_condition(Signal(name="x", kind="count", event=n))) for n in names]
    seen = set()
    for s in spec.signals.signals:
        if s.where and s.event and s.kind in ("count", "first_time") and s.event not in skip:
            key = (s.event, tuple(sorted(s.where.items())))
            if key not in seen:
                seen.add(key)
                label = f"{s.event} ({', '.join(f'{k}={v}' for k, v in s.where.items())})"
                out.append(Candidate(label, s.event, dict(s.where), event_condition(s)))
    out.append(Candidate(ACTIVE_DAYS, None, None, "event_type IN ('track', 'page', 'screen')"))
    return out


def stats_sql(spec: MilestoneSpec, cands: list[Candidate], until: dt.date) -> str:
    max_d = max(spec.within_days)
    conv = ", ".join(sql_literal(e) for e in spec.conversion_events)
    signup = (f"MIN(day) FILTER (WHERE event_name = {sql_literal(spec.signals.signup_event)})"
              if spec.signals.signup_event else "NULL")
    d_grid = ", ".join(f"({d})" for d in spec.within_days)
    n_grid = ", ".join(f"({n})" for n in spec.min_counts)
    hits = " UNION ALL ".join(
        (f"SELECT DISTINCT e.user_id, {sql_literal(c.name)} AS candidate, DATE_DIFF('day', u.signup_day, e.day) AS since, "
         f"1 AS n FROM ml_events AS e JOIN users0 AS u ON e.user_id = u.user_id WHERE {c.condition}"
         if c.name == ACTIVE_DAYS else
         f"SELECT e.user_id, {sql_literal(c.name)} AS candidate, DATE_DIFF('day', u.signup_day, e.day) AS since, "
         f"COUNT(*) AS n FROM ml_events AS e JOIN users0 AS u ON e.user_id = u.user_id WHERE {c.condition} "
         f"GROUP BY e.user_id, DATE_DIFF('day', u.signup_day, e.day)")
        for c in cands)
    until_lit = f"CAST({sql_literal(until.isoformat())} AS DATE)"
    return f"""
WITH users0 AS (
  SELECT user_id, COALESCE({signup}, MIN(day)) AS signup_day,
         MIN(day) FILTER (WHERE event_name IN ({conv})) AS conversion_day
  FROM ml_events GROUP BY user_id
  {"HAVING " + signup + " IS NOT NULL" if spec.signals.signup_event else ""}
),
dg AS (SELECT d FROM (VALUES {d_grid}) AS t(d)),
ng AS (SELECT n FROM (VALUES {n_grid}) AS t(n)),
cohort AS (
  SELECT u.user_id, dg.d,
         u.conversion_day IS NOT NULL AND DATE_DIFF('day', u.signup_day, u.conversion_day) < dg.d + {spec.outcome_days}
           AS converted
  FROM users0 AS u CROSS JOIN dg
  WHERE DATE_DIFF('day', u.signup_day, {until_lit}) >= dg.d + {spec.outcome_days + spec.late_arrival_days}
    AND (u.conversion_day IS NULL OR DATE_DIFF('day', u.signup_day, u.conversion_day) >= dg.d)
),
totals AS (SELECT d, COUNT(*) AS cohort_users, COUNT(*) FILTER (WHERE converted) AS conversions
           FROM cohort GROUP BY d),
hits AS ({hits}),
uc AS (
  SELECT h.user_id, h.candidate, c.d, c.converted, SUM(h.n) AS cnt
  FROM hits AS h JOIN cohort AS c ON c.user_id = h.user_id AND h.since >= 0 AND h.since < c.d
  WHERE h.since < {max_d}
  GROUP BY h.user_id, h.candidate, c.d, c.converted
)
SELECT uc.candidate, uc.d AS within_days, ng.n AS min_count,
       COUNT(*) FILTER (WHERE uc.cnt >= ng.n) AS users_with,
       COUNT(*) FILTER (WHERE uc.cnt >= ng.n AND uc.converted) AS conversions_with,
       MAX(t.cohort_users) AS cohort_users, MAX(t.conversions) AS conversions
FROM uc CROSS JOIN ng JOIN totals AS t ON t.d = uc.d
GROUP BY uc.candidate, uc.d, ng.n"""


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _katz(a: int, n1: int, c: int, n2: int, z: float) -> tuple[float, float, float, float]:
    """Risk ratio (a/n1)/(c/n2) with the Katz log interval (0.5 added to empty cells) and
    the two-sided p-value of "no effect"; all NaN when a group is empty or nobody converted."""
    nan = float("nan")
    if n1 == 0 or n2 == 0 or a + c == 0:
        return nan, nan, nan, nan
    if a == 0 or c == 0 or a == n1 or c == n2:
        a, c, n1, n2 = a + 0.5, c + 0.5, n1 + 1, n2 + 1
    rr = (a / n1) / (c / n2)
    se = math.sqrt(max(1 / a - 1 / n1 + 1 / c - 1 / n2, 0.0))
    p = 2 * norm.sf(abs(math.log(rr)) / se) if se > 0 else (1.0 if rr == 1 else 0.0)
    return rr, rr * math.exp(-z * se), rr * math.exp(z * se), p


def _bh(p: pd.Series) -> pd.Series:
    """Benjamini-Hochberg q-values (NaN stays NaN): every candidate x N x D variant is a test."""
    ok = p.dropna().sort_values()
    m = len(ok)
    if not m:
        return p
    q = (ok * m / pd.Series(range(1, m + 1), index=ok.index)).iloc[::-1].cummin().iloc[::-1].clip(upper=1.0)
    return q.reindex(p.index)


def _phi(a: int, b: int, c: int, d: int) -> float:
    """Phi for the 2x2 table [[a did & conv, b did & not], [c not & conv, d not & not]]."""
    den = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return (a * d - b * c) / den if den else float("nan")


def discover(conn, spec: MilestoneSpec, src: Sources = WAREHOUSE) -> tuple[pd.DataFrame, dt.date | None]:
    """All candidate milestones with their statistics, ranked; empty if no cohort yet."""
    until = conn.execute(f"SELECT MAX(partition_date) FROM {src.validated_events}").fetchall()[0][0]
    if until is None:
        return pd.DataFrame(columns=[c for c, _ in MILESTONE_COLUMNS]), None
    cands = candidates(conn, spec, src)
    eng = DuckDBEngine(conn)
    eng.view("ml_events", events_sql(until, src))
    raw = eng.df(stats_sql(spec, cands, until))
    eng.drop("ml_events")
    by_name = {c.name: c for c in cands}
    z = norm.ppf(0.5 + spec.confidence / 2)
    rows = []
    for r in raw.itertuples(index=False):
        n1, a = int(r.users_with), int(r.conversions_with)
        n, conv = int(r.cohort_users), int(r.conversions)
        n2, c = n - n1, conv - a
        lift, lo, hi, pval = _katz(a, n1, c, n2, z)
        w_lo, w_hi = _wilson(a, n1, z)
        wo_lo, wo_hi = _wilson(c, n2, z)
        cand = by_name[r.candidate]
        rows.append({
            "candidate": r.candidate, "event": cand.event, "where_filter": cand.where_json,
            "min_count": int(r.min_count), "within_days": int(r.within_days), "cohort_users": n, "users_with": n1,
            "coverage": n1 / n if n else float("nan"), "conversions_with": a, "conversions_without": c,
            "rate_with": a / n1 if n1 else float("nan"), "rate_with_low": w_lo, "rate_with_high": w_hi,
            "rate_without": c / n2 if n2 else float("nan"), "rate_without_low": wo_lo, "rate_without_high": wo_hi,
            "lift": lift, "lift_low": lo, "lift_high": hi, "phi": _phi(a, n1 - a, c, n2 - c), "p": pval,
        })
    df = pd.DataFrame(rows, columns=[c for c, _ in MILESTONE_COLUMNS[:20]] + ["p"])
    if df.empty:
        return _finish(df, until, spec), until
    # conclusive: the interval excludes 1 and the effect survives the false-discovery control over
    # all variants tested (hundreds of intervals would otherwise give dozens of chance findings)
    df["q_value"] = _bh(df.p)
    alpha = 1 - spec.confidence
    df["direction"] = df.apply(
        lambda r: "inconclusive" if not (r.q_value <= alpha) else
        ("positive" if r.lift_low > 1 else ("negative" if r.lift_high < 1 else "inconclusive")), axis=1)
    df["eligible"] = ((df.users_with >= spec.min_users) & (df.coverage >= spec.min_coverage)
                      & ((df.cohort_users - df.users_with) >= spec.min_users))
    # strength of association: |phi| (as Amplitude Compass and Mixpanel Signal rank), only for
    # variants whose lift interval excludes 1; lift alone favours rare variants and the
    # "never came back" contrast that any activity event shows
    df["_strength"] = df.phi.abs().where(df.direction != "inconclusive", 0.0)
    df["is_best_variant"] = False
    df["rank"] = pd.NA
    ok = df[df.eligible & (df.direction != "inconclusive")]
    if not ok.empty:
        # stable and fully ordered, so ties resolve the same way on every run
        best = (ok.sort_values(["_strength", "coverage", "within_days", "min_count", "candidate"],
                               ascending=[False, False, True, True, True], kind="mergesort")
                .groupby("candidate", sort=False).head(1))
        df.loc[best.index, "is_best_variant"] = True
        for direction in ("positive", "negative"):
            ranked = best[best.direction == direction].sort_values(["_strength", "candidate"],
                                                                   ascending=[False, True], kind="mergesort")
            df.loc[ranked.index, "rank"] = range(1, len(ranked) + 1)
    return _finish(df, until, spec), until


def _finish(df: pd.DataFrame, until, spec: MilestoneSpec) -> pd.DataFrame:
    for col, _ in MILESTONE_COLUMNS:
        if col not in df:
            df[col] = pd.NA
    df["observed_until"] = until
    df["definition_hash"] = spec.signals.definition_hash
    df = df.sort_values(["is_best_variant", "direction", "rank", "candidate", "within_days", "min_count"],
                        ascending=[False, False, True, True, True, True], na_position="last")
    return df[[c for c, _ in MILESTONE_COLUMNS]].reset_index(drop=True)


def proposed_rule(df: pd.DataFrame, spec: MilestoneSpec, observed_until: dt.date | None = None) -> dict:
    """The top milestones as a rule-based PQL definition (a dict ready for YAML).

    A user is a PQL when they reach any of the positive milestones and none of the
    negative ones; each condition is written in the signal vocabulary of signals.yaml
    (``kind: count``, ``event``, ``where``, ``within_days_of_signup``, ``threshold``)."""
    best = df[df.is_best_variant.fillna(False).astype(bool)]

    def cond(r) -> dict:
        c = {"milestone": r.candidate}
        if r.candidate == ACTIVE_DAYS:
            c.update({"kind": "active_days"})
        else:
            c.update({"kind": "count", "event": r.event})
            if isinstance(r.where_filter, str) and r.where_filter:
                c["where"] = json.loads(r.where_filter)
        c.update({"within_days_of_signup": int(r.within_days), "threshold": int(r.min_count),
                  "evidence": {"lift": round(float(r.lift), 2),
                               "lift_interval": [round(float(r.lift_low), 2), round(float(r.lift_high), 2)],
                               "q_value": float(f"{float(r.q_value):.3g}"),
                               "conversion_with": round(float(r.rate_with), 4),
                               "conversion_without": round(float(r.rate_without), 4),
                               "coverage": round(float(r.coverage), 4), "cohort_users": int(r.cohort_users)}})
        return c

    pos = best[best.direction == "positive"].sort_values("rank").head(spec.top)
    neg = best[best.direction == "negative"].sort_values("rank").head(spec.top)
    until = observed_until if observed_until is not None else (df.observed_until.iloc[0] if len(df) else None)
    return {
        "name": "discovered_milestones",
        "description": (f"PQL when a user reaches any of these milestones within the given days of signup and none of "
                        f"the negative ones; discovered from conversions within {spec.outcome_days} days "
                        f"after the milestone window, observed until {until}."),
        "observed_until": str(until) if until is not None else None,
        "signals_definition_hash": spec.signals.definition_hash,
        "match": "any",
        "conditions": [cond(r) for r in pos.itertuples(index=False)],
        "unless": [cond(r) for r in neg.itertuples(index=False)],
    }
