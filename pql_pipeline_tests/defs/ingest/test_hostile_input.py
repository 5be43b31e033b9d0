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

    raw, val, dup, qua = p.query("""SELECT (SELECT count(*) FROM raw_events), (SELECT count(*) FROM validated_events),
        (SELECT count(*) FROM duplicate_events), (SELECT count(*) FROM quarantined_events)""")[0]
    assert raw == expected_lines
    assert raw == val + dup + qua
    assert val == 20 and dup == 2
    assert p.query("SELECT count(*) FROM quarantined_events WHERE rule_id IS NULL OR len(reasons) = 0 "
                   "OR reasons[1] IS NULL")[0][0] == 0
    assert p.query("SELECT rule_id FROM quarantined_events WHERE raw_line LIKE '%\"huge\"%'") == [("line.max_bytes",)]
    meta = checks["validated_events:quarantine_rate"].metadata
    assert meta["sample_bad_rows"].value and meta["max_quarantine_rate"].value > 0.05


@pytest.mark.slow
def test_a_truncated_gzip_file_does_not_sink_its_day(tmp_path, monkeypatch):
    """The good file beside it is loaded, the truncated one up to the fault; its unreadable
    rest is one quarantined row naming the file, the byte and the reason; the day
    reconciles, and the quarantine gate warns (the default policy) without blocking."""
    import gzip
    import json

    ev = tmp_path / "events"
    d = ev / f"dt={DAY}"
    d.mkdir(parents=True)
    ts = "2026-01-02T10:00:00Z"
    good = [json.dumps(track(f"g{i}", "Feature Used", ts, feature="x")) for i in range(30)]
    (d / "a-good.jsonl.gz").write_bytes(gzip.compress(("\n".join(good) + "\n").encode()))
    many = [json.dumps(track(f"t{i}", "Feature Used", ts, user=f"u{i}", feature="y" * 300)) for i in range(3000)]
    whole = gzip.compress(("\n".join(many) + "\n").encode(), compresslevel=1)
    (d / "b-truncated.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])

    p = make_pipeline(monkeypatch, ev, tmp_path / "wh.duckdb")
    result = p.run(DAY)
    checks = p.checks(result)
    assert result.success and checks["validated_events:reconciliation"].passed
    gate = checks["validated_events:quarantine_rate"]
    assert not gate.passed and gate.severity.value == "WARN"
    [unreadable] = gate.metadata["unreadable_files"].value
    assert unreadable["file"] == f"dt={DAY}/b-truncated.jsonl.gz"
    assert "unreadable from byte" in unreadable["reason"] and "end-of-stream marker" in unreadable["reason"]
    assert "users" in materialized(result)
    raw, val, qua = p.query("SELECT (SELECT count(*) FROM raw_events), (SELECT count(*) FROM validated_events), "
                            "(SELECT count(*) FROM quarantined_events)")[0]
    loaded = p.query("SELECT count(*) FROM validated_events WHERE message_id LIKE 't%'")[0][0]
    assert raw == val + qua and qua == 1 and val == 30 + loaded and 1000 < loaded < 3000
    [(rule, reason)] = p.query("SELECT rule_id, reasons[1] FROM quarantined_events")
    assert rule == "file.unreadable" and f"{loaded:,} whole line(s) before that point were loaded" in reason

    # policy error: the same day blocks what follows
    monkeypatch.setenv("PQL_CONFIG", str(_config(tmp_path, "checks:\n  quarantine_rate:\n    unreadable_file: error\n")))
    strict = make_pipeline(monkeypatch, ev, tmp_path / "wh.duckdb")
    blocked = strict.run(DAY)
    gate = strict.checks(blocked)["validated_events:quarantine_rate"]
    assert not gate.passed and gate.severity.value == "ERROR" and "users" not in materialized(blocked)


def _config(tmp_path, text: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path
