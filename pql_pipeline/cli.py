"""Command line interface: ``pql <command>``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click


@click.group()
def main() -> None:
    """Find Product Qualified Leads in product-usage events."""


def _positive_int(what: str, example: str):
    def check(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value < 1:
            raise click.BadParameter(f"{what} must be at least 1, got {value}; pass e.g. {example}.")
        return value

    return check


def _start_date(ctx: click.Context, param: click.Parameter, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date; write it as YYYY-MM-DD, e.g. --start-date 2026-01-01."
        ) from None


def _optional_date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date; write it as YYYY-MM-DD.") from None


def _seed(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 0:
        raise click.BadParameter(f"the seed must be a non-negative integer, got {value}; pass e.g. --seed 42.")
    return value


def _dirty_fraction(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (0.0 <= value <= 0.5):
        raise click.BadParameter(
            f"{value} is outside [0, 0.5]; pass a fraction of lines such as 0.01 (1 %), or 0 for a clean export."
        )
    return value


def _users_scale(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (value > 0) or value == float("inf"):
        raise click.BadParameter(
            f"{value} is not a positive number; pass e.g. --users-scale 1.0 (2.0 doubles the users per account)."
        )
    return value


@main.command()
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/events"),
              show_default=True, help="Folder for dt=YYYY-MM-DD/ partitions and _ground_truth/.")
@click.option("--accounts", type=int, default=200, show_default=True,
              callback=_positive_int("--accounts", "--accounts 200"), help="Number of accounts (companies).")
@click.option("--days", type=int, default=60, show_default=True,
              callback=_positive_int("--days", "--days 60"), help="Number of daily partitions.")
@click.option("--start-date", type=str, default="2026-01-01", show_default=True, callback=_start_date,
              help="First partition day (UTC), YYYY-MM-DD.")
@click.option("--seed", type=int, default=42, show_default=True, callback=_seed,
              help="Random seed; the same options always give byte-identical files.")
@click.option("--dirty-fraction", type=float, default=0.01, show_default=True, callback=_dirty_fraction,
              help="Share of lines that are duplicates or broken, in [0, 0.5].")
@click.option("--users-scale", type=float, default=1.0, show_default=True, callback=_users_scale,
              help="Multiplies the users per account (for big benchmarks).")
@click.option("--files-per-day", type=int, default=1, show_default=True,
              callback=_positive_int("--files-per-day", "--files-per-day 1"),
              help="Split each day's lines round-robin into this many files.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr.")
def generate(out: Path, accounts: int, days: int, start_date: dt.date, seed: int, dirty_fraction: float,
             users_scale: float, files_per_day: int, progress: bool) -> None:
    """Write a realistic, seeded demo export of Segment events (with ground truth)."""
    from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events

    config = GeneratorConfig(
        n_accounts=accounts,
        days=days,
        start_date=start_date,
        seed=seed,
        dirty_fraction=dirty_fraction,
        users_per_account_scale=users_scale,
        files_per_day=files_per_day,
    )
    try:
        report = generate_events(config, out, progress=progress)
    except (FileExistsError, NotADirectoryError) as exc:
        raise click.ClickException(str(exc)) from None
    dirty = sum(report.dirty_lines.values())
    parts = report.partitions
    span = f" ({parts[0]} .. {parts[-1]})" if parts else ""
    click.echo(f"Wrote {len(parts)} partitions{span} to {report.out_dir}")
    share = dirty / report.lines_written if report.lines_written else 0.0
    click.echo(f"lines: {report.lines_written:,}  clean events: {report.clean_events:,}  "
               f"dirty: {dirty:,} ({share:.2%})")
    click.echo("  " + ", ".join(f"{k} {v:,}" for k, v in report.dirty_lines.items()))
    click.echo(f"accounts: {report.n_accounts:,}  users: {report.n_users:,}  "
               f"converted users: {report.n_converted_users:,} ({report.conversion_rate:.1%})")
    rate = report.lines_written / report.seconds if report.seconds > 0 else 0.0
    click.echo(f"ground truth: {report.out_dir / '_ground_truth'}")
    click.echo(f"took {report.seconds:.1f} s ({rate:,.0f} lines/s)")


def _instance():
    """The Dagster instance in DAGSTER_HOME (default: ./.dagster_home), so runs show up in `make ui`."""
    import os
    import shutil

    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    project_yaml = Path.cwd() / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and project_yaml.exists():
        shutil.copy(project_yaml, home / "dagster.yaml")
    return dg.DagsterInstance.get()


def _interrupted(exc: Exception):
    """Ctrl-C or SIGTERM stopped a run: say what happened, exit like an interrupted program."""
    click.echo(f"pql: {exc}", err=True)
    raise SystemExit(130)


def _settings():
    from pql_pipeline.settings import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--accounts", type=int, default=400, show_default=True,
              callback=_positive_int("--accounts", "--accounts 300"), help="Demo size: number of accounts.")
@click.option("--days", type=int, default=110, show_default=True,
              callback=_positive_int("--days", "--days 90"), help="Demo length in days (ending yesterday).")
@click.option("--seed", type=int, default=42, show_default=True, callback=_seed)
@click.option("--dirty-fraction", type=float, default=0.01, show_default=True, callback=_dirty_fraction)
@click.option("--regenerate", is_flag=True, help="Write new demo events even if the same demo is already there.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--full", is_flag=True,
              help="Recompute every day and asset, even those whose files and definitions did not change.")
def demo(accounts: int, days: int, seed: int, dirty_fraction: float, regenerate: bool, progress: bool,
         full: bool) -> None:
    """Generate demo events (once), materialize every asset, print a summary."""
    from pql_pipeline.demo import run_demo
    from pql_pipeline.runner import PipelineInterrupted, PipelineRunError

    settings = _settings()
    try:
        report = run_demo(settings, _instance(), accounts, days, seed, dirty_fraction, regenerate, progress,
                          echo=click.echo, full=full)
    except PipelineInterrupted as exc:
        _interrupted(exc)
    except (PipelineRunError, ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from None
    if not report.succeeded:
        raise click.ClickException("the pipeline run failed; the summary above shows which check or step "
                                   "(open `make ui` for details)")


@main.command()
@click.option("--start", callback=_optional_date,
              help="First partition (YYYY-MM-DD); default: the first day with event files.")
@click.option("--end", callback=_optional_date, help="Last partition (YYYY-MM-DD); default: the last day with event files.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar over each run's steps on stderr (on a terminal).")
@click.option("--full", is_flag=True,
              help="Recompute every day and asset, even those whose files and definitions did not change.")
def materialize(start: str | None, end: str | None, progress: bool, full: bool) -> None:
    """Materialize the pipeline for the days that have event files (single-run ranges).

    Only what changed since the last successful run is computed: new or changed days of
    files from the first such day on, assets whose definition changed over every day."""
    from pql_pipeline.defs.ingest.loader import available_partitions
    from pql_pipeline.runner import PipelineInterrupted, PipelineRunError, format_summary, materialize_all

    settings = _settings()
    parts = available_partitions(settings.events_root, settings.source.pattern)
    parts = [p for p in parts if (start is None or p >= start) and (end is None or p <= end)]
    try:
        report = materialize_all(settings, _instance(), parts, progress=progress,
                                 echo=lambda line: click.echo(line, err=True), full=full)
    except PipelineInterrupted as exc:
        _interrupted(exc)
    except PipelineRunError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_summary(settings, report))
    if not report.succeeded:
        raise click.ClickException("the pipeline run failed; see the summary above")


@main.command()
@click.option("--start", required=True, callback=_optional_date, help="First partition (YYYY-MM-DD).")
@click.option("--end", required=True, callback=_optional_date, help="Last partition (YYYY-MM-DD).")
@click.option("--job", default="daily_pql", show_default=True,
              help="Partitioned job: daily_pql (events to outputs), pql_pipeline (events to features), "
                   "ingest_events, build_features, score_leads, sync_outputs or retrain_model.")
@click.option("--per-partition", is_flag=True,
              help="One run per day instead of one single-run range (slower; for a range too big for memory).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar over each run's steps on stderr (on a terminal).")
def backfill(start: str, end: str, job: str, per_partition: bool, progress: bool) -> None:
    """Re-materialize a job over a range of days, e.g. after changing a signal or a contract.

    Writes are idempotent per partition: a range gives the same tables as its days one by one."""
    import time

    from pql_pipeline.runner import PipelineInterrupted, PipelineRunError, format_summary
    from pql_pipeline.runner import backfill as run_backfill

    settings = _settings()
    t0 = time.monotonic()
    try:
        report = run_backfill(settings, _instance(), job, start, end, per_partition, echo=click.echo,
                              progress=progress)
    except PipelineInterrupted as exc:
        _interrupted(exc)
    except PipelineRunError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_summary(settings, report))
    click.echo(f"backfill        {job} {start} .. {end}: {len(report.partitions)} partitions in "
               f"{len(report.run_ids)} run(s), {time.monotonic() - t0:.1f} s")
    if not report.succeeded:
        raise click.ClickException("the backfill failed; see the summary above (and `make ui` for the run)")


if __name__ == "__main__":  # pragma: no cover
    main()
