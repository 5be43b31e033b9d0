"""Daily runs advance the previous day's state (features/state.py) and give exactly the
features computed from events, through everything that makes one day differ from the
next: new partitions, late and future-dated events, rows leaving windows, identity links
that arrive later or re-attribute events, signups that move, users changing accounts."""

import datetime as dt

import pytest

from pql_pipeline.defs.features import cache
from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.features.state import STATE_SNAPSHOTS, STATE_USERS
from pql_pipeline.signals import ACCOUNT_KINDS, USER_KINDS
from pql_pipeline_tests.defs.features.conftest import D, account_rows, signals, spec, table_dump, user_rows
from pql_pipeline_tests.defs.features.test_cache import versions

DAYS = [D("2026-03-02") + dt.timedelta(days=i) for i in range(14)]
SIGS = signals(
    {"name": "projects", "kind": "count", "event": "Project Created"},
    {"name": "projects_3d", "kind": "count", "event": "Project Created", "window_days": 3},
    {"name": "first_week", "kind": "count", "event": "Project Created", "within_days_of_signup": 7},
    {"name": "tickets", "kind": "count", "event": "Ticket", "where": {"category": "basics"}},
    {"name": "invites", "kind": "distinct_count", "event": "Invite", "property": "email"},
    {"name": "invites_3d", "kind": "distinct_count", "event": "Invite", "property": "email", "window_days": 3},
    {"name": "invites_first_5d", "kind": "distinct_count", "event": "Invite", "property": "email",
     "within_days_of_signup": 5},
    {"name": "integration", "kind": "first_time", "event": "Integration", "detail_property": "tool"},
    {"name": "active", "kind": "active_days", "window_days": 4},
    {"name": "active_total", "kind": "active_days"},
    {"name": "active_first_week", "kind": "active_days", "within_days_of_signup": 7},
    {"name": "session", "kind": "session_length", "event": "Session Ended", "property": "seconds",
     "window_days": 5},
    {"name": "short", "kind": "share", "event": "Session Ended", "property": "seconds", "below": 30,
     "window_days": 5},
    {"name": "recency", "kind": "recency"},
    {"name": "project_recency", "kind": "recency", "event": "Project Created"},
    {"name": "trend", "kind": "trend", "period_days": 2},
    {"name": "role", "kind": "trait", "property": "role", "type": "string"},
    accounts=[{"name": "seats", "kind": "seats"},
              {"name": "active_members", "kind": "active_users", "window_days": 3},
              {"name": "active_share", "kind": "active_seat_share", "window_days": 3},
              {"name": "team_invites", "kind": "distinct_count", "event": "Invite", "property": "email"},
              {"name": "team_invites_4d", "kind": "distinct_count", "event": "Invite", "property": "email",
               "window_days": 4},
              {"name": "team_projects_3d", "kind": "count", "event": "Project Created", "window_days": 3},
              {"name": "plan", "kind": "trait", "property": "plan", "type": "string"}],
    signup_event="Signed Up")


def day(i: int, hh: str = "10:00") -> str:
    return f"{DAYS[i].isoformat()} {hh}"


@pytest.fixture
def busy(world):
    """Two weeks of a few users doing things that end up everywhere a day can differ."""
    w = world
    for i, user in enumerate(("u1", "u2", "u3", "u4")):
        w.track(day(i, "09:00"), "Signed Up", user=user)
        w.member(user, "A" if user in ("u1", "u2") else "B", day(i, "09:01"))
        w.user_versions(user, (day(i, "09:02"), {"role": "admin" if i == 0 else "member"}))
    w.account_versions("A", (day(0, "09:03"), {"plan": "free"}), (day(6), {"plan": "pro"}))
    for i in range(len(DAYS)):
        for user in ("u1", "u2"):
            if (i + len(user)) % 3:
                w.track(day(i), "Project Created", user=user)
            w.track(day(i, "11:00"), "Session Ended", user=user, props={"seconds": 7 * i + 3})
        if i % 2 == 0:
            w.track(day(i, "12:00"), "Invite", user="u1", props={"email": f"x{i % 5}@a.io"})
        if i % 4 == 1:
            w.track(day(i, "12:30"), "Invite", user="u2", props={"email": f"x{i % 3}@a.io"})
        if i % 5 == 2:
            w.track(day(i, "13:00"), "Project Created", user="u3")
    w.track(day(3, "13:00"), "Ticket", user="u2", props={"category": "basics"})
    w.track(day(5, "13:00"), "Integration", user="u1", props={"tool": "slack"})
    # late arrivals: an event of day 2 received on day 6, one of day 1 received on day 9
    w.track(day(2, "08:00"), "Project Created", user="u3", pdate=DAYS[6])
    w.track(day(1, "08:00"), "Invite", user="u4", props={"email": "late@a.io"}, pdate=DAYS[9])
    # future-dated: received on day 4 with a timestamp of day 5
    w.track(day(5, "07:00"), "Project Created", user="u4", pdate=DAYS[4])
    # anonymous events identified later, then re-attributed by a link with an earlier linked_at
    w.anon_track(day(1, "08:00"), "Project Created", anon="anon-9")
    w.anon_track(day(1, "08:05"), "Invite", anon="anon-9", props={"email": "anon@a.io"})
    w.link("anon-9", "u3", DAYS[4].isoformat())
    w.link("anon-9", "u2", DAYS[8].isoformat(), linked_at=f"{DAYS[0]} 08:00")
    # a user whose signup is received late (their lifecycle starts earlier than thought)
    w.track(day(7), "Project Created", user="u5")
    w.track(day(5, "09:00"), "Signed Up", user="u5", pdate=DAYS[10])
    w.member("u5", "B", day(7, "09:00"))
    # u2 moves from account A to account B on day 9; u4 joins A with a membership received late
    w.member("u2", "B", day(9, "09:00"))
    w.member("u4", "A", day(10, "09:00"), pdate=DAYS[11].isoformat())
    # a user who goes quiet (leaves windows, then the active set)
    w.track(day(0, "15:00"), "Project Created", user="u6")
    w.member("u6", "B", day(0, "15:01"))
    # traits: a late identify with a newer timestamp wins when it arrives; a call without the
    # trait leaves it; a late one with an older timestamp never wins
    w.user_versions("u1", (day(3), {"role": "owner"}, DAYS[8]), (day(10), {"title": "cto"}))
    w.user_versions("u2", (day(9), {"role": "lead"}), (day(4), {"role": "old"}, DAYS[12]))
    # equal timestamps across partitions: the larger message id wins, whichever arrives first
    w.user_versions("u5", (day(7), {"role": "tie-late-small-id"}, DAYS[8]), (day(7), {"role": "tie-first"}))
    w.user_versions("u4", (day(6), {"role": "tie-first-small-id"}), (day(6), {"role": "tie-late"}, DAYS[7]))
    # an anonymous identify and group call: attributed from the link's arrival (u3, day 4), the
    # identify re-attributed to u2 on day 8; the group call stays with account A
    w.event(day(3), None, None, type="identify", anon="anon-9", resolved=None, traits={"role": "guest"})
    w.event(day(3, "10:30"), None, None, type="group", anon="anon-9", resolved=None, group="A",
            traits={"plan": "trial"})
    return w


def test_the_history_has_a_signal_of_every_kind():
    """The equality below holds for every kind the configuration accepts: a new kind must be
    added to SIGS (and so be computed both ways) before this passes."""
    assert {s.kind for s in SIGS.signals} == set(USER_KINDS)
    assert {s.kind for s in SIGS.account_signals} == set(ACCOUNT_KINDS)


@pytest.mark.parametrize("mask_bits", [62, 2], ids=["values-as-masks", "values-outgrow-masks"])
def test_daily_runs_advanced_from_state_equal_features_from_events(busy, fconn, monkeypatch, mask_bits):
    """With few values per source they are counted from masks; with more values than mask
    bits (here: 2) a source is counted from its values, and a source that outgrows its
    masks on the way switches without a break."""
    monkeypatch.setattr(cache, "MASK_BITS", mask_bits)
    versions(fconn, *DAYS)
    sp = spec(SIGS, active_within_days=6)
    runs = [compute_features(fconn, sp, [d]) for d in DAYS]
    assert runs[0].incremental is None
    assert all(r.incremental for r in runs[1:]), [r.incremental for r in runs]
    # the links, the late signup and the move are recomputed, not advanced
    recomputed = {r.incremental[0]["snapshot_date"]: r.incremental[0]["users_recomputed"] for r in runs[1:]}
    assert recomputed[DAYS[8]] >= 1 and recomputed[DAYS[10]] >= 1
    daily = {t: table_dump(fconn, t) for t in ("user_features", "account_features")}
    compute_features(fconn, sp, DAYS, use_cache=False)
    full = {t: table_dump(fconn, t) for t in daily}
    assert daily == full
    assert len(full["user_features"]) > 40
    roles = {(r["snapshot_date"], r["user_id"]): r["role"]
             for r in user_rows(fconn, cols="snapshot_date, user_id, role")}
    assert [roles.get((DAYS[i], "u1")) for i in (7, 8, 10)] == ["admin", "owner", "owner"]
    assert [roles.get((DAYS[i], "u2")) for i in (7, 8, 9, 12)] == ["member", "guest", "lead", "lead"]
    assert [roles.get((DAYS[i], "u3")) for i in (3, 4, 7, 8)] == ["member", "guest", "guest", "member"]
    assert [roles.get((DAYS[i], "u5")) for i in (7, 8)] == ["tie-first", "tie-first"]
    assert [roles.get((DAYS[i], "u4")) for i in (6, 7)] == ["tie-first-small-id", "tie-late"]
    plans = {r["snapshot_date"]: r["plan"] for r in account_rows(fconn, cols="snapshot_date, account_id, plan")
             if r["account_id"] == "A"}
    assert [plans[DAYS[i]] for i in (3, 4, 5, 6, 9)] == ["free", "trial", "trial", "pro", "pro"]
    # only the newest two days keep a state
    assert fconn.execute(f"SELECT list(snapshot_date ORDER BY snapshot_date) FROM {STATE_SNAPSHOTS}"
                         ).fetchall()[0][0] == DAYS[-2:]


def test_a_revalidated_day_is_advanced_again_and_an_older_change_forces_a_full_run(busy, fconn, world):
    versions(fconn, *DAYS)
    sp = spec(SIGS)
    for d in DAYS[:8]:
        compute_features(fconn, sp, [d])
    # the newest day is validated again with one more event: advanced from the day before
    world.track(day(7, "16:00"), "Invite", user="u2", props={"email": "new@a.io"})
    versions(fconn, DAYS[7], version="v2")
    run = compute_features(fconn, sp, [DAYS[7]])
    assert run.incremental and run.cache_partitions_built == 1
    # an older partition changes: the state no longer describes it, the next day runs in full
    world.track(day(3, "16:00"), "Project Created", user="u1")
    versions(fconn, DAYS[3], version="v2")
    run = compute_features(fconn, sp, [DAYS[8]])
    assert run.incremental is None
    run = compute_features(fconn, sp, [DAYS[9]])
    assert run.incremental
    # the days computed after the change (the earlier ones were computed before it)
    got = {t: table_dump(fconn, t) for t in ("user_features", "account_features")}
    compute_features(fconn, sp, DAYS[8:10], use_cache=False)
    got_after = [r for r in got["user_features"] if r[0] >= DAYS[8].isoformat()]
    assert [r for r in table_dump(fconn, "user_features") if r[0] >= DAYS[8].isoformat()] == got_after
    assert table_dump(fconn, "account_features") == got["account_features"]
    assert fconn.execute("SELECT projects FROM user_features WHERE user_id = 'u1' AND snapshot_date = ?",
                         [DAYS[9]]).fetchall() != []


def test_changed_signals_do_not_use_an_older_state(busy, fconn):
    versions(fconn, *DAYS)
    compute_features(fconn, spec(SIGS), DAYS[:3])
    fewer = signals(*[s.model_dump(by_alias=True, exclude_none=True) for s in SIGS.signals[:3]],
                    signup_event="Signed Up")
    run = compute_features(fconn, spec(fewer), [DAYS[3]])
    assert run.incremental is None
    assert compute_features(fconn, spec(fewer), [DAYS[4]]).incremental
    assert "st_projects_3d" in [r[0] for r in fconn.execute(f"DESCRIBE {STATE_USERS}").fetchall()]
    assert "dv_invites" not in [r[0] for r in fconn.execute(f"DESCRIBE {STATE_USERS}").fetchall()]


def test_without_partition_versions_no_state_is_kept(busy, fconn):
    versions(fconn, *DAYS[:3])   # later days never versioned: their events may change unseen
    for d in DAYS[:6]:
        run = compute_features(fconn, spec(SIGS), [d])
    assert run.incremental is None
    assert fconn.execute(f"SELECT max(snapshot_date) FROM {STATE_SNAPSHOTS}").fetchall()[0][0] == DAYS[2]


def test_counts_are_kept_as_bigint_and_a_state_of_other_types_is_replaced(busy, fconn):
    """Sums of counts stay 64-bit in the state (not DuckDB's 128-bit sums); a state table
    saved with other column types (an older format) is dropped and created again."""
    versions(fconn, *DAYS)
    sp = spec(SIGS)
    compute_features(fconn, sp, DAYS[:2])

    def types():
        return dict((r[0], r[1]) for r in fconn.execute(f"DESCRIBE {STATE_USERS}").fetchall())
    assert "HUGEINT" not in types().values()
    assert types()["st_projects"] == types()["dv_invites"] == types()["ad_active"] == "BIGINT"
    assert types()["ss_session"] == "DOUBLE"   # seconds are not truncated
    # as an older format left it: its own hash, 128-bit sums
    fconn.execute(f"ALTER TABLE {STATE_USERS} ALTER st_projects TYPE HUGEINT")
    fconn.execute(f"UPDATE {STATE_SNAPSHOTS} SET state_hash = 'older-format'")
    assert compute_features(fconn, sp, [DAYS[2]]).incremental is None
    assert types()["st_projects"] == "BIGINT"
    assert compute_features(fconn, sp, [DAYS[3]]).incremental
    assert "HUGEINT" not in types().values()      # nor once advanced
