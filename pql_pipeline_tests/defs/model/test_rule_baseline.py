"""The proposed rule as a baseline: its milestones are counted point in time, within days of
signup, with property filters read exactly as the features read them."""

import pandas as pd

from pql_pipeline.defs.model.training import proposed_rule_hits
from pql_pipeline_tests.defs.features.conftest import D

RULE = {"match": "any", "conditions": [
    {"milestone": "Ticket (resolved=true)", "event": "Ticket", "where": {"resolved": True},
     "within_days_of_signup": 7, "threshold": 2},
    {"milestone": "Invite", "event": "Invite", "within_days_of_signup": 3, "threshold": 1},
], "unless": []}


def verdicts(conn, rule, snapshots) -> dict:
    """The rule's verdict and milestones for u1..u3 (signed up 2026-03-01) at each snapshot."""
    rows = pd.DataFrame([(u, D(s), D("2026-03-01")) for s in snapshots for u in ("u1", "u2", "u3")],
                        columns=["user_id", "snapshot_date", "signup_date"])
    fired, hits = proposed_rule_hits(conn, rows, rule)
    return {(r.user_id, str(r.snapshot_date)): (bool(f), h) for r, f, h in zip(rows.itertuples(), fired, hits)}


def test_rule_milestones_count_point_in_time_with_typed_filters(world, fconn):
    for user in ("u1", "u2", "u3"):
        world.track("2026-03-01 09:00", "Signed Up", user=user)
    # u1: two resolved tickets in the first week (the second on day 5)
    world.track("2026-03-02 10:00", "Ticket", user="u1", props={"resolved": True})
    world.track("2026-03-06 10:00", "Ticket", user="u1", props={"resolved": True})
    # u2: two tickets, one unresolved; an invite on day 5 (after its 3-day window)
    world.track("2026-03-02 10:00", "Ticket", user="u2", props={"resolved": True})
    world.track("2026-03-03 10:00", "Ticket", user="u2", props={"resolved": False})
    world.track("2026-03-06 10:00", "Invite", user="u2")
    # u3: an invite on day 1
    world.track("2026-03-02 11:00", "Invite", user="u3")
    got = verdicts(fconn, RULE, ("2026-03-04", "2026-03-10"))
    assert got == {
        ("u1", "2026-03-04"): (False, []),                                   # second ticket not yet
        ("u2", "2026-03-04"): (False, []),
        ("u3", "2026-03-04"): (True, ["Invite >= 1 in 3 d"]),
        ("u1", "2026-03-10"): (True, ["Ticket (resolved=true) >= 2 in 7 d"]),
        ("u2", "2026-03-10"): (False, []),                                   # unresolved; invite too late
        ("u3", "2026-03-10"): (True, ["Invite >= 1 in 3 d"]),
    }


def test_active_days_unless_late_events_and_linked_anonymous_events(world, fconn):
    """Active days count distinct days; an ``unless`` milestone vetoes; an event that arrived
    after the snapshot and an anonymous event whose link arrived after it do not count yet."""
    rule = {"match": "all", "conditions": [
        {"milestone": "active days", "event": None, "within_days_of_signup": 7, "threshold": 3},
        {"milestone": "Invite", "event": "Invite", "within_days_of_signup": 7, "threshold": 2}],
        "unless": [{"milestone": "Error", "event": "Error", "within_days_of_signup": 7, "threshold": 2}]}
    for user in ("u1", "u2", "u3"):
        world.track("2026-03-01 09:00", "Signed Up", user=user)
        world.track("2026-03-02 09:00", "Invite", user=user)
        world.event("2026-03-03 09:00", None, user, type="page")
    # u1: a second invite on day 1 (two events on one day: one active day)
    world.track("2026-03-02 15:00", "Invite", user="u1")
    # u2: its second invite happened on day 3 but arrived on day 8 (a late mobile flush)
    world.track("2026-03-04 10:00", "Invite", user="u2", pdate="2026-03-08")
    # u3: a second invite sent anonymously on day 3, linked to u3 on day 8; and two errors
    world.anon_track("2026-03-04 10:00", "Invite", anon="a3")
    world.link("a3", "u3", "2026-03-08", linked_at="2026-03-04 09:00")
    world.track("2026-03-05 10:00", "Error", user="u3")
    world.track("2026-03-06 10:00", "Error", user="u3")
    got = verdicts(fconn, rule, ("2026-03-06", "2026-03-09"))
    active, invites, errors = "active days >= 3 in 7 d", "Invite >= 2 in 7 d", "Error >= 2 in 7 d"
    assert got == {
        ("u1", "2026-03-06"): (True, [active, invites]),
        ("u2", "2026-03-06"): (False, [active]),                     # the late invite is not known yet
        ("u3", "2026-03-06"): (False, [active, errors]),             # nor the anonymous one; errors veto
        ("u1", "2026-03-09"): (True, [active, invites]),
        ("u2", "2026-03-09"): (True, [active, invites]),             # arrived: counts on its own day 3
        ("u3", "2026-03-09"): (False, [active, invites, errors]),    # linked now; still vetoed by errors
    }


def test_account_deciles_do_not_depend_on_the_tables_storage_order(conn):
    """Accounts with tied scores fall into deciles by row order: the model card reads the
    account labels in a fixed order, so rewriting the table in another order changes nothing."""
    import numpy as np

    from pql_pipeline.defs.model.training import account_metrics

    day = D("2026-03-01")
    holdout = pd.DataFrame({"snapshot_date": [day] * 20, "account_id": [f"a{i:02d}" for i in range(20)]})
    p = np.full(20, 0.5)
    labels = [(day, f"a{i:02d}", int(i < 4)) for i in range(20)]
    got = []
    for rows in (labels, labels[::-1]):
        conn.execute("CREATE OR REPLACE TABLE account_training_set (snapshot_date DATE, account_id VARCHAR, label INT)")
        conn.executemany("INSERT INTO account_training_set VALUES (?, ?, ?)", rows)
        got.append(account_metrics(conn, holdout, p, 0.5)["deciles"])
    assert got[0] == got[1]
    assert [d["conversion_rate"] for d in got[0]][:2] == [1.0, 1.0]     # a00..a03 (converted) rank first
