"""Account features: user signals rolled up over the members, account signals, firmographic
traits and is_paying, all as of the snapshot."""

import pytest
from pydantic import ValidationError

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline_tests.defs.features.conftest import D, account_rows, one_user, signals, spec, user_rows, utc

S, S2 = "2026-03-20", "2026-03-21"

SIGS = signals(
    {"name": "projects", "kind": "count", "event": "Project Created", "account_rollup": ["max", "sum", "mean"]},
    {"name": "reports", "kind": "count", "event": "Report Run"},
    {"name": "session", "kind": "session_length", "event": "Session Ended", "property": "secs"},
    {"name": "days_since_active", "kind": "recency"},
    {"name": "integration", "kind": "first_time", "event": "Integration Connected"},
    {"name": "role", "kind": "trait", "property": "role", "type": "string"},
    accounts=[{"name": "seats", "kind": "seats"},
              {"name": "active_users_7d", "kind": "active_users", "window_days": 7},
              {"name": "active_share_7d", "kind": "active_seat_share", "window_days": 7},
              {"name": "team_features_30d", "kind": "distinct_count", "event": "Feature Used", "property": "feature",
               "window_days": 30},
              {"name": "team_reports_7d", "kind": "count", "event": "Report Run", "window_days": 7},
              {"name": "plan", "kind": "trait", "property": "plan", "type": "string"},
              {"name": "employees", "kind": "trait", "property": "employees", "type": "number"}])


def world_of_accounts(w):
    for u in ("u1", "u2", "u3"):
        w.member(u, "A", "2026-03-01 09:00")
    w.member("u4", "A", "2026-03-21 10:00")                        # joins after S
    w.member("u5", "A", "2026-03-19 10:00", pdate="2026-03-21")    # joined before S, known after
    w.member("u6", "B", "2026-03-02 09:00")
    # u1: 3 projects, session 60, feature a, a report this week
    for day in ("10", "18", "19"):
        w.track(f"2026-03-{day} 10:00", "Project Created", user="u1", account="A")
    w.track("2026-03-19 11:00", "Session Ended", user="u1", account="A", props={"secs": 60})
    w.track("2026-03-19 12:00", "Feature Used", user="u1", account="A", props={"feature": "a"})
    w.track("2026-03-19 13:00", "Report Run", user="u1", account="A")
    # u2: signed up 03-05, 1 project, session 30, features b and a, last seen 03-10
    w.track("2026-03-05 10:00", "Project Created", user="u2", account="A")
    w.track("2026-03-05 11:00", "Session Ended", user="u2", account="A", props={"secs": 30})
    w.track("2026-03-05 12:00", "Feature Used", user="u2", account="A", props={"feature": "b"})
    w.track("2026-03-06 12:00", "Feature Used", user="u2", account="A", props={"feature": "a"})
    w.track("2026-03-10 12:00", "Report Run", user="u2", account="A")
    # u3: a member who never did anything; u5: active, but its membership was not known at S
    w.track("2026-03-19 10:00", "Feature Used", user="u5", props={"feature": "z"})
    w.track("2026-03-21 10:30", "Project Created", user="u4", account="A")
    # u6 in B: converts on S
    w.track("2026-03-19 10:00", "Project Created", user="u6", account="B")
    w.track("2026-03-19 11:00", "Project Created", user="u6", account="B")
    w.track("2026-03-20 10:00", "Plan Upgraded", user="u6", account="B")
    w.track("2026-03-20 11:00", "Integration Connected", user="u6", account="B")
    w.account_versions("A", ("2026-03-01 00:00", {"plan": "free", "employees": 40}),
                       ("2026-03-21 00:00", {"plan": "pro", "employees": "45"}))


def test_account_roll_ups_signals_and_traits_as_of_the_snapshot(world, fconn):
    world_of_accounts(world)
    compute_features(fconn, spec(SIGS, paid_plans=("pro",)), [D(S), D(S2)])
    rows = {(r["snapshot_date"].isoformat(), r["account_id"]): r for r in account_rows(fconn)}
    a = rows[(S, "A")]
    assert {k: v for k, v in a.items() if k not in ("snapshot_date", "account_id", "definition_hash")} == {
        "signup_date": D("2026-03-05"), "days_since_signup": 15, "is_paying": False, "n_members": 3,
        # roll-ups over the members with a user_features row at S: u1 and u2 (u3 never active, u5 not yet a member)
        "best_projects": 3, "total_projects": 4, "avg_projects": 2.0,
        "best_reports": 1,
        "avg_session": 45.0,
        "min_days_since_active": 1,
        "best_integration": False,
        "seats": 3,                       # u1 u2 u3
        "active_users_7d": 1,             # u1 (u2 last seen 03-10)
        "active_share_7d": 0.333333,
        "team_features_30d": 2,           # a, b (u5's z: not a member yet)
        "team_reports_7d": 1,             # u1's; u2's report of 03-10 is outside the week
        "plan": "free", "employees": 40.0,
        "max_event_ts": utc("2026-03-19 13:00"), "max_partition_date": D("2026-03-19"),
    }
    b = rows[(S, "B")]
    assert (b["is_paying"], b["n_members"], b["seats"], b["best_projects"], b["best_integration"], b["plan"]) == (
        True, 1, 1, 2, True, None)
    assert one_user(fconn, S, "u5")["account_id"] is None
    assert one_user(fconn, S2, "u5")["account_id"] == "A"
    a2 = rows[(S2, "A")]
    assert (a2["is_paying"], a2["seats"], a2["n_members"], a2["team_features_30d"], a2["best_projects"],
            a2["total_projects"], a2["plan"], a2["employees"]) == (True, 5, 5, 3, 3, 5, "pro", 45.0)
    # no account row for an account none of whose members has a user_features row
    assert [r["account_id"] for r in account_rows(fconn, S)] == ["A", "B"]


def test_is_paying_by_a_members_conversion_or_a_paid_plan_as_of_the_snapshot(world, fconn):
    w = world
    w.member("u1", "A", "2026-03-01 09:00")
    w.member("u2", "A", "2026-03-01 09:00")
    w.member("u3", "B", "2026-03-01 09:00")
    w.track("2026-03-05 10:00", "X", user="u1", account="A")
    w.track("2026-03-05 10:00", "X", user="u3", account="B")
    w.track("2026-03-11 00:00:00", "Plan Upgraded", user="u2", account="A")            # converts on S+1
    w.account_versions("A", ("2026-03-01 00:00", {"plan": "free"}))
    w.account_versions("B", ("2026-03-01 00:00", {"plan": "trial"}), ("2026-03-10 23:00", {"plan": "pro"}))
    sigs = signals({"name": "x", "kind": "count", "event": "X"}, accounts=[{"name": "seats", "kind": "seats"}])
    compute_features(fconn, spec(sigs, paid_plans=("pro", "business")), [D("2026-03-09"), D("2026-03-10"),
                                                                         D("2026-03-11")])
    assert account_rows(fconn, None, "snapshot_date, account_id, is_paying") == [
        {"snapshot_date": D("2026-03-09"), "account_id": "A", "is_paying": False},
        {"snapshot_date": D("2026-03-09"), "account_id": "B", "is_paying": False},
        {"snapshot_date": D("2026-03-10"), "account_id": "A", "is_paying": False},
        {"snapshot_date": D("2026-03-10"), "account_id": "B", "is_paying": True},    # pro from 23:00 on S
        {"snapshot_date": D("2026-03-11"), "account_id": "A", "is_paying": True},    # u2 converted
        {"snapshot_date": D("2026-03-11"), "account_id": "B", "is_paying": True},
    ]
    # the user who converted is paying; their teammate is not (the account is)
    assert user_rows(fconn, "2026-03-11", "user_id, is_paying") == [
        {"user_id": "u1", "is_paying": False}, {"user_id": "u2", "is_paying": True},
        {"user_id": "u3", "is_paying": False}]


def test_is_paying_is_false_not_null_for_an_account_without_a_plan(world, fconn):
    """account_features.is_paying is required (features.odcs.yaml). With paid_plans
    configured, an account with no plan trait (no group call yet, or one without plan)
    gets NULL from `n_conversion > 0 OR NULL IN (...)`."""
    w = world
    w.member("u1", "A", "2026-03-01 09:00")
    w.member("u2", "B", "2026-03-01 09:00")
    w.track("2026-03-05 10:00", "X", user="u1", account="A")
    w.track("2026-03-05 10:00", "X", user="u2", account="B")
    w.account_versions("B", ("2026-03-01 00:00", {"name": "Beta Inc"}))
    sigs = signals({"name": "x", "kind": "count", "event": "X"})
    compute_features(fconn, spec(sigs, paid_plans=("pro",)), [D("2026-03-10")])
    assert account_rows(fconn, "2026-03-10", "account_id, is_paying") == [
        {"account_id": "A", "is_paying": False}, {"account_id": "B", "is_paying": False}]


@pytest.mark.parametrize("kind, extra", [("count", {}), ("distinct_count", {"property": "feature"})])
def test_account_signals_refuse_within_days_of_signup(kind, extra):
    """An account has no single signup day: an account signal with within_days_of_signup
    is refused with a message naming the entry, not silently computed over all days."""
    with pytest.raises(ValidationError) as e:
        signals({"name": "x", "kind": "count", "event": "X"},
                accounts=[{"name": "early", "kind": kind, "event": "Project Created",
                           "within_days_of_signup": 2, **extra}])
    assert "account signals take window_days" in str(e.value)


@pytest.mark.parametrize("kind", ["count", "distinct_count"])
def test_an_account_signal_named_like_a_user_signal_is_refused_or_kept_apart(world, fconn, kind):
    """A user signal and an account signal sharing a name would mix their values (the SQL keys
    intermediate columns m_<name> and distinct values by the bare name), so it must be refused
    (or, if ever allowed, kept apart)."""
    w = world
    w.member("u1", "A", "2026-03-01 09:00")
    w.track("2026-03-08 10:00", "Feature Used", account="A", props={"p": "x"})
    w.track("2026-03-08 11:00", "Report Run", account="A", props={"p": "r1"})
    w.track("2026-03-08 12:00", "Report Run", account="A", props={"p": "r2"})
    extra = {"property": "p"} if kind == "distinct_count" else {}
    try:
        sigs = signals({"name": "usage", "kind": kind, "event": "Feature Used", **extra},
                       accounts=[{"name": "usage", "kind": kind, "event": "Report Run", **extra}])
    except ValidationError as e:                     # refusing the configuration is a fix too
        assert "usage" in str(e)
        return
    compute_features(fconn, spec(sigs), [D("2026-03-10")])
    assert one_user(fconn, "2026-03-10")["usage"] == 1
    assert account_rows(fconn, "2026-03-10", "best_usage, usage") == [{"best_usage": 1, "usage": 2}]
