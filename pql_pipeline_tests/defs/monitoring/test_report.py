"""The drift report's parts on hand-built warehouse tables with known answers: event-stream
drift (seasonality, an outage, a share drop, new and rare events), prediction drift,
performance decay, and the alert-fatigue guard over drift_history."""

import datetime as dt

import numpy as np
import pandas as pd

from pql_pipeline.defs.monitoring import report as M
from pql_pipeline.defs.monitoring.assets import incidents, write_history
from pql_pipeline.defs.monitoring.drift import Thresholds

DAY = dt.date(2026, 5, 31)          # a Sunday
MIX = {"Feature Used": 600, "Project Created": 200, "Report Run": 150, "Teammate Invited": 40, "Order Completed": 1}


def fill(conn, day_counts: dict[dt.date, dict[str, int]], anonymous: dict[dt.date, float] | None = None) -> None:
    """validated_events rows: per day and event name that many events, every user identified
    and mapped to an account unless ``anonymous`` gives a day's share without a user."""
    rows = []
    for day, counts in day_counts.items():
        i = 0
        for name, n in counts.items():
            for _ in range(n):
                anon = anonymous and (i % 100) < anonymous.get(day, 0) * 100
                rows.append((day, f"{day}-{i}", "track", name, None if anon else f"u{i % 50}",
                             None if anon else f"a{i % 7}"))
                i += 1
    frame = pd.DataFrame(rows, columns=["partition_date", "message_id", "event_type", "event_name", "user_id",
                                        "account_id"])
    conn.register("fx", frame)
    conn.execute("""INSERT INTO validated_events (partition_date, message_id, event_type, event_name, user_id,
                    account_id, event_ts, source_file, line_no)
                    SELECT partition_date::DATE, message_id, event_type, event_name, user_id, account_id,
                           partition_date::TIMESTAMPTZ, 'f', 0 FROM fx""")
    conn.unregister("fx")


def history(weekend_factor: float = 0.4, days: int = 35) -> dict[dt.date, dict[str, int]]:
    """Five weeks of a steady product whose weekends are quiet (every event alike)."""
    out = {}
    for k in range(days, 0, -1):
        d = DAY - dt.timedelta(days=k)
        f = weekend_factor if d.weekday() >= 5 else 1.0
        out[d] = {name: max(int(n * f), 1) if n > 1 else (1 if k % 3 == 0 else 0) for name, n in MIX.items()}
    return out


def verdicts(rows: list[dict]) -> dict[str, str]:
    return {r["item"]: r["verdict"] for r in rows}


def test_a_quiet_weekend_is_not_drift(conn):
    days = history()
    days[DAY] = {name: int(n * 0.4) for name, n in MIX.items()}     # Sunday, same mix
    fill(conn, days)
    got = verdicts(M.stream_drift(conn, DAY))
    # the volume is judged against earlier Sundays, the names by their share of the day
    assert got["(all events)"] == "ok"
    assert {got[n] for n in ("Feature Used", "Project Created", "Report Run")} == {"ok"}
    assert got["Teammate Invited"] == "insufficient_data"        # about 16 expected: below 50, not judged
    assert got["identified_share"] == got["account_mapped_share"] == "ok"


def test_one_event_stopping_is_an_alert_that_names_it(conn):
    days = history()
    days[DAY] = {name: int(n * 0.4) for name, n in MIX.items() if name != "Project Created"}
    fill(conn, days)
    rows = {r["item"]: r for r in M.stream_drift(conn, DAY)}
    assert rows["Project Created"]["verdict"] == "alert"
    assert rows["Project Created"]["value"] == 0 and "tracking stopped" in rows["Project Created"]["note"]
    assert rows["Feature Used"]["verdict"] in ("ok", "warn")    # its share rose a little: not an alert
    assert rows["(all events)"]["verdict"] == "ok"                # 80 % of the usual volume


def test_a_doubled_event_alerts(conn):
    days = history()
    today = {name: int(n * 0.4) for name, n in MIX.items()}
    today["Report Run"] *= 8                                     # double tracking in a release
    days[DAY] = today
    fill(conn, days)
    got = verdicts(M.stream_drift(conn, DAY))
    assert got["Report Run"] == "alert"
    assert got["(all events)"] in ("warn", "alert")


def test_whole_day_outage_and_no_history(conn):
    days = history()
    days[DAY] = {"Feature Used": 10}
    fill(conn, days)
    got = verdicts(M.stream_drift(conn, DAY))
    assert got["(all events)"] == "alert"
    first = M.stream_drift(conn, DAY - dt.timedelta(days=35))
    assert [r["verdict"] for r in first] == ["insufficient_data"]


def test_identified_share_drop_alerts(conn):
    days = history()
    days[DAY] = {name: int(n * 0.4) for name, n in MIX.items()}
    fill(conn, days, anonymous={DAY: 0.25})          # an SDK release stopped calling identify
    got = verdicts(M.stream_drift(conn, DAY))
    assert got["identified_share"] == "alert" and got["account_mapped_share"] == "alert"
    assert got["Project Created"] == "ok"


def test_new_event_names_warn(conn):
    days = history()
    days[DAY] = {**{name: int(n * 0.4) for name, n in MIX.items()}, "Dashboard Shared": 30}
    fill(conn, days)
    rows = {r["item"]: r for r in M.stream_drift(conn, DAY)}
    assert rows["Dashboard Shared"]["verdict"] == "warn" and "new event name" in rows["Dashboard Shared"]["note"]
    assert rows["Order Completed"]["verdict"] == "insufficient_data"   # rare, not new


def test_prediction_drift_psi_and_pql_rate():
    rng = np.random.default_rng(3)
    t = Thresholds(min_rows=1000)
    ref = rng.beta(2, 8, 20_000)
    same = M.prediction_drift_rows(DAY, rng.beta(2, 8, 5_000), ref, 0.05, [0.05, 0.052, 0.049], t, 2.0, "v1")
    assert [r["verdict"] for r in same] == ["ok", "ok"]
    shifted = M.prediction_drift_rows(DAY, rng.beta(5, 5, 5_000), ref, 0.40, [0.05, 0.052, 0.049], t, 2.0, "v1")
    assert [r["verdict"] for r in shifted] == ["alert", "alert"]
    assert shifted[1]["value"] == 0.40 / 0.05
    small = M.prediction_drift_rows(DAY, ref[:10], ref, 0.1, [0.1], t, 2.0, "v1")
    assert [r["verdict"] for r in small] == ["insufficient_data"]


def test_performance_decay_against_the_holdout():
    rng = np.random.default_rng(5)
    y = rng.random(4000) < 0.1
    good = np.where(y, rng.beta(5, 3, 4000), rng.beta(2, 6, 4000))      # separates well
    holdout = {"roc_auc": 0.85, "precision_at_threshold": 0.4}
    ok = M.performance_rows(DAY, DAY - dt.timedelta(days=31), y, good, good >= 0.5, holdout, 0.05, 0.1, 500, 20, "v")
    assert {r["item"]: r["verdict"] for r in ok}["roc_auc"] in ("ok", "warn")
    noise = rng.random(4000)
    bad = M.performance_rows(DAY, DAY - dt.timedelta(days=31), y, noise, noise >= 0.5, holdout, 0.05, 0.1, 500,
                             20, "v")
    got = {r["item"]: r for r in bad}
    assert got["roc_auc"]["verdict"] == "alert" and abs(got["roc_auc"]["value"] - 0.5) < 0.05
    assert got["pql_precision"]["verdict"] == "alert"
    none = M.performance_rows(DAY, None, np.array([]), np.array([]), np.array([], dtype=bool), holdout, 0.05, 0.1,
                              500, 20, "v")
    assert [r["verdict"] for r in none] == ["insufficient_data"]


def test_an_alert_is_an_incident_only_if_it_repeats(conn):
    def day_rows(d: dt.date, level: str) -> list[dict]:
        return [M.row(d, "features", "projects_14d", "training", "psi", 0.3 if level == "alert" else 0.01, None,
                      0.1, 0.25, level, 5000)]

    sequence = {DAY - dt.timedelta(days=3): "ok", DAY - dt.timedelta(days=2): "alert",
                DAY - dt.timedelta(days=1): "ok", DAY: "alert"}
    for d, level in sequence.items():
        write_history(conn, day_rows(d, level), [d], ("features",))
    # alert on the newest day and 2 days before: 2 of the last 3 -> incident
    assert [i["item"] for i in incidents(conn, DAY, 2, 3)] == ["projects_14d"]
    # one alert among the last 3 days (the newest of them) -> not yet
    assert incidents(conn, DAY - dt.timedelta(days=2), 2, 3) == []
    # re-writing a day replaces its rows (idempotent): the newest day now passes -> no incident
    write_history(conn, day_rows(DAY, "ok"), [DAY], ("features",))
    assert incidents(conn, DAY, 2, 3) == []
    assert conn.execute("SELECT count(*) FROM drift_history").fetchall()[0][0] == 4


def test_events_waiting_for_a_sync_are_measured(conn):
    from pql_pipeline.defs.activation import ledger as L
    from pql_pipeline.defs.monitoring.assets import waiting_hours

    now = dt.datetime(2026, 6, 2, 12, tzinfo=dt.timezone.utc)

    def event(mid: str, received: str):
        conn.execute(f"""INSERT INTO validated_events (partition_date, message_id, event_type, event_ts, received_at,
                         source_file, line_no) VALUES (CAST(TIMESTAMPTZ '{received}' AS DATE), '{mid}', 'track',
                         TIMESTAMPTZ '{received}', TIMESTAMPTZ '{received}', 'f', 1)""")

    event("m1", "2026-06-01 02:00:00+00")
    L.ensure_tables(conn)
    assert waiting_hours(conn, "hubspot", now) is None                 # never synced: nothing is late yet
    conn.execute(f"INSERT INTO {L.RUNS} (run_id, destination, finished_at) VALUES "
                 "('r1', 'hubspot', TIMESTAMPTZ '2026-06-01 03:00:00+00')")
    assert waiting_hours(conn, "hubspot", now)["hours_waiting"] == 0.0     # synced after it arrived
    # two events arrive after the sync and no sync follows (a gate holds the outputs): the older one counts
    event("m2", "2026-06-01 06:00:00+00")
    event("m3", "2026-06-02 11:00:00+00")
    late = waiting_hours(conn, "hubspot", now)
    assert late["hours_waiting"] == 30.0 and late["oldest_event_waiting"].startswith("2026-06-01 06:00:00")
    assert waiting_hours(conn, "intercom", now) is None                   # another destination


def test_no_events_at_all_is_insufficient_data(conn):
    assert [r["verdict"] for r in M.stream_drift(conn, DAY)] == ["insufficient_data"]


def test_a_range_judged_from_one_scan_equals_each_day_judged_alone(conn):
    """The drift report judges a range's days from one scan and one pivot of the counts
    (StreamTables); every day's rows must equal what judging the day alone gives, including
    an event name that is new on one day and absent from another day's window."""
    days = history(days=60)
    days[DAY] = {"Feature Used": 10, "Dashboard Shared": 30}              # an outage and a new name
    days[DAY - dt.timedelta(days=50)]["Legacy Export"] = 25              # gone from the later windows
    fill(conn, days, anonymous={DAY - dt.timedelta(days=3): 0.3})
    judged = [DAY - dt.timedelta(days=k) for k in (58, 50, 20, 3, 0)]
    tables = M.StreamTables.of(M.stream_counts(conn, judged[0], judged[-1]))
    for day in judged:
        assert M.stream_drift(conn, day, tables=tables) == M.stream_drift(conn, day)
    items = {r["item"] for r in M.stream_drift(conn, DAY, tables=tables)}
    assert "Dashboard Shared" in items and "Legacy Export" not in items
