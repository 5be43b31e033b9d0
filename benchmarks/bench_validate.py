"""Benchmark: raw -> validated throughput on generated events.

Generates (once, cached under benchmarks/.data/) a demo data set of roughly
``--events`` lines, then measures in one process:

* load:     files -> raw_events (DuckDB file)
* validate: raw_events -> validated / quarantined / duplicate events (all rules)
* baseline: a straightforward per-line Python implementation of the same step
  (json.loads, the contract's envelope / timestamp / tracking-plan checks, dict
  dedup and identity map, pandas -> DuckDB writes) on the first
  ``--baseline-lines`` lines, measured in the same run, so the result is a
  ratio rather than a machine-dependent number.

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


def cpu_seconds() -> float:
    """CPU seconds of this process so far, its DuckDB threads included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_json_floor(root: Path, db: Path) -> dict:
    """What DuckDB alone costs for the same files: ``read_json`` of every line into a typed
    table (its own schema inference, malformed lines skipped), written to a DuckDB file. The
    pipeline does more (verbatim lines, line numbers, every contract rule, dedup, identities,
    quarantine with reasons); the ratio says how far above this floor it is."""
    import duckdb

    db.unlink(missing_ok=True)
    conn = duckdb.connect(str(db), config={"memory_limit": "4GB", "threads": 2})
    c, t = cpu_seconds(), time.perf_counter()
    files = str(root / "dt=*" / "*.jsonl*")
    n = conn.execute(f"""CREATE TABLE events AS SELECT * FROM read_json('{files}', format = 'newline_delimited',
                         ignore_errors = true, union_by_name = true)""").fetchall()[0][0]
    out = {"rows": n, "seconds": round(time.perf_counter() - t, 2), "cpu_seconds": round(cpu_seconds() - c, 2)}
    conn.close()
    db.unlink(missing_ok=True)
    return out


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


PY_TYPES = {"string": (str,), "timestamp": (str,), "date": (str,), "integer": (int,), "number": (int, float),
            "boolean": (bool,), "object": (dict,), "array": (list,)}


def _ts(v):
    try:
        d = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)
    except (ValueError, AttributeError):
        return None


def baseline(root: Path, parts: list[str], max_lines: int, db: Path) -> tuple[int, float]:
    """A straightforward per-line Python implementation of the same step, for a same-run reference.

    Same inputs and outputs: every line is kept verbatim (the raw table), decoded and parsed, checked against the
    contract's envelope types, timestamps, tracking plan and property types, deduplicated
    (first wins), anonymous ids resolved, and validated / quarantined / duplicate rows
    written to DuckDB through pandas.
    """
    import duckdb
    import pandas as pd

    contract = load_contract(CONTRACTS / "segment_events.odcs.yaml")
    envelope = [(p.name, p.logicalType, bool(p.required)) for p in contract.object("segment_event").properties]
    plan = {o.name: [(p.name, p.logicalType, bool(p.required)) for p in o.properties or []]
            for o in contract.objects() if o.name != "segment_event"}
    types_allowed = {"track", "identify", "group", "page", "screen", "alias"}
    seen: set[str] = set()
    links: dict[str, str] = {}
    valid, quarantined, duplicates, raw_rows = [], [], [], []
    n = 0
    t = time.perf_counter()
    for p in parts:
        for f in sorted((root / f"dt={p}").glob("*.jsonl*")):
            with open(f, "rb") as fh:
                for line_no, raw in enumerate(fh, start=1):
                    n += 1
                    raw_rows.append((p, f.name, line_no, raw.decode("utf-8", "backslashreplace")))
                    problems = []
                    msg = None
                    try:
                        msg = json.loads(raw.decode("utf-8"))
                        if not isinstance(msg, dict):
                            problems.append("line.json_object")
                    except UnicodeDecodeError:
                        problems.append("line.utf8")
                    except ValueError:
                        problems.append("line.json")
                    if not problems:
                        for name, ltype, required in envelope:
                            v = msg.get(name)
                            if v is None or v == "":
                                if required:
                                    problems.append(f"{name}.required")
                            elif not isinstance(v, PY_TYPES[ltype]) or (ltype == "integer" and isinstance(v, bool)):
                                problems.append(f"{name}.type")
                            elif ltype == "timestamp" and _ts(v) is None:
                                problems.append(f"{name}.parse")
                        if msg.get("type") not in types_allowed:
                            problems.append("type.allowed")
                        if not msg.get("userId") and not msg.get("anonymousId"):
                            problems.append("identity.required")
                        ts, recv = _ts(msg.get("timestamp")), _ts(msg.get("receivedAt"))
                        if ts and recv and (ts - recv).total_seconds() > 86400:
                            problems.append("timestamp.not_future")
                        if msg.get("type") == "track":
                            props = msg.get("properties") if isinstance(msg.get("properties"), dict) else {}
                            if msg.get("event") not in plan:
                                problems.append("event.in_tracking_plan")
                            else:
                                for name, ltype, required in plan[msg["event"]]:
                                    v = props.get(name)
                                    if v is None:
                                        if required:
                                            problems.append("properties.required")
                                    elif not isinstance(v, PY_TYPES[ltype]):
                                        problems.append("properties.type")
                    if problems:
                        quarantined.append((p, f.name, line_no, problems[0], problems, raw.decode("utf-8", "replace")))
                    elif msg["messageId"] in seen:
                        duplicates.append((p, f.name, line_no, msg["messageId"]))
                    else:
                        seen.add(msg["messageId"])
                        if msg.get("userId") and msg.get("anonymousId"):
                            links.setdefault(msg["anonymousId"], msg["userId"])
                        valid.append((p, msg["messageId"], msg["type"], msg.get("event"), msg.get("userId"),
                                      msg.get("anonymousId"), msg.get("userId") or links.get(msg.get("anonymousId")),
                                      ts, json.dumps(msg.get("properties")), f.name, line_no))
                    if n >= max_lines:
                        break
            if n >= max_lines:
                break
        if n >= max_lines:
            break
    con = duckdb.connect(str(db))
    v = pd.DataFrame(valid, columns=["partition_date", "message_id", "event_type", "event_name", "user_id",
                                     "anonymous_id", "resolved_user_id", "event_ts", "properties", "source_file",
                                     "line_no"])
    q = pd.DataFrame(quarantined, columns=["partition_date", "source_file", "line_no", "rule_id", "rule_ids",
                                           "raw_line"])
    d = pd.DataFrame(duplicates, columns=["partition_date", "source_file", "line_no", "message_id"])
    r = pd.DataFrame(raw_rows, columns=["partition_date", "source_file", "line_no", "raw_line"])
    # registered explicitly (rather than left to DuckDB's lookup of Python locals by name)
    for name, frame in (("r", r), ("v", v), ("q", q), ("d", d)):
        con.register(name, frame)
    con.execute("CREATE OR REPLACE TABLE raw AS SELECT * FROM r")
    con.execute("CREATE OR REPLACE TABLE validated AS SELECT * FROM v")
    con.execute("CREATE OR REPLACE TABLE quarantined AS SELECT * FROM q")
    con.execute("CREATE OR REPLACE TABLE duplicates AS SELECT * FROM d")
    con.close()
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
        c0, t0 = cpu_seconds(), time.perf_counter()
        rows = sum(r.rows for r in load_partitions(conn, args.data, PATTERN, "jsonl", parts, seg))
        t1 = time.perf_counter()
        counts = validate_partitions(conn, seg, parts)
        t2, c2 = time.perf_counter(), cpu_seconds()
    floor = read_json_floor(args.data, db_dir / "floor.duckdb")
    assert all(c.reconciles for c in counts), "reconciliation failed"
    base_n, base_s = baseline(args.data, parts, args.baseline_lines, db_dir / "baseline.duckdb")
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
        "raw_to_validated_cpu_seconds": round(c2 - c0, 2),
        "raw_to_validated_cpu_seconds_per_million_lines": round((c2 - c0) / rows * 1e6, 2),
        "read_json_floor": floor,
        "cpu_ratio_to_read_json": round((c2 - c0) / floor["cpu_seconds"], 2),
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
