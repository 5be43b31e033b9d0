"""Run the benchmark suite and write one report: benchmarks/results/suite.json and suite.md
(suite-quick.* with ``--quick``).

Each benchmark runs in its own process (its peak memory is its own) and writes its own
JSON; this collects them with their wall time and exit status and puts the headline
figures, each a ratio against a baseline measured in the same run where the benchmark has
one, in a markdown table. A benchmark that fails is reported as failed and the suite goes
on; the exit status is non-zero if any failed.

    python benchmarks/run_suite.py            # the suite: features, sync, backfill, end to end (~15-20 min
                                              # once the data are generated; generating them first: ~10 min more)
    python benchmarks/run_suite.py --all      # + the validation and model benchmarks (~10 min more)
    python benchmarks/run_suite.py --quick    # every benchmark at smoke sizes, a few minutes (run in CI)
    python benchmarks/run_suite.py --only backfill,sync
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def headline_validate(r: dict) -> list[tuple[str, str]]:
    return [("raw -> validated", f"{r.get('raw_to_validated_events_per_s', r.get('events_per_s', '?'))} events/s"),
            ("vs per-line Python baseline", f"{r.get('speedup_vs_baseline', '?')}x")]


def headline_features(r: dict) -> list[tuple[str, str]]:
    daily, cold = r.get("duckdb_daily", {}), r.get("duckdb", {})
    t = r.get("targets", {})
    return [("one snapshot, daily", f"{daily.get('seconds', '?')} s, {daily.get('events_per_s', 0):,} events/s, "
                                     f"peak {daily.get('peak_rss_mib', '?')} MiB"),
            ("one snapshot, cold", f"{cold.get('seconds', '?')} s, {cold.get('events_per_s', 0):,} events/s"),
            ("vs pandas baseline", f"{r.get('speedup_daily_vs_baseline', '?')}x daily, "
                                   f"{r.get('speedup_vs_baseline', '?')}x cold"),
            ("target 20 M events/s / 4 GiB", f"{'met' if t.get('daily_events_per_s_met') else 'not met'} / "
                                             f"{'met' if t.get('daily_peak_rss_met') else 'not met'}"),
            ("floor: every user signal in one cheapened pass",
             f"{_get(r, 'floor', 'user_signals_one_pass', 'seconds', default='?')} s "
             f"(the target allows {round(cold['events'] / 20e6, 1) if cold.get('events') else '?'} s)")]


def headline_model(r: dict) -> list[tuple[str, str]]:
    train, score = r.get("train", {}), r.get("score", {})
    return [("training", f"{train.get('seconds', '?')} s for {train.get('train_rows', '?')} rows, "
                         f"peak {train.get('peak_rss_mib', '?')} MiB"),
            ("scoring", f"{score.get('seconds', '?')} s for {score.get('users', '?')} users "
                        f"({score.get('rows_per_s', '?')}/s), peak {score.get('peak_rss_mib', '?')} MiB"),
            ("reasons vs straightforward ablation", f"{_get(score, 'baseline', 'speedup', default='?')}x")]


def headline_sync(r: dict) -> list[tuple[str, str]]:
    runs = r.get("runs") or [{}]
    last = runs[-1]
    return [("calls per changed record", str(last.get("calls_per_record", "?"))),
            ("allowed rate used (delivery / whole run)",
             f"{last.get('rate_used_delivery', '?')} / {last.get('rate_used', '?')}"),
            ("records lost", str(last.get("records_lost", "?")))]


def headline_backfill(r: dict) -> list[tuple[str, str]]:
    single, per = r.get("single_run", {}), r.get("per_partition", {})
    return [(f"{_get(r, 'parameters', 'partitions', default='?')} partitions, single run",
             f"{single.get('seconds', '?')} s"),
            ("one run per partition", f"{per.get('seconds_for_all', '?')} s"
                                      + (" (scaled)" if per.get("scaled") else "")),
            ("speed-up (target 30x at 365 partitions)",
             f"{r.get('speedup', '?')}x, {'met' if _get(r, 'target', 'met') else 'not met'}")]


def headline_e2e(r: dict) -> list[tuple[str, str]]:
    sizes = r.get("sizes") or [{}]
    big = sizes[-1]
    t = r.get("targets", {})
    steps = big.get("steps", {})
    landed = steps.get("raw_events", 0) + steps.get("validate_events", 0)
    floor = r.get("input_floor_100m", {})
    rows = [(f"raw files -> scored PQLs, {big.get('raw_lines', 0):,} events",
             f"{big.get('seconds', '?')} s, {big.get('events_per_s', 0):,} events/s, "
             f"peak {big.get('peak_rss_mib', '?')} MiB"),
            ("vs straightforward Python/pandas (scaled)", f"{big.get('speedup', '?')}x (target 5x)"),
            ("scaling curve (s per M events by size)",
             f"{r.get('seconds_per_million_events', '?')}, exponent {r.get('scaling_exponent', '?')} (<= 1: linear)"),
            ("targets <= 120 s at 100 M / <= 4 GiB / >= 5x",
             " / ".join("met" if t.get(k) else "not met"
                        for k in ("seconds_le_120_at_100m", "peak_rss_le_4gib", "speedup_ge_5x")))]
    if "cpu_seconds" in big:
        rows.append(("CPU / repeat with nothing changed",
                     f"{big['cpu_seconds']} CPU-s / {_get(big, 'repeat', 'seconds')} s "
                     f"({_get(big, 'repeat', 'runs')} run(s))"))
    if landed:
        base = _get(r, "baseline", "validate_lines_per_s")
        rows.append(("raw -> validated (loading and validation steps)",
                     f"{round(big.get('raw_lines', 0) / landed):,} events/s; per-line Python baseline "
                     + (f"{base:,} lines/s" if isinstance(base, (int, float)) else "not measured")))
    if floor:
        rows.append(("100 M events' raw files: size / read once / JSON-parse once (floor)",
                     f"{floor.get('target_file_gb')} GB ({floor.get('free_disk_gb')} GB free) / "
                     f"{floor.get('target_read_seconds')} s at {floor.get('disk_read_mb_per_s')} MB/s / "
                     f"{floor.get('target_parse_seconds')} s"))
    return rows


def headline_long(r: dict) -> list[tuple[str, str]]:
    return [(f"{x['raw_lines']:,} lines over {x['days']} days (target <= {x['cpu_target']:.0f} CPU-s)",
             f"{x['seconds']} s, {x['cpu_seconds']} CPU-s, {'met' if x['meets_cpu_target'] else 'not met'}; "
             f"repeat {_get(x, 'repeat', 'seconds')} s") for x in r.get("long_history", [])]


# name -> (script, full args, quick args, result file, quick result file, headline)
BENCHES = {
    "validate": ("bench_validate.py", [], ["--accounts", "200", "--days", "10", "--baseline-lines", "20000",
                                           "--data", str(HERE / ".data" / "events-quick"),
                                           "--out", str(RESULTS / "validate-quick.json")],
                 "validate.json", "validate-quick.json", headline_validate),
    "features": ("bench_features.py", [], ["--quick"], "features.json", "features-quick.json", headline_features),
    "model": ("bench_model.py", [], ["--quick"], "model.json", "model-quick.json", headline_model),
    "sync": ("bench_sync.py", [], ["--quick"], "sync.json", "sync-quick.json", headline_sync),
    "backfill": ("bench_backfill.py", [], ["--quick"], "backfill.json", "backfill-quick.json", headline_backfill),
    "e2e": ("bench_e2e.py", [], ["--quick"], "e2e.json", "e2e-quick.json", headline_e2e),
    "long": ("bench_e2e.py", ["--long"], ["--long", "--quick"], "e2e-long.json", "e2e-long-quick.json",
             headline_long),
}


# the suite (``make bench``): the end-to-end run and its scaling curve, the backfill, the CRM sync and
# the features benchmark; validate and model measure one stage each at the size their issues named and
# run with --all or --only (the end-to-end run loads, validates, trains and scores at 10 M events too).
# The quick suite (CI) runs every benchmark at smoke sizes.
SUITE = ("features", "sync", "backfill", "e2e", "long")


def markdown(report: dict) -> str:
    lines = [f"# Benchmark suite{' (quick)' if report['quick'] else ''}", "",
             f"{report['date']}, {report['machine']['cpus']} CPUs, Python {report['machine']['python']}", "",
             "| benchmark | status | wall time | figure | value |", "|---|---|---|---|---|"]
    for name, b in report["benchmarks"].items():
        rows = b.get("headline") or [("", "")]
        for i, (k, v) in enumerate(rows):
            first = i == 0
            lines.append(f"| {name if first else ''} | {b['status'] if first else ''} | "
                         f"{str(b['seconds']) + ' s' if first else ''} | {k} | {v} |")
    lines += ["", "Each benchmark's JSON (in benchmarks/results/) holds every figure; benchmarks/README.md says "
                  "what is measured and against which baseline."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    ap.add_argument("--all", action="store_true", help="every benchmark (the suite adds validate and model)")
    args = ap.parse_args()
    names = ([n.strip() for n in args.only.split(",")] if args.only
             else list(BENCHES) if args.all or args.quick else list(SUITE))
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    RESULTS.mkdir(exist_ok=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "benchmarks": {}}
    suite_t0 = time.monotonic()
    for i, name in enumerate(names, start=1):
        script, full, quick, out, quick_out, headline = BENCHES[name]
        result_path = RESULTS / (quick_out if args.quick else out)
        before = result_path.stat().st_mtime if result_path.exists() else None
        print(f"== [{i}/{len(names)}] {name}: {script} {' '.join(quick if args.quick else full)} "
              f"({time.monotonic() - suite_t0:.0f} s into the suite)", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(HERE / script), *(quick if args.quick else full)])
        seconds = round(time.monotonic() - t0, 1)
        fresh = result_path.exists() and result_path.stat().st_mtime != before
        entry = {"script": script, "exit_status": rc, "seconds": seconds, "result_file": str(result_path.name),
                 "status": "ok" if rc == 0 and fresh else "FAILED" if rc else "no result written"}
        if fresh:
            result = json.loads(result_path.read_text())
            entry["headline"] = headline(result)
            entry["result"] = result
        report["benchmarks"][name] = entry
        print(f"== [{i}/{len(names)}] {name}: {entry['status']} in {seconds} s", flush=True)
    stem = "suite-quick" if args.quick else "suite"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"-> {RESULTS / (stem + '.json')}, {RESULTS / (stem + '.md')}")
    return 0 if all(b["status"] == "ok" for b in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
