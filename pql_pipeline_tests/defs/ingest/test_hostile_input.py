"""Hostile input through a real Dagster materialization: nothing crashes, nothing is lost."""

import random

import pytest

from pql_pipeline_tests.conftest import track, write_lines
from pql_pipeline_tests.defs.ingest.test_validation import BAD_LINES
from pql_pipeline_tests.pipeline import make_pipeline, materialized

DAY = "2026-01-02"


@pytest.mark.slow
def test_hostile_partition(tmp_path, monkeypatch):
    ev = tmp_path / "events"
    d = ev / f"dt={DAY}"
    good = [track(f"ok{i}", "Feature Used", "2026-01-02T10:00:00Z", feature="x") for i in range(20)]
    huge = track("huge", "Feature Used", "2026-01-02T10:00:00Z", feature="x" * (1024 * 1024))
    write_lines(d / "a-dirty.jsonl", good + [good[0], good[1]] + [line for line, _ in BAD_LINES] + [huge])
    (d / "b-empty.jsonl").write_bytes(b"")
    rnd = random.Random(7)
    (d / "c-garbage.jsonl").write_bytes(bytes(rnd.randrange(256) for _ in range(20000)))
    write_lines(d / "d-tail.jsonl", ['{"messageId": "t1", "type": "track"'])  # truncated last line
    def physical_lines(data: bytes) -> int:
        return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)

    expected_lines = sum(physical_lines(f.read_bytes()) for f in d.iterdir())

    p = make_pipeline(monkeypatch, ev, tmp_path / "wh.duckdb")
    result = p.run(DAY)
    # the quarantine gate fails (as it must at this dirt level) and blocks the dimensions;
    # every step before it ran to completion
    checks = p.checks(result)
    assert not checks["validated_events:quarantine_rate"].passed
    assert checks["validated_events:quarantine_rate"].severity.value == "ERROR"
    assert checks["validated_events:reconciliation"].passed
    assert checks["validated_events:validated_events_contract"].passed
    assert {"raw_events", "validated_events", "quarantined_events", "duplicate_events"} <= materialized(result)
    assert "users" not in materialized(result)

    raw, val, dup, qua = p.query(f"""SELECT (SELECT count(*) FROM raw_events), (SELECT count(*) FROM validated_events),
        (SELECT count(*) FROM duplicate_events), (SELECT count(*) FROM quarantined_events)""")[0]
    assert raw == expected_lines
    assert raw == val + dup + qua
    assert val == 20 and dup == 2
    assert p.query("SELECT count(*) FROM quarantined_events WHERE rule_id IS NULL OR len(reasons) = 0 "
                   "OR reasons[1] IS NULL")[0][0] == 0
    assert p.query("SELECT rule_id FROM quarantined_events WHERE raw_line LIKE '%\"huge\"%'") == [("line.max_bytes",)]
    meta = checks["validated_events:quarantine_rate"].metadata
    assert meta["sample_bad_rows"].value and meta["max_quarantine_rate"].value > 0.05
