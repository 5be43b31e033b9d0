"""Scoring: tiers, size segments, per-lead reasons from the model, routing with suppression
and caps (pure functions on hand-built leads)."""

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from pql_pipeline.defs.features.signals import Signal
from pql_pipeline.defs.scoring.assets import volume_verdict
from pql_pipeline.defs.scoring.scoring import ScoringSpec, explain, reference_values, route, segment_of, tier_of

INVITES = Signal(name="teammates_invited", kind="distinct_count", event="Teammate Invited", property="email",
                 polarity="positive", threshold=2, reason="invited {value} teammates")
TICKETS = Signal(name="basics_tickets", kind="count", event="Support Ticket Opened", polarity="negative",
                 threshold=3, reason="opened {value} support tickets about the basics")
SESSION = Signal(name="avg_session_seconds", kind="session_length", event="Session Ended", property="s",
                 polarity="neutral")
PROJECTS = Signal(name="projects", kind="count", event="Project Created", polarity="positive", threshold=3,
                  reason="created {value} projects")


def planted_model():
    """Conversion driven by invites (+) and basics tickets (-); projects and sessions are noise."""
    rng = np.random.default_rng(3)
    n = 4000
    x = pd.DataFrame({"teammates_invited": rng.poisson(1.0, n).astype(float),
                      "basics_tickets": rng.poisson(1.0, n).astype(float),
                      "avg_session_seconds": rng.normal(300, 50, n),
                      "projects": rng.poisson(2.0, n).astype(float)})
    logit = -2.5 + 1.2 * x["teammates_invited"] - 1.0 * x["basics_tickets"]
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return LogisticRegression(max_iter=1000).fit(x, y), x


def test_reasons_name_the_behaviour_that_raises_and_lowers_each_lead():
    model, train = planted_model()
    ref = reference_values(train, list(train.columns), [])
    leads = pd.DataFrame({"teammates_invited": [5.0, 0.0, 4.0], "basics_tickets": [0.0, 0.0, 6.0],
                          "avg_session_seconds": [300.0, 300.0, 300.0], "projects": [2.0, 2.0, 2.0]})
    p, reasons = explain(model, leads, leads, [INVITES, TICKETS, SESSION, PROJECTS], ref, top=3)
    assert p[0] > p[2] > 0 and p[0] > p[1]
    # lead 0: many invites, no tickets -> the invites are the reason; no caveat
    assert reasons[0][0]["text"] == "invited 5 teammates" and reasons[0][0]["contribution"] > 0.1
    assert [r for r in reasons[0] if r["polarity"] == "negative"] == []
    # lead 2: invites are the reason, the basics tickets the caveat
    texts = {r["polarity"]: r["text"] for r in reasons[2]}
    assert texts == {"positive": "invited 4 teammates", "negative": "opened 6 support tickets about the basics"}
    # neutral signals and signals that did not matter are never told
    assert all(r["signal"] not in ("avg_session_seconds",) for rs in reasons for r in rs)
    assert all(abs(r["contribution"]) >= 0.005 or r is rs[0] for rs in reasons for r in rs)


def test_every_lead_gets_a_reason_even_when_no_single_input_carries_it():
    model, train = planted_model()
    ref = reference_values(train, list(train.columns), [])
    typical = pd.DataFrame([{c: ref[c] for c in train.columns}])
    typical["teammates_invited"] += 0.001      # a hair above typical: its contribution is tiny but positive
    _, reasons = explain(model, typical, typical, [INVITES, TICKETS], ref)
    assert [r["signal"] for r in reasons[0]] == ["teammates_invited"]


def test_tiers_and_segments():
    assert list(tier_of(np.array([0.05, 0.1, 0.29, 0.3, 0.9]), (("hot", 0.3), ("warm", 0.1)))) == [
        "cold", "warm", "warm", "hot", "hot"]
    segs = (("solo", 1), ("smb", 50), ("mid_market", 1000), ("enterprise", None))
    assert list(segment_of(pd.Series([1, 2, 50, 51, 5000, None]), segs)) == [
        "solo", "smb", "smb", "mid_market", "enterprise", "unknown"]


def _leads(rows):
    return pd.DataFrame(rows, columns=["user_id", "account_id", "segment", "tier", "probability"])


def test_routing_sends_big_accounts_to_sales_and_nudges_the_rest():
    spec = ScoringSpec(max_nudges_per_account=2)
    out = route(_leads([
        ("u1", "ent", "enterprise", "hot", 0.8),     # sales
        ("u2", "ent", "enterprise", "warm", 0.2),    # warm in a sales segment: neither sales nor nudge
        ("u3", "small", "smb", "warm", 0.2),         # nudge
        ("u4", "solo", "solo", "cold", 0.01),        # cold: nothing
        ("u5", None, "unknown", "hot", 0.5),         # no account known: self-serve nudge ...
        ("u6", None, "unknown", "hot", 0.45),        # ... each such user capped on their own
        ("u7", None, "unknown", "warm", 0.2),
    ]), spec).set_index("user_id")
    assert out["route"].to_dict() == {"u1": "sales", "u2": "none", "u3": "in_app", "u4": "none", "u5": "in_app",
                                      "u6": "in_app", "u7": "in_app"}
    assert out["route_note"].isna().all()


def test_nudges_are_suppressed_while_sales_works_the_account_and_capped_per_account():
    spec = ScoringSpec(max_nudges_per_account=2, sales_segments=("enterprise",))
    out = route(_leads([
        ("a1", "acme", "enterprise", "hot", 0.9),    # acme goes to sales today ...
        ("a2", "acme", "smb", "hot", 0.8),           # ... (a member counted in a smaller segment) no nudge
        ("b1", "beta", "smb", "hot", 0.7),           # beta was routed to sales last week: no nudge
        ("c1", "cee", "smb", "warm", 0.2), ("c2", "cee", "smb", "hot", 0.6), ("c3", "cee", "smb", "warm", 0.15),
    ]), spec, worked_by_sales={"beta"}).set_index("user_id")
    assert out.loc["a1", "route"] == "sales"
    assert (out.loc["a2", "route"], out.loc["b1", "route"]) == ("none", "none")
    assert out.loc["a2", "route_note"].startswith("suppressed") and out.loc["b1", "route_note"].startswith("suppressed")
    # cee: the two most likely are nudged, the third is capped
    assert out.loc[["c2", "c1", "c3"], "route"].tolist() == ["in_app", "in_app", "none"]
    assert out.loc["c3", "route_note"].startswith("capped")


def test_pql_volume_is_judged_against_the_median_of_the_days_before():
    assert volume_verdict([10, 9, 11, 10], 0.3, 3.0)[0]
    ok, meta = volume_verdict([40, 9, 11, 10, 500], 0.3, 3.0)     # a jump: 40 vs median 10.5
    assert not ok and meta["median_before"] == 10.5 and meta["ratio"] == 3.81
    assert not volume_verdict([0, 12, 10], 0.3, 3.0)[0]            # a collapse
    assert volume_verdict([0, 0, 0], 0.3, 3.0)[0] and not volume_verdict([3, 0, 0], 0.3, 3.0)[0]
