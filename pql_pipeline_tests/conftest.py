"""Shared fixtures: a real DuckDB file per test, helpers to write event files."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Under pytest-xdist the workers already keep every core busy: OpenMP threads per worker
# (scikit-learn's gradient boosting) would oversubscribe them and spin. One thread each,
# set before scikit-learn loads its OpenMP runtime (and inherited by the `pql` processes
# the tests start). Measured: a training beside a busy core took 82 s and 102 CPU-s with
# two threads, 51 s and 50 CPU-s with one.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from pql_pipeline.lib.contracts import load_contract
from pql_pipeline.lib.warehouse import Warehouse, ensure_tables
from pql_pipeline.settings import PROJECT_ROOT

CONTRACTS = PROJECT_ROOT / "data_contracts"


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(database=str(tmp_path / "wh" / "test.duckdb"), memory_limit="1GB", threads=2)


@pytest.fixture
def conn(warehouse: Warehouse):
    with warehouse.get_connection() as c:
        ensure_tables(c, load_contract(CONTRACTS / "raw_events.odcs.yaml"), "raw_events")
        ensure_tables(c, load_contract(CONTRACTS / "validated_events.odcs.yaml"), "validated_events",
                      "quarantined_events", "duplicate_events", "identity_links", "account_memberships")
        yield c


@pytest.fixture
def segment_contract():
    return load_contract(CONTRACTS / "segment_events.odcs.yaml")


def write_lines(path: Path, lines: list) -> Path:
    """Write dicts as JSON lines and bytes/str verbatim, each followed by a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                f.write(json.dumps(line).encode("utf-8"))
            elif isinstance(line, str):
                f.write(line.encode("utf-8"))
            else:
                f.write(line)
            f.write(b"\n")
    return path


def track(mid: str, event: str, ts: str, user: str | None = "u1", anon: str | None = None, **props) -> dict:
    msg = {"messageId": mid, "type": "track", "event": event, "timestamp": ts, "receivedAt": ts_utc(ts),
           "properties": props}
    if user is not None:
        msg["userId"] = user
    if anon is not None:
        msg["anonymousId"] = anon
    return msg


def ts_utc(ts: str) -> str:
    import datetime as dt

    try:
        d = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        return d.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    except ValueError:
        return "2026-01-02T12:00:00.000Z"


def pytest_collection_modifyitems(config, items):
    """The modules with the most end-to-end (``slow``) tests first, in that order: under
    pytest-xdist (``--dist loadfile``) they start at once on both workers and the quick
    modules fill in around them, instead of a long module starting last."""
    slow: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("slow"):
            slow[item.module.__name__] = slow.get(item.module.__name__, 0) + 1
    items.sort(key=lambda item: -slow.get(item.module.__name__, 0))
