"""One sync run of one object type to one destination: diff against the ledger, send the
new, changed and retried records in batches (or write them to the dry-run outbox), commit
every batch's outcome, and record the run (see ledger.py for the rules)."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pandas as pd

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.defs.activation.hubspot import BODY_VERSION, HubSpotClient, outbox_request


def _deliver(conn, client: HubSpotClient, destination: str, object_type: str, id_property: str,
             batches: list[list], kinds: dict, run_id: str):
    """Yields each batch's outcomes. A dry run writes the requests to the outbox; a real run
    keeps up to ``client.concurrency`` batches in flight (the rate limiter is shared), so a
    destination's latency does not leave its allowed rate unused."""
    if client.dry_run:
        for seq, batch in enumerate(batches, start=1):
            req = outbox_request(client, object_type, id_property, batch)
            L.write_outbox(conn, [(run_id, destination, object_type, seq, req["method"], req["url"], req["headers"],
                                   req["body"], len(batch), dt.datetime.now(dt.timezone.utc))])
            yield [L.Outcome(k, "synced", created=kinds[k] == "new") for k, _, _ in batch]
        return
    if client.concurrency <= 1:
        for batch in batches:
            yield client.upsert(object_type, id_property, batch)
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=client.concurrency) as pool:
        todo = iter(batches)
        running = set()
        try:
            while True:
                while len(running) < client.concurrency:
                    batch = next(todo, None)
                    if batch is None:
                        break
                    running.add(pool.submit(client.upsert, object_type, id_property, batch))
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in running:
                f.cancel()


def new_run_id() -> str:
    return f"sync-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def sync_records(conn, client: HubSpotClient, destination: str, object_type: str, id_property: str,
                 records: pd.DataFrame, snapshot_date: dt.date | None, run_id: str,
                 full_resync: bool = False, ignore_in_diff: tuple[str, ...] = ()) -> dict:
    """``records``: record_key, id_value (the idProperty's value; missing = cannot be matched,
    rejected without a call), properties (dict), snapshot_date. ``ignore_in_diff``: properties
    that do not count as a change. Returns the run's row of sync_runs."""
    L.ensure_tables(conn)
    dest = L.ledger_destination(destination, client.dry_run)
    started, t0 = dt.datetime.now(dt.timezone.utc), time.monotonic()
    L.close_interrupted(conn, destination, object_type)
    if full_resync:
        L.reset(conn, dest, object_type)
    frame = records.copy()
    frame["payload"] = [{"id": None if pd.isna(i) else str(i), "properties": p}
                        for i, p in zip(frame["id_value"], frame["properties"])]
    # properties that change every day by nature (the scored day) are sent with a record but
    # do not make it a change on their own
    frame["payload_hash"] = [L.payload_hash({"id": pl["id"], "properties": {
        k: v for k, v in pl["properties"].items() if k not in ignore_in_diff}}) for pl in frame["payload"]]
    p = L.plan(conn, dest, object_type, frame[["record_key", "payload", "payload_hash", "snapshot_date"]],
               code_version=BODY_VERSION)
    L.advance_snapshot(conn, dest, object_type, p.unchanged_keys, snapshot_date)
    todo = p.to_send
    calls_before = client.stats.calls
    tally = L.Tally()
    run = L.begin_run(conn, run_id=run_id, destination=destination, object_type=object_type, dry_run=client.dry_run,
                      snapshot_date=snapshot_date, started=started, plan_=p, full_resync=full_resync)
    if len(todo):
        L.mark_pending(conn, dest, object_type, todo, run_id, code_version=BODY_VERSION)
        payloads = dict(zip(todo["record_key"], todo["payload"]))
        kinds = dict(zip(todo["record_key"], todo["kind"]))
        # records the destination cannot match (no id value), or that share their id value with
        # another record (one batch input per destination record), are rejected here, without a call
        local, owner = [], {}
        for k, pl in payloads.items():
            ident = (pl.get("id") or "").strip().lower()
            if not ident:
                local.append(L.Outcome(k, "rejected", error=f"no {id_property}: {destination} matches "
                                                            f"{object_type} by it"))
            elif ident in owner:
                local.append(L.Outcome(k, "rejected", error=f"{id_property} {pl['id']!r} is also record "
                                                            f"{owner[ident]!r}'s; {destination} keeps one record per "
                                                            f"{id_property}"))
            else:
                owner[ident] = k
        if local:
            L.record_outcomes(conn, dest, object_type, run_id, local, payloads)
            tally.add(local)
        sendable = [(k, payloads[k]["id"], payloads[k]["properties"]) for k in owner.values()]
        batches = [sendable[i:i + client.batch_size] for i in range(0, len(sendable), client.batch_size)]
        for outcomes in _deliver(conn, client, destination, object_type, id_property, batches, kinds, run_id):
            # each batch's outcome is committed as soon as it is known (the resume point)
            L.record_outcomes(conn, dest, object_type, run_id, outcomes, payloads)
            tally.add(outcomes)
    return L.record_run(conn, run, seconds=time.monotonic() - t0, considered=p.considered, tally=tally,
                        calls=client.stats.calls - calls_before)
