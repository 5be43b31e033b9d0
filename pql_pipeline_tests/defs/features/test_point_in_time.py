"""Point in time: a snapshot's rows depend only on what the warehouse held at the end of
the snapshot day, whatever arrives later, and however the days are batched."""

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.ingest.dimensions import build_users
from pql_pipeline_tests.defs.features.conftest import D, account_rows, one_user, signals, spec, table_dump, user_rows

S, S2 = "2026-03-10", "2026-03-12"

SIGS = signals(
    {"name": "projects", "kind": "count", "event": "Project Created"},
    {"name": "projects_7d", "kind": "count", "event": "Project Created", "window_days": 7},
    {"name": "features", "kind": "distinct_count", "event": "Feature Used", "property": "feature"},
    {"name": "integration", "kind": "first_time", "event": "Integration Connected", "detail_property": "integration"},
    {"name": "active", "kind": "active_days"},
    {"name": "avg_session", "kind": "session_length", "event": "Session Ended", "property": "secs"},
    {"name": "days_since_active", "kind": "recency"},
    {"name": "wow", "kind": "trend"},
    {"name": "role", "kind": "trait", "property": "role", "type": "string"},
    accounts=[{"name": "seats", "kind": "seats"},
              {"name": "active_users_7d", "kind": "active_users", "window_days": 7},
              {"name": "team_features", "kind": "distinct_count", "event": "Feature Used", "property": "feature"},
              {"name": "team_projects", "kind": "count", "event": "Project Created"},
              {"name": "plan", "kind": "trait", "property": "plan", "type": "string"}])
SPEC = spec(SIGS, paid_plans=("pro",))


def known_by_s(w):
    """What the warehouse holds at the end of S."""
    w.member("u1", "A", "2026-03-01 09:00")
    w.member("u2", "A", "2026-03-01 09:00")
    w.track("2026-03-05 10:00", "Project Created", account="A")
    w.track("2026-03-09 10:00", "Project Created", account="A")
    w.track("2026-03-08 10:00", "Feature Used", account="A", props={"feature": "a"})
    w.track("2026-03-09 11:00", "Session Ended", account="A", props={"secs": 100})
    w.track("2026-03-09 10:00", "X", user="u2", account="A")
    w.track("2026-03-11 00:30", "Project Created", account="A", pdate=S)     # clock ahead: an event of S+1
    w.anon_track("2026-03-08 12:00", "Project Created", anon="anon-1")      # not yet identified
    w.user_versions("u1", ("2026-03-01 00:00", {"role": "viewer"}), ("2026-03-11 08:00", {"role": "admin"}))
    w.account_versions("A", ("2026-03-01 00:00", {"plan": "free"}), ("2026-03-11 09:00", {"plan": "pro"}))


def arriving_after_s(w):
    """Everything the warehouse learns on S+1 and S+2."""
    w.track("2026-03-11 10:00", "Project Created", account="A")                         # after S
    w.track("2026-03-10 15:00", "Project Created", account="A", pdate="2026-03-11")     # of S, received late
    w.track("2026-03-09 10:00", "Feature Used", account="A", props={"feature": "b"}, pdate="2026-03-12")
    w.track("2026-03-09 12:00", "Integration Connected", account="A", props={"integration": "slack"},
            pdate="2026-03-11")
    w.track("2026-03-10 20:00", "Session Ended", account="A", props={"secs": 50}, pdate="2026-03-11")
    w.link("anon-1", "u1", "2026-03-11", linked_at="2026-03-11 07:00")                  # identified after S
    w.member("u3", "A", "2026-03-10 08:00", pdate="2026-03-11")                           # joined on S, known S+1
    w.track("2026-03-10 08:30", "Feature Used", user="u3", account="A", props={"feature": "c"},
            pdate="2026-03-11")
    w.member("u4", "A", "2026-03-11 10:00")
    w.track("2026-03-11 10:30", "X", user="u4", account="A")
    w.track("2026-03-11 11:00", "Plan Upgraded", account="A")


def test_a_snapshot_does_not_change_when_later_data_arrives(world, fconn):
    known_by_s(world)
    compute_features(fconn, SPEC, [D(S)])
    users, accounts = table_dump(fconn, "user_features"), table_dump(fconn, "account_features")
    u1 = one_user(fconn, S)
    assert (u1["account_id"], u1["projects"], u1["projects_7d"], u1["features"], u1["integration"],
            u1["integration_detail"], u1["active"], u1["avg_session"], u1["days_since_active"], u1["role"],
            u1["is_paying"]) == ("A", 2, 2, 1, False, None, 3, 100.0, 1, "viewer", False)
    assert account_rows(fconn, S, "account_id, seats, active_users_7d, team_features, team_projects, plan, "
                                  "is_paying") == [
        {"account_id": "A", "seats": 2, "active_users_7d": 2, "team_features": 1, "team_projects": 2,
         "plan": "free", "is_paying": False}]

    arriving_after_s(world)
    compute_features(fconn, SPEC, [D(S)])
    assert table_dump(fconn, "user_features") == users
    assert table_dump(fconn, "account_features") == accounts
    # also when S is computed in one batch with later days
    compute_features(fconn, SPEC, [D(S), D("2026-03-11"), D(S2)])
    assert [r for r in table_dump(fconn, "user_features") if r[0] == S] == users
    assert [r for r in table_dump(fconn, "account_features") if r[0] == S] == accounts

    # a later snapshot sees all of it
    u1 = one_user(fconn, S2)
    assert (u1["projects"], u1["features"], u1["integration"], u1["integration_detail"], u1["active"],
            u1["avg_session"], u1["days_since_active"], u1["role"], u1["is_paying"]) == (
        6, 2, True, "slack", 5, 75.0, 1, "admin", True)
    # 6 projects: 03-05, 03-08 (anonymous, linked on 03-11), 03-09, 03-10 (late), 03-11 twice (one received
    # on S with its clock ahead); active days 03-05, 03-08, 03-09, 03-10, 03-11
    assert [r["user_id"] for r in user_rows(fconn, S2)] == ["u1", "u2", "u3", "u4"]
    assert account_rows(fconn, S2, "account_id, seats, active_users_7d, team_features, team_projects, plan, "
                                   "is_paying") == [
        {"account_id": "A", "seats": 4, "active_users_7d": 4, "team_features": 3, "team_projects": 6,
         "plan": "pro", "is_paying": True}]


def test_an_event_is_seen_from_the_day_it_was_received(world, fconn):
    world.track("2026-03-08 10:00", "Y")
    world.track("2026-03-08 12:00", "Project Created", pdate="2026-03-10")    # received two days late
    sigs = signals({"name": "projects", "kind": "count", "event": "Project Created"},
                   {"name": "days_since_project", "kind": "recency", "event": "Project Created"})
    compute_features(fconn, spec(sigs), [D("2026-03-09"), D("2026-03-10")])
    assert user_rows(fconn, None, "snapshot_date, projects, days_since_project, max_partition_date") == [
        {"snapshot_date": D("2026-03-09"), "projects": 0, "days_since_project": None,
         "max_partition_date": D("2026-03-08")},
        {"snapshot_date": D("2026-03-10"), "projects": 1, "days_since_project": 2,
         "max_partition_date": D("2026-03-10")},
    ]


def test_an_anonymous_event_counts_from_the_day_its_identity_link_arrives(world, fconn):
    w = world
    w.track("2026-03-01 10:00", "Y")
    w.anon_track("2026-03-02 10:00", "Project Created", anon="anon-1")
    w.link("anon-1", "u1", "2026-03-04")
    w.anon_track("2026-03-05 10:00", "Project Created", anon="anon-2")          # never identified
    sigs = signals({"name": "projects", "kind": "count", "event": "Project Created"})
    compute_features(fconn, spec(sigs), [D("2026-03-03"), D("2026-03-04")])
    assert user_rows(fconn, None, "snapshot_date, user_id, projects") == [
        {"snapshot_date": D("2026-03-03"), "user_id": "u1", "projects": 0},
        {"snapshot_date": D("2026-03-04"), "user_id": "u1", "projects": 1},
    ]


# ------------------------------------------------------------------ batching and idempotency

def busy_week(w):
    w.track("2026-03-01 10:00", "Signed Up")
    w.member("u1", "A", "2026-03-01 10:00")
    w.member("u2", "A", "2026-03-03 10:00", pdate="2026-03-04")
    w.member("u3", "B", "2026-03-02 10:00")
    for day in range(1, 8):
        w.track(f"2026-03-0{day} 10:00", "Project Created", account="A")
        w.track(f"2026-03-0{day} 23:59:59", "Feature Used", account="A", props={"feature": f"f{day % 3}"})
        if day % 2:
            w.track(f"2026-03-0{day} 12:00", "X", user="u2", props={"feature": f"g{day}"})
            w.track(f"2026-03-0{day} 09:00", "Session Ended", user="u3", account="B", props={"secs": day * 10})
    w.track("2026-03-02 10:00", "Project Created", account="A", pdate="2026-03-05")        # late
    w.track("2026-03-06 10:00", "Integration Connected", user="u2", props={"integration": "jira"})
    w.anon_track("2026-03-02 08:00", "Feature Used", anon="anon-1", props={"feature": "h"})
    w.link("anon-1", "u3", "2026-03-04")
    w.track("2026-03-05 10:00", "Plan Upgraded", user="u3", account="B")
    w.user_versions("u1", ("2026-03-01 00:00", {"role": "viewer"}), ("2026-03-04 12:00", {"role": "admin"}))
    w.account_versions("A", ("2026-03-01 00:00", {"plan": "free"}), ("2026-03-06 00:00", {"plan": "pro"}))


BUSY = signals(
    {"name": "projects_3d", "kind": "count", "event": "Project Created", "window_days": 3},
    {"name": "projects_first_2d", "kind": "count", "event": "Project Created", "within_days_of_signup": 2},
    {"name": "features", "kind": "distinct_count", "event": "Feature Used", "property": "feature", "window_days": 4},
    {"name": "integration", "kind": "first_time", "event": "Integration Connected", "detail_property": "integration"},
    {"name": "active_3d", "kind": "active_days", "window_days": 3},
    {"name": "avg_session", "kind": "session_length", "event": "Session Ended", "property": "secs"},
    {"name": "short", "kind": "share", "event": "Session Ended", "property": "secs", "below": 35},
    {"name": "days_since_active", "kind": "recency"},
    {"name": "trend_2d", "kind": "trend", "period_days": 2},
    {"name": "role", "kind": "trait", "property": "role", "type": "string"},
    accounts=[{"name": "seats", "kind": "seats"},
              {"name": "active_share_2d", "kind": "active_seat_share", "window_days": 2},
              {"name": "team_features", "kind": "distinct_count", "event": "Feature Used", "property": "feature"},
              {"name": "team_projects_2d", "kind": "count", "event": "Project Created", "window_days": 2},
              {"name": "plan", "kind": "trait", "property": "plan", "type": "string"}],
    signup_event="Signed Up")
WEEK = [D(f"2026-03-0{d}") for d in range(1, 9)]


def dumps(conn):
    return table_dump(conn, "user_features"), table_dump(conn, "account_features")


def test_range_runs_equal_day_by_day_runs_and_reruns_change_nothing(world, fconn):
    busy_week(world)
    spec_ = spec(BUSY, paid_plans=("pro",))
    for day in WEEK:
        compute_features(fconn, spec_, [day])
    daily = dumps(fconn)
    assert len(daily[0]) == 24 and len(daily[1]) == 15      # 3 users x 8 days; A 8 days, B from 03-02
    for batch_days in (31, 3, 1):
        fconn.execute("DROP TABLE user_features; DROP TABLE account_features")
        run = compute_features(fconn, spec_, list(reversed(WEEK)), batch_days=batch_days)
        assert dumps(fconn) == daily, f"batch_days={batch_days}"
        assert (run.user_rows, run.account_rows) == (24, 15)
    # running again (whole range, then a sub-range) leaves the same tables: no duplicates, no drift
    compute_features(fconn, spec_, WEEK)
    compute_features(fconn, spec_, WEEK[2:5], batch_days=2)
    assert dumps(fconn) == daily


def test_a_range_run_does_not_use_an_identity_link_learned_after_the_snapshot(world, fconn):
    """An anonymous id identified as A on 03-05, then (received 03-07) linked to B with an
    earlier linked_at. At snapshot 03-06 only the link to A was known; computing 03-06 in
    one batch with 03-07 must give the same rows as computing it alone."""
    w = world
    w.track("2026-03-01 10:00", "Y", user="A")
    w.track("2026-03-01 10:00", "Y", user="B")
    w.anon_track("2026-03-02 10:00", "Project Created", anon="anon-1")
    w.link("anon-1", "A", "2026-03-05", linked_at="2026-03-05 09:00")
    w.link("anon-1", "B", "2026-03-07", linked_at="2026-03-02 11:00")
    sigs = signals({"name": "projects", "kind": "count", "event": "Project Created"})
    days = [D("2026-03-06"), D("2026-03-07")]
    for day in days:
        compute_features(fconn, spec(sigs), [day])
    daily = user_rows(fconn, None, "snapshot_date, user_id, projects")
    assert daily[:2] == [{"snapshot_date": days[0], "user_id": "A", "projects": 1},
                         {"snapshot_date": days[0], "user_id": "B", "projects": 0}]
    compute_features(fconn, spec(sigs), days)
    assert user_rows(fconn, None, "snapshot_date, user_id, projects") == daily


def test_a_late_identify_does_not_change_the_traits_of_an_earlier_snapshot(world, fconn):
    """Traits come from identify calls; one received after S (even if sent on S) was not
    known at S. users_history is rebuilt by the ingest stage (build_users) from all
    validated events, so the feature must not take it as known at valid_from."""
    w = world
    w.track("2026-03-09 10:00", "X")
    w.event("2026-03-09 09:00", type="identify", traits={"role": "viewer"})
    build_users(fconn)
    sigs = signals({"name": "role", "kind": "trait", "property": "role", "type": "string"})
    compute_features(fconn, spec(sigs), [D(S)])
    before = table_dump(fconn, "user_features")
    assert one_user(fconn, S)["role"] == "viewer"
    w.event("2026-03-10 18:00", type="identify", traits={"role": "admin"}, pdate="2026-03-12")
    build_users(fconn)
    compute_features(fconn, spec(sigs), [D(S), D(S2)])
    assert one_user(fconn, S2)["role"] == "admin"
    assert [r for r in table_dump(fconn, "user_features") if r[0] == S] == before
