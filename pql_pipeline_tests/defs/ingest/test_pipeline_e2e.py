"""The ingest graph materialized in-process on generated data, into a temporary DuckDB file."""

import csv
import datetime as dt

import pytest

from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events
from pql_pipeline_tests.pipeline import make_pipeline, materialized

# what each generated dirty kind must become
EXPECTED_RULES = {
    "missing_message_id": {"messageId.required"},
    "missing_identity": {"identity.required"},
    "wrong_type": {"properties.type", "userId.type", "timestamp.type"},
    "unparsable_timestamp": {"timestamp.parse"},
    "future_timestamp": {"timestamp.not_future"},
    "unknown_event": {"event.in_tracking_plan"},
    "malformed_json": {"line.json"},
    "oversized": {"line.max_bytes"},
    "non_utf8": {"line.utf8"},
}

TABLES = ("raw_events", "validated_events", "quarantined_events", "duplicate_events", "identity_links",
          "account_memberships", "users", "users_history", "accounts", "accounts_history")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("events")
    report = generate_events(GeneratorConfig(n_accounts=40, days=21, start_date=dt.date(2026, 3, 2), seed=11,
                                             dirty_fraction=0.01), out)
    return out, report


def snapshot(p):
    return {t: p.query(f"SELECT * FROM {t} ORDER BY ALL") for t in TABLES}


@pytest.mark.slow
def test_generated_events_through_the_graph(generated, tmp_path, monkeypatch):
    events, report = generated
    p = make_pipeline(monkeypatch, events, tmp_path / "wh.duckdb")
    parts = report.partitions
    result = p.run(parts[0], parts[-1])
    assert result.success
    assert materialized(result) == {"raw_events", "validated_events", "quarantined_events", "duplicate_events",
                                    "users", "accounts"}
    checks = p.checks(result)
    for name in ("raw_events:raw_events_contract", "validated_events:validated_events_contract",
                 "validated_events:reconciliation", "quarantined_events:quarantined_events_contract",
                 "duplicate_events:duplicate_events_contract", "users:users_contract", "users:users_history_contract",
                 "accounts:accounts_contract", "accounts:accounts_history_contract"):
        assert checks[name].passed, (name, checks[name].metadata)
    # the checks evaluated every partition of the range run, not just one
    assert checks["validated_events:reconciliation"].metadata["raw_rows"].value == report.lines_written
    assert f"({len(parts)} partitions)" in checks["validated_events:validated_events_contract"].metadata["results"].value
    # dirt at 1 %: under the 5 % gate, so at most a warning
    q = checks["validated_events:quarantine_rate"]
    assert q.passed or q.severity.value == "WARN"

    # counts reconcile with what the generator wrote
    (raw, val, dup, qua), = p.query("""SELECT (SELECT count(*) FROM raw_events), (SELECT count(*) FROM validated_events),
        (SELECT count(*) FROM duplicate_events), (SELECT count(*) FROM quarantined_events)""")
    assert raw == report.lines_written
    assert val == report.clean_events
    assert dup == report.dirty_lines["duplicate"]
    assert qua == sum(n for k, n in report.dirty_lines.items() if k != "duplicate")

    # every dirty line is where it should be, with the right rule
    quarantined = {(f, n): set(ids) for f, n, ids in p.query(
        "SELECT source_file, line_no, rule_ids FROM quarantined_events")}
    duplicates = {(f, n): m for f, n, m in p.query("SELECT source_file, line_no, message_id FROM duplicate_events")}
    with open(events / "_ground_truth" / "dirty_lines.csv") as fh:
        dirty = list(csv.DictReader(fh))
    assert len(dirty) == qua + dup
    for row in dirty:
        key = (row["file"], int(row["line_no"]))
        if row["kind"] == "duplicate":
            assert duplicates[key] == row["original_message_id"], row
        else:
            assert quarantined[key] & EXPECTED_RULES[row["kind"]], (row, quarantined[key])

    # dimensions match the ground truth
    with open(events / "_ground_truth" / "users.csv") as fh:
        users = {r["user_id"]: r for r in csv.DictReader(fh)}
    with open(events / "_ground_truth" / "accounts.csv") as fh:
        accounts = {r["account_id"]: r for r in csv.DictReader(fh)}
    got_users = dict(p.query("SELECT user_id, account_id FROM users"))
    assert got_users == {u: r["account_id"] for u, r in users.items()}
    got_accounts = dict(p.query("SELECT account_id, size_segment FROM accounts"))
    assert got_accounts == {a: r["size_segment"] for a, r in accounts.items()}
    # anonymous sign-ups were resolved to the user who identified afterwards
    unresolved = p.query("SELECT count(*) FROM validated_events WHERE resolved_user_id IS NULL")[0][0]
    assert unresolved == 0
    anon = dict(p.query("SELECT anonymous_id, resolved_user_id FROM validated_events "
                        "WHERE event_name = 'Signed Up' AND user_id IS NULL"))
    assert anon and all(users[u]["anonymous_id"] == a for a, u in anon.items())

    # re-running one partition changes nothing, anywhere
    before = snapshot(p)
    mid = parts[len(parts) // 2]
    again = p.run(mid)
    assert again.success
    mid_rows = p.query(f"SELECT count(*) FROM raw_events WHERE partition_date = DATE '{mid}'")[0][0]
    assert p.checks(again)["validated_events:reconciliation"].metadata["raw_rows"].value == mid_rows
    assert p.checks(again)["validated_events:reconciliation"].partition == mid  # per-partition status in the UI
    assert snapshot(p) == before
    # the days after it whose deduplication looked back at it were validated again, and the run says so
    later = [d for d in parts if mid < d <= (dt.date.fromisoformat(mid) + dt.timedelta(days=7)).isoformat()]
    logs = [e.user_message for e in p.instance.all_logs(again.run_id)]
    assert f"{len(later)} later day(s) validated again, {later[0]} .. {later[-1]}: their deduplication looks " \
           "back at this run's days" in logs


@pytest.mark.slow
def test_range_backfill_equals_day_by_day(generated, tmp_path, monkeypatch):
    events, report = generated
    parts = report.partitions[:6]
    one = make_pipeline(monkeypatch, events, tmp_path / "range.duckdb")
    assert one.run(parts[0], parts[-1]).success
    daily = make_pipeline(monkeypatch, events, tmp_path / "daily.duckdb")
    for day in parts:
        assert daily.run(day).success
    assert one.settings.warehouse_path != daily.settings.warehouse_path
    assert snapshot(one) == snapshot(daily)
    assert len(snapshot(one)["raw_events"]) == sum(
        1 for d in parts for f in (events / f"dt={d}").iterdir() for _ in open(f, "rb"))

