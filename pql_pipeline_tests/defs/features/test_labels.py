"""Conversion labels: statuses at the horizon's edges, completeness, paying accounts and
the refresh of earlier snapshots when later data arrives."""

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.features.labels import LabelSpec, compute_labels, refresh_days
from pql_pipeline_tests.defs.features.conftest import D, signals, spec, table_dump, utc

S = "2026-03-10"
CONV = ("Plan Upgraded",)
FSPEC = spec(signals({"name": "x", "kind": "count", "event": "X"}), conversion=CONV)
LSPEC = LabelSpec(CONV, horizon_days=7, late_arrival_days=1, exclude_users_of_paying_accounts=True)
COLS = "entity_type, entity_id, label_status, label, converted_at, horizon_complete"


def labels(conn, day=S, cols=COLS):
    cur = conn.execute(f"SELECT {cols} FROM conversion_labels WHERE snapshot_date = ? "
                       "ORDER BY entity_type DESC, entity_id", [D(day)])
    return [tuple(r) for r in cur.fetchall()]


def active(w, *users, day="2026-03-09 10:00"):
    for u in users:
        w.track(day, "X", user=u)


def test_statuses_at_the_edges_of_the_horizon(world, fconn):
    w = world
    active(w, "pos", "edge", "after", "same", "before", "neg", "mate", "payer", "b1")
    w.member("mate", "A", "2026-03-01 00:00")
    w.member("payer", "A", "2026-03-01 00:00")
    w.member("b1", "B", "2026-03-01 00:00")
    w.track("2026-03-09 12:00", "Plan Upgraded", user="payer", account="A")     # A pays before S
    w.track("2026-03-05 10:00", "Plan Upgraded", user="before")
    w.track("2026-03-10 23:59:59.999", "Plan Upgraded", user="same")            # on S: already paying at S
    w.track("2026-03-11 00:00:00", "Plan Upgraded", user="pos")                 # first instant of S+1
    w.track("2026-03-17 23:59:59", "Plan Upgraded", user="edge")                # last day of the horizon
    w.track("2026-03-18 00:00:00", "Plan Upgraded", user="after")               # S+8: outside
    w.track("2026-03-12 10:00", "Plan Upgraded", user="b1", account="B")
    compute_features(fconn, FSPEC, [D(S)])
    run = compute_labels(fconn, LSPEC, [D(S)])
    assert run.observed_until == D("2026-03-18")
    assert labels(fconn) == [
        ("user", "after", "negative", False, None, True),
        ("user", "b1", "positive", True, utc("2026-03-12 10:00"), True),
        ("user", "before", "excluded_paying", None, None, True),
        ("user", "edge", "positive", True, utc("2026-03-17 23:59:59"), True),
        ("user", "mate", "excluded_paying", None, None, True),        # a user of a paying account
        ("user", "neg", "negative", False, None, True),
        ("user", "payer", "excluded_paying", None, None, True),
        ("user", "pos", "positive", True, utc("2026-03-11 00:00:00"), True),
        ("user", "same", "excluded_paying", None, None, True),
        ("account", "A", "excluded_paying", None, None, True),
        ("account", "B", "positive", True, utc("2026-03-12 10:00"), True),
    ]
    assert run.counts == {"account.excluded_paying": 1, "account.positive": 1, "user.excluded_paying": 4,
                          "user.negative": 2, "user.positive": 3}
    windows = fconn.execute("SELECT DISTINCT label_window_start, label_window_end, observed_until, definition_hash "
                            "FROM conversion_labels").fetchall()
    assert windows == [(D("2026-03-11"), D("2026-03-17"), D("2026-03-18"), LSPEC.definition_hash)]

    # users of paying accounts are labelled on their own when the option is off
    off = LabelSpec(CONV, 7, 1, exclude_users_of_paying_accounts=False)
    compute_labels(fconn, off, [D(S)])
    got = {r[1]: r[2] for r in labels(fconn)}
    assert (got["mate"], got["payer"], got["A"]) == ("negative", "excluded_paying", "excluded_paying")
    assert off.definition_hash != LSPEC.definition_hash


def test_a_negative_needs_the_horizon_and_the_late_arrival_days_observed(world, fconn):
    w = world
    active(w, "pos", "neg", "late")
    w.track("2026-03-11 10:00", "Plan Upgraded", user="pos")
    w.track("2026-03-17 10:00", "Y", user="pos")                          # data up to S+H+late-1 = 03-17
    compute_features(fconn, FSPEC, [D(S)])
    run = compute_labels(fconn, LSPEC, [D(S)])
    assert run.observed_until == D("2026-03-17")
    assert labels(fconn) == [
        ("user", "late", "unknown", None, None, False),
        ("user", "neg", "unknown", None, None, False),
        ("user", "pos", "positive", True, utc("2026-03-11 10:00"), False),   # known before the horizon closes
    ]
    # the next day's partition brings a conversion of the horizon that arrived late
    w.track("2026-03-15 10:00", "Plan Upgraded", user="late", pdate="2026-03-18")
    compute_labels(fconn, LSPEC, [D(S)])
    assert labels(fconn) == [
        ("user", "late", "positive", True, utc("2026-03-15 10:00"), True),
        ("user", "neg", "negative", False, None, True),
        ("user", "pos", "positive", True, utc("2026-03-11 10:00"), True),
    ]


def test_labels_for_a_later_day_refresh_the_earlier_snapshots_within_the_horizon(world, fconn):
    w = world
    active(w, "u1", "u2", day="2026-03-08 10:00")
    w.track("2026-03-12 10:00", "X", user="u1")
    compute_features(fconn, FSPEC, [D("2026-03-09"), D(S), D("2026-03-12")])
    compute_labels(fconn, LSPEC, [D("2026-03-09"), D(S), D("2026-03-12")])
    assert labels(fconn, S) == [("user", "u1", "unknown", None, None, False),
                                ("user", "u2", "unknown", None, None, False)]
    # a week later: u2 converted on 03-16; features for 03-18 only
    w.track("2026-03-16 10:00", "Plan Upgraded", user="u2")
    w.track("2026-03-18 10:00", "X", user="u1")
    compute_features(fconn, FSPEC, [D("2026-03-18")])
    # 03-18 completes the horizon of 03-10 (03-10 + 7 + 1) and reaches into those of 03-12 and later;
    # 03-09, outside that window, is refreshed too because its horizon was still incomplete (a day
    # without a run must not leave it unknown for ever)
    assert refresh_days(fconn, [D("2026-03-18")], LSPEC) == [D("2026-03-09"), D(S), D("2026-03-12"),
                                                               D("2026-03-18")]
    run = compute_labels(fconn, LSPEC, [D("2026-03-18")])
    assert run.snapshot_days == [D("2026-03-09"), D(S), D("2026-03-12"), D("2026-03-18")]
    assert labels(fconn, S) == [("user", "u1", "negative", False, None, True),
                                ("user", "u2", "positive", True, utc("2026-03-16 10:00"), True)]
    assert labels(fconn, "2026-03-12") == [("user", "u1", "unknown", None, None, False),
                                           ("user", "u2", "positive", True, utc("2026-03-16 10:00"), False)]
    # 03-09's horizon (to 03-16, + 1 late day) is complete now: u2 converted on 03-16
    assert labels(fconn, "2026-03-09") == [("user", "u1", "negative", False, None, True),
                                           ("user", "u2", "positive", True, utc("2026-03-16 10:00"), True)]
    # running again changes nothing
    before = table_dump(fconn, "conversion_labels")
    compute_labels(fconn, LSPEC, [D("2026-03-18")])
    assert table_dump(fconn, "conversion_labels") == before


def test_a_conversion_before_the_snapshot_that_arrived_late_is_never_a_negative(world, fconn):
    """labels.py: excluded_paying = "already paying at the snapshot (own conversion event
    before the end of the snapshot day)" - "not a training example at all, never a
    negative". A conversion sent on S-1 but received on S+1 is not in the point-in-time
    features of S, yet the user was paying: labelling them negative (no conversion in
    the horizon) teaches the model that a converted user did not convert."""
    w = world
    active(w, "u1")
    w.track("2026-03-09 12:00", "Plan Upgraded", user="u1", pdate="2026-03-11")
    w.track("2026-03-20 10:00", "Y", user="u2")                                  # data to 03-20
    compute_features(fconn, FSPEC, [D(S)])
    compute_labels(fconn, LSPEC, [D(S)])
    assert labels(fconn, S, "entity_id, label_status") == [("u1", "excluded_paying")]
