"""Benchmark: end to end, raw event files -> scored PQLs, and its scaling curve.

For each size, generated Segment files (the demo generator, cached under
benchmarks/.data/e2e-*) go through the pipeline exactly as ``make run`` does it
(``runner.materialize_all``): the events-to-training-sets graph over every day as one
single-run range (raw events, validation, dimensions, features of every snapshot day,
labels, training sets, milestone discovery, with all their checks), the conversion model
trained and gated, then every day scored. Each size runs in its own process, in a fresh
warehouse and Dagster instance; wall time per job, peak RSS and events/s are reported.

The baseline is a straightforward Python / pandas implementation of the same steps,
measured in the same run on a slice and scaled to the size (it keeps everything in
memory, so it cannot run at full size):

- raw -> validated: a per-line Python validator (``json.loads``, the contract's envelope,
  timestamp and tracking-plan checks, dict dedup, identity map, pandas writes:
  ``bench_validate.baseline``) on the first ``--baseline-lines`` lines;
- features: the pandas implementation of every user signal (``bench_features``:
  ``json.loads`` + groupby per signal) for the newest snapshot, on the smallest size's
  validated events, times the number of snapshot days the pipeline computes;
- labels, training, scoring: counted at the pipeline's own time (the same scikit-learn
  work either way), which favours the baseline.

The scaling curve is the wall time at each size; growth "no worse than linear" means the
time per event does not rise with size (the exponent of time vs events is <= 1).

    python benchmarks/bench_e2e.py --quick             # ~0.5 M and ~1 M events (smoke run)
    python benchmarks/bench_e2e.py                     # ~1 M and ~10 M events
    python benchmarks/bench_e2e.py --sizes 1,10,100    # millions of events (100 M takes hours today)

Writes benchmarks/results/e2e.json (e2e-quick.json with --quick) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

DATA = HERE / ".data"
DAYS = 90
# generated lines per account and day over 90 days (demo generator, seed 7: 129,537 lines for 260 accounts)
EVENTS_PER_ACCOUNT_DAY = 5.5


def accounts_for(events: float, days: int) -> int:
    return max(20, round(events / (EVENTS_PER_ACCOUNT_DAY * days)))


def ensure_events(accounts: int, days: int, seed: int, dirty_fraction: float = 0.01) -> tuple[Path, dict]:
    from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events

    out = DATA / (f"e2e-a{accounts}-d{days}-s{seed}" + ("" if dirty_fraction == 0.01 else f"-dirty{dirty_fraction}"))
    manifest = out / "_ground_truth" / "manifest.json"
    if manifest.exists():
        return out, json.loads(manifest.read_text())
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    # the long histories start with the default partitions (2025-01-01) to end before today
    start = dt.date(2026, 1, 1) if days <= 300 and dirty_fraction == 0.01 else dt.date(2025, 1, 1)
    cfg = GeneratorConfig(n_accounts=accounts, days=days, start_date=start, seed=seed,
                          dirty_fraction=dirty_fraction)
    report = generate_events(cfg, out, progress=True)
    print(f"generated {report.lines_written:,} lines for {accounts:,} accounts in {time.perf_counter() - t:.0f} s",
          flush=True)
    return out, json.loads(manifest.read_text())


def input_floor(events_dir: Path, target_events: float = 1e8) -> dict:
    """What the raw files alone cost, measured on ``events_dir`` and projected to
    ``target_events``: their bytes per line; this disk's read rate with the files' pages
    dropped from the page cache first; DuckDB splitting the lines and parsing each as JSON
    (the least any validation does) at the pipeline's thread count; and the free disk space.
    These bound any pipeline that reads the files from below, whatever it does next."""
    import duckdb

    from pql_pipeline.settings import load_settings

    files = sorted(p for p in events_dir.rglob("*.jsonl*") if "_ground_truth" not in p.parts)
    size = sum(p.stat().st_size for p in files)
    cold = hasattr(os, "posix_fadvise")   # Linux; elsewhere the read may come from the page cache
    for p in files if cold else []:   # a cold read: the pages the pipeline left in the page cache are dropped
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    t = time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass
    read_s = time.perf_counter() - t
    conn = duckdb.connect()
    conn.execute(f"SET threads = {int(load_settings().warehouse.threads)}")
    t = time.perf_counter()
    lines, valid = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE json_valid(line)) FROM read_csv(?, columns = {'line': 'VARCHAR'}, "
        "delim = '\x01', quote = '', escape = '', header = false, ignore_errors = true)",
        [[str(p) for p in files]]).fetchone()
    parse_s = time.perf_counter() - t
    conn.close()
    per_line = size / max(lines, 1)
    target_bytes = per_line * target_events
    read_rate, parse_rate = size / read_s, lines / parse_s
    free = shutil.disk_usage(DATA).free
    return {"measured_on_files": len(files), "measured_on_bytes": size, "bytes_per_line": round(per_line),
            "disk_read_mb_per_s": round(read_rate / 1e6), "page_cache_dropped": cold,
            "json_parse_lines_per_s": round(parse_rate),
            "target_events": int(target_events), "target_file_gb": round(target_bytes / 1e9, 1),
            "target_read_seconds": round(target_bytes / read_rate, 1),
            "target_parse_seconds": round(target_events / parse_rate, 1),
            "free_disk_gb": round(free / 1e9, 1), "files_fit_on_disk": target_bytes < free,
            "lines_parsed": lines, "lines_valid_json": valid}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ one size, in its own process

def cpu_seconds() -> float:
    """CPU seconds of this process so far, its DuckDB threads included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_pipeline(events_dir: Path, work: Path, allow_unscored: bool = False) -> dict:
    """The pipeline over ``events_dir`` as ``make run`` does it (``runner.materialize_all``),
    in a fresh warehouse and instance; then once more with nothing changed."""
    import dagster as dg

    from pql_pipeline.definitions import MODEL_JOB, PIPELINE_JOB, build_definitions
    from pql_pipeline.runner import materialize_all
    from pql_pipeline.settings import load_settings

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["PQL_WAREHOUSE"] = str(work / "pql.duckdb")
    os.environ["PQL_EVENTS_DIR"] = str(events_dir)
    settings = load_settings()
    defs = build_definitions(settings)
    with project_instance(work / "dagster_home") as instance:
        t_all, c_all = time.perf_counter(), cpu_seconds()
        report = materialize_all(settings, instance, defs=defs)
        total, cpu = time.perf_counter() - t_all, cpu_seconds() - c_all
        runs = [instance.get_run_by_id(r) for r in report.run_ids]
        jobs = {}
        for run in runs:
            stats = instance.get_run_stats(run.run_id)
            jobs[run.job_name] = round(stats.end_time - stats.start_time, 2)
            # the scoring job also runs the drift report and the (dry-run) outputs: a blocking
            # drift check that stops the outputs is reported, the scores are what counts here
            if run.job_name in (PIPELINE_JOB, MODEL_JOB) and run.status != dg.DagsterRunStatus.SUCCESS:
                raise SystemExit(f"{run.job_name} failed: {report.failed_steps}")
        steps = step_seconds(instance, report.run_ids)
        # a second run with nothing changed: what a repeated `make run` or daily run costs
        t, c = time.perf_counter(), cpu_seconds()
        again = materialize_all(settings, instance, defs=defs)
        repeat = {"seconds": round(time.perf_counter() - t, 2), "cpu_seconds": round(cpu_seconds() - c, 2),
                  "runs": len(again.run_ids), "plans": [p.describe() for p in again.plans]}
    import duckdb

    conn = duckdb.connect(str(work / "pql.duckdb"), read_only=True)
    q = lambda sql: conn.execute(sql).fetchall()[0][0]  # noqa: E731
    counts = {"raw_lines": q("SELECT count(*) FROM raw_events"),
              "validated_events": q("SELECT count(*) FROM validated_events"),
              "quarantined": q("SELECT count(*) FROM quarantined_events"),
              "user_feature_rows": q("SELECT count(*) FROM user_features"),
              "snapshot_days": q("SELECT count(DISTINCT snapshot_date) FROM user_features"),
              "scored_users": q("SELECT count(*) FROM pql_scores"),
              "pqls": q("SELECT count(*) FROM pql_scores WHERE is_pql")}
    conn.close()
    if not counts["scored_users"] and not allow_unscored:
        # the model did not pass its gates (too little data for this size): not end to end
        raise SystemExit(f"no model passed the gates on {len(report.partitions)} days of this size: nothing was "
                         "scored; use a larger size")
    blocked = [f"{c['asset']}:{c['check']}" for c in report.checks
               if not c["passed"] and c["blocking"] and c["severity"] == "ERROR"]
    return {"partitions": len(report.partitions), "seconds": round(total, 2), "cpu_seconds": round(cpu, 2),
            "jobs": jobs, "steps": steps, "repeat": repeat,
            "failed_steps": report.failed_steps, "blocking_checks_failed": blocked,
            "events_per_s": round(counts["raw_lines"] / total),
            "events_per_cpu_s": round(counts["raw_lines"] / cpu), "peak_rss_mib": round(peak_rss_mib()), **counts}


@contextlib.contextmanager
def project_instance(home: Path):
    """A fresh Dagster instance in ``home`` configured by the project's dagster.yaml (what
    ``make run`` uses; ``PQL_BENCH_DAGSTER_YAML`` names another file, for A/B runs)."""
    import dagster as dg

    home.mkdir(parents=True)
    shutil.copy(os.environ.get("PQL_BENCH_DAGSTER_YAML") or HERE.parent / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def step_seconds(instance, run_ids: list[str]) -> dict[str, float]:
    """Seconds per step (the asset or check it runs) from the runs' event logs, largest first."""
    import dagster as dg

    start, out = {}, {}
    for run_id in run_ids:
        for rec in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START,
                                                      dg.DagsterEventType.STEP_SUCCESS,
                                                      dg.DagsterEventType.STEP_FAILURE}):
            key = rec.step_key
            if rec.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                start[key] = rec.timestamp
            elif key in start:
                out[key] = round(out.get(key, 0) + rec.timestamp - start.pop(key), 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def worker_baseline(events_dir: Path, work: Path, baseline_lines: int) -> dict:
    """The straightforward implementation: the per-line validator on the first lines, and the
    pandas features of the newest snapshot on the pipeline's validated events of this size."""
    import bench_features as BF
    import bench_validate as BV

    from pql_pipeline.defs.ingest.loader import available_partitions

    parts = available_partitions(events_dir, "dt={date}/*.jsonl*")
    base = work.parent / f"{work.name}-baseline"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    n_lines, v_seconds = BV.baseline(events_dir, parts, baseline_lines, base / "baseline.duckdb")
    db = work / "pql.duckdb"
    snapshot = dt.date.fromisoformat(parts[-1])
    f = BF.worker_pandas(db, snapshot, base / "features.parquet")
    shutil.rmtree(base, ignore_errors=True)
    return {"validate_lines": n_lines, "validate_seconds": round(v_seconds, 2),
            "validate_lines_per_s": round(n_lines / v_seconds),
            "features_events": f["events"], "features_seconds_per_snapshot": f["seconds"],
            "features_events_per_s": f["events_per_s"], "peak_rss_mib": round(peak_rss_mib())}


def run_worker(kind: str, *args: str) -> dict:
    out = DATA / f".e2e-worker-{os.getpid()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args, "--worker-out", str(out)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


# ------------------------------------------------------------------ report

def scaled_baseline(size: dict, base: dict) -> dict:
    """The baseline's time at this size: validation at its lines/s, the features of every
    snapshot day the pipeline computed at the baseline's events/s per snapshot (each snapshot
    reads the history up to its day: on average about half of the events), the model and
    scoring at the pipeline's own time."""
    lines = size["raw_lines"]
    validate = lines / base["validate_lines_per_s"]
    per_snapshot = (size["validated_events"] / 2) / base["features_events_per_s"]
    features = per_snapshot * size["snapshot_days"]
    rest = size["jobs"].get("train_model", 0) + size["jobs"].get("score_leads", 0)
    return {"validate_seconds": round(validate, 1), "features_seconds": round(features, 1),
            "model_and_scoring_seconds": round(rest, 1), "seconds": round(validate + features + rest, 1)}


def table(result: dict) -> str:
    rows = ["| events (raw lines) | accounts | wall time | CPU | events/s | peak RSS | pipeline / model / scoring s "
            "| repeat (nothing changed) | baseline (scaled) | speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["sizes"]:
        j = s["jobs"]
        rows.append(f"| {s['raw_lines']:,} | {s['accounts']:,} | {s['seconds']:.1f} s | {s['cpu_seconds']:.0f} CPU-s "
                    f"| {s['events_per_s']:,} "
                    f"| {s['peak_rss_mib']:,} MiB | {j.get('pql_pipeline', 0):.0f} / {j.get('train_model', 0):.0f} / "
                    f"{j.get('score_leads', 0):.0f} | {s['repeat']['seconds']:.1f} s | {s['baseline']['seconds']:,.0f} s "
                    f"| {s['speedup']}x |")
    return "\n".join(rows)


# small products with long histories: (accounts, daily partitions); the generator's accounts
# sign up over the period, so these give about 15 k and 75 k events
LONG_HISTORIES = [(19, 270), (80, 550)]
LONG_CPU_TARGET = 60.0


def long_histories(seed: int, shapes: list[tuple[int, int]]) -> list[dict]:
    """Few events a day over many days: the run's cost must follow the events, not the days.
    No broken lines (a quarantine rate on days of a few dozen lines is a check's business,
    not this benchmark's); the model may not pass its gates on so little data."""
    out = []
    for accounts, days in shapes:
        events_dir, _ = ensure_events(accounts, days, seed, dirty_fraction=0.0)
        work = DATA / "e2e-work" / events_dir.name
        print(f"long history: {accounts} accounts, {days} days ...", flush=True)
        r = run_worker("pipeline", "--events-dir", str(events_dir), "--work", str(work), "--allow-unscored")
        shutil.rmtree(work, ignore_errors=True)
        row = {"accounts": accounts, "days": days, **{k: r[k] for k in (
            "raw_lines", "partitions", "seconds", "cpu_seconds", "events_per_cpu_s", "jobs", "repeat",
            "scored_users", "peak_rss_mib")}, "steps_top": dict(list(r["steps"].items())[:8]),
            "cpu_target": LONG_CPU_TARGET, "meets_cpu_target": r["cpu_seconds"] <= LONG_CPU_TARGET}
        print(f"  {row['raw_lines']:,} lines over {days} days: {row['seconds']:.1f} s wall, "
              f"{row['cpu_seconds']:.1f} CPU-s; repeat {row['repeat']['seconds']:.1f} s", flush=True)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="millions of events, comma-separated (default 1,10)")
    ap.add_argument("--days", type=int, default=DAYS)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--baseline-lines", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="~0.5 M and ~1 M events")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=["pipeline", "baseline"])
    ap.add_argument("--events-dir", type=Path)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--worker-out", type=Path)
    ap.add_argument("--allow-unscored", action="store_true")
    ap.add_argument("--long", action="store_true",
                    help="only the small, long histories (few events a day over 270 and 550 days; "
                         "with --quick the first)")
    args = ap.parse_args()

    if args.worker:
        if args.worker == "pipeline":
            r = worker_pipeline(args.events_dir, args.work, args.allow_unscored)
        else:
            r = worker_baseline(args.events_dir, args.work, args.baseline_lines)
        args.worker_out.write_text(json.dumps(r))
        return

    if args.long:
        out = args.out or HERE / "results" / ("e2e-long-quick.json" if args.quick else "e2e-long.json")
        result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                  "long_history": long_histories(args.seed, LONG_HISTORIES[:1] if args.quick else LONG_HISTORIES)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result["long_history"], indent=2))
        return

    days = args.days
    sizes = [float(x) for x in (args.sizes or ("0.5,1" if args.quick else "1,10")).split(",")]
    out = args.out or HERE / "results" / ("e2e-quick.json" if args.quick else "e2e.json")
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "days": days, "sizes": []}
    base = None
    for millions in sorted(sizes):
        accounts = accounts_for(millions * 1e6, days)
        events_dir, manifest = ensure_events(accounts, days, args.seed)
        work = DATA / "e2e-work" / events_dir.name
        print(f"pipeline: {accounts:,} accounts, {days} days ...", flush=True)
        r = run_worker("pipeline", "--events-dir", str(events_dir), "--work", str(work))
        r["accounts"] = accounts
        if base is None:  # measured once, on the smallest size (pandas holds its events in memory)
            print("baseline ...", flush=True)
            base = run_worker("baseline", "--events-dir", str(events_dir), "--work", str(work),
                              "--baseline-lines", str(args.baseline_lines))
            result["baseline"] = {**base, "measured_on_raw_lines": r["raw_lines"]}
            smallest = events_dir
        r["baseline"] = scaled_baseline(r, base)
        r["speedup"] = round(r["baseline"]["seconds"] / r["seconds"], 1)
        result["sizes"].append(r)
        shutil.rmtree(work, ignore_errors=True)
        print(f"  {r['raw_lines']:,} lines in {r['seconds']:.1f} s ({r['events_per_s']:,} events/s), "
              f"peak {r['peak_rss_mib']:,} MiB, {r['speedup']}x the baseline", flush=True)
    # the raw files of 100 M events, projected from the smallest size's: what reading them alone costs here
    result["input_floor_100m"] = input_floor(smallest)
    s = result["sizes"]
    if len(s) >= 2:
        # time ~ events^k between the smallest and largest size: k <= 1 is linear or better
        k = math.log(s[-1]["seconds"] / s[0]["seconds"]) / math.log(s[-1]["raw_lines"] / s[0]["raw_lines"])
        result["scaling_exponent"] = round(k, 2)
        result["seconds_per_million_events"] = [round(x["seconds"] / x["raw_lines"] * 1e6, 1) for x in s]
    biggest = s[-1]
    result["targets"] = {
        "at_events": biggest["raw_lines"],
        "seconds_le_120_at_100m": biggest["raw_lines"] >= 1e8 and biggest["seconds"] <= 120,
        "peak_rss_le_4gib": all(x["peak_rss_mib"] <= 4096 for x in s),
        "speedup_ge_5x": all(x["speedup"] >= 5 for x in s),
        "scaling_linear_or_better": result.get("scaling_exponent", 1) <= 1.05,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(json.dumps({k: result[k] for k in ("scaling_exponent", "seconds_per_million_events", "targets",
                                             "input_floor_100m")
                      if k in result}, indent=2))


if __name__ == "__main__":
    main()
