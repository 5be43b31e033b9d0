"""pql_history: versions open when a verdict changes, close when it changes again or the user
is no longer scored, and any re-scored range replays to the same table."""

import datetime as dt

from pql_pipeline.defs.scoring.history import HISTORY, update_history

D0 = dt.date(2026, 3, 1)


def day(i: int) -> dt.date:
    return D0 + dt.timedelta(days=i)


def write_scores(conn, rows):
    """rows: (day index, user, tier, route, model version)"""
    conn.execute("CREATE TABLE IF NOT EXISTS pql_scores (snapshot_date DATE, user_id VARCHAR, account_id VARCHAR, "
                 "tier VARCHAR, is_pql BOOLEAN, route VARCHAR, model_version VARCHAR, probability DOUBLE, "
                 "percentile DOUBLE, reason_text VARCHAR, caveat_text VARCHAR, segment VARCHAR)")
    for i, user, tier, rt, version in rows:
        conn.execute("DELETE FROM pql_scores WHERE snapshot_date = ? AND user_id = ?", [day(i), user])
        conn.execute("INSERT INTO pql_scores VALUES (?, ?, 'acc', ?, ?, ?, ?, ?, 0.5, ?, NULL, 'smb')",
                     [day(i), user, tier, tier == "hot", rt, version, 0.4 if tier == "hot" else 0.05,
                      f"day {i} reasons"])


def history(conn):
    return conn.execute(f"SELECT user_id, valid_from, valid_to, tier, route, reason_text FROM {HISTORY} "
                        "ORDER BY user_id, valid_from").fetchall()


STORY = [
    (0, "u1", "cold", "none", "m1"), (1, "u1", "cold", "none", "m1"), (2, "u1", "hot", "in_app", "m1"),
    (3, "u1", "hot", "in_app", "m1"), (4, "u1", "hot", "in_app", "m2"),                 # new model version
    (0, "u2", "warm", "in_app", "m1"), (1, "u2", "warm", "in_app", "m1"),               # u2 stops being scored
    (3, "u2", "warm", "in_app", "m1"),                                                  # and comes back
]


def test_versions_follow_changes_and_gaps(conn):
    write_scores(conn, STORY)
    stats = update_history(conn, day(0))
    assert stats["days_replayed"] == 5
    assert history(conn) == [
        ("u1", day(0), day(2), "cold", "none", "day 0 reasons"),
        ("u1", day(2), day(4), "hot", "in_app", "day 2 reasons"),   # when it became a PQL, and why
        ("u1", day(4), None, "hot", "in_app", "day 4 reasons"),
        ("u2", day(0), day(2), "warm", "in_app", "day 0 reasons"),
        ("u2", day(3), day(4), "warm", "in_app", "day 3 reasons"),   # not scored on day 4: closed
    ]


def test_rescoring_a_range_replays_to_the_same_table_as_scoring_in_order(conn):
    write_scores(conn, STORY)
    for i in range(5):                       # day by day, as a schedule would
        update_history(conn, day(i))
    daily = history(conn)
    update_history(conn, day(0))             # a backfill of everything
    assert history(conn) == daily
    # day 1 is re-scored with a different verdict for u1: only what follows from it changes
    write_scores(conn, [(1, "u1", "warm", "in_app", "m1")])
    update_history(conn, day(1))
    once = history(conn)
    assert ("u1", day(1), day(2), "warm", "in_app", "day 1 reasons") in once
    assert ("u1", day(0), day(1), "cold", "none", "day 0 reasons") in once
    conn.execute(f"DELETE FROM {HISTORY}")
    update_history(conn, day(0))
    assert history(conn) == once


def test_a_day_that_scored_nobody_closes_every_open_row(conn):
    write_scores(conn, STORY)
    update_history(conn, day(0))
    update_history(conn, day(5), [day(5)])     # day 5 was scored and nobody qualified
    assert conn.execute(f"SELECT count(*) FROM {HISTORY} WHERE valid_to IS NULL").fetchall() == [(0,)]
    assert ("u1", day(4), day(5), "hot", "in_app", "day 4 reasons") in history(conn)


def write_account_scores(conn, rows):
    """rows: (day index, account, tier, route)"""
    conn.execute("CREATE TABLE IF NOT EXISTS pql_account_scores (snapshot_date DATE, account_id VARCHAR, "
                 "tier VARCHAR, is_pql BOOLEAN, route VARCHAR, model_version VARCHAR, probability DOUBLE, "
                 "percentile DOUBLE, reason_text VARCHAR, caveat_text VARCHAR, segment VARCHAR)")
    for i, account, tier, rt in rows:
        conn.execute("INSERT INTO pql_account_scores VALUES (?, ?, ?, ?, ?, 'm1', 0.5, 0.5, ?, NULL, 'enterprise')",
                     [day(i), account, tier, tier == "hot", rt, f"{account} day {i}"])


def test_accounts_have_their_own_history_beside_their_users(conn):
    write_scores(conn, STORY)
    write_account_scores(conn, [(0, "acc", "warm", "none"), (1, "acc", "hot", "sales"), (2, "acc", "hot", "sales"),
                                (3, "acc", "hot", "sales"), (4, "acc", "hot", "sales")])
    update_history(conn, day(0))
    accounts = conn.execute(f"SELECT entity_id, user_id, valid_from, valid_to, tier, route, reason_text "
                            f"FROM {HISTORY} WHERE entity_type = 'account' ORDER BY valid_from").fetchall()
    # when did the account become a PQL, and why
    assert accounts == [("acc", None, day(0), day(1), "warm", "none", "acc day 0"),
                        ("acc", None, day(1), None, "hot", "sales", "acc day 1")]
    users = conn.execute(f"SELECT count(*) FROM {HISTORY} WHERE entity_type = 'user' AND entity_id = user_id"
                         ).fetchall()[0][0]
    assert users == len(history(conn)) - 2 == 5


def test_a_users_only_history_is_rebuilt_with_accounts(conn):
    write_scores(conn, STORY)
    write_account_scores(conn, [(0, "acc", "hot", "sales")])
    conn.execute(f"CREATE TABLE {HISTORY} (user_id VARCHAR, account_id VARCHAR, valid_from DATE, valid_to DATE, "
                 "tier VARCHAR, is_pql BOOLEAN, route VARCHAR, model_version VARCHAR, probability DOUBLE, "
                 "percentile DOUBLE, reason_text VARCHAR, caveat_text VARCHAR, segment VARCHAR)")
    conn.execute(f"INSERT INTO {HISTORY} (user_id, valid_from, tier) VALUES ('stale', DATE '2026-03-01', 'hot')")
    update_history(conn, day(4), [day(4)])       # a daily run after the upgrade replays everything
    assert conn.execute(f"SELECT count(*) FILTER (WHERE entity_type = 'account'), count(*) FILTER (WHERE user_id = "
                        f"'stale'), count(*) FROM {HISTORY}").fetchall() == [(1, 0, 6)]


def _replayed_day_by_day(scores: dict, days: list) -> list:
    """The history's definition, one day at a time: a row closes on the first replay day its
    entity is not scored with the same verdict, and opens on a day it is scored without an open row."""
    open_rows, done = {}, []
    for d in days:
        today = scores.get(d, {})
        for user, row in list(open_rows.items()):
            if user not in today or today[user][:2] != row[2:4]:
                done.append((user, row[1], d, *row[2:]))
                del open_rows[user]
        for user, (tier, rt, text) in today.items():
            if user not in open_rows:
                open_rows[user] = (user, d, tier, rt, text)
    done += [(u, r[1], None, *r[2:]) for u, r in open_rows.items()]
    return sorted(done, key=lambda r: (r[0], r[1]))


def test_the_replay_equals_the_day_by_day_definition_on_random_histories(conn):
    """Random verdicts, gaps and days without scores: a replay from the first day, and one
    update a day (each carrying the rows the day before left open), give the history the
    day-by-day definition gives."""
    import random

    rng = random.Random(11)
    for trial in range(4):
        conn.execute("DROP TABLE IF EXISTS pql_scores")
        conn.execute(f"DROP TABLE IF EXISTS {HISTORY}")
        rows, scores = [], {}
        for i in range(12):
            for user in ("u1", "u2", "u3", "u4"):
                if rng.random() < 0.75:
                    tier = rng.choice(["cold", "hot", "hot"])
                    rt = "in_app" if tier == "hot" and rng.random() < 0.8 else "none"
                    rows.append((i, user, tier, rt, "m1"))
                    scores.setdefault(day(i), {})[user] = (tier, rt, f"day {i} reasons")
        write_scores(conn, rows)
        days = sorted(scores)
        want = [(u, a, b, t, r, x) for u, a, b, t, r, x in _replayed_day_by_day(scores, days)]
        update_history(conn, days[0])
        assert history(conn) == want, trial
        conn.execute(f"DELETE FROM {HISTORY}")
        for d in days:
            update_history(conn, d)
        assert history(conn) == want, trial
        update_history(conn, days[len(days) // 2])          # a re-run from the middle
        assert history(conn) == want, trial
