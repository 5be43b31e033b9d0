"""Benchmark: raw -> validated throughput on generated events.

Generates (once, cached under benchmarks/.data/) a demo data set of roughly
``--events`` lines, then measures in one process:

* load:     files -> raw_events (DuckDB file)
* validate: raw_events -> validated / quarantined / duplicate events (all rules)
* baseline: a straightforward per-line Python implementation (json.loads + the
  same kinds of checks + dict-based dedup) on the first ``--baseline-lines``
  lines, measured in the same run, so the result is a ratio rather than a
  machine-dependent number.

Writes benchmarks/results/validate.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events  # noqa: E402
from pql_pipeline.defs.ingest.loader import available_partitions  # noqa: E402
from pql_pipeline.defs.ingest.raw import load_partitions  # noqa: E402
from pql_pipeline.defs.ingest.validation import validate_partitions  # noqa: E402
from pql_pipeline.lib.contracts import load_contract  # noqa: E402
from pql_pipeline.lib.warehouse import Warehouse, ensure_tables  # noqa: E402
from pql_pipeline.settings import PROJECT_ROOT  # noqa: E402

CONTRACTS = PROJECT_ROOT / "data_contracts"
PATTERN = "dt={date}/*.jsonl*"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ensure_data(out: Path, accounts: int, days: int, seed: int) -> dict:
    manifest = out / "_ground_truth" / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        c = m.get("config", {})
        if c.get("n_accounts") == accounts and c.get("days") == days and c.get("seed") == seed:
            return m
    cfg = GeneratorConfig(n_accounts=accounts, days=days, start_date=dt.date(2026, 1, 1), seed=seed,
                          dirty_fraction=0.01)
    t = time.perf_counter()
    r = generate_events(cfg, out, progress=True)
    print(f"generated {r.lines_written:,} lines in {time.perf_counter() - t:.1f}s")
    return json.loads(manifest.read_text())


def baseline(root: Path, parts: list[str], max_lines: int) -> tuple[int, float]:
    """Straightforward per-line Python validation, for a same-run reference."""
    known = {o.name for o in load_contract(CONTRACTS / "segment_events.odcs.yaml").objects()}
    seen: set[str] = set()
    n = 0
    t = time.perf_counter()
    out_valid = out_bad = 0
    for p in parts:
        for f in sorted((root / f"dt={p}").glob("*.jsonl*")):
            with open(f, "rb") as fh:
                for raw in fh:
                    n += 1
                    try:
                        msg = json.loads(raw.decode("utf-8"))
                        ok = (isinstance(msg, dict) and isinstance(msg.get("messageId"), str)
                              and msg.get("type") in ("track", "identify", "group", "page", "screen", "alias")
                              and (msg.get("userId") or msg.get("anonymousId"))
                              and dt.datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))
                              and (msg["type"] != "track" or msg.get("event") in known)
                              and isinstance(msg.get("properties", {}), dict))
                    except Exception:
                        ok = False
                    if ok and msg["messageId"] not in seen:
                        seen.add(msg["messageId"])
                        out_valid += 1
                    else:
                        out_bad += 1
                    if n >= max_lines:
                        return n, time.perf_counter() - t
    return n, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=int(os.environ.get("BENCH_ACCOUNTS", 20000)))
    ap.add_argument("--days", type=int, default=int(os.environ.get("BENCH_DAYS", 60)))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--baseline-lines", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, default=HERE / ".data" / "events")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "validate.json")
    args = ap.parse_args()

    manifest = ensure_data(args.data, args.accounts, args.days, args.seed)
    parts = available_partitions(args.data, PATTERN)
    db_dir = HERE / ".data" / "wh"
    shutil.rmtree(db_dir, ignore_errors=True)
    wh = Warehouse(database=str(db_dir / "bench.duckdb"), memory_limit="4GB", threads=2)
    seg = load_contract(CONTRACTS / "segment_events.odcs.yaml")
    with wh.get_connection() as conn:
        ensure_tables(conn, load_contract(CONTRACTS / "raw_events.odcs.yaml"), "raw_events")
        ensure_tables(conn, load_contract(CONTRACTS / "validated_events.odcs.yaml"), "validated_events",
                      "quarantined_events", "duplicate_events", "identity_links", "account_memberships")
        t0 = time.perf_counter()
        rows = sum(r.rows for r in load_partitions(conn, args.data, PATTERN, "jsonl", parts))
        t1 = time.perf_counter()
        counts = validate_partitions(conn, seg, parts)
        t2 = time.perf_counter()
    assert all(c.reconciles for c in counts), "reconciliation failed"
    base_n, base_s = baseline(args.data, parts, args.baseline_lines)
    load_s, val_s = t1 - t0, t2 - t1
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "lines": rows,
        "partitions": len(parts),
        "validated": sum(c.validated for c in counts),
        "duplicates": sum(c.duplicates for c in counts),
        "quarantined": sum(c.quarantined for c in counts),
        "load_seconds": round(load_s, 2),
        "validate_seconds": round(val_s, 2),
        "load_events_per_s": round(rows / load_s),
        "validate_events_per_s": round(rows / val_s),
        "raw_to_validated_events_per_s": round(rows / (load_s + val_s)),
        "baseline_lines": base_n,
        "baseline_events_per_s": round(base_n / base_s),
        "speedup_vs_baseline": round((rows / (load_s + val_s)) / (base_n / base_s), 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "generator": manifest.get("generator_version"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    width = max(map(len, result))
    for k, v in result.items():
        print(f"{k:<{width}}  {v:,}" if isinstance(v, (int, float)) else f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
