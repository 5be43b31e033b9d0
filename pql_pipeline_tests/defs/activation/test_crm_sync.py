"""The CRM sync against a local HubSpot stand-in on 127.0.0.1 (real HTTP, real DuckDB):
batching, diffing, faults, partial rejections, a sync that dies halfway, dry runs and
secrets."""

import datetime as dt
import json

import pandas as pd
import pytest

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.defs.activation.hubspot import DestinationError, HubSpotClient
from pql_pipeline.defs.activation.sync import sync_records
from pql_pipeline_tests.defs.activation.fake_hubspot import FakeHubSpot, fast_client

TOKEN = "pat-na1-0000-SECRET-TOKEN-4242"
DAY = dt.date(2026, 3, 31)


@pytest.fixture
def hub():
    with FakeHubSpot(token=TOKEN) as server:
        yield server


def client(server, token=TOKEN, **kw) -> HubSpotClient:
    return fast_client(server.url if server else "https://api.hubapi.com", token, **kw)


def contacts(n: int, score: float = 0.5, day: dt.date = DAY, bad: set[int] = frozenset()) -> pd.DataFrame:
    return pd.DataFrame({
        "record_key": [f"u{i}" for i in range(n)],
        "id_value": [None if i in bad else f"user{i}@example.com" for i in range(n)],
        "properties": [{"email": f"user{i}@example.com", "pql_score": round(score + i / 10_000, 4), "pql_tier": "hot",
                        "pql_is_pql": True, "pql_reasons": "invited 3 teammates"} for i in range(n)],
        "snapshot_date": day})


def run(conn, c, records, day=DAY, **kw):
    return sync_records(conn, c, "hubspot", "contacts", "email", records, day, f"run-{len(c.stats.__dict__)}-"
                        f"{dt.datetime.now().timestamp()}", **kw)


def test_batches_of_at_most_100_and_nothing_sent_when_nothing_changed(conn, hub):
    c = client(hub)
    first = run(conn, c, contacts(250))
    sizes = [len(json.loads(r["body"])["inputs"]) for r in hub.calls()]
    assert sizes == [100, 100, 50]
    assert (first["new"], first["sent"], first["created"], first["updated"], first["calls"]) == (250, 250, 250, 0, 3)
    assert len(hub.objects) == 250 and hub.objects[("contacts", "user7@example.com")]["properties"]["pql_score"] == "0.5007"
    # property values go as strings; booleans as true / false
    assert hub.objects[("contacts", "user7@example.com")]["properties"]["pql_is_pql"] == "true"
    again = run(conn, c, contacts(250))
    assert (again["unchanged"], again["sent"], again["calls"]) == (250, 0, 0) and len(hub.calls()) == 3
    changed = contacts(250)
    for i in (3, 150, 249):
        changed.at[i, "properties"] = {**changed.at[i, "properties"], "pql_tier": "warm"}
    third = run(conn, c, changed)
    assert (third["changed"], third["unchanged"], third["sent"], third["updated"], third["calls"]) == (3, 247, 3, 3, 1)
    assert json.loads(hub.calls()[-1]["body"])["inputs"][0]["idProperty"] == "email"
    assert conn.execute(f"SELECT count(*) FROM {L.RUNS}").fetchall()[0][0] == 3


def test_faults_are_retried_to_an_exactly_once_effect(conn, hub):
    hub.faults.extend(["429", "500", "timeout", "reset", "lost"])
    c = client(hub)
    row = run(conn, c, contacts(300))
    assert (row["sent"], row["created"] + row["updated"], row["failed"], row["rejected"]) == (300, 300, 0, 0)
    assert row["calls"] == 3 + 5                     # every fault cost one more call
    assert c.stats.throttled == 1
    # the lost answer's batch was applied twice by the server: an upsert, so the same effect
    assert len(hub.objects) == 300 and max(hub.upserts.values()) == 2 and sum(hub.upserts.values()) == 400
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'synced'").fetchall()[0][0] == 300


def test_a_batch_that_keeps_failing_is_kept_and_sent_by_the_next_run(conn, hub):
    c = client(hub, max_attempts=2)
    hub.faults.extend(["500", "500"])                # the first batch fails twice: given up for this run
    row = run(conn, c, contacts(150))
    assert (row["failed"], row["created"]) == (100, 50)
    assert conn.execute(f"SELECT count(*), max(attempts), min(last_error) FROM {L.LEDGER} WHERE status = 'failed'"
                        ).fetchall()[0][:2] == (100, 1)
    nxt = run(conn, c, contacts(150))
    assert (nxt["retried"], nxt["unchanged"], nxt["sent"], nxt["created"], nxt["failed"]) == (100, 50, 100, 100, 0)
    assert len(hub.objects) == 150


def test_partial_rejections_are_recorded_once_and_sent_again_only_when_the_record_or_code_changes(conn, hub,
                                                                                                     monkeypatch):
    hub.reject = lambda t, inp: "Property values were not valid" if inp["id"].startswith("user1") else None
    c = client(hub)
    row = run(conn, c, contacts(30, bad={29}))
    rejected = {r[0]: r[1] for r in conn.execute(f"SELECT record_key, error FROM {L.REJECTIONS}").fetchall()}
    # user1, user10..user19 rejected by HubSpot (207); u29 has no e-mail: rejected before any call
    assert set(rejected) == {"u1", *(f"u{i}" for i in range(10, 20)), "u29"}
    assert rejected["u1"] == "VALIDATION_ERROR: Property values were not valid"
    assert rejected["u29"].startswith("no email")
    assert (row["rejected"], row["created"], row["calls"]) == (12, 18, 1)
    payload = json.loads(conn.execute(f"SELECT payload FROM {L.REJECTIONS} WHERE record_key = 'u1'").fetchall()[0][0])
    assert payload["properties"]["email"] == "user1@example.com"
    # counts reconcile: every record sent is synced, rejected or failed
    assert row["sent"] == row["created"] + row["updated"] + row["rejected"] + row["failed"]
    # a refusal is permanent: the same records are not sent again (the same body gets the same answer)
    hub.reject = lambda t, inp: None
    calls = len(hub.calls())
    held = run(conn, c, contacts(30, bad={29}))
    assert (held["held"], held["retried"], held["unchanged"], held["sent"], held["calls"]) == (12, 0, 18, 0, 0)
    assert len(hub.calls()) == calls and conn.execute(f"SELECT count(*) FROM {L.REJECTIONS}").fetchall()[0][0] == 12
    # a record that changed is sent again (u1 here); the others wait
    changed = contacts(30, bad={29})
    changed.at[1, "properties"] = {**changed.at[1, "properties"], "pql_tier": "warm"}
    nxt = run(conn, c, changed)
    assert (nxt["retried"], nxt["held"], nxt["sent"], nxt["created"]) == (1, 11, 1, 1)
    # new sending code (another body format) sends every refused record once more
    monkeypatch.setattr("pql_pipeline.defs.activation.sync.BODY_VERSION", "next")
    again = run(conn, c, changed)
    assert (again["retried"], again["held"], again["created"], again["rejected"]) == (11, 0, 10, 1)
    assert len(hub.objects) == 29


class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing catches it)."""


def test_a_sync_killed_halfway_resumes_without_losing_or_doubling_records(conn, hub):
    c = client(hub)
    real = c.upsert
    sent = []

    def dies_after_two_batches(*a, **kw):
        out = real(*a, **kw)          # the server applied the batch ...
        sent.append(len(out))
        if len(sent) == 3:
            raise Killed()            # ... and the process died before writing down the answer
        return out

    c.upsert = dies_after_two_batches
    with pytest.raises(Killed):
        run(conn, c, contacts(500))
    status = dict(conn.execute(f"SELECT status, count(*) FROM {L.LEDGER} GROUP BY 1").fetchall())
    assert status == {"synced": 200, "pending": 300}
    assert conn.execute(f"SELECT status FROM {L.RUNS}").fetchall() == [("running",)]   # the dead run's row
    # a dry run next closes it from the dead run's own (real) ledger
    run(conn, client(None, token=None), contacts(500))
    closed = conn.execute(f"SELECT status, sent, created, updated, failed FROM {L.RUNS} WHERE NOT dry_run").fetchall()
    assert closed == [("interrupted", 500, 200, 0, 300)]
    c2 = client(hub)
    row = run(conn, c2, contacts(500))
    assert (row["retried"], row["unchanged"], row["sent"], row["calls"]) == (300, 200, 300, 3)
    assert len(hub.objects) == 500
    # the batch whose answer was lost went twice (an upsert: same effect); nothing else did
    assert sorted(set(hub.upserts.values())) == [1, 2] and sum(hub.upserts.values()) == 600
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'synced' AND destination = 'hubspot'"
                        ).fetchall()[0][0] == 500


def test_dry_run_writes_the_exact_requests_and_never_the_token(conn, hub):
    dry = client(None, token=None)
    row = run(conn, dry, contacts(120))
    assert row["dry_run"] and (row["sent"], row["created"], row["calls"]) == (120, 120, 0)
    assert hub.requests == []
    out = conn.execute(f"SELECT url, body, headers, records FROM {L.OUTBOX} ORDER BY seq").fetchall()
    assert [r[3] for r in out] == [100, 20]
    assert out[0][0] == "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert"
    body = json.loads(out[0][1])
    assert body["inputs"][0] == {"id": "user0@example.com", "idProperty": "email", "objectWriteTraceId": "u0",
                                 "properties": {"email": "user0@example.com", "pql_score": "0.5", "pql_tier": "hot",
                                                "pql_is_pql": "true", "pql_reasons": "invited 3 teammates"}}
    # a dry run keeps its own ledger: the real sync later still sends everything
    real = run(conn, client(hub), contacts(120))
    assert (real["new"], real["sent"], real["calls"]) == (120, 120, 2)
    # the token reached the server, and nothing else
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    dump = " ".join(str(v) for t in (L.LEDGER, L.OUTBOX, L.RUNS, L.REJECTIONS)
                    for row in conn.execute(f"SELECT * FROM {t}").fetchall() for v in row)
    assert TOKEN not in dump


def test_bad_credentials_stop_the_sync_and_the_records_wait_for_the_next_run(conn, hub):
    with pytest.raises(DestinationError, match="HUBSPOT_ACCESS_TOKEN.*crm.objects.contacts.write") as e:
        run(conn, client(hub, token="pat-wrong"), contacts(10))
    assert "pat-wrong" not in str(e.value)
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'pending'").fetchall()[0][0] == 10
    row = run(conn, client(hub), contacts(10))
    assert (row["retried"], row["created"]) == (10, 10)


def test_full_resync_sends_everything_and_an_older_day_never_overwrites_a_newer_one(conn, hub):
    c = client(hub)
    run(conn, c, contacts(40))
    assert run(conn, c, contacts(40), full_resync=True)["sent"] == 40
    old = run(conn, c, contacts(40, score=0.1, day=DAY - dt.timedelta(days=3)), day=DAY - dt.timedelta(days=3))
    assert (old["skipped_stale"], old["sent"]) == (40, 0)
    assert hub.objects[("contacts", "user0@example.com")]["properties"]["pql_score"] == "0.5"


def test_the_rate_limit_is_kept_in_every_window():
    from pql_pipeline.defs.activation.hubspot import RateLimiter

    now = [0.0]
    times = []
    lim = RateLimiter(5, 1.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(23):
        lim.acquire()
        times.append(now[0])
    assert all(sum(1 for t in times if s <= t < s + 1.0) <= 5 for s in times)
    assert times[-1] == pytest.approx(4.0)          # 23 calls at 5 per second: the last at 4 s, no idle time


def test_batches_in_flight_together_keep_every_rule(conn, hub):
    """Four batches in flight at once with faults: still each record once, ledger complete."""
    hub.faults.extend(["429", "500", "lost", "reset"])
    c = client(hub)
    c.concurrency = 4
    row = run(conn, c, contacts(1_000))
    assert (row["sent"], row["created"] + row["updated"], row["failed"], row["calls"]) == (1000, 1000, 0, 14)
    assert len(hub.objects) == 1000 and sum(hub.upserts.values()) == 1100
    assert max(len(json.loads(r["body"])["inputs"]) for r in hub.calls()) == 100
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'synced'").fetchall()[0][0] == 1000
    assert run(conn, c, contacts(1_000))["calls"] == 0


def test_a_property_that_changes_every_day_alone_does_not_resend_a_record(conn, hub):
    c = client(hub)
    today = contacts(20)
    for props in today["properties"]:
        props["pql_scored_on"] = "2026-03-31"
    sync_records(conn, c, "hubspot", "contacts", "email", today, DAY, "r1", ignore_in_diff=("pql_scored_on",))
    tomorrow = contacts(20, day=DAY + dt.timedelta(days=1))
    for i, props in enumerate(tomorrow["properties"]):
        props["pql_scored_on"] = "2026-04-01"
        if i == 0:
            props["pql_tier"] = "warm"
    row = sync_records(conn, c, "hubspot", "contacts", "email", tomorrow, DAY + dt.timedelta(days=1), "r2",
                       ignore_in_diff=("pql_scored_on",))
    assert (row["changed"], row["unchanged"], row["sent"]) == (1, 19, 1)
    # the record that changed carries the day of its new values
    assert hub.objects[("contacts", "user0@example.com")]["properties"]["pql_scored_on"] == "2026-04-01"
    assert hub.objects[("contacts", "user1@example.com")]["properties"]["pql_scored_on"] == "2026-03-31"


CHILD = """
import datetime as dt, sys
import duckdb
sys.path.insert(0, {root!r})
from pql_pipeline.defs.activation.hubspot import HubSpotClient, Transport
from pql_pipeline.defs.activation.sync import sync_records
from pql_pipeline_tests.defs.activation.test_crm_sync import contacts
c = HubSpotClient(base_url={url!r}, access_token={token!r}, transport=Transport(timeout_seconds=60))
sync_records(duckdb.connect({db!r}), c, "hubspot", "contacts", "email", contacts(500), dt.date(2026, 3, 31), "killed")
"""


def test_a_sync_process_killed_mid_batch_loses_and_doubles_nothing(tmp_path, hub):
    """A real kill -9 while the third batch's answer is on its way: the next run sends the
    rest, and HubSpot ends with every record once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import duckdb

    root = str(Path(__file__).resolve().parents[3])
    db = str(tmp_path / "kill.duckdb")
    hub.faults.extend([None, None, "slow"])
    hub.timeout_sleep = 30
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=root, url=hub.url, token=TOKEN, db=db)])
    deadline = time.monotonic() + 60
    while len(hub.calls()) < 3 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert len(hub.calls()) == 3, "the child did not reach its third batch"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    hub.timeout_sleep = 0
    conn = duckdb.connect(db)
    status = dict(conn.execute(f"SELECT status, count(*) FROM {L.LEDGER} GROUP BY 1").fetchall())
    assert status == {"synced": 200, "pending": 300}
    row = sync_records(conn, client(hub), "hubspot", "contacts", "email", contacts(500), DAY, "resumed")
    assert (row["retried"], row["unchanged"], row["sent"], row["calls"]) == (300, 200, 300, 3)
    assert len(hub.objects) == 500 and sum(hub.upserts.values()) == 600 and max(hub.upserts.values()) == 2
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'synced'").fetchall() == [(500,)]


def test_a_backfill_never_overwrites_values_confirmed_for_a_newer_day(conn, hub):
    c = client(hub)
    run(conn, c, contacts(5), day=DAY)                                   # sent on day 31
    later = DAY + dt.timedelta(days=4)
    assert run(conn, c, contacts(5, day=later), day=later)["sent"] == 0  # confirmed unchanged on day 35
    back = DAY + dt.timedelta(days=2)
    old = run(conn, c, contacts(5, score=0.1, day=back), day=back)       # a backfill of day 33
    assert (old["skipped_stale"], old["sent"]) == (5, 0)


def test_records_sharing_an_id_value_are_rejected_without_a_call(conn, hub):
    recs = contacts(4)
    recs.at[3, "id_value"] = "USER0@example.com"          # the same contact as u0 for HubSpot
    row = run(conn, client(hub), recs)
    assert (row["sent"], row["created"], row["rejected"], row["calls"]) == (4, 3, 1, 1)
    [(key, error)] = conn.execute(f"SELECT record_key, error FROM {L.REJECTIONS}").fetchall()
    assert key == "u3" and "also record 'u0'" in error
    assert len(json.loads(hub.calls()[0]["body"])["inputs"]) == 3


def test_full_resync_still_retries_records_never_accepted(conn, hub):
    c = client(hub, max_attempts=1)
    hub.faults.append("500")
    run(conn, c, contacts(10))                             # all 10 failed
    row = run(conn, client(hub), contacts(3), full_resync=True)
    assert (row["new"], row["retried"], row["sent"]) == (0, 10, 10)


def test_a_token_read_with_a_newline_is_used_without_it():
    from pql_pipeline.defs.activation.assets import HubSpotResource
    from pql_pipeline.settings import CrmSettings

    assert HubSpotResource(access_token=TOKEN + "\n").client(CrmSettings()).access_token == TOKEN
    assert HubSpotResource(access_token="  ").client(CrmSettings()).dry_run
