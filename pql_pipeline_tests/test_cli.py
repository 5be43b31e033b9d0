"""`pql demo` and `pql materialize` end to end (what `make run` does), on a tiny demo."""

import pytest
from click.testing import CliRunner

from pql_pipeline.cli import main
from pql_pipeline.lib.warehouse import Warehouse

TABLES = ("raw_events", "validated_events", "quarantined_events", "duplicate_events", "users", "accounts")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PQL_EVENTS_DIR", str(tmp_path / "events"))
    monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "wh" / "pql.duckdb"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _tables(path):
    with Warehouse(database=str(path)).get_connection() as c:
        return {t: c.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


@pytest.mark.slow
def test_demo_runs_and_reruns_idempotently(env):
    runner = CliRunner()
    first = runner.invoke(main, ["demo", "--accounts", "12", "--days", "10", "--no-progress"])
    assert first.exit_code == 0, first.output
    assert "rows ingested" in first.output and "reconciles      yes" in first.output
    assert "result          success" in first.output
    assert "validated_events.reconciliation" in first.output
    before = _tables(env / "wh" / "pql.duckdb")
    assert before["validated_events"] and before["users"]

    again = runner.invoke(main, ["demo", "--accounts", "12", "--days", "10", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "already in" in again.output
    assert _tables(env / "wh" / "pql.duckdb") == before
    # the runs were recorded in the Dagster instance the UI reads
    assert any((env / "dagster_home").rglob("*.db"))


@pytest.mark.slow
def test_materialize_without_events_says_what_to_do(env):
    result = CliRunner().invoke(main, ["materialize"])
    assert result.exit_code == 1
    assert "no event files match" in result.output and "pql generate" in result.output


def test_demo_refuses_to_overwrite_foreign_events(env):
    d = env / "events" / "dt=2026-01-01"
    d.mkdir(parents=True)
    (d / "mine.jsonl").write_text("{}\n")
    result = CliRunner().invoke(main, ["demo", "--accounts", "3", "--days", "2", "--no-progress"])
    assert result.exit_code == 1
    assert "refusing to overwrite" in result.output
    assert (d / "mine.jsonl").read_text() == "{}\n"
