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


BACKFILLED = TABLES + ("user_features", "account_features", "conversion_labels", "training_set",
                       "account_training_set")


@pytest.mark.slow
def test_a_range_backfill_equals_one_run_per_day(tmp_path, monkeypatch):
    """`pql backfill` through Dagster's execution: the whole partitioned graph (events to
    training sets) over a range in one run gives exactly the tables of one run per day."""
    import datetime as dt

    from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events

    generate_events(GeneratorConfig(n_accounts=15, days=8, start_date=dt.date(2026, 3, 2), seed=9,
                                    dirty_fraction=0.02), tmp_path / "events")
    monkeypatch.setenv("PQL_EVENTS_DIR", str(tmp_path / "events"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.chdir(tmp_path)
    tables = {}
    for mode, extra in (("range", []), ("daily", ["--per-partition"])):
        monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / mode / "pql.duckdb"))
        result = CliRunner().invoke(main, ["backfill", "--start", "2026-03-02", "--end", "2026-03-09",
                                           "--job", "pql_pipeline", *extra])
        assert result.exit_code == 0, result.output
        runs = 1 if mode == "range" else 8
        assert f"pql_pipeline 2026-03-02 .. 2026-03-09: 8 partitions in {runs} run(s)" in result.output
        with Warehouse(database=str(tmp_path / mode / "pql.duckdb")).get_connection() as c:
            tables[mode] = {t: c.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in BACKFILLED}
    assert all(tables["range"][t] for t in ("validated_events", "user_features", "conversion_labels"))
    for t in BACKFILLED:
        assert tables["range"][t] == tables["daily"][t], t
    assert "[8/8] 2026-03-09: ok" in result.output


def test_backfill_input_errors_say_what_to_do(env):
    runner = CliRunner()
    swapped = runner.invoke(main, ["backfill", "--start", "2026-03-09", "--end", "2026-03-02"])
    assert swapped.exit_code != 0 and "--end 2026-03-02 is before --start 2026-03-09; swap them" in swapped.output
    unpartitioned = runner.invoke(main, ["backfill", "--start", "2026-03-02", "--end", "2026-03-09",
                                         "--job", "train_model"])
    assert "train_model is not partitioned" in unpartitioned.output
    unknown = runner.invoke(main, ["backfill", "--start", "2026-03-02", "--end", "2026-03-09", "--job", "nope"])
    assert "there is no job 'nope'" in unknown.output
    before = runner.invoke(main, ["backfill", "--start", "2020-01-01", "--end", "2020-01-31"])
    assert "no partition between 2020-01-01 and 2020-01-31: partitions run from 2025-01-01" in before.output
    bad = runner.invoke(main, ["backfill", "--start", "March 2", "--end", "2026-03-02"])
    assert bad.exit_code == 2 and "is not a date; write it as YYYY-MM-DD" in bad.output
