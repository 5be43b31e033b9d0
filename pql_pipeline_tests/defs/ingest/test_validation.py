"""Row-level validation, deduplication and identity resolution on hand-built events."""

import datetime as dt
import json

import pytest

from pql_pipeline.defs.ingest.raw import load_partition
from pql_pipeline.defs.ingest.validation import compile_row_rules, validate_partition
from pql_pipeline_tests.conftest import track, write_lines

DAY = "2026-01-02"


def ingest(conn, root, contract, *days, lookback=7):
    out = []
    for d in days:
        load_partition(conn, root, "dt={date}/*.jsonl*", "jsonl", d, contract)
        out.append(validate_partition(conn, contract, d, lookback))
    return out


def quarantine(conn):
    return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT line_no, rule_id, rule_ids, reasons FROM quarantined_events ORDER BY line_no").fetchall()}


BAD_LINES = [
    # (line, expected primary rule)
    ({"type": "track", "event": "Feature Used", "userId": "u1", "timestamp": "2026-01-02T10:00:00Z",
      "properties": {"feature": "x"}}, "messageId.required"),
    ({"messageId": "", "type": "track", "event": "Feature Used", "userId": "u1",
      "timestamp": "2026-01-02T10:00:00Z", "properties": {"feature": "x"}}, "messageId.required"),
    ({"messageId": "b1", "type": "track", "event": "Feature Used", "timestamp": "2026-01-02T10:00:00Z",
      "properties": {"feature": "x"}}, "identity.required"),
    ({"messageId": "b2", "type": "track", "event": "Session Ended", "userId": "u1", "timestamp": "2026-01-02T10:00:00Z",
      "properties": {"session_id": "s", "duration_seconds": "12s"}}, "properties.type"),
    ({"messageId": "b3", "type": "track", "event": "Project Created", "userId": "u1",
      "timestamp": "2026-01-02T10:00:00Z", "properties": {}}, "properties.required"),
    ({"messageId": "b4", "type": "track", "event": "Projet Created", "userId": "u1",
      "timestamp": "2026-01-02T10:00:00Z", "properties": {}}, "event.in_tracking_plan"),
    ({"messageId": "b5", "type": "track", "event": "Feature Used", "userId": "u1", "timestamp": "yesterday",
      "properties": {"feature": "x"}}, "timestamp.parse"),
    ({"messageId": "b6", "type": "track", "event": "Feature Used", "userId": "u1", "timestamp": "2026-13-45T99:00:00Z",
      "properties": {"feature": "x"}}, "timestamp.parse"),
    ({"messageId": "b7", "type": "track", "event": "Feature Used", "userId": "u1", "timestamp": "2031-01-01T00:00:00Z",
      "receivedAt": "2026-01-02T10:00:00Z", "properties": {"feature": "x"}}, "timestamp.not_future"),
    ({"messageId": "b8", "type": "track", "event": "Feature Used", "userId": {"id": 1},
      "timestamp": "2026-01-02T10:00:00Z", "properties": {"feature": "x"}}, "userId.type"),
    ({"messageId": "b9", "type": "track", "event": "Feature Used", "userId": "u1", "timestamp": 1767000000,
      "properties": {"feature": "x"}}, "timestamp.type"),
    ({"messageId": "b10", "type": "track", "event": "Feature Used", "userId": "u1",
      "timestamp": "2026-01-02T10:00:00Z", "properties": "oops"}, "properties.type"),
    ({"messageId": "b11", "type": "bogus", "userId": "u1", "timestamp": "2026-01-02T10:00:00Z"}, "type.allowed"),
    ({"messageId": "b12", "type": "track", "userId": "u1", "timestamp": "2026-01-02T10:00:00Z"},
     "event.required_for_track"),
    ({"messageId": "b13", "type": "group", "userId": "u1", "timestamp": "2026-01-02T10:00:00Z"},
     "group_id.required_for_group"),
    ({"messageId": "b14", "type": "track", "event": "Feature Used", "userId": "u1",
      "timestamp": "2025-09-01T10:00:00Z", "receivedAt": "2026-01-02T10:00:00Z", "properties": {"feature": "x"}},
     "timestamp.not_too_old"),
    ({"messageId": "b15", "type": "track", "event": "Feature Used", "userId": "u1", "timestamp": "infinity",
      "properties": {"feature": "x"}}, "timestamp.parse"),
    ('{"messageId":"b16","type":"track",', "line.json"),
    (b'{"messageId":"b17","type":"track","event":"Feature Used","userId":"u\xff\xfe","timestamp":"2026-01-02T10:00:00Z"}',
     "line.utf8"),
    ("", "line.empty"),
    ("[1, 2]", "line.json_object"),
    ("null", "line.json_object"),
    ('{"messageId":"b18","type":"track","event":"Feature Used","userId":"u1","timestamp":"2026-01-02T10:00:00Z",'
     '"properties":{"feature":"' + "x" * 40000 + '"}}', "line.max_bytes"),
]


def test_every_kind_of_bad_line_is_quarantined_with_its_rule(tmp_path, conn, segment_contract):
    good = track("g1", "Feature Used", "2026-01-02T10:00:00Z", feature="x")
    write_lines(tmp_path / f"dt={DAY}" / "events.jsonl", [good] + [line for line, _ in BAD_LINES])
    (counts,) = ingest(conn, tmp_path, segment_contract, DAY)
    assert counts.raw == len(BAD_LINES) + 1
    assert counts.validated == 1 and counts.duplicates == 0
    assert counts.quarantined == len(BAD_LINES)
    q = quarantine(conn)
    for i, (_, expected) in enumerate(BAD_LINES, start=2):
        rule_id, rule_ids, reasons = q[i]
        assert expected in rule_ids, (i, expected, rule_ids)
        assert len(reasons) == len(rule_ids) and all(reasons), (i, reasons)
    assert q[2][0] == "messageId.required"
    # several problems on one line are all reported
    assert set(q[11][1]) >= {"userId.type"} and set(q[13][1]) >= {"properties.type"}
    # the bad bytes survive as escapes, so the line can be repaired and replayed
    raw = conn.execute("SELECT raw_line FROM quarantined_events WHERE rule_id = 'line.utf8'").fetchall()[0][0]
    assert "\\xff\\xfe" in raw
    reason = conn.execute("SELECT reasons[1] FROM quarantined_events WHERE message_id = 'b2'").fetchall()[0][0]
    assert reason == 'Session Ended: property duration_seconds must be number, got varchar: "12s"'


def test_a_raw_table_of_verbatim_lines_is_converted_in_place(tmp_path, conn, segment_contract):
    """A warehouse an earlier version wrote holds every line's text in raw_events: its lines
    are judged and parsed where they lie, and validating them then gives what loading the
    files gives, with the good lines' text dropped and the bad lines' text kept."""
    from pql_pipeline.defs.ingest.loader import SourceFile, read_jsonl
    from pql_pipeline.defs.ingest.raw import ensure_raw_events
    from pql_pipeline.lib.contracts import load_contract
    from pql_pipeline_tests.conftest import CONTRACTS

    good = [track("g1", "Feature Used", "2026-01-02T10:00:00Z", feature="x"),
            track("g1", "Feature Used", "2026-01-02T11:00:00Z", feature="x")]
    path = write_lines(tmp_path / f"dt={DAY}" / "events.jsonl", good + [line for line, _ in BAD_LINES])
    (counts,) = ingest(conn, tmp_path, segment_contract, DAY)
    tables = ("raw_events", "validated_events", "quarantined_events", "duplicate_events")
    loaded = {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}
    assert conn.execute("SELECT count(*) FROM raw_events WHERE raw_line IS NULL").fetchall() == [(2,)]

    # the same lines as the earlier layout held them
    conn.execute("DROP TABLE raw_events")
    conn.execute("CREATE TABLE raw_events (partition_date DATE, source_file VARCHAR, line_no BIGINT, "
                 "raw_line VARCHAR, line_bytes BIGINT, utf8_valid BOOLEAN)")
    lines = next(read_jsonl(SourceFile(path, f"dt={DAY}/events.jsonl", path.stat().st_size)))  # noqa: F841
    conn.execute(f"INSERT INTO raw_events SELECT DATE '{DAY}', CAST(source_file AS VARCHAR), line_no, raw_line, "
                 f"line_bytes, utf8_valid FROM lines")
    for t in tables[1:]:
        conn.execute(f"DELETE FROM {t}")
    ensure_raw_events(conn, load_contract(CONTRACTS / "raw_events.odcs.yaml"), segment_contract)
    assert validate_partition(conn, segment_contract, DAY) == counts
    assert {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables} == loaded
    assert counts.raw == len(good) + len(BAD_LINES) and counts.duplicates == 1


def test_timestamps_normalised_to_utc(tmp_path, conn, segment_contract):
    write_lines(tmp_path / f"dt={DAY}" / "e.jsonl", [
        track("a", "Feature Used", "2026-01-02T10:00:00+02:00", feature="x"),
        track("b", "Feature Used", "2026-01-01T23:30:00-05:00", feature="x"),
        track("c", "Feature Used", "2026-01-02T08:00:00.123Z", feature="x"),
    ])
    ingest(conn, tmp_path, segment_contract, DAY)
    got = dict(conn.execute("SELECT message_id, event_ts FROM validated_events").fetchall())
    utc = dt.timezone.utc
    assert got["a"] == dt.datetime(2026, 1, 2, 8, 0, tzinfo=utc)
    assert got["b"] == dt.datetime(2026, 1, 2, 4, 30, tzinfo=utc)
    assert got["c"] == dt.datetime(2026, 1, 2, 8, 0, 0, 123000, tzinfo=utc)


def test_duplicates_first_wins_within_and_across_partitions(tmp_path, conn, segment_contract):
    e1 = track("m1", "Feature Used", "2026-01-02T10:00:00Z", feature="first")
    e1_resent = dict(e1, properties={"feature": "second"})  # same messageId, later copy loses
    write_lines(tmp_path / "dt=2026-01-02" / "a.jsonl", [e1, e1_resent])
    write_lines(tmp_path / "dt=2026-01-02" / "b.jsonl", [e1])
    write_lines(tmp_path / "dt=2026-01-03" / "a.jsonl",
                [e1, track("m2", "Feature Used", "2026-01-03T10:00:00Z", feature="y")])
    write_lines(tmp_path / "dt=2026-01-20" / "a.jsonl", [e1])  # beyond the lookback: a new event
    c1, c2, c3 = ingest(conn, tmp_path, segment_contract, "2026-01-02", "2026-01-03", "2026-01-20", lookback=7)
    assert (c1.validated, c1.duplicates) == (1, 2)
    assert (c2.validated, c2.duplicates) == (1, 1)
    assert (c3.validated, c3.duplicates) == (1, 0)
    kept = conn.execute("SELECT properties->>'$.feature' FROM validated_events WHERE partition_date = '2026-01-02'"
                        ).fetchall()
    assert kept == [("first",)]
    pointers = conn.execute("""SELECT partition_date::VARCHAR, source_file, line_no, first_partition_date::VARCHAR,
                                      first_source_file, first_line_no FROM duplicate_events ORDER BY ALL""").fetchall()
    assert pointers == [
        ("2026-01-02", "dt=2026-01-02/a.jsonl", 2, "2026-01-02", "dt=2026-01-02/a.jsonl", 1),
        ("2026-01-02", "dt=2026-01-02/b.jsonl", 1, "2026-01-02", "dt=2026-01-02/a.jsonl", 1),
        ("2026-01-03", "dt=2026-01-03/a.jsonl", 1, "2026-01-02", "dt=2026-01-02/a.jsonl", 1),
    ]


def test_identity_resolution_anonymous_to_user_and_user_to_account(tmp_path, conn, segment_contract):
    write_lines(tmp_path / "dt=2026-01-02" / "a.jsonl", [
        track("s1", "Signed Up", "2026-01-02T09:00:00Z", user=None, anon="anon-1", method="email"),
        {"messageId": "i1", "type": "identify", "userId": "u1", "anonymousId": "anon-1",
         "timestamp": "2026-01-02T09:01:00Z", "traits": {"email": "a@b.c"}},
        {"messageId": "g1", "type": "group", "userId": "u1", "groupId": "acct-1",
         "timestamp": "2026-01-02T09:02:00Z", "traits": {"name": "Acme", "employees": 10}},
        track("p1", "Project Created", "2026-01-02T09:03:00Z", project_id="p"),
        track("x1", "Feature Used", "2026-01-02T09:04:00Z", user=None, anon="anon-never", feature="f"),
    ])
    write_lines(tmp_path / "dt=2026-01-03" / "a.jsonl", [
        track("s2", "Feature Used", "2026-01-03T09:00:00Z", user=None, anon="anon-1", feature="f"),
        {"messageId": "g2", "type": "group", "userId": "u1", "groupId": "acct-2",
         "timestamp": "2026-01-03T10:00:00Z", "traits": {"name": "NewCo"}},
        track("p2", "Project Created", "2026-01-03T11:00:00Z", project_id="q"),
        dict(track("p3", "Project Created", "2026-01-03T11:30:00Z", project_id="r"), context={"groupId": "acct-9"}),
    ])
    ingest(conn, tmp_path, segment_contract, "2026-01-02", "2026-01-03")
    got = {r[0]: r[1:] for r in conn.execute(
        "SELECT message_id, resolved_user_id, account_id FROM validated_events").fetchall()}
    assert got["s1"] == ("u1", "acct-1")   # anonymous before identify in the same partition
    assert got["s2"] == ("u1", "acct-1")   # anonymous, linked in an earlier partition; acct-2 joined later
    assert got["x1"] == (None, None)       # never identified: kept, unresolved
    assert got["p1"] == ("u1", "acct-1")
    assert got["p2"] == ("u1", "acct-2")   # as of the event: the user moved to acct-2 before it
    assert got["p3"] == ("u1", "acct-9")   # an explicit context.groupId wins


def test_rerun_of_a_partition_changes_nothing(tmp_path, conn, segment_contract):
    write_lines(tmp_path / f"dt={DAY}" / "a.jsonl", [
        track("a", "Feature Used", "2026-01-02T10:00:00Z", feature="x"),
        track("a", "Feature Used", "2026-01-02T10:00:00Z", feature="x"),
        "garbage",
        {"messageId": "i", "type": "identify", "userId": "u1", "anonymousId": "z", "timestamp": "2026-01-02T09:00:00Z"},
    ])

    def snapshot():
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("raw_events", "validated_events", "quarantined_events", "duplicate_events",
                          "identity_links", "account_memberships")}

    ingest(conn, tmp_path, segment_contract, DAY)
    first = snapshot()
    ingest(conn, tmp_path, segment_contract, DAY)
    assert snapshot() == first
    assert len(first["raw_events"]) == 4


def test_tracking_plan_is_read_from_the_contract(segment_contract):
    compiled = compile_row_rules(segment_contract)
    rules = compiled.rules
    ids = {r.id for r in rules}
    assert {"messageId.required", "timestamp.parse", "event.in_tracking_plan", "properties.type",
            "identity.required", "type.allowed"} <= ids
    assert "Project Created" in next(r.condition for r in rules if r.id == "event.in_tracking_plan")
    assert compiled.max_bytes == 32768 and "messageId" in compiled.fields
    assert {"project_id", "duration_seconds"} <= set(compiled.plan_properties)


@pytest.mark.parametrize("day", ["2026-01-02"])
def test_empty_partition_is_fine(tmp_path, conn, segment_contract, day):
    (tmp_path / f"dt={day}").mkdir()
    (tmp_path / f"dt={day}" / "empty.jsonl").write_bytes(b"")
    (c,) = ingest(conn, tmp_path, segment_contract, day)
    assert (c.raw, c.validated, c.quarantined, c.duplicates) == (0, 0, 0, 0)


def test_result_does_not_depend_on_the_order_partitions_run_in(tmp_path, conn, segment_contract):
    x = track("x", "Feature Used", "2026-01-02T10:00:00Z", feature="x")
    write_lines(tmp_path / "dt=2026-01-02" / "a.jsonl", [x])
    write_lines(tmp_path / "dt=2026-01-03" / "a.jsonl", [dict(x, receivedAt="2026-01-03T00:10:00.000Z")])
    ingest(conn, tmp_path, segment_contract, "2026-01-03", "2026-01-02")  # newest first
    assert conn.execute("SELECT CAST(partition_date AS VARCHAR) FROM validated_events").fetchall() == [("2026-01-02",)]
    assert conn.execute("SELECT CAST(partition_date AS VARCHAR), first_partition_date::VARCHAR "
                        "FROM duplicate_events").fetchall() == [("2026-01-03", "2026-01-02")]


def test_client_clock_cannot_smuggle_events_past_the_partition_window(tmp_path, conn, segment_contract):
    both_future = {"messageId": "f", "type": "track", "event": "Feature Used", "userId": "u1",
                   "timestamp": "2030-01-01T00:00:00Z", "receivedAt": "2030-01-01T00:00:00Z",
                   "properties": {"feature": "x"}}
    write_lines(tmp_path / f"dt={DAY}" / "a.jsonl", [both_future])
    (c,) = ingest(conn, tmp_path, segment_contract, DAY)
    assert (c.validated, c.quarantined) == (0, 1)
    assert "timestamp.in_partition_window" in quarantine(conn)[1][1]


def test_quotes_in_names_and_odd_but_valid_lines(tmp_path, conn, segment_contract):
    lines = [
        "\t" + json.dumps(track("tab", "Feature Used", "2026-01-02T10:00:00Z", feature="x")),
        dict(track("ctx", "Feature Used", "2026-01-02T10:00:00Z", feature="x"), context={"groupId": {"x": 1}}),
    ]
    path = write_lines(tmp_path / f"dt={DAY}" / "it's.jsonl", lines)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # byte-order mark
    (c,) = ingest(conn, tmp_path, segment_contract, DAY)
    assert (c.raw, c.validated) == (2, 2), quarantine(conn)
    assert conn.execute("SELECT account_id FROM validated_events WHERE message_id = 'ctx'").fetchall() == [(None,)]


def test_property_names_with_quotes_in_the_contract(tmp_path, conn):
    import yaml

    from pql_pipeline.lib.contracts import load_contract
    from pql_pipeline_tests.conftest import CONTRACTS

    doc = yaml.safe_load((CONTRACTS / "segment_events.odcs.yaml").read_text())
    plan = next(o for o in doc["schema"] if o["name"] == "Feature Used")
    plan["properties"].append({"name": "it's \"quoted\"", "logicalType": "integer", "required": True})
    p = tmp_path / "c.odcs.yaml"
    p.write_text(yaml.safe_dump(doc))
    contract = load_contract(p)
    write_lines(tmp_path / f"dt={DAY}" / "a.jsonl", [
        track("ok", "Feature Used", "2026-01-02T10:00:00Z", feature="x", **{"it's \"quoted\"": 3}),
        track("bad", "Feature Used", "2026-01-02T10:00:00Z", feature="x", **{"it's \"quoted\"": "3"}),
    ])
    (c,) = ingest(conn, tmp_path, contract, DAY)
    assert (c.validated, c.quarantined) == (1, 1)
    assert quarantine(conn)[2][0] == "properties.type"


def test_reconciliation_detects_lost_moved_and_double_counted_lines(tmp_path, conn, segment_contract):
    from pql_pipeline.defs.ingest.validation import reconcile_partition

    write_lines(tmp_path / f"dt={DAY}" / "a.jsonl", [
        track(f"m{i}", "Feature Used", "2026-01-02T10:00:00Z", feature="x") for i in range(5)] + ["junk"])
    ingest(conn, tmp_path, segment_contract, DAY)
    assert reconcile_partition(conn, DAY)["ok"]
    conn.execute("DELETE FROM validated_events WHERE message_id = 'm1'")  # a lost line
    r = reconcile_partition(conn, DAY)
    assert not r["ok"] and r["unaccounted_lines"] == 1
    conn.execute("INSERT INTO duplicate_events SELECT partition_date, source_file, line_no, message_id, "
                 "partition_date, source_file, line_no FROM validated_events WHERE message_id = 'm2'")
    r = reconcile_partition(conn, DAY)  # counts balance again, but one line is counted twice
    assert r["raw"] == r["validated"] + r["duplicates"] + r["quarantined"]
    assert not r["ok"] and r["counted_twice"] == 1


FAULTS = [  # (a fault that breaks exactly one reconciliation condition, the figure that names it)
    (["INSERT INTO raw_events SELECT * FROM raw_events WHERE line_no = 1"], "raw_lines_twice"),
    (["DELETE FROM validated_events WHERE message_id = 'm1'"], "unaccounted_lines"),
    (["INSERT INTO validated_events SELECT * REPLACE (line_no + 100 AS line_no) FROM validated_events "
      "WHERE message_id = 'm2'"], "unknown_lines"),
    (["INSERT INTO duplicate_events SELECT partition_date, source_file, line_no, message_id, "
      "partition_date, source_file, line_no FROM validated_events WHERE message_id = 'm3'"], "counted_twice"),
]


def test_each_reconciliation_condition_fails_a_partition_alone(tmp_path, conn, segment_contract):
    """Every condition of the line-by-line reconciliation is needed: each fault below breaks
    only one of them, and that alone fails the day (the counts cannot tell a line counted
    twice from a line lost, which the test above shows)."""
    from pql_pipeline.defs.ingest.validation import reconcile_partition

    write_lines(tmp_path / f"dt={DAY}" / "a.jsonl", [
        track(f"m{i}", "Feature Used", "2026-01-02T10:00:00Z", feature="x") for i in range(5)] + ["junk"])
    ingest(conn, tmp_path, segment_contract, DAY)
    figures = ("raw_lines_twice", "unaccounted_lines", "unknown_lines", "counted_twice")
    assert reconcile_partition(conn, DAY)["ok"]
    for statements, broken in FAULTS:
        conn.execute("BEGIN TRANSACTION")
        for sql in statements:
            conn.execute(sql)
        r = reconcile_partition(conn, DAY)
        conn.execute("ROLLBACK")
        expected = {f: 0 for f in figures}
        expected[broken] = 1
        assert {f: r[f] for f in figures} == expected, broken
        assert r["ok"] is False, broken
    assert reconcile_partition(conn, DAY)["ok"]


def test_a_range_is_reconciled_and_counted_per_partition(tmp_path, conn, segment_contract):
    """The checks reconcile and count a range's partitions in one query each: a fault in one
    day is reported for that day only, and a day without lines counts zeros."""
    from pql_pipeline.defs.ingest.validation import partitions_counts, reconcile_partitions

    days = ["2026-01-02", "2026-01-03", "2026-01-04"]
    for i, day in enumerate(days[:2]):
        write_lines(tmp_path / f"dt={day}" / "a.jsonl", [
            track(f"m{i}{j}", "Feature Used", f"{day}T10:00:00Z", feature="x") for j in range(3 + i)] + ["junk"])
        ingest(conn, tmp_path, segment_contract, day)
    conn.execute("DELETE FROM validated_events WHERE message_id = 'm11'")   # a line of the second day lost
    got = {r["partition"]: r for r in reconcile_partitions(conn, days)}
    assert [got[d]["ok"] for d in days] == [True, False, True]
    assert (got[days[1]]["unaccounted_lines"], got[days[0]]["unaccounted_lines"]) == (1, 0)
    assert [(c.partition, c.raw, c.validated, c.quarantined) for c in partitions_counts(conn, days)] == [
        (days[0], 4, 3, 1), (days[1], 5, 3, 1), (days[2], 0, 0, 0)]


def test_the_dedup_lookback_includes_its_last_day_in_any_run_order(tmp_path, conn, segment_contract):
    """A message validated on Jan 2 makes its copy on Jan 9 (7 days later, the lookback's last
    day) a duplicate, and a copy on Jan 10 new; a message sent on Jan 2, 9 and 16 is kept on
    Jan 2 and 16. The same whether the days run one by one in order, as one range, or newest
    first (rebuilding a day then rebuilds the later days whose duplicates it decides, in a
    chain: Jan 2 decides Jan 9, which decides Jan 16)."""
    from pql_pipeline.defs.ingest.validation import validate_partitions

    sent = {"m": ["2026-01-02", "2026-01-09", "2026-01-10"], "k": ["2026-01-02", "2026-01-09", "2026-01-16"]}
    days = sorted({d for ds in sent.values() for d in ds})
    for i, day in enumerate(days):
        write_lines(tmp_path / f"dt={day}" / "a.jsonl", [
            track(m, "Feature Used", "2026-01-02T10:00:00Z", feature="x") for m in sent if day in sent[m]]
            + [track(f"o{i}", "Feature Used", f"{day}T10:00:00Z", feature="y")])
        load_partition(conn, tmp_path, "dt={date}/*.jsonl*", "jsonl", day, segment_contract)

    def outcome():
        kept = conn.execute("SELECT message_id, CAST(partition_date AS VARCHAR) FROM validated_events "
                            "WHERE message_id IN ('m', 'k') ORDER BY ALL").fetchall()
        dups = conn.execute("SELECT message_id, CAST(partition_date AS VARCHAR), CAST(first_partition_date AS VARCHAR) "
                            "FROM duplicate_events ORDER BY ALL").fetchall()
        for t in ("validated_events", "duplicate_events", "quarantined_events", "identity_links",
                  "account_memberships"):
            conn.execute(f"DELETE FROM {t}")
        return kept, dups

    expected = ([("k", "2026-01-02"), ("k", "2026-01-16"), ("m", "2026-01-02"), ("m", "2026-01-10")],
                [("k", "2026-01-09", "2026-01-02"), ("m", "2026-01-09", "2026-01-02")])
    for day in days:
        validate_partition(conn, segment_contract, day, 7)
    assert outcome() == expected
    validate_partitions(conn, segment_contract, days, 7)
    assert outcome() == expected
    for day in reversed(days):
        validate_partition(conn, segment_contract, day, 7)
    assert outcome() == expected
    # one day less of lookback: the copies on Jan 9 are new, Jan 10's is their duplicate
    validate_partitions(conn, segment_contract, days, 6)
    assert outcome() == ([("k", "2026-01-02"), ("k", "2026-01-09"), ("k", "2026-01-16"), ("m", "2026-01-02"),
                          ("m", "2026-01-09")], [("m", "2026-01-10", "2026-01-09")])


def test_a_day_of_duplicates_only_is_rebuilt_with_the_day_it_repeats(tmp_path, conn, segment_contract):
    """A day whose every line repeats an earlier day (a file delivered again) holds no
    validated event. Rebuilding the earlier day rebuilds it too, and ends; once the earlier
    day's file no longer carries the message, the later copy is the one kept."""
    m = track("m1", "Feature Used", "2026-01-02T10:00:00Z", feature="x")
    write_lines(tmp_path / "dt=2026-01-02" / "a.jsonl", [m, track("o1", "Feature Used", "2026-01-02T11:00:00Z",
                                                                  feature="y")])
    write_lines(tmp_path / "dt=2026-01-04" / "a.jsonl", [m])
    first, again = ingest(conn, tmp_path, segment_contract, "2026-01-02", "2026-01-04")
    assert (again.validated, again.duplicates) == (0, 1)
    rebuilt = validate_partition(conn, segment_contract, "2026-01-02", 7)
    assert (rebuilt.validated, rebuilt.duplicates) == (2, 0)
    kept = "SELECT CAST(partition_date AS VARCHAR) FROM validated_events WHERE message_id = 'm1'"
    assert conn.execute(kept).fetchall() == [("2026-01-02",)]
    write_lines(tmp_path / "dt=2026-01-02" / "a.jsonl", [track("o1", "Feature Used", "2026-01-02T11:00:00Z",
                                                               feature="y")])
    load_partition(conn, tmp_path, "dt={date}/*.jsonl*", "jsonl", "2026-01-02", segment_contract)
    validate_partition(conn, segment_contract, "2026-01-02", 7)
    assert conn.execute(kept).fetchall() == [("2026-01-04",)]
    assert conn.execute("SELECT count(*) FROM duplicate_events").fetchall() == [(0,)]


def test_a_group_of_days_validated_at_once_equals_the_days_one_by_one(tmp_path, conn, segment_contract):
    """A range is deduplicated and resolved in set-based steps over a group of days; every
    table must be what validating the days one at a time, in order, gives: a message resent
    over the days (kept again only once the copy kept last is out of the lookback), an
    anonymous visitor linked a day later, a user moving accounts and a late group call that
    moves a join time earlier."""
    from pql_pipeline.defs.ingest.validation import validate_partitions

    days = [f"2026-01-{d:02d}" for d in (2, 3, 7, 12, 14, 15)]
    m = track("m", "Feature Used", "2026-01-02T10:00:00Z", feature="x")
    at = {d: f"{d}T10:00:00Z" for d in days}
    group = lambda mid, acct, ts: {"messageId": mid, "type": "group", "userId": "u1", "groupId": acct,  # noqa: E731
                                   "timestamp": ts, "traits": {"name": acct}}
    files = {
        days[0]: [m, m, track("a0", "Feature Used", at[days[0]], user=None, anon="anon-1", feature="f"),
                  group("g0", "acct-1", "2026-01-02T12:00:00Z")],
        days[1]: [dict(m, receivedAt="2026-01-03T00:10:00.000Z"),
                  track("a1", "Feature Used", at[days[1]], user=None, anon="anon-1", feature="f"),
                  {"messageId": "i1", "type": "identify", "userId": "u1", "anonymousId": "anon-1",
                   "timestamp": at[days[1]]}],
        days[2]: [track("p2", "Project Created", at[days[2]], project_id="p"), group("g2", "acct-2", at[days[2]]),
                  track("a2", "Feature Used", at[days[2]], user=None, anon="anon-1", feature="f")],
        days[3]: [dict(m, receivedAt="2026-01-12T00:10:00.000Z"), track("p3", "Project Created", at[days[3]],
                                                                       project_id="q")],
        days[4]: [dict(m, receivedAt="2026-01-14T00:10:00.000Z"), group("g4", "acct-1", "2026-01-14T09:00:00Z"),
                  track("p4", "Project Created", "2026-01-14T08:00:00Z", project_id="r"),
                  track("late4", "Project Created", "2026-01-01T09:00:00Z", project_id="t")],
        # a late group call: as of this day, u1 joined acct-2 on Jan 1 (not Jan 7)
        days[5]: [group("g5", "acct-2", "2026-01-01T08:00:00Z"), track("p5", "Project Created", at[days[5]],
                                                                      project_id="s"),
                  track("late5", "Project Created", "2026-01-01T09:00:00Z", project_id="t")],
    }
    for day, lines in files.items():
        write_lines(tmp_path / f"dt={day}" / "a.jsonl", lines)
        load_partition(conn, tmp_path, "dt={date}/*.jsonl*", "jsonl", day, segment_contract)
    tables = ("validated_events", "duplicate_events", "quarantined_events", "identity_links", "account_memberships")

    def snapshot():
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}

    for day in days:
        validate_partition(conn, segment_contract, day, 7)
    one_by_one = snapshot()
    for t in tables:
        conn.execute(f"DELETE FROM {t}")
    counts = validate_partitions(conn, segment_contract, days, 7)
    assert snapshot() == one_by_one
    assert [(c.validated, c.duplicates) for c in counts][0] == (3, 1)
    kept = conn.execute("SELECT CAST(partition_date AS VARCHAR) FROM validated_events WHERE message_id = 'm' "
                        "ORDER BY 1").fetchall()
    assert kept == [(days[0],), (days[3],)]     # the 3rd and 5th copies point at the 1st and 4th
    got = {r[0]: r[1:] for r in conn.execute(
        "SELECT message_id, resolved_user_id, account_id FROM validated_events").fetchall()}
    assert got["a0"] == (None, None) and got["a1"][0] == "u1" and got["a2"] == ("u1", "acct-2")
    assert got["p4"] == ("u1", "acct-2")            # acct-2 joined last before it
    assert got["p5"] == ("u1", "acct-1")            # the late call puts acct-2's join before acct-1's
    # before any join: the first account joined as of the day (acct-1), then acct-2 once it moved
    assert (got["late4"], got["late5"]) == (("u1", "acct-1"), ("u1", "acct-2"))
