"""`pql demo`: demo events (generated once) -> every asset materialized -> summary."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg

from pql_pipeline.runner import RunReport, format_summary, materialize_all
from pql_pipeline.settings import Settings


def demo_config(accounts: int, days: int, seed: int, dirty_fraction: float, today: dt.date | None = None):
    from pql_pipeline.defs.ingest.generator import GeneratorConfig

    today = today or dt.datetime.now(dt.timezone.utc).date()
    # the demo ends yesterday, so the newest partition is the one a daily schedule would run
    return GeneratorConfig(n_accounts=accounts, days=days, start_date=today - dt.timedelta(days=days), seed=seed,
                           dirty_fraction=dirty_fraction)


def ensure_demo_data(settings: Settings, accounts: int, days: int, seed: int, dirty_fraction: float,
                     regenerate: bool = False, progress: bool = True, echo=print) -> Path:
    """Generate demo events unless the same demo (same size, seed, dirt) is already there.

    Keeping existing data makes `make run` idempotent: a re-run re-materializes the same
    partitions instead of shifting the demo window to a new day.
    """
    from pql_pipeline.defs.ingest.generator import generate_events

    out = settings.events_root
    manifest = out / "_ground_truth" / "manifest.json"
    wanted = {"n_accounts": accounts, "days": days, "seed": seed, "dirty_fraction": dirty_fraction}
    if manifest.exists() and not regenerate:
        have = json.loads(manifest.read_text()).get("config", {})
        if all(have.get(k) == v for k, v in wanted.items()):
            echo(f"demo events already in {out} (same settings); `pql demo --regenerate` makes new ones")
            return out
    if not manifest.exists() and out.exists() and (any(out.rglob("*.json*")) or any(out.rglob("*.parquet"))):
        raise ValueError(f"{out} holds event files the demo did not write; refusing to overwrite them "
                         "(set PQL_EVENTS_DIR or source.root to another folder for the demo)")
    cfg = demo_config(accounts, days, seed, dirty_fraction)
    if settings.partitions.start_date > cfg.start_date:
        raise ValueError(f"partitions.start_date ({settings.partitions.start_date}) is after the demo's first day "
                         f"({cfg.start_date}); lower it in the configuration or use fewer --days")
    echo(f"generating {days} days of events for {accounts} accounts into {out} ...")
    r = generate_events(cfg, out, progress=progress)
    prune_warehouse(settings, r.partitions)
    echo(f"  {r.lines_written:,} lines ({r.clean_events:,} clean, {sum(r.dirty_lines.values()):,} dirty), "
         f"{r.n_users:,} users, {r.seconds:.1f}s")
    return out


def run_demo(settings: Settings, instance: dg.DagsterInstance, accounts: int, days: int, seed: int = 42,
             dirty_fraction: float = 0.01, regenerate: bool = False, progress: bool = True,
             echo=print, full: bool = False) -> RunReport:
    ensure_demo_data(settings, accounts, days, seed, dirty_fraction, regenerate, progress, echo)
    echo("materializing the asset graph ...")
    report = materialize_all(settings, instance, progress=progress, full=full)
    echo(format_summary(settings, report))
    return report


def prune_warehouse(settings: Settings, keep: list[str]) -> None:
    """Drop partitions of an earlier demo window so the warehouse mirrors the new demo data."""
    from pql_pipeline.defs.ingest.validation import PARTITION_TABLES
    from pql_pipeline.lib.warehouse import Warehouse, dates_sql, table_exists

    if not settings.warehouse_path.exists():
        return
    keys = dates_sql(keep)
    with Warehouse(database=str(settings.warehouse_path)).get_connection() as conn:
        for t in ("raw_events", *PARTITION_TABLES):
            if table_exists(conn, t):
                conn.execute(f"DELETE FROM {t} WHERE partition_date NOT IN ({keys})")
