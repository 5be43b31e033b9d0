"""Benchmark: the CRM sync's efficiency against a local HubSpot stand-in.

Syncs ``--records`` contacts (default 100 k) to the stand-in on 127.0.0.1 (the test suite's
``FakeHubSpot``: real HTTP, the documented batch upsert) with HubSpot's limit of 100 calls
per 10 s scaled down (``--scale``: default 10x, i.e. 100 calls per 1 s), once as new
records, then again with every record changed (the measured run). Reported:

* calls per changed record (target <= 0.01: batches of 100);
* share of the allowed rate used: calls made / calls the limit allowed in the run's
  wall time, over the whole run (diff and ledger included) and over the delivery alone
  (first call to last answer) (target >= 90 %);
* records lost: records whose values the stand-in does not hold after the run (must be 0),
  and ledger rows not ``synced``.

Writes benchmarks/results/sync.json and prints a table.

    python benchmarks/bench_sync.py              # 100 k records, 100 calls / 1 s
    python benchmarks/bench_sync.py --quick      # 10 k records
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402

from pql_pipeline.defs.activation import ledger as L  # noqa: E402
from pql_pipeline.defs.activation.hubspot import HubSpotClient, Transport  # noqa: E402
from pql_pipeline.defs.activation.sync import sync_records  # noqa: E402
from pql_pipeline_tests.defs.activation.fake_hubspot import FakeHubSpot  # noqa: E402

TOKEN = "pat-bench-token"


def records(n: int, version: int) -> pd.DataFrame:
    return pd.DataFrame({
        "record_key": [f"u{i}" for i in range(n)],
        "id_value": [f"user{i}@example.com" for i in range(n)],
        "properties": [{"email": f"user{i}@example.com", "pql_score": f"0.{(i * 7 + version) % 1000:03d}",
                        "pql_tier": "hot" if version % 2 else "warm", "pql_reasons": f"invited {version} teammates"}
                       for i in range(n)],
        "snapshot_date": dt.date(2026, 3, 31)})


class Timed(HubSpotClient):
    """Notes when the first call starts and the last answer arrives."""

    def upsert(self, *a, **kw):
        self.first = getattr(self, "first", None) or time.monotonic()
        out = super().upsert(*a, **kw)
        self.last = time.monotonic()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--scale", type=float, default=10.0, help="HubSpot's 10 s window divided by this")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.records = 10_000
    window = 10.0 / args.scale
    out = args.out or HERE / "results" / ("sync-quick.json" if args.quick else "sync.json")
    with tempfile.TemporaryDirectory() as tmp, FakeHubSpot(token=TOKEN) as hub:
        # the tests validate every body against the published schema; here that would spend the
        # stand-in's CPU (about 10 ms a call) that the client shares on two cores
        hub.validate = False
        conn = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
        runs = []
        for version in (1, 2):
            client = Timed(base_url=hub.url, access_token=TOKEN, concurrency=args.concurrency,
                           transport=Transport(rate_limit_requests=100, rate_limit_window_seconds=window,
                                               backoff_seconds=0.05, timeout_seconds=30))
            data = records(args.records, version)
            t = time.monotonic()
            row = sync_records(conn, client, "hubspot", "contacts", "email", data, dt.date(2026, 3, 31),
                               f"bench-{version}")
            seconds = time.monotonic() - t
            delivery = client.last - client.first
            allowed_total = seconds / window * 100
            allowed_delivery = max(delivery, window) / window * 100
            lost = sum(1 for key, props in zip(data["id_value"], data["properties"])
                       if hub.objects.get(("contacts", key), {}).get("properties", {}).get("pql_reasons")
                       != props["pql_reasons"])
            unsynced = conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status <> 'synced'").fetchall()[0][0]
            runs.append({"run": "new" if version == 1 else "changed", "records": args.records, "sent": row["sent"],
                         "calls": row["calls"], "calls_per_record": round(row["calls"] / max(row["sent"], 1), 5),
                         "seconds": round(seconds, 2), "delivery_seconds": round(delivery, 2),
                         "rate_used": round(row["calls"] / allowed_total, 3),
                         "rate_used_delivery": round(row["calls"] / allowed_delivery, 3),
                         "records_lost": lost, "ledger_not_synced": unsynced})
        res = {"limit": f"100 calls / {window:g} s (HubSpot's 100 / 10 s scaled {args.scale:g}x)",
               "concurrency": args.concurrency, "runs": runs,
               "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"limit {res['limit']}, {args.concurrency} batches in flight")
    print("| run | records | calls | calls/record | seconds (delivery) | rate used (delivery) | lost |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['run']} | {r['records']:,} | {r['calls']:,} | {r['calls_per_record']} | {r['seconds']} "
              f"({r['delivery_seconds']}) | {r['rate_used']:.0%} ({r['rate_used_delivery']:.0%}) | "
              f"{r['records_lost']} |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
