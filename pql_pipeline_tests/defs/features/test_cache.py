"""The feature cache gives exactly the features computed from validated events, and is
rebuilt when a partition is validated again or the signal definitions change."""

import pytest

from pql_pipeline.defs.features.cache import MANIFEST, USER_DAY
from pql_pipeline.defs.features.features import compute_features
from pql_pipeline_tests.defs.features.conftest import D, signals, spec, table_dump

DAYS = [D("2026-03-0%d" % i) for i in range(2, 10)]
SIGS = signals(
    {"name": "projects", "kind": "count", "event": "Project Created"},
    {"name": "projects_3d", "kind": "count", "event": "Project Created", "window_days": 3},
    {"name": "first_week", "kind": "count", "event": "Project Created", "within_days_of_signup": 7},
    {"name": "tickets", "kind": "count", "event": "Ticket", "where": {"category": "basics"}},
    {"name": "invites", "kind": "distinct_count", "event": "Invite", "property": "email"},
    {"name": "integration", "kind": "first_time", "event": "Integration", "detail_property": "tool"},
    {"name": "active", "kind": "active_days", "window_days": 7},
    {"name": "session", "kind": "session_length", "event": "Session Ended", "property": "seconds"},
    {"name": "short", "kind": "share", "event": "Session Ended", "property": "seconds", "below": 30},
    {"name": "recency", "kind": "recency"},
    {"name": "trend", "kind": "trend", "period_days": 2},
    {"name": "role", "kind": "trait", "property": "role", "type": "string"},
    accounts=[{"name": "seats", "kind": "seats"}, {"name": "team_features", "kind": "distinct_count",
                                                   "event": "Invite", "property": "email"},
              {"name": "active_members", "kind": "active_users", "window_days": 3},
              {"name": "active_share", "kind": "active_seat_share", "window_days": 3},
              {"name": "team_invites", "kind": "count", "event": "Invite"},
              {"name": "plan", "kind": "trait", "property": "plan", "type": "string"}],
    signup_event="Signed Up")


def versions(conn, *days, version="v1"):
    conn.execute("CREATE TABLE IF NOT EXISTS validated_partitions (partition_date DATE, version VARCHAR, "
                 "validated_at TIMESTAMPTZ, validated_rows BIGINT)")
    for d in days:
        conn.execute("DELETE FROM validated_partitions WHERE partition_date = ?", [d])
        conn.execute("INSERT INTO validated_partitions VALUES (?, ?, now(), 0)", [d, version])


@pytest.fixture
def history(world, fconn):
    w = world
    for i, user in enumerate(("u1", "u2", "u3")):
        w.track(f"2026-03-0{2 + i} 09:00", "Signed Up", user=user)
        w.member(user, "A" if user != "u3" else "B", f"2026-03-0{2 + i} 09:01")
        w.user_versions(user, (f"2026-03-0{2 + i} 09:02", {"role": "admin" if i == 0 else "member"}))
    w.account_versions("A", ("2026-03-02 09:03", {"plan": "free"}), ("2026-03-07 10:00", {"plan": "pro"}))
    for day in range(2, 10):
        for user in ("u1", "u2"):
            w.track(f"2026-03-0{day} 10:00", "Project Created", user=user)
            w.track(f"2026-03-0{day} 11:00", "Session Ended", user=user, props={"seconds": 10 * day})
        w.track(f"2026-03-0{day} 12:00", "Invite", user="u1", props={"email": f"x{day % 3}@a.io"})
    w.track("2026-03-05 13:00", "Ticket", user="u2", props={"category": "basics"})
    w.track("2026-03-06 13:00", "Integration", user="u1", props={"tool": "slack"})
    w.track("2026-03-04 08:00", "Project Created", user="u3", pdate="2026-03-06")   # late arrival
    w.anon_track("2026-03-03 08:00", "Project Created", anon="anon-9")                # identified later
    w.link("anon-9", "u3", "2026-03-05")
    return w


def test_cached_features_equal_features_from_events(history, fconn):
    versions(fconn, *DAYS)
    run = compute_features(fconn, spec(SIGS), DAYS)
    assert run.cache_partitions_built == len(DAYS)
    cached = {t: table_dump(fconn, t) for t in ("user_features", "account_features")}
    assert cached["user_features"]
    uncached = compute_features(fconn, spec(SIGS), DAYS, use_cache=False)
    assert uncached.cache_partitions_built == 0
    assert {t: table_dump(fconn, t) for t in cached} == cached
    # a second run finds everything cached and builds nothing
    assert compute_features(fconn, spec(SIGS), DAYS).cache_partitions_built == 0
    assert {t: table_dump(fconn, t) for t in cached} == cached


def test_a_revalidated_partition_is_rebuilt_and_a_stale_copy_never_used(history, fconn, world):
    versions(fconn, *DAYS)
    compute_features(fconn, spec(SIGS), DAYS)
    # validation rebuilds 03-05 with one more event: new version, cache rebuilt for that day only
    world.track("2026-03-05 15:00", "Project Created", user="u2")
    versions(fconn, D("2026-03-05"), version="v2")
    run = compute_features(fconn, spec(SIGS), DAYS)
    assert run.cache_partitions_built == 1
    with_cache = table_dump(fconn, "user_features")
    compute_features(fconn, spec(SIGS), DAYS, use_cache=False)
    assert table_dump(fconn, "user_features") == with_cache
    assert fconn.execute("SELECT projects FROM user_features WHERE user_id = 'u2' AND snapshot_date = '2026-03-05'"
                         ).fetchall() == [(5,)]


def test_changed_signals_rebuild_the_cache(history, fconn):
    versions(fconn, *DAYS)
    compute_features(fconn, spec(SIGS), DAYS)
    more = signals(*[s.model_dump(by_alias=True, exclude_none=True) for s in SIGS.signals],
                   {"name": "sessions", "kind": "count", "event": "Session Ended"},
                   accounts=[s.model_dump(by_alias=True, exclude_none=True) for s in SIGS.account_signals],
                   signup_event="Signed Up")
    run = compute_features(fconn, spec(more), DAYS)
    assert run.cache_partitions_built == len(DAYS)
    assert fconn.execute(f"SELECT count(DISTINCT measures_hash) FROM {MANIFEST}").fetchall() == [(1,)]
    assert "m_sessions" in [r[0] for r in fconn.execute(f"DESCRIBE {USER_DAY}").fetchall()]
    with_cache = table_dump(fconn, "user_features")
    compute_features(fconn, spec(more), DAYS, use_cache=False)
    assert table_dump(fconn, "user_features") == with_cache


def test_partitions_without_a_version_are_read_from_events(history, fconn):
    versions(fconn, *DAYS[:4])   # the later days were never versioned (e.g. written by another tool)
    run = compute_features(fconn, spec(SIGS), DAYS)
    assert run.cache_partitions_built == 4
    with_cache = table_dump(fconn, "user_features")
    compute_features(fconn, spec(SIGS), DAYS, use_cache=False)
    assert table_dump(fconn, "user_features") == with_cache


def test_anonymous_events_are_cached_and_follow_links_that_arrive_after_the_cache(history, fconn, world):
    """Events not resolved at validation are cached under their anonymous id: a link that
    arrives after the partition was cached attributes them from its arrival on, and a
    later conflicting link re-attributes them, without rebuilding the cached partition."""
    versions(fconn, *DAYS)
    world.anon_track("2026-03-02 07:00", "Project Created", anon="anon-7")
    world.anon_track("2026-03-02 07:05", "Invite", anon="anon-7", props={"email": "z@a.io"})
    compute_features(fconn, spec(SIGS), DAYS)
    assert fconn.execute(f"SELECT count(*) FROM {USER_DAY} WHERE anonymous AND user_id = 'anon-7'"
                         ).fetchall() == [(1,)]
    world.link("anon-7", "u2", "2026-03-04", linked_at="2026-03-04 09:00")
    world.link("anon-7", "u1", "2026-03-07", linked_at="2026-03-01 09:00")   # earlier linked_at, arrives later
    run = compute_features(fconn, spec(SIGS), DAYS)
    assert run.cache_partitions_built == 0
    with_cache = table_dump(fconn, "user_features")
    compute_features(fconn, spec(SIGS), DAYS, use_cache=False)
    assert table_dump(fconn, "user_features") == with_cache

    def projects(user, day):
        return fconn.execute("SELECT projects FROM user_features WHERE user_id = ? AND snapshot_date = ?",
                             [user, D(day)]).fetchall()[0][0]
    # u2 gets the anonymous project from the link's arrival (03-04) until u1's link arrives (03-07)
    assert [projects("u2", d) for d in ("2026-03-03", "2026-03-04", "2026-03-06", "2026-03-07")] == [2, 4, 6, 6]
    assert projects("u1", "2026-03-06") == 5 and projects("u1", "2026-03-07") == 7
