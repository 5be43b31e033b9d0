"""Scoring: tiers, size segments, per-lead reasons from the model, routing with suppression
and caps (pure functions on hand-built leads)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from pql_pipeline.defs.model.training import reference_values
from pql_pipeline.defs.scoring.assets import volume_verdict
from pql_pipeline.defs.scoring.scoring import ScoringSpec, explain, route, segment_of, tier_of
from pql_pipeline.signals import Signal

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
    # nullable integers, text and counts past the last bound
    assert list(segment_of(pd.Series([1, None, 51], dtype="Int64"), segs)) == ["solo", "unknown", "mid_market"]
    assert list(segment_of(pd.Series(["7", "many", None]), segs)) == ["smb", "unknown", "unknown"]
    assert list(segment_of(pd.Series([5.0, 2000.0]), (("small", 10), ("mid", 1000)))) == ["small", "unknown"]


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
    # with few PQLs a day, chance alone moves the count by more than the bounds: not judged
    ok, meta = volume_verdict([9, 2, 3, 2], 0.3, 3.0, min_median=10)
    assert ok and "too few" in meta["note"]
    assert not volume_verdict([90, 20, 30, 20], 0.3, 3.0, min_median=10)[0]


def test_batched_ablations_equal_one_prediction_per_column_and_row():
    """The ablations go through the model in shared batches and skip rows already at the
    typical value; the contributions must equal ablating each column on its own."""
    model, train = planted_model()
    ref = reference_values(train, list(train.columns), [])
    leads = train.iloc[:700].copy()
    leads.loc[leads.index[:50], "teammates_invited"] = ref["teammates_invited"]   # rows at the typical value
    leads.loc[leads.index[50:60], "projects"] = np.nan
    ref_nan = {**ref, "avg_session_seconds": np.nan}
    p = model.predict_proba(leads.fillna(0))[:, 1]
    cols = list(leads.columns)
    from pql_pipeline.defs.scoring.scoring import contribution_matrix

    class Filled:   # the planted model cannot take NaN: a missing value counts as 0
        def predict_proba(self, x):
            return model.predict_proba(x.fillna(0))

    for batch in (97, 250_000):   # many batches (columns split across them) and one
        got = contribution_matrix(Filled(), leads, p, cols, ref_nan, batch_rows=batch)
        for j, c in enumerate(cols):
            ablated = leads.copy()
            ablated[c] = ref_nan[c]
            want = p - model.predict_proba(ablated.fillna(0))[:, 1]
            np.testing.assert_allclose(got[:, j], want, atol=1e-12)
        assert (got[:50, cols.index("teammates_invited")] == 0).all()
        assert (got[:, cols.index("teammates_invited")] != 0).sum() > 300


def _scored(rows):
    """rows: (user, account, probability, segment, reasons texts)"""
    spec = ScoringSpec()
    users = pd.DataFrame([r[:4] for r in rows], columns=["user_id", "account_id", "probability", "segment"])
    users["tier"] = tier_of(users["probability"].to_numpy(), spec.tiers)
    users["is_pql"] = users["probability"] >= spec.pql_threshold
    def reason(t):   # "-..." is a caveat; the signal is named by the sentence's verb
        text = t.lstrip("-")
        return {"signal": text.split()[0], "polarity": "negative" if t.startswith("-") else "positive", "text": text}
    told = [[reason(t) for t in r[4]] for r in rows]
    return users, told, spec


def test_accounts_are_scored_from_their_users():
    from pql_pipeline.defs.scoring.scoring import account_scores

    users, told, spec = _scored([
        ("a1", "acme", 0.5, "enterprise", ["invited 3 teammates", "-opened 4 tickets"]),
        ("a2", "acme", 0.4, "enterprise", ["invited 2 teammates", "connected Slack"]),
        ("a3", "acme", 0.02, "enterprise", []),
        ("b1", "beta", 0.2, "smb", []), ("b2", "beta", 0.2, "smb", []),   # no reasons, yet a PQL together
        ("c1", "cee", 0.01, "solo", []),
        ("n1", None, 0.9, "unknown", ["created 5 projects"]),             # no account: no account row
    ])
    acc = account_scores(users, told, spec).set_index("account_id")
    assert sorted(acc.index) == ["acme", "beta", "cee"]
    assert acc.loc["acme", "probability"] == round(1 - 0.5 * 0.6 * 0.98, 6)
    assert acc.loc["beta", "probability"] == round(1 - 0.8 * 0.8, 6) == 0.36
    assert acc.loc["acme", ["users_scored", "pql_users", "top_user_id"]].tolist() == [3, 2, "a1"]
    # reasons of its most likely users, each told once, and how many of its users qualify
    # one sentence per signal: the most likely user's invites, not also a2's
    assert acc.loc["acme", "reason_text"] == "2 of its users qualify as PQLs; invited 3 teammates; connected Slack"
    assert acc.loc["acme", "caveat_text"] == "opened 4 tickets"
    assert [r["user_id"] for r in acc.loc["acme", "reasons"]] == ["a1", "a2"]
    assert acc.loc["beta", "is_pql"] and "none stands out alone" in acc.loc["beta", "reason_text"]
    assert pd.isna(acc.loc["cee", "reason_text"]) and acc.loc["cee", "tier"] == "cold"
    assert acc.loc["acme", "percentile"] == 1.0 and acc.loc["acme", "tier"] == "hot"


def test_an_account_hot_as_a_whole_goes_to_sales_with_its_most_likely_user():
    from pql_pipeline.defs.scoring.scoring import account_routes, account_scores, finish_account_routes

    users, told, spec = _scored([
        ("e1", "ent", 0.2, "enterprise", []), ("e2", "ent", 0.2, "enterprise", []),   # warm users, hot account
        ("h1", "hotco", 0.6, "mid_market", []), ("h2", "hotco", 0.5, "mid_market", []),
        ("h3", "hotco", 0.15, "mid_market", []),
        ("s1", "small", 0.2, "smb", []), ("s2", "small", 0.2, "smb", []),          # hot small account: nudges
    ])
    acc = account_scores(users, told, spec)
    sales, contacts = account_routes(acc, users, spec)
    assert set(acc.loc[sales, "account_id"]) == {"ent", "hotco"}
    assert set(users.loc[contacts, "user_id"]) == {"e1", "h1", "h2"}   # ent: its most likely user; hotco: its hot users
    routed_users = route(users, spec, set(), contacts).set_index("user_id")["route"].to_dict()
    assert routed_users == {"e1": "sales", "e2": "none", "h1": "sales", "h2": "sales", "h3": "none",
                            "s1": "in_app", "s2": "in_app"}
    out = finish_account_routes(acc, route(users, spec, set(), contacts), sales).set_index("account_id")
    assert out["route"].to_dict() == {"ent": "sales", "hotco": "sales", "small": "in_app"}
    assert out["route_note"].to_dict() == {"ent": "1 contact(s)", "hotco": "2 contact(s)", "small": "2 user(s) nudged"}


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain values (a column's dtype depends on the other rows it was built with)."""
    return [{k: (None if not isinstance(v, (list, dict)) and pd.isna(v) else v) for k, v in r.items()}
            for r in frame.astype(object).to_dict("records")]


def test_days_routed_together_get_what_each_day_gets_alone():
    """Rows of several days (snapshot_date) are ranked, scored per account and routed day by
    day: the same user, account or tie on two days never meet."""
    import datetime as dt

    from pql_pipeline.defs.scoring.scoring import account_routes, account_scores, finish_account_routes, percentile

    one = [("e1", "ent", 0.2, "enterprise", ["invited 2 teammates"]), ("e2", "ent", 0.2, "enterprise", []),
           ("h1", "hotco", 0.6, "mid_market", ["connected Slack"]), ("h2", "hotco", 0.5, "mid_market", []),
           ("s1", "small", 0.2, "smb", []), ("s2", "small", 0.25, "smb", []), ("s3", "small", 0.3, "smb", []),
           ("n1", None, 0.4, "unknown", [])]
    two = [("e1", "ent", 0.05, "enterprise", []), ("h1", "hotco", 0.35, "mid_market", ["-opened 4 tickets"]),
           ("s1", "small", 0.6, "enterprise", ["created 5 projects"]), ("s2", "small", 0.2, "enterprise", []),
           ("n1", None, 0.4, "unknown", [])]
    days = [dt.date(2026, 3, 1), dt.date(2026, 3, 2)]

    def finished(users, told, spec):
        acc = account_scores(users, told, spec)
        sales, contacts = account_routes(acc, users, spec)
        routed_users = route(users, spec, None, contacts)
        return routed_users, finish_account_routes(acc, routed_users, sales)

    alone = []
    for _day, rows in zip(days, (one, two)):
        users, told, spec = _scored(rows)
        users["percentile"] = percentile(users, [])
        alone.append(finished(users, told, spec))
    frames = [_scored(rows) for rows in (one, two)]
    users = pd.concat([f[0].assign(snapshot_date=day) for f, day in zip(frames, days)], ignore_index=True)
    users["percentile"] = percentile(users, ["snapshot_date"])
    got_users, got_accounts = finished(users, frames[0][1] + frames[1][1], frames[0][2])
    for day, (want_users, want_accounts) in zip(days, alone):
        u = got_users[got_users["snapshot_date"] == day].drop(columns="snapshot_date").reset_index(drop=True)
        a = got_accounts[got_accounts["snapshot_date"] == day].drop(columns="snapshot_date").reset_index(drop=True)
        assert _records(u) == _records(want_users)
        assert _records(a[want_accounts.columns]) == _records(want_accounts)
    # the days differ: small is nudged (capped) on the first day and goes to sales on the second
    assert got_accounts.set_index(["snapshot_date", "account_id"])["route"].to_dict() == {
        (days[0], "ent"): "sales", (days[0], "hotco"): "sales", (days[0], "small"): "in_app",
        (days[1], "ent"): "none", (days[1], "hotco"): "sales", (days[1], "small"): "sales"}


def test_rescoring_a_past_day_re_derives_the_suppression_of_the_days_after_it(conn):
    """acme went to sales on day 1; on day 2 its size is unknown (no sales segment) and its hot
    user would get a nudge, suppressed because sales works acme. Re-scoring day 1 without the
    sales route lifts the suppression of day 2 (and only re-derives routes)."""
    import datetime as dt

    from pql_pipeline.defs.scoring.batch import SCORE_COLUMNS, reroute_following
    from pql_pipeline.defs.scoring.scoring import ACCOUNT_COLUMNS
    from pql_pipeline.lib.warehouse import ensure_columns

    spec = ScoringSpec(suppress_days=30)
    d1, d2, d3 = (dt.date(2026, 3, i) for i in (1, 2, 3))
    ensure_columns(conn, "pql_scores", SCORE_COLUMNS)
    ensure_columns(conn, "pql_account_scores", ACCOUNT_COLUMNS)

    def day(d, segment, route_, note, p=0.6):
        conn.execute("DELETE FROM pql_scores WHERE snapshot_date = ?", [d])
        conn.execute("DELETE FROM pql_account_scores WHERE snapshot_date = ?", [d])
        tier = "hot" if p >= 0.3 else "cold"
        conn.execute("INSERT INTO pql_scores (snapshot_date, user_id, account_id, probability, tier, segment, route, "
                     "route_note) VALUES (?, 'u1', 'acme', ?, ?, ?, ?, ?)", [d, p, tier, segment, route_, note])
        conn.execute("INSERT INTO pql_account_scores (snapshot_date, account_id, probability, tier, segment, "
                     "top_user_id, route, route_note) VALUES (?, 'acme', ?, ?, ?, 'u1', ?, ?)",
                     [d, p, tier, segment, route_, "1 contact(s)" if route_ == "sales" else None])

    suppressed = "suppressed: the account is worked by sales"
    day(d1, "enterprise", "sales", None)
    day(d2, "unknown", "none", suppressed)
    day(d3, "unknown", "none", suppressed)
    assert reroute_following(conn, spec, d1) == 0          # nothing to change: the stored routes hold
    day(d1, "enterprise", "none", None, p=0.05)            # day 1 re-scored: acme is cold, not worked by sales
    assert reroute_following(conn, spec, d1) == 4          # user and account routes of days 2 and 3
    assert conn.execute("SELECT snapshot_date, route, route_note FROM pql_scores WHERE snapshot_date > ? "
                        "ORDER BY 1", [d1]).fetchall() == [(d2, "in_app", None), (d3, "in_app", None)]
    assert conn.execute("SELECT route, route_note FROM pql_account_scores WHERE snapshot_date = ?",
                        [d3]).fetchall() == [("in_app", "1 user(s) nudged")]
    assert conn.execute("SELECT count(*) FROM pql_scores WHERE probability = 0.6").fetchall() == [(2,)]


def test_days_scored_together_get_what_each_day_gets_alone():
    """A range's consecutive days go through the model together, in one frame; each row's
    probability and reasons must be what scoring its day's rows alone gives, and a count
    without missing values reads as an integer."""
    import datetime as dt
    import json

    from sklearn.ensemble import HistGradientBoostingClassifier

    from pql_pipeline.defs.scoring.batch import model_outputs, row_groups
    from pql_pipeline.settings import load_settings

    settings = load_settings()
    numeric = ["teammates_invited", "basics_tickets", "projects_created_14d", "integration_connected"]
    rng = np.random.default_rng(5)
    n = 3000
    train = pd.DataFrame({"teammates_invited": rng.poisson(1.0, n), "basics_tickets": rng.poisson(1.0, n),
                          "projects_created_14d": rng.poisson(2.0, n), "integration_connected": rng.random(n) < 0.3})
    logit = -2.0 + 1.2 * train["teammates_invited"] - 1.0 * train["basics_tickets"] + 1.5 * train["integration_connected"]
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(train.astype(float), y)
    ref = reference_values(train.astype(float), numeric, [])
    row = {"version": "m1", "features": {"numeric": numeric, "categorical": []}}

    def day(size, seed, missing):
        r = np.random.default_rng(seed)
        f = pd.DataFrame({"user_id": [f"u{seed}_{i}" for i in range(size)], "account_id": "a",
                          "teammates_invited": r.poisson(2.0, size), "basics_tickets": r.poisson(1.5, size),
                          "projects_created_14d": r.poisson(2.0, size), "integration_connected": r.random(size) < 0.5,
                          "integration_connected_detail": "HubSpot"})
        if missing:   # as DuckDB hands a column with nulls that day: float with NaN, object booleans
            f["teammates_invited"] = f["teammates_invited"].astype(float)
            f.loc[f.index[::7], "teammates_invited"] = np.nan
            f["integration_connected"] = f["integration_connected"].astype(object)
            f.loc[f.index[::5], "integration_connected"] = None
        return f

    frames = [day(400, 1, False), day(250, 2, True), day(1, 3, False), day(600, 4, True)]
    # the days of a range come in one frame (one query): each row's reasons read only its own values
    both = pd.concat(frames, ignore_index=True)
    p_all, r_all = model_outputs(settings, row, model, ref, both)
    told, at = 0, 0
    for f in frames:
        p1, r1 = model_outputs(settings, row, model, ref, both.iloc[at:at + len(f)])
        np.testing.assert_array_equal(p_all[at:at + len(f)], p1)
        assert json.dumps(r_all[at:at + len(f)]) == json.dumps(r1)
        told += sum(1 for r in r1 if r)
        at += len(f)
    assert told > 300   # leads above cold got reasons
    first_day = [r for rs in model_outputs(settings, row, model, ref, frames[0])[1] for r in rs
                 if r["signal"] == "teammates_invited"]
    assert first_day and all(isinstance(r["value"], int) for r in first_day)
    assert any(r["text"] == "connected an integration (HubSpot)" for rs in r_all[:400] for r in rs)

    d = [dt.date(2026, 3, i) for i in range(1, 7)]
    rows = dict(zip(d, [100, 50, 300, 10, 10, 0]))
    assert row_groups(d, rows, 150) == [[d[0], d[1]], [d[2]], [d[3], d[4], d[5]]]
    assert row_groups(d, rows, 1) == [[x] for x in d]
    assert row_groups(d, rows, 10_000) == [d]


def test_the_sales_worked_in_memory_equal_what_the_written_days_say(conn):
    """A range's days are routed before they are written: the accounts sales worked in the
    window come from the warehouse for the days before the range and from memory for the
    range's days, and equal what worked_by_sales reads once those days are written."""
    import datetime as dt

    from pql_pipeline.defs.scoring.batch import SCORE_COLUMNS, SalesWorked, by_day, worked_by_sales
    from pql_pipeline.defs.scoring.scoring import ACCOUNT_COLUMNS
    from pql_pipeline.lib.warehouse import ensure_columns

    ensure_columns(conn, "pql_scores", SCORE_COLUMNS)
    ensure_columns(conn, "pql_account_scores", ACCOUNT_COLUMNS)
    d = [dt.date(2026, 3, i) for i in range(1, 8)]
    written = {d[0]: ["acme"], d[1]: ["beta"], d[3]: ["stale"]}      # d[3] is re-scored by the run below
    for day, accounts in written.items():
        for a in accounts:
            conn.execute("INSERT INTO pql_scores (snapshot_date, user_id, account_id, route) VALUES (?, ?, ?, 'sales')",
                         [day, f"u_{a}", a])
    conn.execute("INSERT INTO pql_account_scores (snapshot_date, account_id, route) VALUES (?, 'gamma', 'sales')",
                 [d[2]])
    run = d[3:]
    worked = SalesWorked(conn, run, suppress_days=3)
    routes = {d[3]: ("delta", "sales"), d[4]: ("eps", "in_app"), d[5]: ("zeta", "sales"), d[6]: ("eta", "none")}
    for day in run:
        assert worked.before(day) == worked_by_sales(conn, day, 3)      # the days before are written
        account, r = routes[day]
        users = pd.DataFrame({"snapshot_date": [day], "account_id": [account], "route": [r]})
        worked.record([day], users[users["route"] == "sales"])
        conn.execute("DELETE FROM pql_scores WHERE snapshot_date = ?", [day])
        conn.execute("INSERT INTO pql_scores (snapshot_date, user_id, account_id, route) VALUES (?, ?, ?, ?)",
                     [day, f"u_{account}", account, r])
    assert worked.before(d[4]) == {"beta", "gamma", "delta"}           # not 'stale': its day was re-scored
    assert worked.before(d[6]) == {"delta", "zeta"}
    assert SalesWorked(conn, run, suppress_days=0).before(d[5]) == set()
    # a frame of several days cut per day, days without rows included
    frame = pd.DataFrame({"snapshot_date": [d[0], d[0], d[2]], "user_id": ["a", "b", "c"]})
    parts = by_day(frame, d[:3])
    assert [len(parts[x]) for x in d[:3]] == [2, 0, 1] and list(parts[d[2]].index) == [0]


def _planted_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Invites raise conversion, basics tickets lower it; sessions (some missing), projects and
    a plan with an infrequent category are noise."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"teammates_invited": rng.poisson(1.0, n).astype(float),
                      "basics_tickets": rng.poisson(1.0, n).astype(float),
                      "avg_session_seconds": rng.normal(300, 50, n),
                      "projects": rng.poisson(2.0, n).astype(float),
                      "plan": rng.choice(["free", "trial", "edu", "rare"], n, p=[0.6, 0.3, 0.0985, 0.0015])})
    x.loc[rng.random(n) < 0.2, "avg_session_seconds"] = np.nan
    y = (rng.random(n) < 1 / (1 + np.exp(-(-2 + 1.1 * x["teammates_invited"] - 0.9 * x["basics_tickets"])))).astype(int)
    return x, y


@pytest.mark.parametrize("calibration", ["sigmoid", "isotonic", "none"])
def test_a_logistic_regressions_reasons_in_closed_form_equal_its_ablations(calibration):
    """The pipeline training builds (imputer with missing indicators, scaler, one-hot with an
    infrequent category, calibration): the closed form equals predicting each ablation to
    1e-9, and the reasons told from either are the same."""
    from pql_pipeline.defs.model.training import build_model
    from pql_pipeline.defs.scoring.scoring import _ablate, linear_ablation, tell

    x, y = _planted_frame(3000, seed=11)
    numeric = ["teammates_invited", "basics_tickets", "avg_session_seconds", "projects"]
    model = build_model("logistic_regression", numeric, ["plan"], calibration, seed=1).fit(x, y)
    reference = reference_values(x, numeric, ["plan"])
    p = model.predict_proba(x)[:, 1]
    cols = numeric + ["plan"]
    fast = linear_ablation(model, x, p, cols, reference)
    assert fast is not None
    slow = _ablate(model, x, p, cols, reference)
    assert np.abs(fast - slow).max() < 1e-9 and np.abs(slow).max() > 0.01
    told = [(c, s, "") for c, s in (("teammates_invited", INVITES), ("basics_tickets", TICKETS),
                                    ("projects", PROJECTS))]
    idx = [cols.index(c) for c, _, _ in told]
    assert tell(fast[:, idx], x, told) == tell(slow[:, idx], x, told)
    # gradient boosting has no closed form
    gb = build_model("gradient_boosting", numeric, ["plan"], "sigmoid", seed=1).fit(x, y)
    assert linear_ablation(gb, x, gb.predict_proba(x)[:, 1], cols, reference) is None


def _walked(est, t: np.ndarray) -> tuple[np.ndarray, float]:
    """Path attribution the slow way: each row walked down each tree node by node, a node's
    expected value the count-weighted mean of the leaves below it."""
    phi = np.zeros(t.shape)
    base = float(np.ravel(est._baseline_prediction)[0])
    for (tree,) in est._predictors:
        nodes = tree.nodes

        def expected(i, nodes=nodes):
            if nodes["is_leaf"][i]:
                return float(nodes["value"][i]) * nodes["count"][i], float(nodes["count"][i])
            (a, m), (b, k) = expected(nodes["left"][i]), expected(nodes["right"][i])
            return a + b, m + k

        def mean(i):
            total, count = expected(i)
            return total / count

        base += mean(0)
        for r in range(len(t)):
            i = 0
            while not nodes["is_leaf"][i]:
                f = nodes["feature_idx"][i]
                v = t[r, f]
                left = nodes["missing_go_to_left"][i] if np.isnan(v) else v <= nodes["num_threshold"][i]
                child = nodes["left"][i] if left else nodes["right"][i]
                phi[r, f] += mean(child) - mean(i)
                i = child
    return phi, base


@pytest.mark.parametrize("calibration", ["sigmoid", "isotonic", "none"])
def test_gradient_boostings_reasons_are_its_path_contributions(calibration):
    """Gradient boosting as training builds it: each input's contribution is what its splits
    add along the row's path through the trees (equal to walking the trees one node at a time);
    the contributions and the base add up to the raw score, so taking one input's out of it
    through the calibration is its contribution in probability points."""
    from scipy.special import expit

    from pql_pipeline.defs.model.training import build_model
    from pql_pipeline.defs.scoring.scoring import _pipeline_parts, contribution_matrix, path_contributions, tree_attribution

    x, y = _planted_frame(3000, seed=11)
    numeric = ["teammates_invited", "basics_tickets", "avg_session_seconds", "projects"]
    model = build_model("gradient_boosting", numeric, ["plan"], calibration, seed=1).fit(x, y)
    pre, est, calibrate = _pipeline_parts(model)
    t = np.asarray(pre.transform(x), dtype=float)
    phi, base = path_contributions(est, t)
    slow_phi, slow_base = _walked(est, t[:40])
    np.testing.assert_allclose(phi[:40], slow_phi, rtol=0, atol=1e-12)
    assert abs(base - slow_base) < 1e-12
    np.testing.assert_allclose(base + phi.sum(axis=1), est._raw_predict(t)[:, 0], rtol=0, atol=1e-10)

    p = model.predict_proba(x)[:, 1]
    cols = numeric + ["plan"]
    reference = reference_values(x, numeric, ["plan"])
    mat = tree_attribution(model, x, p, cols, reference)
    assert mat is not None
    np.testing.assert_array_equal(contribution_matrix(model, x, p, cols, reference), mat)
    # each input's path contribution as far as it differs from the typical lead's
    typical = pd.DataFrame([reference])[x.columns]
    ref_phi, _ = path_contributions(est, np.asarray(pre.transform(typical), dtype=float))
    raw = base + phi.sum(axis=1)
    calib = expit if calibration == "none" else calibrate
    off = (x["teammates_invited"] != reference["teammates_invited"]).to_numpy()
    np.testing.assert_allclose(mat[off, 0], p[off] - calib(raw[off] - (phi[off, 0] - ref_phi[0, 0])), atol=1e-12)
    assert (mat[~off, 0] == 0).all() and off.sum() > 1000   # rows at the typical value contribute 0
    plan = list(pre.get_feature_names_out()).index("cat__plan_free")
    assert np.abs(phi[:, plan]).max() > 0        # the category's one-hot columns are its contribution
    off = (x["plan"] != reference["plan"]).to_numpy()
    np.testing.assert_allclose(mat[off, 4], p[off] - calib(raw[off] - (phi[off, 4:].sum(axis=1) - ref_phi[0, 4:].sum())),
                               atol=1e-12)
    # invites (planted +) push up and tickets (planted -) down where they are high
    many = (x["teammates_invited"] >= 3).to_numpy()
    assert mat[many, 0].mean() > 0.05 and mat[(x["basics_tickets"] >= 3).to_numpy(), 1].mean() < -0.03
    # a model whose raw score the contributions do not explain is ablated instead
    assert tree_attribution(model, x, p + 1e-6, cols, reference) is None


def test_gradient_boostings_reasons_mostly_agree_with_its_ablations():
    """Path attribution against the typical lead is not an ablation (it credits the splits the
    lead's path took, not a prediction with one input changed), but on the planted data the
    first reason to call is the same for at least 95 % of the leads, and wherever the
    ablation names the planted driver (invites), so do the paths."""
    from pql_pipeline.defs.model.training import build_model
    from pql_pipeline.defs.scoring.scoring import _ablate, tell, tree_attribution

    x, y = _planted_frame(4000, seed=5)
    numeric = ["teammates_invited", "basics_tickets", "avg_session_seconds", "projects"]
    model = build_model("gradient_boosting", numeric, ["plan"], "sigmoid", seed=2).fit(x, y)
    reference = reference_values(x, numeric, ["plan"])
    p = model.predict_proba(x)[:, 1]
    leads = np.flatnonzero(p >= 0.3)
    xs = x.iloc[leads].reset_index(drop=True)
    cols = ["teammates_invited", "basics_tickets", "projects"]
    told = [(c, s, "") for c, s in zip(cols, (INVITES, TICKETS, PROJECTS))]
    paths = tell(tree_attribution(model, xs, p[leads], cols, reference), xs, told)
    ablated = tell(_ablate(model, xs, p[leads], cols, reference), xs, told)
    def first(reasons):
        return reasons[0]["signal"] if reasons and reasons[0]["polarity"] == "positive" else None

    differ = [(first(a), first(b)) for a, b in zip(paths, ablated) if first(a) != first(b)]
    assert len(leads) > 200 and len(differ) <= 0.05 * len(leads)
    assert not [b for _, b in differ if b == "teammates_invited"]
    assert all(r[0]["signal"] == "teammates_invited" for r, v in zip(paths, xs["teammates_invited"]) if v >= 4)
