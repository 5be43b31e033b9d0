"""`pql demo` and `pql materialize` end to end (what `make run` does), on a tiny demo."""

import re

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
    # what the run cost, measured: wall and CPU seconds of the 3 runs
    took = re.search(r"time +(\d+\.\d) s wall, (\d+\.\d) CPU-s \(3 run\(s\)\)", first.output)
    assert took and float(took.group(1)) > 0 and float(took.group(2)) > 0
    before = _tables(env / "wh" / "pql.duckdb")
    assert before["validated_events"] and before["users"]

    again = runner.invoke(main, ["demo", "--accounts", "12", "--days", "10", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "already in" in again.output
    # nothing changed: nothing recomputed (the model job runs and skips its training)
    assert "pql_pipeline: skipped: nothing changed" in again.output
    assert "score_leads: skipped: nothing changed" in again.output and "(1 run(s))" in again.output
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
    assert "there is no job 'nope'; pass --job with one of: build_features, daily_pql," in unknown.output
    before = runner.invoke(main, ["backfill", "--start", "2020-01-01", "--end", "2020-01-31"])
    assert "no partition between 2020-01-01 and 2020-01-31: partitions run from 2025-01-01" in before.output
    bad = runner.invoke(main, ["backfill", "--start", "March 2", "--end", "2026-03-02"])
    assert bad.exit_code == 2 and "is not a date; write it as YYYY-MM-DD" in bad.output


def _in_a_terminal(args: list[str], env: dict, cwd, timeout: float = 600) -> str:
    """Runs the real ``pql`` command with a pseudo-terminal as stdout and stderr (as a person
    at a shell would), returning everything it printed."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import time
    from pathlib import Path

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))   # 40 rows, 160 columns
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pql"), *args], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=env, cwd=cwd, close_fds=True)
    os.close(follower)
    out, deadline = b"", time.monotonic() + timeout
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:          # the terminal closed: the command ended
            break
        if not chunk:
            break
        out += chunk
        assert time.monotonic() < deadline, out.decode(errors="replace")[-2000:]
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


@pytest.mark.slow
def test_long_commands_show_progress_bars_in_a_terminal(tmp_path):
    """`pql generate` shows a bar over days and `pql backfill` one over each run's steps,
    naming the step at work; with --no-progress (or output to a file) neither prints a bar."""
    import os
    import re

    env = {**os.environ, "PQL_EVENTS_DIR": str(tmp_path / "events"), "PQL_WAREHOUSE": str(tmp_path / "wh.duckdb"),
           "DAGSTER_HOME": str(tmp_path / "home")}
    generated = _in_a_terminal(["generate", "--out", str(tmp_path / "events"), "--accounts", "5", "--days", "3",
                                "--start-date", "2026-03-02"], env, tmp_path)
    assert re.search(r"generating events: +100%\|.*\| 3/3", generated), generated[-1000:]
    ran = _in_a_terminal(["backfill", "--start", "2026-03-02", "--end", "2026-03-04", "--job", "ingest_events"],
                         env, tmp_path)
    bars = re.findall(r"ingest_events: +\d+%\|[^|]*\| (\d+)/(\d+) \[([^\]]*)\]", ran)
    assert bars, ran[-2000:]
    steps = int(bars[0][1])
    assert steps >= 4 and any(int(done) > 0 for done, _, _ in bars)
    assert any("validate_events" in tail or "raw_events" in tail for _, _, tail in bars), bars
    assert "ingest_events 2026-03-02 .. 2026-03-04: 3 partitions in 1 run(s)" in ran
    quiet = _in_a_terminal(["backfill", "--start", "2026-03-02", "--end", "2026-03-04", "--job", "ingest_events",
                            "--no-progress"], env, tmp_path)
    assert not re.search(r"ingest_events: +\d+%\|", quiet)


def test_a_configuration_error_stops_the_cli_before_any_write(env, monkeypatch):
    import datetime as dt

    from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events

    generate_events(GeneratorConfig(n_accounts=2, days=2, start_date=dt.date(2026, 3, 1), seed=1), env / "events")
    cfg = env / "pipeline.yaml"
    cfg.write_text("warehouse:\n  memory_limit: lots\nvalidation:\n  contract: data_contracts/gone.odcs.yaml\n")
    monkeypatch.setenv("PQL_CONFIG", str(cfg))
    result = CliRunner().invoke(main, ["materialize", "--no-progress"])
    assert result.exit_code == 1
    assert f"{cfg} line 2 (warehouse.memory_limit): 'lots' is not a memory size" in result.output
    assert "Traceback" not in result.output
    assert not (env / "wh" / "pql.duckdb").exists()          # nothing was written
    cfg.write_text("validation:\n  contract: data_contracts/gone.odcs.yaml\n")
    result = CliRunner().invoke(main, ["materialize", "--no-progress"])
    assert result.exit_code == 1 and f"{cfg} line 2 (validation.contract): file " in result.output
    assert "gone.odcs.yaml does not exist" in result.output and not (env / "wh" / "pql.duckdb").exists()
