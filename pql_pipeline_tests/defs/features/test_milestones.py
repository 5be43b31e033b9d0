"""Activation-milestone discovery on small hand-made populations: cohort membership and
window edges, counts, rates and intervals against independent formulas (scipy's Wilson
interval, the textbook Katz interval, the 2x2 phi), eligibility, ranking, best variants,
``where`` candidates, exclusions and the proposed rule.

Every user signs up ("Signed Up") ``k`` days before ``U``; ``at(k, s)`` is ``s`` days after
that signup. A user "zz" signing up on ``U`` makes ``U`` the last partition day without
entering any cohort.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from contextlib import contextmanager
from dataclasses import replace
from statistics import NormalDist

import pandas as pd
import pytest
from scipy.stats import binomtest

from pql_pipeline.defs.features.milestones import (
    ACTIVE_DAYS,
    MILESTONE_COLUMNS,
    MilestoneSpec,
    candidates,
    discover,
    proposed_rule,
)
from pql_pipeline.defs.features.sql import event_condition
from pql_pipeline.lib.contracts import load_contract
from pql_pipeline.lib.engine import DuckDBEngine
from pql_pipeline.lib.warehouse import Warehouse, ensure_tables
from pql_pipeline.signals import Signal
from pql_pipeline_tests.conftest import CONTRACTS
from pql_pipeline_tests.defs.features.conftest import D, World, signals

U = D("2026-03-01")
CONV = ("Plan Upgraded",)
SIGNUP = "Signed Up"
X_SIGNAL = {"name": "x", "kind": "count", "event": "X"}


class _Collector:
    """Stands in for the connection while a World writes: collects its INSERTs."""

    def __init__(self):
        self.rows: dict[str, list] = {}

    def execute(self, sql: str, params: list) -> None:
        self.rows.setdefault(sql, []).append(params)


@contextmanager
def bulk(w: World):
    """The World's rows, written with one INSERT per table when the block ends (on a database
    file each single-row INSERT is a commit of a few milliseconds)."""
    conn, w.conn = w.conn, _Collector()
    try:
        yield w
        for sql, rows in w.conn.rows.items():
            table, cols = re.match(r"INSERT INTO (\w+) \(([^)]*)\)", sql).groups()
            conn.register("bulk_rows", pd.DataFrame(rows, columns=[c.strip() for c in cols.split(",")]))
            conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM bulk_rows")
            conn.unregister("bulk_rows")
    finally:
        w.conn = conn


def at(k: int, since: int, hour: int = 10) -> str:
    return f"{U - dt.timedelta(days=k) + dt.timedelta(days=since)} {hour:02d}:00:00"


def person(w, name: str, k: int, conv: int | None = None, events=()) -> None:
    """Signup at 09:00 of day U-k, events (since, name[, props]) at 10:00, conversion at 11:00."""
    w.track(at(k, 0, 9), SIGNUP, user=name)
    for since, event, *props in events:
        w.track(at(k, since), event, user=name, props=props[0] if props else None)
    if conv is not None:
        w.track(at(k, conv, 11), "Plan Upgraded", user=name)


def last_day(w) -> None:
    person(w, "zz", 0, events=[(0, "Heartbeat")])


def by_key(df: pd.DataFrame) -> dict:
    return {(r.candidate, r.min_count, r.within_days): r for r in df.itertuples(index=False)}


def counts(df: pd.DataFrame) -> dict:
    return {(r.candidate, r.min_count, r.within_days): (r.cohort_users, r.users_with, r.conversions_with,
                                                        r.conversions_without)
            for r in df.itertuples(index=False)}


def nan(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


# ------------------------------------------------------------------ independent reference formulas

def z_of(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_ref(k: int, n: int, confidence: float) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return ci.low, ci.high


def katz_ref(a: int, n1: int, c: int, n2: int, confidence: float) -> tuple[float, float, float]:
    """Risk ratio with the Katz log interval (Katz et al. 1978); Haldane-Anscombe 0.5 added to
    every cell of the 2x2 table when one is empty."""
    b, d = n1 - a, n2 - c
    if 0 in (a, b, c, d):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    rr = (a / (a + b)) / (c / (c + d))
    se = math.sqrt(b / (a * (a + b)) + d / (c * (c + d)))     # = sqrt(1/a - 1/n1 + 1/c - 1/n2)
    z = z_of(confidence)
    return rr, math.exp(math.log(rr) - z * se), math.exp(math.log(rr) + z * se)


def phi_ref(a: int, n1: int, c: int, n2: int) -> float:
    b, d = n1 - a, n2 - c
    return (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))


# ------------------------------------------------------------------ cohorts, windows, exclusions

COHORT_SPEC = MilestoneSpec(
    signals=signals(X_SIGNAL, signup_event=SIGNUP), conversion_events=CONV, min_counts=(1, 2),
    within_days=(3, 7), outcome_days=10, late_arrival_days=1, exclude_events=("Heartbeat",),
    min_users=1, min_coverage=0.0)


def test_cohort_membership_counting_window_and_outcome_window(world, fconn):
    """D=3 needs signup >= 3+10+1 = 14 days before U, D=7 needs >= 18. Days 0..D-1 after
    signup count; the outcome is a conversion on days D..D+9."""
    w = world
    last_day(w)
    person(w, "a", 14, events=[(0, "X"), (2, "X"), (3, "X")])   # D3 edge of the cohort; day 3 is not counted
    person(w, "b", 13, events=[(0, "X"), (0, "X"), (0, "X")])   # one day too recent for D3
    person(w, "c", 30, conv=2, events=[(0, "X"), (0, "X")])     # converted before D3: in no cohort
    person(w, "e", 30, conv=3, events=[(-1, "X"), (0, "X")])    # converts on day 3: D3 outcome; not in D7
    person(w, "f", 30, conv=12, events=[(2, "X"), (6, "X")])    # day 12: last outcome day of D3
    person(w, "g", 30, conv=13, events=[(6, "X"), (7, "X")])    # day 13: after D3's outcome, inside D7's
    person(w, "h", 30, conv=17, events=[(0, "Y"), (0, "Heartbeat")])  # day 17: after D7's outcome
    person(w, "i", 18, events=[(s, "X") for s in range(5)])     # D7 edge of the cohort
    person(w, "j", 17, events=[(0, "X"), (3, "X")])             # D3 only; day 3 is not counted
    person(w, "k", 30, conv=16)                                  # day 16: last outcome day of D7

    assert [c.name for c in candidates(fconn, COHORT_SPEC)] == ["X", "Y", ACTIVE_DAYS]
    df, until = discover(fconn, COHORT_SPEC)
    assert until == U
    # D3 cohort: a e f g h i j k (8), conversions e f; D7 cohort: f g h i k (5), conversions f g k.
    # (cohort, users with, conversions with, conversions without)
    assert counts(df) == {
        ("X", 1, 3): (8, 5, 2, 0),          # a(2) e(1) f(1) i(3) j(1)
        ("X", 2, 3): (8, 2, 0, 2),          # a i
        ("X", 1, 7): (5, 3, 2, 1),          # f(2) g(1) i(5)
        ("X", 2, 7): (5, 2, 1, 2),          # f i
        ("Y", 1, 3): (8, 1, 0, 2),
        ("Y", 2, 3): (8, 0, 0, 2),
        ("Y", 1, 7): (5, 1, 0, 3),
        ("Y", 2, 7): (5, 0, 0, 3),
        (ACTIVE_DAYS, 1, 3): (8, 8, 2, 0),
        (ACTIVE_DAYS, 2, 3): (8, 3, 1, 1),  # a{0,2} f{0,2} i{0,1,2}
        (ACTIVE_DAYS, 1, 7): (5, 5, 3, 0),
        (ACTIVE_DAYS, 2, 7): (5, 3, 2, 1),  # f{0,2,6} g{0,6} i{0..4}
    }
    row = by_key(df)[("X", 2, 7)]
    assert (row.event, row.where_filter, row.coverage, row.rate_with, row.rate_without) == ("X", None, 0.4, 0.5,
                                                                                            2 / 3)
    assert set(df.observed_until) == {U} and set(df.definition_hash) == {COHORT_SPEC.signals.definition_hash}
    assert list(df.columns) == [c for c, _ in MILESTONE_COLUMNS]


def test_without_a_signup_event_the_first_event_day_is_the_signup(world, fconn):
    w = world
    w.track(at(0, 0), "Heartbeat", user="zz")
    w.event(at(20, 0, 8), None, "p", type="identify", traits={"role": "admin"})   # first day seen: U-20
    w.track(at(20, 2), "X", user="p")
    w.track(at(20, 3), "X", user="p")                                            # day 3: not counted for D3
    w.track(at(13, 0), "X", user="q")                                            # too recent for D3
    spec = MilestoneSpec(signals=signals(X_SIGNAL), conversion_events=CONV, min_counts=(1, 2), within_days=(3,),
                         outcome_days=10, late_arrival_days=1, exclude_events=("Heartbeat",), min_users=1,
                         min_coverage=0.0)
    df, _ = discover(fconn, spec)
    assert counts(df) == {("X", 1, 3): (1, 1, 0, 0), ("X", 2, 3): (1, 0, 0, 0),
                          (ACTIVE_DAYS, 1, 3): (1, 1, 0, 0), (ACTIVE_DAYS, 2, 3): (1, 0, 0, 0)}


WHERE_SPEC = MilestoneSpec(
    signals=signals(
        {"name": "basics", "kind": "count", "event": "Support Ticket Opened", "where": {"category": "basics"}},
        {"name": "first_basics", "kind": "first_time", "event": "Support Ticket Opened",
         "where": {"category": "basics"}},                                             # same filter: one candidate
        {"name": "urgent", "kind": "count", "event": "Support Ticket Opened", "where": {"urgent": True}},
        {"name": "formats", "kind": "distinct_count", "event": "Exported Report", "property": "format",
         "where": {"size": "big"}},                                                    # not a count: no candidate
        {"name": "pro_upgrades", "kind": "count", "event": "Plan Upgraded", "where": {"plan": "pro"}},
        {"name": "beats", "kind": "count", "event": "Heartbeat", "where": {"k": "v"}},
        signup_event=SIGNUP),
    conversion_events=CONV, min_counts=(1, 2), within_days=(7,), outcome_days=14, late_arrival_days=1,
    exclude_events=("Heartbeat",), min_users=1, min_coverage=0.0)


def test_where_signals_add_filtered_candidates_and_exclusions_hold(world, fconn):
    w = world
    last_day(w)
    T = "Support Ticket Opened"
    basics, billing = {"category": "basics"}, {"category": "billing"}
    person(w, "t1", 30, conv=10, events=[(1, T, basics), (2, T, basics), (3, T, billing)])
    person(w, "t2", 30, events=[(1, T, basics), (1, T, billing), (1, "Exported Report", {"format": "csv",
                                                                                          "size": "big"})])
    person(w, "t3", 30, conv=10, events=[(1, T, billing), (2, T, billing)])
    person(w, "t4", 30, events=[(8, T, basics)])                                  # after the 7 days
    person(w, "t5", 30, events=[(1, T, {"category": "Basics", "urgent": True})])  # filters are exact
    person(w, "t6", 30, conv=10, events=[(2, T, {"category": "basics", "urgent": True})])
    person(w, "t7", 30)

    names = [c.name for c in candidates(fconn, WHERE_SPEC)]
    assert names == ["Exported Report", T, f"{T} (category=basics)", f"{T} (urgent=True)", ACTIVE_DAYS]
    df, _ = discover(fconn, WHERE_SPEC)
    got = {k: v for k, v in counts(df).items() if k[0] != ACTIVE_DAYS}
    # cohort t1..t7 (7 users), conversions t1 t3 t6
    assert got == {
        ("Exported Report", 1, 7): (7, 1, 0, 3), ("Exported Report", 2, 7): (7, 0, 0, 3),
        (T, 1, 7): (7, 5, 3, 0),                        # t1(3) t2(2) t3(2) t5(1) t6(1)
        (T, 2, 7): (7, 3, 2, 1),                        # t1 t2 t3
        (f"{T} (category=basics)", 1, 7): (7, 3, 2, 1),  # t1(2) t2(1) t6(1)
        (f"{T} (category=basics)", 2, 7): (7, 1, 1, 2),  # t1
        (f"{T} (urgent=True)", 1, 7): (7, 2, 1, 2),      # t5 t6
        (f"{T} (urgent=True)", 2, 7): (7, 0, 0, 3),
    }
    r = by_key(df)[(f"{T} (category=basics)", 1, 7)]
    assert (r.event, r.where_filter) == (T, '{"category": "basics"}')


# ------------------------------------------------------------------ statistics and ranking

T = "Support Ticket Opened"
STATS_SPEC = MilestoneSpec(
    signals=signals({"name": "basics", "kind": "count", "event": T, "where": {"category": "basics"}},
                    signup_event=SIGNUP),
    conversion_events=CONV, min_counts=(1, 2), within_days=(3, 7), outcome_days=14, late_arrival_days=1,
    exclude_events=("Heartbeat",), min_users=30, min_coverage=0.2, confidence=0.95, top=3)
R = range


def stats_world(w) -> None:
    """200 users signed up 30 days before U; users 0..49 convert on day 10 (inside the outcome
    window of D=3 and D=7), 50..199 never. Each candidate is done (once, on day 4, unless
    said otherwise) by ``a`` converters and ``b`` non-converters:

    Invited Teammate      day 1: 0-29, 50-69; again day 4: 0-29; day 5: 70-74
    Created Project       a=25 b=40      weak positive
    Viewed Docs           a=10 b=30      lift exactly 1: inconclusive (coverage exactly 0.2)
    Connected Integration a=8  b=2       strong but rare (10 < min_users)
    Exported Report       a=25 b=10      strong but coverage 0.175 < 0.2
    Ticket basics         a=3  b=57;  Ticket billing: b=40 (107-146)
    Cancelled Trial       a=0  b=40      an empty cell: continuity correction
    Hit Error             a=8  b=52      weak negative
    Every user also has a page view on day 2 (active on >= 2 of the first 3 days)."""
    last_day(w)
    plan = {
        "Created Project": [*R(0, 25), *R(50, 90)],
        "Viewed Docs": [*R(0, 10), *R(50, 80)],
        "Connected Integration": [*R(0, 8), 50, 51],
        "Exported Report": [*R(0, 25), *R(50, 60)],
        "Cancelled Trial": [*R(50, 90)],
        "Hit Error": [*R(0, 8), *R(50, 102)],
    }
    for i in range(200):
        u, k = f"s{i:03d}", 30
        events = [(4, e) for e, users in plan.items() if i in users]
        if i < 30 or 50 <= i < 70:
            events.append((1, "Invited Teammate"))
        if i < 30:
            events.append((4, "Invited Teammate"))
        if 70 <= i < 75:
            events.append((5, "Invited Teammate"))
        if i < 3 or 50 <= i < 107:
            events.append((4, T, {"category": "basics"}))
        if 107 <= i < 147:
            events.append((4, T, {"category": "billing"}))
        person(w, u, k, conv=10 if i < 50 else None, events=events)
        w.event(at(k, 2), None, u, type="page")


# (candidate, N, D) -> (users with, conversions with) in a cohort of 200 with 50 conversions
STATS_EXPECTED = {
    ("Invited Teammate", 1, 3): (50, 30), ("Invited Teammate", 2, 3): (0, 0),
    ("Invited Teammate", 1, 7): (55, 30), ("Invited Teammate", 2, 7): (30, 30),
    ("Created Project", 1, 7): (65, 25), ("Created Project", 2, 7): (0, 0),
    ("Viewed Docs", 1, 7): (40, 10), ("Viewed Docs", 2, 7): (0, 0),
    ("Connected Integration", 1, 7): (10, 8), ("Connected Integration", 2, 7): (0, 0),
    ("Exported Report", 1, 7): (35, 25), ("Exported Report", 2, 7): (0, 0),
    (T, 1, 7): (100, 3), (T, 2, 7): (0, 0),
    (f"{T} (category=basics)", 1, 7): (60, 3), (f"{T} (category=basics)", 2, 7): (0, 0),
    ("Cancelled Trial", 1, 7): (40, 0), ("Cancelled Trial", 2, 7): (0, 0),
    ("Hit Error", 1, 7): (60, 8), ("Hit Error", 2, 7): (0, 0),
    (ACTIVE_DAYS, 1, 3): (200, 50), (ACTIVE_DAYS, 2, 3): (200, 50),
    (ACTIVE_DAYS, 1, 7): (200, 50), (ACTIVE_DAYS, 2, 7): (200, 50),
}
BEST = [  # (candidate, N, D, direction, rank): |phi| 0.467 and 0.216; 0.508, 0.302, 0.289, 0.176
    ("Invited Teammate", 1, 3, "positive", 1),
    ("Created Project", 1, 7, "positive", 2),
    (T, 1, 7, "negative", 1),
    (f"{T} (category=basics)", 1, 7, "negative", 2),
    ("Cancelled Trial", 1, 7, "negative", 3),
    ("Hit Error", 1, 7, "negative", 4),
]


@pytest.fixture(scope="module")
def stats_runs(tmp_path_factory) -> dict[float, pd.DataFrame]:
    """The 200-user world is built once in its own DuckDB file (as the conftest fixtures build
    theirs) and discovered at two confidence levels."""
    wh = Warehouse(database=str(tmp_path_factory.mktemp("milestones") / "stats.duckdb"), memory_limit="1GB",
                   threads=2)
    with wh.get_connection() as c:
        ensure_tables(c, load_contract(CONTRACTS / "validated_events.odcs.yaml"), "validated_events",
                      "identity_links", "account_memberships")
        with bulk(World(c)) as w:
            stats_world(w)
        out = {}
        for confidence in (0.95, 0.90):
            df, until = discover(c, replace(STATS_SPEC, confidence=confidence))
            assert until == U
            out[confidence] = df
    return out


@pytest.fixture
def stats_df(stats_runs) -> pd.DataFrame:
    return stats_runs[0.95].copy()


def test_counts_rates_intervals_lift_and_phi_match_independent_formulas(stats_df):
    df = stats_df
    assert {k: (v[1], v[2]) for k, v in counts(df).items()} == STATS_EXPECTED
    assert set(df.cohort_users) == {200}
    assert set(df.conversions_with + df.conversions_without) == {50}
    for r in df.itertuples(index=False):
        n1, a = r.users_with, r.conversions_with
        n2, c = 200 - n1, 50 - a
        assert r.coverage == n1 / 200
        if n1:
            assert r.rate_with == a / n1
            assert (r.rate_with_low, r.rate_with_high) == pytest.approx(wilson_ref(a, n1, 0.95), rel=1e-12), r
        else:
            assert nan(r.rate_with) and nan(r.rate_with_low) and nan(r.rate_with_high)
        if n2:
            assert r.rate_without == c / n2
            assert (r.rate_without_low, r.rate_without_high) == pytest.approx(wilson_ref(c, n2, 0.95), rel=1e-12)
        else:
            assert nan(r.rate_without) and nan(r.rate_without_low)
        if n1 and n2:
            assert (r.lift, r.lift_low, r.lift_high) == pytest.approx(katz_ref(a, n1, c, n2, 0.95), rel=1e-12), r
            assert r.phi == pytest.approx(phi_ref(a, n1, c, n2), rel=1e-12)
        else:
            assert nan(r.lift) and nan(r.lift_low) and nan(r.phi) and r.direction == "inconclusive"
            assert not r.eligible

    rows = by_key(df)
    s = rows[("Invited Teammate", 1, 3)]  # [[30, 20], [20, 130]]
    assert (s.rate_with, s.rate_without, s.lift, s.phi) == pytest.approx((0.6, 20 / 150, 4.5, 3500 / 7500))
    assert s.lift_low == pytest.approx(4.5 * math.exp(-z_of(0.95) * math.sqrt(1 / 30 - 1 / 50 + 1 / 20 - 1 / 150)))
    # Cancelled Trial: no converter did it -> 0.5 added to every cell: (0.5/41) / (50.5/161)
    ct = rows[("Cancelled Trial", 1, 7)]
    se = math.sqrt(1 / 0.5 - 1 / 41 + 1 / 50.5 - 1 / 161)
    rr = (0.5 / 41) / (50.5 / 161)
    assert (ct.lift, ct.lift_low, ct.lift_high) == pytest.approx((rr, rr * math.exp(-1.959963984540054 * se),
                                                                  rr * math.exp(1.959963984540054 * se)))
    assert (ct.rate_with, ct.rate_with_low) == (0.0, 0.0)
    assert ct.rate_with_high == pytest.approx(1.959963984540054 ** 2 / (40 + 1.959963984540054 ** 2))
    # everyone did it: no comparison group
    assert nan(rows[(ACTIVE_DAYS, 2, 3)].rate_without) and not rows[(ACTIVE_DAYS, 2, 3)].eligible


def test_directions_eligibility_best_variants_and_ranks(stats_df):
    df = stats_df
    rows = by_key(df)
    direction = {k: r.direction for k, r in rows.items() if r.users_with}
    assert direction == {
        ("Invited Teammate", 1, 3): "positive", ("Invited Teammate", 1, 7): "positive",
        ("Invited Teammate", 2, 7): "positive", ("Created Project", 1, 7): "positive",
        ("Viewed Docs", 1, 7): "inconclusive", ("Connected Integration", 1, 7): "positive",
        ("Exported Report", 1, 7): "positive", (T, 1, 7): "negative", (f"{T} (category=basics)", 1, 7): "negative",
        ("Cancelled Trial", 1, 7): "negative", ("Hit Error", 1, 7): "negative",
        **{(ACTIVE_DAYS, n, d): "inconclusive" for n in (1, 2) for d in (3, 7)}}
    eligible = {k for k, r in rows.items() if r.eligible}
    assert eligible == {("Invited Teammate", 1, 3), ("Invited Teammate", 1, 7), ("Created Project", 1, 7),
                        ("Viewed Docs", 1, 7),  # coverage exactly min_coverage, 40 and 160 >= 30: eligible
                        (T, 1, 7), (f"{T} (category=basics)", 1, 7), ("Cancelled Trial", 1, 7), ("Hit Error", 1, 7)}
    # the rare and the narrow ones have a larger |phi| than the weak one, yet are not ranked
    assert abs(rows[("Connected Integration", 1, 7)].phi) > abs(rows[("Created Project", 1, 7)].phi)
    assert abs(rows[("Exported Report", 1, 7)].phi) > abs(rows[("Invited Teammate", 1, 3)].phi)
    # Invited Teammate's strongest variant (N=2, D=7: |phi| 0.73) covers 15% < 20%: best is (1, 3), not (1, 7)
    assert abs(rows[("Invited Teammate", 2, 7)].phi) > rows[("Invited Teammate", 1, 3)].phi > \
        rows[("Invited Teammate", 1, 7)].phi

    best = df[df.is_best_variant]
    assert [(r.candidate, r.min_count, r.within_days, r.direction, r.rank)
            for r in best.itertuples(index=False)] == BEST
    # the table lists the ranked best variants first, then everything else unranked
    assert list(df.is_best_variant[:len(BEST)]) == [True] * len(BEST)
    assert not df.is_best_variant[len(BEST):].any() and df["rank"][len(BEST):].isna().all()
    # each best variant has the largest |phi| among its candidate's conclusive, eligible variants
    for cand, n, d, _, _ in BEST:
        ok = df[(df.candidate == cand) & df.eligible & (df.direction != "inconclusive")]
        assert abs(rows[(cand, n, d)].phi) == ok.phi.abs().max()


def test_proposed_rule_lists_the_ranked_milestones_with_the_table_evidence(stats_df):
    df = stats_df
    rule = proposed_rule(df, STATS_SPEC)
    rows = by_key(df)

    def evidence(key):
        r = rows[key]
        return {"lift": round(r.lift, 2), "lift_interval": [round(r.lift_low, 2), round(r.lift_high, 2)],
                "q_value": float(f"{r.q_value:.3g}"),
                "conversion_with": round(r.rate_with, 4), "conversion_without": round(r.rate_without, 4),
                "coverage": round(r.coverage, 4), "cohort_users": 200}

    assert rule["observed_until"] == str(U) and rule["match"] == "any"
    assert rule["signals_definition_hash"] == STATS_SPEC.signals.definition_hash
    assert rule["conditions"] == [
        {"milestone": "Invited Teammate", "kind": "count", "event": "Invited Teammate", "within_days_of_signup": 3,
         "threshold": 1, "evidence": evidence(("Invited Teammate", 1, 3))},
        {"milestone": "Created Project", "kind": "count", "event": "Created Project", "within_days_of_signup": 7,
         "threshold": 1, "evidence": evidence(("Created Project", 1, 7))},
    ]
    assert rule["conditions"][0]["evidence"] == {"lift": 4.5, "lift_interval": [2.82, 7.18], "q_value": 9.69e-10,
                                                 "conversion_with": 0.6, "conversion_without": 0.1333,
                                                 "coverage": 0.25, "cohort_users": 200}
    # top = 3 of the four negatives, in rank order
    assert rule["unless"] == [
        {"milestone": T, "kind": "count", "event": T, "within_days_of_signup": 7, "threshold": 1,
         "evidence": evidence((T, 1, 7))},
        {"milestone": f"{T} (category=basics)", "kind": "count", "event": T, "where": {"category": "basics"},
         "within_days_of_signup": 7, "threshold": 1, "evidence": evidence((f"{T} (category=basics)", 1, 7))},
        {"milestone": "Cancelled Trial", "kind": "count", "event": "Cancelled Trial", "within_days_of_signup": 7,
         "threshold": 1, "evidence": evidence(("Cancelled Trial", 1, 7))},
    ]
    one = proposed_rule(df, replace(STATS_SPEC, top=1))
    assert [c["milestone"] for c in one["conditions"]] == ["Invited Teammate"]
    assert [c["milestone"] for c in one["unless"]] == [T]


def test_a_lower_confidence_gives_narrower_intervals(stats_runs):
    df = stats_runs[0.90]
    r = by_key(df)[("Created Project", 1, 7)]   # [[25, 40], [25, 110]]
    assert (r.lift, r.lift_low, r.lift_high) == pytest.approx(katz_ref(25, 65, 25, 135, 0.90), rel=1e-12)
    assert (r.rate_with_low, r.rate_with_high) == pytest.approx(wilson_ref(25, 65, 0.90), rel=1e-12)
    lo95 = katz_ref(25, 65, 25, 135, 0.95)[1]
    assert r.lift_low > lo95


def test_active_days_milestone_is_ranked_like_any_other(world, fconn):
    """Users active on 3 distinct days of the first 7 (any activity: track or page, several
    events on one day count once) convert far more often. Users 0..19 also did "Won" once."""
    with bulk(world) as w:
        last_day(w)
        for i in range(100):
            u = f"a{i:03d}"
            conv = 10 if (i < 30 or 60 <= i < 70) else None       # 30 of 40 busy users, 10 of 60 others
            person(w, u, 30, conv=conv, events=[(0, "X"), (0, "X")] + ([(5, "Won")] if i < 20 else []))
            if i < 40:
                w.event(at(30, 3), None, u, type="page")
                w.track(at(30, 6), "Heartbeat", user=u)
                w.track(at(30, 6, 12), "Heartbeat", user=u)
    spec = MilestoneSpec(signals=signals(X_SIGNAL, signup_event=SIGNUP), conversion_events=CONV,
                         min_counts=(3,), within_days=(7,), outcome_days=14, exclude_events=("Heartbeat",),
                         min_users=30, min_coverage=0.02)
    df, _ = discover(fconn, spec)
    assert counts(df) == {("X", 3, 7): (100, 0, 0, 40), ("Won", 3, 7): (100, 0, 0, 40),
                          (ACTIVE_DAYS, 3, 7): (100, 40, 30, 10)}
    r = by_key(df)[(ACTIVE_DAYS, 3, 7)]
    assert (r.direction, r.rank, r.is_best_variant) == ("positive", 1, True)
    # "Won" (by 20 converters: coverage 0.2, but 20 < min_users) is never eligible
    won = by_key(discover(fconn, replace(spec, min_counts=(1,)))[0])[("Won", 1, 7)]
    assert (won.users_with, won.conversions_with, won.coverage, won.direction) == (20, 20, 0.2, "positive")
    assert (won.eligible, won.is_best_variant) == (False, False) and nan(won.rank)
    assert r.phi == pytest.approx((30 * 50 - 10 * 10) / math.sqrt(40 * 60 * 40 * 60))
    rule = proposed_rule(df, spec)
    assert [{k: v for k, v in c.items() if k != "evidence"} for c in rule["conditions"]] == [
        {"milestone": ACTIVE_DAYS, "kind": "active_days", "within_days_of_signup": 7, "threshold": 3}]
    assert rule["unless"] == []


# ------------------------------------------------------------------ empty populations

def test_no_data_gives_an_empty_table_and_an_empty_rule(fconn):
    df, until = discover(fconn, STATS_SPEC)
    assert until is None and df.empty and list(df.columns) == [c for c, _ in MILESTONE_COLUMNS]
    rule = proposed_rule(df, STATS_SPEC)
    assert (rule["conditions"], rule["unless"], rule["observed_until"]) == ([], [], None)


def test_no_cohort_observed_long_enough_gives_an_empty_table_and_an_empty_rule(world, fconn):
    with bulk(world) as w:
        for i in range(40):
            person(w, f"r{i}", 21, conv=10 if i < 20 else None, events=[(1, "X")] if i < 20 else [])
        last_day(w)
    df, until = discover(fconn, STATS_SPEC)     # D=3 needs 3 + 14 + 1 = 18 days: but D=7 needs 22
    assert until == U
    assert set(df.within_days) == {3}          # only D=3 has a cohort
    df_none, until = discover(fconn, replace(STATS_SPEC, within_days=(7,)))
    assert until == U and df_none.empty and list(df_none.columns) == [c for c, _ in MILESTONE_COLUMNS]
    rule = proposed_rule(df_none, STATS_SPEC)
    assert (rule["conditions"], rule["unless"]) == ([], [])


# ------------------------------------------------------------------ edge cases

def test_without_any_conversion_nothing_is_a_milestone(world, fconn):
    """With no conversion in the cohort (a = c = 0) there is no lift: the 0.5 correction would
    turn 0/0 into (n2 + 1) / (n1 + 1) - here 296 / 6 = 49.3 - and make an event done by 5 of
    300 users a 'positive' milestone where nobody converted (e.g. a misspelt conversion event)."""
    with bulk(world) as w:
        last_day(w)
        for i in range(300):
            person(w, f"n{i:03d}", 30, events=[(1, "X")] if i < 5 else [])
    spec = MilestoneSpec(signals=signals(X_SIGNAL, signup_event=SIGNUP), conversion_events=CONV,
                         min_counts=(1,), within_days=(7,), outcome_days=14, min_users=5, min_coverage=0.01)
    df, _ = discover(fconn, spec)
    r = by_key(df)[("X", 1, 7)]
    assert (r.cohort_users, r.users_with, r.conversions_with, r.conversions_without) == (300, 5, 0, 0)
    assert (r.rate_with, r.rate_without) == (0.0, 0.0)
    assert r.direction == "inconclusive", (r.lift, r.lift_low, r.lift_high)
    assert nan(r.rank)
    assert proposed_rule(df, spec)["conditions"] == []


@pytest.mark.parametrize("where, props", [
    ({"category": "basics"}, {"category": "basics"}),
    ({"urgent": True}, {"urgent": True}),                         # stays a boolean, not the string "True"
    ({"category": "setup, basics"}, {"category": "setup, basics"}),  # a comma in a value survives
], ids=["string", "boolean", "comma"])
def test_the_proposed_where_filter_selects_the_same_events(world, fconn, where, props):
    """A proposed condition must reproduce its milestone when written into signals.yaml:
    its ``where`` has to select exactly the events the candidate counted."""
    with bulk(world) as w:
        last_day(w)
        for i in range(60):      # 30 non-converters open such tickets, 5 converters open other tickets
            events = [(1, T, props)] if 20 <= i < 50 else ([(1, T, {"other": 1})] if i < 5 else [])
            person(w, f"w{i:02d}", 30, conv=10 if i < 20 else None, events=events)
    spec = MilestoneSpec(signals=signals({"name": "tickets", "kind": "count", "event": T, "where": where},
                                         signup_event=SIGNUP),
                         conversion_events=CONV, min_counts=(1,), within_days=(7,), outcome_days=14,
                         min_users=1, min_coverage=0.0)
    df, _ = discover(fconn, spec)
    label = f"{T} ({', '.join(f'{k}={v}' for k, v in where.items())})"
    r = by_key(df)[(label, 1, 7)]
    assert (r.users_with, r.conversions_with, r.direction, r.is_best_variant) == (30, 0, "negative", True)
    rule = proposed_rule(df, spec)
    cond = next(c for c in rule["unless"] if c["milestone"] == label)
    assert cond["where"] == where
    sig = Signal(name="proposed", kind="count", event=cond["event"], where=cond["where"])
    n = fconn.execute(f"SELECT count(*) FROM validated_events WHERE {event_condition(sig)}").fetchall()[0][0]
    assert n == 30


def test_ties_are_broken_the_same_way_whatever_order_the_engine_returns_rows_in(world, fconn, monkeypatch):
    """A SELECT without ORDER BY has no order (with several threads DuckDB's varies from run
    to run); ties of |phi| and coverage must still pick the same best (N, D) and rank, or the
    proposed rule changes between runs on the same data. Here X done on day 1 gives identical
    (1, 3) and (1, 7) variants, and "active days >= 2" is the same set of users as X."""
    with bulk(world) as w:
        last_day(w)
        for i in range(60):
            person(w, f"t{i:02d}", 30, conv=10 if i < 20 else None,
                   events=[(1, "X")] if i < 15 or 20 <= i < 25 else [])
    spec = MilestoneSpec(signals=signals(X_SIGNAL, signup_event=SIGNUP), conversion_events=CONV,
                         min_counts=(1, 2), within_days=(3, 7), outcome_days=14, min_users=10, min_coverage=0.0)
    as_returned, _ = discover(fconn, spec)
    ranked = as_returned[as_returned.is_best_variant]
    assert len(ranked) == 2 and set(ranked.phi) == {phi_ref(15, 20, 5, 40)}
    engine_df = DuckDBEngine.df
    monkeypatch.setattr(DuckDBEngine, "df", lambda self, sql: engine_df(self, sql).iloc[::-1].reset_index(drop=True))
    reversed_, _ = discover(fconn, spec)
    pd.testing.assert_frame_equal(as_returned, reversed_)
    assert proposed_rule(as_returned, spec)["conditions"] == proposed_rule(reversed_, spec)["conditions"]


def test_benjamini_hochberg_q_values():
    """q-values by hand for p = (0.01, 0.04, 0.03, 0.20, NaN): sorted 0.01, 0.03, 0.04, 0.20 with
    m = 4 give 0.04, 0.06 -> min(0.06, 0.0533) = 0.0533, 0.0533, 0.20; NaN stays NaN."""
    from pql_pipeline.defs.features.milestones import _bh

    q = _bh(pd.Series([0.01, 0.04, 0.03, 0.20, float("nan")]))
    assert q[:4].round(4).tolist() == [0.04, 0.0533, 0.0533, 0.2]
    assert math.isnan(q[4])
