"""Benchmark: a backfill of many daily partitions as one single-run range vs one run per
partition, through Dagster's execution (``pql backfill``'s code path: ``execute_in_process``
of the partitioned job on a Dagster instance), on generated events.

The job is ``pql_pipeline`` (events to features, labels, training sets and milestones), so
each run pays what a real backfill pays (the events are clean, so that small days do not trip
the quarantine-rate gate): Dagster's run and step overhead, the contract
checks (Great Expectations imported once per run), DuckDB connections, and the per-range
work of every asset. Reported: wall time of each mode, partitions per second, and the ratio
(target >= 30x for 365 partitions).

The per-partition baseline runs the first ``--baseline-days`` partitions one by one and is
scaled linearly to the whole range (the report says so). Later partitions carry more
history, so the scaled baseline underestimates the per-partition cost: the ratio is a lower
bound. ``--baseline-days 0`` runs every partition one by one.

    python benchmarks/bench_backfill.py              # 365 partitions, baseline on the first 10
    python benchmarks/bench_backfill.py --quick      # 60 partitions, baseline on the first 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=365, help="partitions in the backfill")
    p.add_argument("--accounts", type=int, default=50, help="generated accounts (events per day grow with them)")
    p.add_argument("--baseline-days", type=int, default=10,
                   help="partitions run one by one for the baseline, scaled to --days (0: all of them)")
    p.add_argument("--job", default="pql_pipeline")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="60 partitions, baseline on 10 (smoke run)")
    return p


def events_dir(days: int, accounts: int, seed: int, start: dt.date) -> Path:
    """Generated events, cached under benchmarks/.data/."""
    from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events

    out = HERE / ".data" / f"backfill-a{accounts}-d{days}-s{seed}-{start}-clean"
    if not (out / "_ground_truth").exists():
        if out.exists():
            shutil.rmtree(out)
        generate_events(GeneratorConfig(n_accounts=accounts, days=days, start_date=start, seed=seed,
                                        dirty_fraction=0.0), out)
    return out


def run(job: str, days: list[str], per_partition: bool, workdir: Path, events: Path) -> tuple[float, int, bool]:
    """Seconds, runs and success of backfilling ``days`` into a fresh warehouse."""
    import dagster as dg

    from pql_pipeline.runner import backfill
    from pql_pipeline.settings import load_settings

    os.environ["PQL_EVENTS_DIR"] = str(events)
    os.environ["PQL_WAREHOUSE"] = str(workdir / "pql.duckdb")
    settings = load_settings()
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.monotonic()
    report = backfill(settings, instance, job, days[0], days[-1], per_partition)
    return time.monotonic() - t0, len(report.run_ids), report.succeeded


def main() -> None:
    args = parser().parse_args()
    if args.quick:
        args.days, args.baseline_days = 60, 10
    start = dt.date(2025, 1, 1)
    events = events_dir(args.days, args.accounts, args.seed, start)
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range(args.days)]
    base_days = days if args.baseline_days in (0, None) or args.baseline_days >= len(days) else \
        days[:args.baseline_days]
    lines = sum(1 for f in events.glob("dt=*/*.jsonl*") for _ in open(f, "rb"))
    with tempfile.TemporaryDirectory(prefix="pql-backfill-") as tmp:
        tmp = Path(tmp)
        (tmp / "range").mkdir()
        (tmp / "daily").mkdir()
        range_s, range_runs, range_ok = run(args.job, days, False, tmp / "range", events)
        base_s, base_runs, base_ok = run(args.job, base_days, True, tmp / "daily", events)
    scaled = base_s * len(days) / len(base_days)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "parameters": {"job": args.job, "partitions": len(days), "accounts": args.accounts, "event_lines": lines,
                       "baseline_partitions": len(base_days)},
        "single_run": {"seconds": round(range_s, 1), "runs": range_runs, "succeeded": range_ok,
                       "partitions_per_s": round(len(days) / range_s, 2)},
        "per_partition": {"seconds_measured": round(base_s, 1), "runs": base_runs, "succeeded": base_ok,
                          "seconds_per_partition": round(base_s / len(base_days), 2),
                          "seconds_for_all": round(scaled, 1),
                          "scaled": len(base_days) < len(days)},
        "speedup": round(scaled / range_s, 1),
        "target": {"speedup": 30, "met": scaled / range_s >= 30},
    }
    out = HERE / "results" / ("backfill-quick.json" if args.quick else "backfill.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    how = (f"{len(base_days)} measured, scaled to {len(days)}" if result["per_partition"]["scaled"]
           else "all measured")
    print(f"backfill of {len(days)} partitions ({args.job}, {lines:,} event lines)")
    print(f"  single run      {range_s:8.1f} s  ({range_runs} run, {len(days) / range_s:.1f} partitions/s)")
    print(f"  run per day     {scaled:8.1f} s  ({base_s / len(base_days):.2f} s a partition; {how})")
    print(f"  speed-up        {scaled / range_s:8.1f}x  (target >= 30x: {'met' if result['target']['met'] else 'NOT met'})")
    if not (range_ok and base_ok):
        print("  a run FAILED: the figures are not comparable")
        sys.exit(1)
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
