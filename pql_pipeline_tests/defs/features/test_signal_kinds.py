"""Every user signal kind, computed on hand-made events, with values worked out by hand.

Windows are UTC days ending on the snapshot day (inclusive); ``within_days_of_signup: N``
is UTC days 0..N-1 after the signup day; an event is seen at snapshot S only if its UTC
date and its partition (day received) are both on or before S.
"""

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline_tests.defs.features.conftest import D, features_at, one_user, signals, spec, table_dump, user_rows

S = "2026-03-20"


# ------------------------------------------------------------------ count

def test_count_lifetime_where_window_and_first_days_after_signup(world, fconn):
    w = world
    w.track("2026-03-01 10:00", "Signed Up")
    w.track("2026-03-01 11:00", "Project Created", props={"template": "blank"})
    w.track("2026-03-03 10:00", "Project Created", props={"template": "kanban"})
    w.track("2026-03-05 10:00", "Project Created", props={"template": "blank", "size": 3})
    w.track("2026-03-07 23:59:59", "Project Created")                     # signup day + 6: in the first week
    w.track("2026-03-08 00:00:00", "Project Created")                     # signup day + 7: not
    w.track("2026-03-10 10:00", "Support Ticket Opened", props={"category": "basics"})
    w.track("2026-03-12 10:00", "Support Ticket Opened", props={"category": "billing", "urgent": True})
    w.track("2026-03-15 10:00", "Support Ticket Opened", props={"category": "basics", "urgent": True})
    w.track("2026-03-19 10:00", "Project Created", props={"template": "blank"})
    w.track("2026-03-20 10:00", "Project Created", props={"template": "kanban", "size": "3"})
    w.track("2026-03-20 11:00", "Project Archived", props={"template": "blank"})
    sigs = signals(
        {"name": "projects", "kind": "count", "event": "Project Created"},
        {"name": "blank_projects", "kind": "count", "event": "Project Created", "where": {"template": "blank"}},
        {"name": "size3_projects", "kind": "count", "event": "Project Created", "where": {"size": 3}},
        {"name": "urgent_basics", "kind": "count", "event": "Support Ticket Opened",
         "where": {"category": "basics", "urgent": True}},
        {"name": "projects_7d", "kind": "count", "event": "Project Created", "window_days": 7},
        {"name": "projects_first_week", "kind": "count", "event": "Project Created", "within_days_of_signup": 7},
        {"name": "never", "kind": "count", "event": "Never Sent"},
        signup_event="Signed Up")
    row = features_at(fconn, sigs, S)
    assert row["signup_date"] == D("2026-03-01") and row["days_since_signup"] == 19
    assert row["projects"] == 7
    assert row["blank_projects"] == 3                 # 03-01, 03-05, 03-19 (the archived blank one is another event)
    assert row["size3_projects"] == 2                 # numeric filter matches 3 and "3"
    assert row["urgent_basics"] == 1                  # both conditions must hold
    assert row["projects_7d"] == 2                    # 03-14 .. 03-20
    assert row["projects_first_week"] == 4            # 03-01 .. 03-07
    assert row["never"] == 0


def test_within_days_of_signup_does_not_count_days_before_signup(world, fconn):
    """Days 0..N-1 after the signup day: an event before the signup event's day (e.g. an
    anonymous visit, later identified) is not "in the first N days after signup"."""
    w = world
    w.track("2026-03-03 10:00", "Project Created")     # two days before signing up
    w.track("2026-03-05 10:00", "Signed Up")
    w.track("2026-03-05 11:00", "Project Created")
    w.track("2026-03-06 10:00", "Feature Used", props={"feature": "b"})
    w.track("2026-03-04 10:00", "Feature Used", props={"feature": "a"})
    sigs = signals(
        {"name": "projects_first_3d", "kind": "count", "event": "Project Created", "within_days_of_signup": 3},
        {"name": "active_first_3d", "kind": "active_days", "within_days_of_signup": 3},
        {"name": "features_first_3d", "kind": "distinct_count", "event": "Feature Used", "property": "feature",
         "within_days_of_signup": 3},
        signup_event="Signed Up")
    row = features_at(fconn, sigs, "2026-03-10")
    assert row["signup_date"] == D("2026-03-05")
    assert (row["projects_first_3d"], row["active_first_3d"], row["features_first_3d"]) == (1, 2, 1)


# ------------------------------------------------------------------ distinct_count

def test_distinct_count(world, fconn):
    w = world
    for ts, props in [("2026-03-01 10:00", {"feature": "a"}), ("2026-03-10 10:00", {"feature": "b"}),
                      ("2026-03-15 10:00", {"feature": "a"}), ("2026-03-18 10:00", {"feature": "c"}),
                      ("2026-03-19 10:00", {"feature": "c"}), ("2026-03-19 11:00", {}),
                      ("2026-03-20 10:00", {"feature": "d", "beta": True})]:
        w.track(ts, "Feature Used", props=props)
    w.track("2026-03-20 11:00", "Report Run", props={"feature": "z"})
    sigs = signals(
        {"name": "features", "kind": "distinct_count", "event": "Feature Used", "property": "feature"},
        {"name": "features_7d", "kind": "distinct_count", "event": "Feature Used", "property": "feature",
         "window_days": 7},
        {"name": "beta_features", "kind": "distinct_count", "event": "Feature Used", "property": "feature",
         "where": {"beta": True}},
        {"name": "features_first_10d", "kind": "distinct_count", "event": "Feature Used", "property": "feature",
         "within_days_of_signup": 10})
    row = features_at(fconn, sigs, S)
    assert row["features"] == 4                        # a b c d; the missing property is not a value
    assert row["features_7d"] == 3                     # a (03-15), c, d
    assert row["beta_features"] == 1
    assert row["features_first_10d"] == 2              # signup = first event day 03-01: a, b (03-10 is day 9)


# ------------------------------------------------------------------ first_time

def test_first_time_and_detail_of_the_first_occurrence(world, fconn):
    w = world
    w.track("2026-03-01 10:00", "Page Viewed")
    w.track("2026-03-05 10:00", "Integration Connected", props={"integration": "slack"})
    w.track("2026-03-05 09:00", "Integration Connected", props={"integration": "github"})  # earlier that day
    w.track("2026-03-12 10:00", "Integration Connected", props={"integration": "jira"})
    w.track("2026-03-10 10:00", "Page Viewed", user="u2")
    w.track("2026-03-10 10:00", "Page Viewed", user="u3")
    w.track("2026-03-11 10:00", "Integration Connected", user="u3", props={"integration": "zapier"})
    sigs = signals(
        {"name": "integration", "kind": "first_time", "event": "Integration Connected",
         "detail_property": "integration"},
        {"name": "integration_first_3d", "kind": "first_time", "event": "Integration Connected",
         "detail_property": "integration", "within_days_of_signup": 3},
        {"name": "jira", "kind": "first_time", "event": "Integration Connected", "where": {"integration": "jira"}})
    compute_features(fconn, spec(sigs), [D("2026-03-11"), D(S)])
    cols = "user_id, integration, integration_detail, integration_first_3d, integration_first_3d_detail, jira"
    assert user_rows(fconn, S, cols) == [
        {"user_id": "u1", "integration": True, "integration_detail": "github",
         "integration_first_3d": False, "integration_first_3d_detail": None, "jira": True},
        {"user_id": "u2", "integration": False, "integration_detail": None,
         "integration_first_3d": False, "integration_first_3d_detail": None, "jira": False},
        {"user_id": "u3", "integration": True, "integration_detail": "zapier",
         "integration_first_3d": True, "integration_first_3d_detail": "zapier", "jira": False},
    ]
    # before the jira connection was made, jira is False for u1
    assert one_user(fconn, "2026-03-11")["jira"] is False
    # a first_time signal without detail_property has no _detail column
    assert "jira_detail" not in user_rows(fconn, S)[0]


def test_first_time_detail_is_that_of_the_first_occurrence_even_when_it_has_none(world, fconn):
    """signals.yaml: "`detail_property` keeps the value of its first occurrence". The first
    connection did not say which integration: the detail is unknown, not the value of a
    later connection (DuckDB's ARG_MIN skips NULL values; Spark's MIN_BY does not)."""
    w = world
    w.track("2026-03-05 10:00", "Integration Connected")
    w.track("2026-03-06 10:00", "Integration Connected", props={"integration": "slack"})
    sigs = signals({"name": "integration", "kind": "first_time", "event": "Integration Connected",
                    "detail_property": "integration"})
    row = features_at(fconn, sigs, "2026-03-10")
    assert row["integration"] is True
    assert row["integration_detail"] is None


# ------------------------------------------------------------------ active_days

def test_active_days(world, fconn):
    w = world
    w.track("2026-03-01 10:00", "A")
    w.track("2026-03-01 11:00", "B")                       # same day: one active day
    w.track("2026-03-05 10:00", "A")
    w.event("2026-03-14 10:00", type="identify", traits={"role": "admin"})   # not activity
    w.event("2026-03-15 10:00", "Pricing", type="page")
    w.track("2026-03-20 23:00", "A")
    sigs = signals({"name": "active_total", "kind": "active_days"},
                   {"name": "active_7d", "kind": "active_days", "window_days": 7},
                   {"name": "active_first_5d", "kind": "active_days", "within_days_of_signup": 5})
    row = features_at(fconn, sigs, S)
    assert (row["active_total"], row["active_7d"], row["active_first_5d"]) == (4, 2, 2)


# ------------------------------------------------------------------ session_length and share

def test_session_length_mean_and_share_below_threshold(world, fconn):
    w = world
    for day, dur in [("01", 10), ("15", 20), ("16", 40), ("17", 30), ("18", 90), ("19", "abc")]:
        w.track(f"2026-03-{day} 10:00", "Session Ended", props={"duration_seconds": dur})
    w.track("2026-03-20 10:00", "Session Ended")                              # no duration
    w.track("2026-03-20 10:00", "Page Viewed", props={"duration_seconds": 1})  # another event
    w.track("2026-03-20 10:00", "Page Viewed", user="u2")
    sigs = signals(
        {"name": "avg_session_7d", "kind": "session_length", "event": "Session Ended",
         "property": "duration_seconds", "window_days": 7},
        {"name": "avg_session", "kind": "session_length", "event": "Session Ended", "property": "duration_seconds"},
        {"name": "short_share_7d", "kind": "share", "event": "Session Ended", "property": "duration_seconds",
         "below": 30, "window_days": 7})
    compute_features(fconn, spec(sigs), [D(S)])
    assert user_rows(fconn, S, "user_id, avg_session_7d, avg_session, short_share_7d") == [
        # 7 days: 20 40 30 90 (mean 45); all: 10 20 40 30 90 (mean 38); below 30: 20 of 4 -> 0.25
        {"user_id": "u1", "avg_session_7d": 45.0, "avg_session": 38.0, "short_share_7d": 0.25},
        {"user_id": "u2", "avg_session_7d": None, "avg_session": None, "short_share_7d": None},
    ]


def test_share_is_rounded_to_six_decimals(world, fconn):
    for day, dur in [("18", 10), ("19", 50), ("20", 60)]:
        world.track(f"2026-03-{day} 10:00", "Session Ended", props={"duration_seconds": dur})
    sigs = signals({"name": "short", "kind": "share", "event": "Session Ended", "property": "duration_seconds",
                    "below": 30})
    assert features_at(fconn, sigs, S)["short"] == 0.333333


# ------------------------------------------------------------------ recency

def test_recency(world, fconn):
    w = world
    w.track("2026-03-12 10:00", "Report Run", props={"format": "pdf"})
    w.track("2026-03-15 10:00", "Report Run", props={"format": "csv"})
    w.track("2026-03-17 10:00", "X")
    w.event("2026-03-19 10:00", type="identify", traits={"role": "admin"})   # not activity
    sigs = signals({"name": "days_since_active", "kind": "recency"},
                   {"name": "days_since_report", "kind": "recency", "event": "Report Run"},
                   {"name": "days_since_pdf", "kind": "recency", "event": "Report Run", "where": {"format": "pdf"}},
                   {"name": "days_since_export", "kind": "recency", "event": "Export"})
    row = features_at(fconn, sigs, S)
    assert (row["days_since_active"], row["days_since_report"], row["days_since_pdf"],
            row["days_since_export"]) == (3, 5, 8, None)


# ------------------------------------------------------------------ trend

def test_trend_is_change_over_previous_period(world, fconn):
    w = world
    for ts in ["2026-03-06 10:00"] * 3:                     # age 14: outside both periods
        w.track(ts, "X")
    for ts in ["2026-03-07 10:00", "2026-03-07 11:00", "2026-03-13 10:00", "2026-03-13 23:59:59"]:
        w.track(ts, "X")                                    # previous week: 4
    w.track("2026-03-14 00:00:00", "X")
    w.track("2026-03-15 10:00", "Report Run")
    w.track("2026-03-16 10:00", "Report Run")
    for _ in range(5):
        w.track("2026-03-20 10:00", "X")                    # this week: 8
    for day in ("14", "18", "20"):
        w.track(f"2026-03-{day} 10:00", "X", user="u2")      # u2: nothing the week before
    sigs = signals({"name": "events_wow", "kind": "trend"},
                   {"name": "reports_trend_3d", "kind": "trend", "event": "Report Run", "period_days": 3})
    compute_features(fconn, spec(sigs), [D(S)])
    assert user_rows(fconn, S, "user_id, events_wow, reports_trend_3d") == [
        {"user_id": "u1", "events_wow": 1.0, "reports_trend_3d": -1.0},   # (8-4)/4 ; (0-2)/2
        {"user_id": "u2", "events_wow": 3.0, "reports_trend_3d": 0.0},    # (3-0)/max(0,1) ; 0/1
    ]


# ------------------------------------------------------------------ trait

def test_trait_as_of_the_end_of_the_snapshot_day(world, fconn):
    w = world
    for u in ("u1", "u2"):
        w.track("2026-03-18 10:00", "X", user=u)
    w.user_versions("u1",
                    ("2026-03-01 10:00", {"role": "viewer", "seats_wanted": "5", "beta": True}),
                    ("2026-03-20 18:00", {"role": "admin", "seats_wanted": 7, "beta": False}),   # on S: seen
                    ("2026-03-21 00:00", {"role": "owner", "seats_wanted": 9, "beta": True}))    # after S: not
    sigs = signals({"name": "role", "kind": "trait", "property": "role", "type": "string"},
                   {"name": "seats_wanted", "kind": "trait", "property": "seats_wanted", "type": "number"},
                   {"name": "beta", "kind": "trait", "property": "beta", "type": "boolean"})
    compute_features(fconn, spec(sigs), [D("2026-03-19"), D(S)])
    cols = "snapshot_date, user_id, role, seats_wanted, beta"
    assert user_rows(fconn, None, cols) == [
        {"snapshot_date": D("2026-03-19"), "user_id": "u1", "role": "viewer", "seats_wanted": 5.0, "beta": True},
        {"snapshot_date": D("2026-03-19"), "user_id": "u2", "role": None, "seats_wanted": None, "beta": None},
        {"snapshot_date": D(S), "user_id": "u1", "role": "admin", "seats_wanted": 7.0, "beta": False},
        {"snapshot_date": D(S), "user_id": "u2", "role": None, "seats_wanted": None, "beta": None},
    ]


# ------------------------------------------------------------------ who gets a row

def test_a_row_per_user_active_within_the_activity_window(world, fconn):
    w = world
    w.track("2026-01-20 10:00", "X", user="lapsed")     # S-59: still active (60 days incl. S)
    w.track("2026-01-19 10:00", "X", user="gone")       # S-60: not
    w.event("2026-03-19 10:00", user="gone", type="identify", traits={"role": "x"})  # identify is not activity
    w.track("2026-03-19 10:00", "X", user="u1")
    sigs = signals({"name": "n", "kind": "count", "event": "X"})
    compute_features(fconn, spec(sigs), [D(S)])
    assert [r["user_id"] for r in user_rows(fconn, S)] == ["lapsed", "u1"]
    compute_features(fconn, spec(sigs, active_within_days=61), [D(S)])
    assert [r["user_id"] for r in user_rows(fconn, S)] == ["gone", "lapsed", "u1"]


# ------------------------------------------------------------------ window edges and time zones

def test_window_edges_are_utc_days_ending_on_the_snapshot_day(world, fconn):
    w = world
    s = "2026-03-10"
    w.track("2026-03-10 23:59:59.999", "X")                    # last instant of S: counts
    w.track("2026-03-11 00:00:00", "X")                        # first instant of S+1: not (received S+1)
    w.track("2026-03-11 00:00:00", "X", pdate=s)               # not even when received on S (client clock)
    w.track("2026-02-25 00:00:00", "X")                        # S-13: inside 14 days
    w.track("2026-02-24 23:59:59.999", "X")                    # S-14: outside
    sigs = signals({"name": "x_14d", "kind": "count", "event": "X", "window_days": 14},
                   {"name": "x_total", "kind": "count", "event": "X"},
                   {"name": "x_1d", "kind": "count", "event": "X", "window_days": 1},
                   {"name": "active_14d", "kind": "active_days", "window_days": 14})
    row = features_at(fconn, sigs, s)
    assert (row["x_14d"], row["x_total"], row["x_1d"], row["active_14d"]) == (2, 3, 1, 2)
    assert str(row["max_event_ts"]) == "2026-03-10 23:59:59.999000+00:00"


def test_an_offset_timestamp_belongs_to_its_utc_day(world, fconn):
    """2026-03-10T20:30:00-05:00 is 2026-03-11 01:30 UTC: an event of the 11th."""
    world.track("2026-03-10 12:00", "Y")
    fconn.execute(
        "INSERT INTO validated_events (partition_date, message_id, event_type, event_name, user_id, "
        "resolved_user_id, event_ts, properties, source_file, line_no) VALUES (DATE '2026-03-11', 'tz-1', 'track', "
        "'X', 'u1', 'u1', TIMESTAMPTZ '2026-03-10 20:30:00-05:00', '{}', 'events/2026-03-11.jsonl', 1)")
    sigs = signals({"name": "x_1d", "kind": "count", "event": "X", "window_days": 1},
                   {"name": "x_total", "kind": "count", "event": "X"},
                   {"name": "days_since_x", "kind": "recency", "event": "X"},
                   {"name": "active", "kind": "active_days"})
    compute_features(fconn, spec(sigs), [D("2026-03-10"), D("2026-03-11")])
    cols = "snapshot_date, x_1d, x_total, days_since_x, active"
    assert user_rows(fconn, None, cols) == [
        {"snapshot_date": D("2026-03-10"), "x_1d": 0, "x_total": 0, "days_since_x": None, "active": 1},
        {"snapshot_date": D("2026-03-11"), "x_1d": 1, "x_total": 1, "days_since_x": 0, "active": 2},
    ]


def test_results_do_not_depend_on_the_session_time_zone(world, fconn):
    """Days are UTC days whatever the DuckDB session's TimeZone (only the Warehouse
    resource sets UTC; a notebook or another caller's connection may not)."""
    w = world
    w.track("2026-03-10 12:00", "Y")
    w.track("2026-03-11 01:30", "X")                          # 2026-03-10 21:30 in New York
    w.track("2026-03-11 03:00", "Signed Up")
    w.user_versions("u1", ("2026-03-09 10:00", {"role": "viewer"}), ("2026-03-11 02:00", {"role": "admin"}))
    sigs = signals({"name": "x_1d", "kind": "count", "event": "X", "window_days": 1},
                   {"name": "active", "kind": "active_days"},
                   {"name": "days_since_x", "kind": "recency", "event": "X"},
                   {"name": "role", "kind": "trait", "property": "role", "type": "string"},
                   signup_event="Signed Up")
    days = [D("2026-03-10"), D("2026-03-11")]
    compute_features(fconn, spec(sigs), days)
    utc_rows = table_dump(fconn, "user_features")
    assert one_user(fconn, "2026-03-11")["x_1d"] == 1
    fconn.execute("SET TimeZone = 'America/New_York'")
    compute_features(fconn, spec(sigs), days)
    fconn.execute("SET TimeZone = 'UTC'")
    assert table_dump(fconn, "user_features") == utc_rows
