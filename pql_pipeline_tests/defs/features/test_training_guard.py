"""Training sets and the leakage guard on a hand-made warehouse.

Three users, one account, snapshots 03-01 .. 03-08, data observed until 03-09, a label
horizon of 3 days plus 1 late-arrival day (complete for snapshots up to 03-05) and a
training grid of every 2nd day from 03-01 (03-01, 03-03, 03-05, 03-07).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.features.labels import LabelSpec, compute_labels
from pql_pipeline.defs.features.training import BOOKKEEPING, build_training_sets, leakage_guard
from pql_pipeline_tests.defs.features.conftest import D, signals, spec, utc

CONV = ("Plan Upgraded",)
FSPEC = spec(signals({"name": "x", "kind": "count", "event": "X"},
                     {"name": "avg_len", "kind": "session_length", "event": "X", "property": "sec"},
                     {"name": "active", "kind": "active_days"}), conversion=CONV)
LSPEC = LabelSpec(CONV, horizon_days=3, late_arrival_days=1, exclude_users_of_paying_accounts=True)
DAYS = [D("2026-03-01") + dt.timedelta(days=i) for i in range(8)]
START = D("2026-03-01")
LATE = "2026-03-03 15:00"     # an event of u1 on 03-03 received on 03-06


def build(w, fconn) -> None:
    w.member("u1", "A", "2026-03-01 00:00")
    w.track("2026-03-01 10:00", "X", user="u1", props={"sec": 10})
    w.track("2026-03-03 10:00", "X", user="u1", props={"sec": 20})
    w.track(LATE, "X", user="u1", props={"sec": 60}, pdate="2026-03-06")
    w.track("2026-03-06 10:00", "X", user="u1", props={"sec": 30})
    w.track("2026-03-02 10:00", "X", user="u2", props={"sec": 5})
    w.track("2026-03-05 10:00", "Plan Upgraded", user="u2")
    w.track("2026-03-01 20:00", "X", user="u3", props={"sec": 40})
    w.track("2026-03-08 10:00", "Plan Upgraded", user="u3")
    w.track("2026-03-09 10:00", "X", user="u3", props={"sec": 40})
    compute_features(fconn, FSPEC, DAYS)
    compute_labels(fconn, LSPEC, DAYS)


@pytest.fixture
def built(world, fconn):
    build(world, fconn)
    return fconn


def rows(conn, sql: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sql).fetchall()]


def test_training_set_takes_grid_snapshots_with_complete_horizons_and_known_labels(built):
    conn = built
    # the labels the training set chooses from (user entities)
    assert rows(conn, "SELECT snapshot_date, entity_id, label_status, horizon_complete FROM conversion_labels "
                      "WHERE entity_type = 'user' AND snapshot_date IN ('2026-03-05', '2026-03-07') ORDER BY ALL") == [
        (D("2026-03-05"), "u1", "negative", True),
        (D("2026-03-05"), "u2", "excluded_paying", True),
        (D("2026-03-05"), "u3", "positive", True),
        (D("2026-03-07"), "u1", "unknown", False),
        (D("2026-03-07"), "u2", "excluded_paying", False),
        (D("2026-03-07"), "u3", "positive", False),     # known, but its horizon is not complete: not trained on
    ]
    out = build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    assert out == {"training_set": {"rows": 7, "positives": 2, "snapshots": 3},
                   "account_training_set": {"rows": 3, "positives": 0, "snapshots": 3}}
    assert rows(conn, """
        SELECT snapshot_date, user_id, account_id, x, avg_len, active, acct_best_x, acct_n_members,
               label, converted_at, label_window_start, label_window_end
        FROM training_set ORDER BY snapshot_date, user_id""") == [
        (D("2026-03-01"), "u1", "A", 1, 10.0, 1, 1, 1, False, None, D("2026-03-02"), D("2026-03-04")),
        (D("2026-03-01"), "u3", None, 1, 40.0, 1, None, None, False, None, D("2026-03-02"), D("2026-03-04")),
        (D("2026-03-03"), "u1", "A", 2, 15.0, 2, 2, 1, False, None, D("2026-03-04"), D("2026-03-06")),
        (D("2026-03-03"), "u2", None, 1, 5.0, 1, None, None, True, utc("2026-03-05 10:00"),
         D("2026-03-04"), D("2026-03-06")),
        (D("2026-03-03"), "u3", None, 1, 40.0, 1, None, None, False, None, D("2026-03-04"), D("2026-03-06")),
        # 03-05: u2 already pays; u1's event of 03-03 received on 03-06 is not yet known
        (D("2026-03-05"), "u1", "A", 2, 15.0, 2, 2, 1, False, None, D("2026-03-06"), D("2026-03-08")),
        (D("2026-03-05"), "u3", None, 1, 40.0, 1, None, None, True, utc("2026-03-08 10:00"),
         D("2026-03-06"), D("2026-03-08")),
    ]
    assert rows(conn, "SELECT snapshot_date, account_id, best_x, label FROM account_training_set ORDER BY ALL") == [
        (D("2026-03-01"), "A", 1, False), (D("2026-03-03"), "A", 2, False), (D("2026-03-05"), "A", 2, False)]

    # lookback counts back from the last complete snapshot (03-05): 4 days are 03-02 .. 03-05, whose
    # grid days are 03-03 and 03-05; the rebuild replaces every earlier row
    out = build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=4, label_hash=LSPEC.definition_hash)
    assert out["training_set"] == {"rows": 5, "positives": 2, "snapshots": 2}
    assert rows(conn, "SELECT DISTINCT snapshot_date FROM account_training_set ORDER BY 1") == [
        (D("2026-03-03"),), (D("2026-03-05"),)]
    out = build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=1, label_hash=LSPEC.definition_hash)
    assert (out["training_set"]["snapshots"], out["account_training_set"]["snapshots"]) == (1, 1)
    # another grid: every 3rd day from 03-02 -> 03-02 and 03-05
    out = build_training_sets(conn, FSPEC, D("2026-03-02"), every_days=3, lookback_days=30, label_hash=LSPEC.definition_hash)
    assert rows(conn, "SELECT snapshot_date, user_id, label FROM training_set ORDER BY ALL") == [
        (D("2026-03-02"), "u1", False), (D("2026-03-02"), "u2", True), (D("2026-03-02"), "u3", False),
        (D("2026-03-05"), "u1", False), (D("2026-03-05"), "u3", True)]


def test_the_guard_passes_on_correctly_computed_features(built):
    conn = built
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    rep = leakage_guard(conn, FSPEC, [D("2026-03-03"), D("2026-03-05")])
    assert rep.passed
    assert set(rep.bookkeeping_violations.values()) == {0}, rep.bookkeeping_violations
    assert rep.recomputed_days == [D("2026-03-03"), D("2026-03-05")]
    assert rep.recomputed_rows == 8          # u1 u2 u3 and account A on each day
    assert rep.mismatched_rows == {"user_features@2026-03-03": 0, "account_features@2026-03-03": 0,
                                   "user_features@2026-03-05": 0, "account_features@2026-03-05": 0}
    assert rep.samples == []
    # the guard leaves no views behind
    assert rows(conn, "SELECT count(*) FROM duckdb_views() WHERE view_name LIKE 'lg_%'") == [(0,)]


def test_the_guard_catches_features_that_saw_a_late_arriving_event(built):
    """A leaky run computes 03-03 as if u1's late event (received 03-06) had been there."""
    conn = built
    conn.execute("UPDATE validated_events SET partition_date = DATE '2026-03-03' WHERE event_ts = ?", [utc(LATE)])
    compute_features(conn, FSPEC, [D("2026-03-03")])
    conn.execute("UPDATE validated_events SET partition_date = DATE '2026-03-06' WHERE event_ts = ?", [utc(LATE)])
    assert rows(conn, "SELECT x, avg_len FROM user_features WHERE snapshot_date = '2026-03-03' AND user_id = 'u1'"
                ) == [(3, 30.0)]
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    rep = leakage_guard(conn, FSPEC, [D("2026-03-03"), D("2026-03-05")])
    assert not rep.passed
    assert set(rep.bookkeeping_violations.values()) == {0}, rep.bookkeeping_violations  # the event itself is of 03-03
    assert rep.mismatched_rows == {"user_features@2026-03-03": 1, "account_features@2026-03-03": 1,
                                   "user_features@2026-03-05": 0, "account_features@2026-03-05": 0}
    assert [(s["table"], s["snapshot_date"], s.get("user_id", s.get("account_id")), s["only_recomputed"],
             s["only_stored"], s["differing_columns"].split()) for s in rep.samples] == [
        ("user_features", "2026-03-03", "u1", "False", "False", ["x", "avg_len", "max_event_ts"]),
        ("account_features", "2026-03-03", "A", "False", "False", ["best_x", "avg_avg_len", "max_event_ts"]),
    ]


def test_the_guard_names_the_tampered_columns_and_tolerates_rounding_only(built):
    conn = built
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    day = D("2026-03-05")
    # one unit of the 6th decimal is rounding: not a difference
    conn.execute("UPDATE user_features SET avg_len = avg_len + 1e-6 WHERE snapshot_date = ? AND user_id = 'u1'", [day])
    assert leakage_guard(conn, FSPEC, [day]).passed
    conn.execute("UPDATE user_features SET avg_len = avg_len + 1e-5, active = active + 1 "
                 "WHERE snapshot_date = ? AND user_id = 'u1'", [day])
    conn.execute("UPDATE user_features SET is_paying = FALSE WHERE snapshot_date = ? AND user_id = 'u2'", [day])
    conn.execute("UPDATE account_features SET n_members = 2 WHERE snapshot_date = ?", [day])
    conn.execute("DELETE FROM user_features WHERE snapshot_date = ? AND user_id = 'u3'", [day])
    rep = leakage_guard(conn, FSPEC, [day])
    assert not rep.passed
    assert rep.mismatched_rows == {"user_features@2026-03-05": 3, "account_features@2026-03-05": 1}
    got = {(s["table"], s.get("user_id", s.get("account_id"))): (s["only_recomputed"], s["only_stored"],
                                                                  s["differing_columns"].split())
           for s in rep.samples}
    assert got == {
        ("user_features", "u1"): ("False", "False", ["avg_len", "active"]),
        ("user_features", "u2"): ("False", "False", ["is_paying"]),
        ("user_features", "u3"): ("True", "False", [         # a row the store lacks
            "signup_date", "days_since_signup", "is_paying", "x", "avg_len", "active",
            "max_event_ts", "max_partition_date", "definition_hash"]),      # (account_id is NULL in both)
        ("account_features", "A"): ("False", "False", ["n_members"]),
    }
    assert len(leakage_guard(conn, FSPEC, [day], max_samples=2).samples) == 2


TAMPERED = [  # (change to u1's training row of 03-03, the bookkeeping rules it violates)
    ("max_event_ts = TIMESTAMPTZ '2026-03-03 23:59:59.999+00'", []),                  # last instant of the day
    ("max_event_ts = TIMESTAMPTZ '2026-03-04 00:00:00+00'",
     ["feature event after snapshot", "label window overlaps features"]),
    ("max_partition_date = DATE '2026-03-04'", ["feature partition after snapshot"]),
    ("acct_max_event_ts = TIMESTAMPTZ '2026-03-04 00:00:00+00'", ["account feature event after snapshot"]),
    ("acct_max_partition_date = DATE '2026-03-04'", ["account feature partition after snapshot"]),
    ("label_window_start = DATE '2026-03-03'", ["label window starts on or before snapshot",
                                                "label window overlaps features"]),
    ("converted_at = TIMESTAMPTZ '2026-03-07 00:00:00+00', label = TRUE", ["conversion outside label window"]),
    ("converted_at = TIMESTAMPTZ '2026-03-06 23:59:59+00', label = TRUE", []),       # last day of the window
    ("label = TRUE", ["positive label without conversion"]),
]


def test_bookkeeping_violations_fail_the_guard(built):
    conn = built
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    for update, violated in TAMPERED:
        conn.execute("BEGIN TRANSACTION")
        conn.execute(f"UPDATE training_set SET {update} WHERE snapshot_date = DATE '2026-03-03' AND user_id = 'u1'")
        rep = leakage_guard(conn, FSPEC, [])
        conn.execute("ROLLBACK")
        assert {k: v for k, v in rep.bookkeeping_violations.items() if not k.startswith("account set: ")} == {
            name: int(name in violated) for name in BOOKKEEPING}, update
        assert rep.passed is (not violated), update
        assert rep.recomputed_rows == 0 and rep.mismatched_rows == {}


def test_the_guard_reads_days_in_utc_whatever_the_session_zone(built):
    """The bookkeeping compares UTC days whatever the caller's session zone: u3's 03-01 20:00
    UTC event is 03-02 in Tokyo, and a clean training set must not be reported as leaking."""
    conn = built
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    rep = leakage_guard(conn, FSPEC, [])
    assert set(rep.bookkeeping_violations.values()) == {0}, rep.bookkeeping_violations


def test_bookkeeping_violations_of_the_account_training_set_fail_the_guard(built):
    """The account training set has its own bookkeeping (every rule that does not read the
    account columns of user rows): a tampered account row fails the guard by itself."""
    conn = built
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    account_rules = [name for name, cond in BOOKKEEPING.items() if "acct_" not in cond]
    tried = 0
    for update, violated in TAMPERED:
        if "acct_" in update:
            continue
        tried += 1
        conn.execute("BEGIN TRANSACTION")
        conn.execute(f"UPDATE account_training_set SET {update} "
                     "WHERE snapshot_date = DATE '2026-03-03' AND account_id = 'A'")
        rep = leakage_guard(conn, FSPEC, [])
        conn.execute("ROLLBACK")
        assert {k: v for k, v in rep.bookkeeping_violations.items() if k.startswith("account set: ")} == {
            "account set: " + name: int(name in violated) for name in account_rules}, update
        assert not any(v for k, v in rep.bookkeeping_violations.items() if not k.startswith("account set: ")), update
        assert rep.passed is (not violated), update
    assert tried == 7


def test_training_and_scoring_read_the_same_feature_rows(built):
    """Training rows and the rows scoring reads come from one query: for every (user,
    snapshot) of the training set, scoring's candidate row has the same columns, in the same
    order, with the same values (no training/serving skew)."""
    from pql_pipeline.defs.features.training import LABEL_OUT, feature_row_columns
    from pql_pipeline.defs.scoring.batch import candidates_sql

    conn = built
    build_training_sets(conn, FSPEC, START, every_days=2, lookback_days=30, label_hash=LSPEC.definition_hash)
    training = conn.execute("SELECT * EXCLUDE (label, converted_at, label_window_start, label_window_end) "
                            "FROM training_set ORDER BY snapshot_date, user_id").df()
    cols = [c for c, _ in feature_row_columns(FSPEC.signals)]
    assert list(training.columns) == cols
    assert [r[0] for r in conn.execute("DESCRIBE training_set").fetchall()] == cols + [c for c, _ in LABEL_OUT]
    assert "acct_best_x" in cols and "acct_n_members" in cols
    snaps = sorted(training["snapshot_date"].unique())
    scored = conn.execute(candidates_sql(FSPEC.signals, snaps[0].date(), snaps[-1].date())).df()
    assert list(scored.columns) == cols
    same = scored.merge(training[["snapshot_date", "user_id"]], on=["snapshot_date", "user_id"])
    assert len(same) == len(training) == 7
    pd.testing.assert_frame_equal(same.reset_index(drop=True), training.reset_index(drop=True))
