"""The sync ledger: what each destination last accepted, per record, and the bookkeeping of
every sync run (pure functions over a DuckDB connection; the assets are in assets.py).

Reverse-ETL rules this follows (the Hightouch / Census behaviour users expect):

- **diff by key**: ``sync_ledger`` keeps, per (destination, object type, record key), the
  hash and payload last *accepted* by the destination. A record is sent when it is new or
  its payload changed; an unchanged record costs nothing (zero calls on a rerun).
- **retries across runs**: a record that could not be delivered (``failed``: timeouts,
  5xx, 429 beyond the attempts) is sent again on every later run until it succeeds, with
  its newest payload if it has one, else the payload it failed with (``expired`` records,
  e.g. an earlier day's nudge, are not);
- **permanent is not transient**: a record the destination refused (``rejected``: a 4xx,
  a validation error) is *held*: not sent again until its payload or the sending code
  (``code_version``, the body format) changes, since the same request gets the same answer;
- **never lost, never doubled**: before a batch is sent, its records are written to the
  ledger as ``pending`` (committed); each batch's outcome is committed as soon as its
  response arrives. A process killed mid-sync leaves ``pending`` records, which the next
  run sends again; because every call is an upsert by a unique key, a batch whose
  response was lost has the same effect when sent twice.
- **no time travel**: a record whose ledger entry stands for a newer snapshot than the one
  being synced is skipped (a backfill of an old day does not overwrite today's values);
  an unchanged record's entry moves to each newer day it was confirmed for.
- **full resync**: forgets what a destination accepted or refused, so everything is sent again.
- **dry run**: the destination is named ``<name>:dry_run`` and keeps its own ledger, so a
  dry run never makes the real sync skip a record.

``sync_rejections`` keeps every rejected record with its error and payload;
``sync_runs`` one row per run and object type, written (``status = running``) before the
first record is sent: records considered, new, changed, unchanged, retried, held, sent,
rejected, failed, calls made and duration. A run that died (killed, out of memory) keeps
``running`` until the next run of the same destination and object type closes it as
``interrupted``, with the outcomes its records had in the ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd

from pql_pipeline.lib.warehouse import registered, transaction

LEDGER = "sync_ledger"
REJECTIONS = "sync_rejections"
RUNS = "sync_runs"
OUTBOX = "sync_outbox"

LEDGER_COLUMNS = [
    ("destination", "VARCHAR"), ("object_type", "VARCHAR"), ("record_key", "VARCHAR"), ("payload_hash", "VARCHAR"),
    ("payload", "JSON"), ("snapshot_date", "DATE"), ("status", "VARCHAR"), ("attempts", "INTEGER"),
    ("last_error", "VARCHAR"), ("remote_id", "VARCHAR"), ("first_synced_at", "TIMESTAMPTZ"),
    ("last_synced_at", "TIMESTAMPTZ"), ("updated_at", "TIMESTAMPTZ"), ("last_run_id", "VARCHAR"),
    ("code_version", "VARCHAR"),
]
REJECTION_COLUMNS = [
    ("run_id", "VARCHAR"), ("destination", "VARCHAR"), ("object_type", "VARCHAR"), ("record_key", "VARCHAR"),
    ("error", "VARCHAR"), ("payload", "JSON"), ("rejected_at", "TIMESTAMPTZ"),
]
RUN_COLUMNS = [
    ("run_id", "VARCHAR"), ("destination", "VARCHAR"), ("object_type", "VARCHAR"), ("dry_run", "BOOLEAN"),
    ("snapshot_date", "DATE"), ("started_at", "TIMESTAMPTZ"), ("finished_at", "TIMESTAMPTZ"),
    ("considered", "BIGINT"), ("new", "BIGINT"), ("changed", "BIGINT"), ("unchanged", "BIGINT"),
    ("retried", "BIGINT"), ("skipped_stale", "BIGINT"), ("sent", "BIGINT"), ("created", "BIGINT"),
    ("updated", "BIGINT"), ("rejected", "BIGINT"), ("failed", "BIGINT"), ("calls", "BIGINT"),
    ("seconds", "DOUBLE"), ("full_resync", "BOOLEAN"), ("held", "BIGINT"), ("status", "VARCHAR"),
    ("error", "VARCHAR"),
]
OUTBOX_COLUMNS = [
    ("run_id", "VARCHAR"), ("destination", "VARCHAR"), ("object_type", "VARCHAR"), ("seq", "BIGINT"),
    ("method", "VARCHAR"), ("url", "VARCHAR"), ("headers", "JSON"), ("body", "JSON"), ("records", "BIGINT"),
    ("created_at", "TIMESTAMPTZ"),
]


def write_outbox(conn, rows: list[tuple]) -> None:
    """Append dry-run requests to the outbox in one statement: each row holds the values of
    OUTBOX_COLUMNS in order."""
    if not rows:
        return
    frame = pd.DataFrame(rows, columns=[c for c, _ in OUTBOX_COLUMNS])
    with registered(conn, "sx_outbox", frame):
        conn.execute(f"INSERT INTO {OUTBOX} ({', '.join(c for c, _ in OUTBOX_COLUMNS)}) "
                     f"SELECT {', '.join(c for c, _ in OUTBOX_COLUMNS)} FROM sx_outbox")


def ensure_tables(conn) -> None:
    from pql_pipeline.lib.warehouse import ensure_columns

    for name, cols in ((LEDGER, LEDGER_COLUMNS), (REJECTIONS, REJECTION_COLUMNS), (RUNS, RUN_COLUMNS),
                       (OUTBOX, OUTBOX_COLUMNS)):
        ensure_columns(conn, name, cols)


def payload_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


@dataclass
class Plan:
    """What a run sends: ``to_send`` rows (record_key, payload dict, hash, snapshot_date,
    kind: new | changed | retry) and the counts of what it does not."""

    to_send: pd.DataFrame
    unchanged_keys: list = field(default_factory=list)
    considered: int = 0
    unchanged: int = 0
    skipped_stale: int = 0
    held: int = 0
    counts: dict = field(default_factory=dict)


def plan(conn, destination: str, object_type: str, records: pd.DataFrame, code_version: str | None = None) -> Plan:
    """Diff ``records`` (record_key, payload: dict, snapshot_date, optionally payload_hash:
    the hash of what counts as a change) against the ledger. ``code_version``: the sending
    code's body format; a rejected record is sent again only when it or this changed."""
    desired = records.copy()
    desired["record_key"] = desired["record_key"].astype(object)   # an empty frame's keys have no type
    if "payload_hash" not in desired.columns:
        desired["payload_hash"] = [payload_hash(p) for p in desired["payload"]]
    ledger = conn.execute(f"""
        SELECT record_key, payload_hash AS ledger_hash, status AS ledger_status, snapshot_date AS ledger_snapshot,
               payload AS ledger_payload, code_version AS ledger_code
        FROM {LEDGER} WHERE destination = ? AND object_type = ?""", [destination, object_type]).df()
    ledger["record_key"] = ledger["record_key"].astype(object)
    j = desired.merge(ledger, on="record_key", how="outer", indicator=True)
    in_desired = j["_merge"] != "right_only"
    known = j["_merge"] == "both"
    synced = known & (j["ledger_status"] == "synced")
    newer_sent = known & j["ledger_snapshot"].notna() & j["snapshot_date"].notna() & (
        pd.to_datetime(j["ledger_snapshot"]) > pd.to_datetime(j["snapshot_date"]))
    unchanged = in_desired & synced & (j["ledger_hash"] == j["payload_hash"])
    stale = in_desired & ~unchanged & newer_sent & synced
    # refused before, and neither the record nor the sending code changed since: the same answer again.
    # That covers a record no longer wanted, and one wanted with an older snapshot's values (both would
    # send the ledger's refused payload again), besides one wanted unchanged
    same_code = j["ledger_code"].fillna("") == (code_version or "")
    refused = (j["ledger_status"] == "rejected") & same_code
    held = refused & ((j["_merge"] == "right_only") | (known & (j["ledger_hash"] == j["payload_hash"]))
                      | (known & newer_sent))
    kind = pd.Series(None, index=j.index, dtype=object)
    kind[in_desired & ~known] = "new"
    kind[in_desired & known & synced & ~unchanged & ~stale] = "changed"
    kind[in_desired & known & ~synced & ~held] = "retry"
    # a record the destination has not accepted yet and that is not wanted now (or wanted with an
    # older snapshot's values): its last payload again
    orphan = (j["_merge"] == "right_only") & ~j["ledger_status"].isin(["synced", "expired"]) & ~held
    kind[orphan] = "retry"
    keep_last = orphan | (in_desired & known & ~synced & newer_sent)
    j = j.astype({"payload": object, "payload_hash": object, "snapshot_date": object})
    if keep_last.any():
        j.loc[keep_last, "payload"] = pd.Series(
            [json.loads(p) if isinstance(p, str) else p for p in j.loc[keep_last, "ledger_payload"]],
            index=j.index[keep_last], dtype=object)
        j.loc[keep_last, "payload_hash"] = j.loc[keep_last, "ledger_hash"]
        j.loc[keep_last, "snapshot_date"] = j.loc[keep_last, "ledger_snapshot"]
    send = j[kind.notna()].assign(kind=kind[kind.notna()])
    out = send[["record_key", "payload", "payload_hash", "snapshot_date", "kind"]].reset_index(drop=True)
    return Plan(out, unchanged_keys=list(j.loc[unchanged, "record_key"]), considered=int(in_desired.sum()),
                unchanged=int(unchanged.sum()), skipped_stale=int(stale.sum()), held=int((held & in_desired).sum()),
                counts=out["kind"].value_counts().to_dict())


def advance_snapshot(conn, destination: str, object_type: str, keys: list, snapshot_date) -> None:
    """Unchanged records now stand for ``snapshot_date`` too: an older day synced later (a
    backfill) must not overwrite them."""
    if not keys or snapshot_date is None:
        return
    frame = pd.DataFrame({"record_key": pd.Series(keys, dtype=object)})
    with registered(conn, "sx_unchanged", frame):
        conn.execute(f"""
            UPDATE {LEDGER} AS l SET snapshot_date = greatest(l.snapshot_date, CAST(? AS DATE))
            FROM sx_unchanged AS u
            WHERE l.destination = ? AND l.object_type = ? AND l.record_key = u.record_key""",
                     [snapshot_date, destination, object_type])


def mark_pending(conn, destination: str, object_type: str, rows: pd.DataFrame, run_id: str,
                 code_version: str | None = None) -> None:
    """Write the records about to be sent as ``pending`` (the resume log), in one transaction."""
    now = dt.datetime.now(dt.timezone.utc)
    frame = pd.DataFrame({
        "destination": destination, "object_type": object_type, "record_key": rows["record_key"],
        "payload_hash": rows["payload_hash"], "payload": [json.dumps(p, sort_keys=True) for p in rows["payload"]],
        "snapshot_date": pd.to_datetime(rows["snapshot_date"]).dt.date, "run_id": run_id, "now": now,
        "code_version": code_version})
    with registered(conn, "sx_pending", frame), transaction(conn):
        _write_pending(conn)


def _write_pending(conn) -> None:
    conn.execute(f"""
        UPDATE {LEDGER} AS l SET payload_hash = p.payload_hash, payload = p.payload, snapshot_date = p.snapshot_date,
               status = CASE WHEN l.status IN ('synced', 'rejected') THEN 'pending' ELSE l.status END,
               updated_at = p.now, last_run_id = p.run_id, code_version = p.code_version
        FROM sx_pending AS p
        WHERE l.destination = p.destination AND l.object_type = p.object_type AND l.record_key = p.record_key""")
    conn.execute(f"""
        INSERT INTO {LEDGER} (destination, object_type, record_key, payload_hash, payload, snapshot_date, status,
                              attempts, updated_at, last_run_id, code_version)
        SELECT p.destination, p.object_type, p.record_key, p.payload_hash, p.payload, p.snapshot_date, 'pending', 0,
               p.now, p.run_id, p.code_version
        FROM sx_pending AS p WHERE NOT EXISTS (
            SELECT 1 FROM {LEDGER} AS l WHERE l.destination = p.destination AND l.object_type = p.object_type
              AND l.record_key = p.record_key)""")


@dataclass
class Outcome:
    """The destination's answer for one record of a batch."""

    record_key: str
    status: str                  # synced | rejected | failed
    created: bool = False
    remote_id: str | None = None
    error: str | None = None


def record_outcomes(conn, destination: str, object_type: str, run_id: str, outcomes: list[Outcome],
                    payloads: dict[str, dict]) -> None:
    """Commit one batch's outcomes: accepted records become ``synced``; rejected ones are
    kept in sync_rejections with their error and payload; undelivered ones stay to retry."""
    now = dt.datetime.now(dt.timezone.utc)
    frame = pd.DataFrame([{"record_key": o.record_key, "status": o.status, "remote_id": o.remote_id,
                           "error": o.error} for o in outcomes],
                         columns=["record_key", "status", "remote_id", "error"])
    with registered(conn, "sx_outcomes", frame), transaction(conn):
        _write_outcomes(conn, destination, object_type, run_id, outcomes, payloads, now)


def _write_outcomes(conn, destination, object_type, run_id, outcomes, payloads, now) -> None:
    conn.execute(f"""
        UPDATE {LEDGER} AS l SET status = o.status,
               attempts = CASE WHEN o.status = 'synced' THEN 0 ELSE COALESCE(l.attempts, 0) + 1 END,
               last_error = CASE WHEN o.status = 'synced' THEN NULL ELSE o.error END,
               remote_id = COALESCE(o.remote_id, l.remote_id),
               first_synced_at = CASE WHEN o.status = 'synced' THEN COALESCE(l.first_synced_at, ?)
                                      ELSE l.first_synced_at END,
               last_synced_at = CASE WHEN o.status = 'synced' THEN ? ELSE l.last_synced_at END,
               updated_at = ?, last_run_id = ?
        FROM sx_outcomes AS o
        WHERE l.destination = ? AND l.object_type = ? AND l.record_key = o.record_key""",
                 [now, now, now, run_id, destination, object_type])
    rejected = [o for o in outcomes if o.status == "rejected"]
    if rejected:
        conn.executemany(
            f"INSERT INTO {REJECTIONS} (run_id, destination, object_type, record_key, error, payload, rejected_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[run_id, destination, object_type, o.record_key, o.error,
              json.dumps(payloads.get(o.record_key), sort_keys=True), now] for o in rejected])


def reset(conn, destination: str, object_type: str) -> int:
    """Full resync: forget what the destination accepted or refused (the next run sends
    everything); records not delivered yet stay, so they are still retried."""
    where = "destination = ? AND object_type = ? AND status IN ('synced', 'rejected')"
    n = conn.execute(f"SELECT count(*) FROM {LEDGER} WHERE {where}", [destination, object_type]).fetchall()[0][0]
    conn.execute(f"DELETE FROM {LEDGER} WHERE {where}", [destination, object_type])
    return n


def ledger_destination(destination: str, dry_run: bool) -> str:
    """A dry run keeps its own ledger, so it never makes the real sync skip a record."""
    return f"{destination}:dry_run" if dry_run else destination


@dataclass
class Tally:
    """The outcomes of a run's records, counted as they are committed."""

    created: int = 0
    updated: int = 0
    rejected: int = 0
    failed: int = 0

    def add(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.status == "synced":
                self.created += o.created
                self.updated += not o.created
            elif o.status == "rejected":
                self.rejected += 1
            else:
                self.failed += 1


def begin_run(conn, *, run_id: str, destination: str, object_type: str, dry_run: bool, snapshot_date,
              started: dt.datetime, plan_: Plan, full_resync: bool) -> dict:
    """Write the run's row of sync_runs, ``running``, before any record is sent, and return
    it for ``record_run``: a run that dies leaves it (closed as ``interrupted`` by the next
    run, see ``close_interrupted``)."""
    c = plan_.counts
    row = {"run_id": run_id, "destination": destination, "object_type": object_type, "dry_run": dry_run,
           "snapshot_date": snapshot_date, "started_at": started, "considered": plan_.considered,
           "new": c.get("new", 0), "changed": c.get("changed", 0), "unchanged": plan_.unchanged,
           "retried": c.get("retry", 0), "skipped_stale": plan_.skipped_stale, "held": plan_.held,
           "sent": len(plan_.to_send), "created": 0, "updated": 0, "rejected": 0, "failed": 0, "calls": 0,
           "full_resync": full_resync, "status": "running"}
    _write_run(conn, row)
    return row


def close_interrupted(conn, destination: str, object_type: str) -> list[str]:
    """Close the ``running`` rows of ``destination``'s earlier runs of ``object_type``: their
    process died mid-sync (one sync of a destination runs at a time: the warehouse pool and
    DuckDB's single writer). Their outcomes are read from the ledger rows they wrote last:
    accepted ones as created (first accepted then) or updated, refused ones as rejected, and
    undelivered or unconfirmed (``pending``: sent again by the next run) ones as failed.
    Returns the run ids closed."""
    runs = conn.execute(
        f"SELECT run_id, dry_run FROM {RUNS} WHERE destination = ? AND object_type = ? AND status = 'running'",
        [destination, object_type]).fetchall()
    for run_id, dry_run in runs:
        # the interrupted run's own ledger (a dry run keeps its own)
        ledger_destination_ = ledger_destination(destination, bool(dry_run))
        created, updated, rejected, failed, pending, last = conn.execute(f"""
            SELECT count(*) FILTER (WHERE status = 'synced' AND first_synced_at = last_synced_at),
                   count(*) FILTER (WHERE status = 'synced' AND first_synced_at <> last_synced_at),
                   count(*) FILTER (WHERE status = 'rejected'), count(*) FILTER (WHERE status IN ('failed', 'pending')),
                   count(*) FILTER (WHERE status = 'pending'), max(updated_at)
            FROM {LEDGER} WHERE destination = ? AND object_type = ? AND last_run_id = ?""",
            [ledger_destination_, object_type, run_id]).fetchall()[0]
        conn.execute(f"""
            UPDATE {RUNS} SET status = 'interrupted', finished_at = COALESCE(CAST(? AS TIMESTAMPTZ), started_at),
                   sent = ?, created = ?, updated = ?, rejected = ?, failed = ?,
                   seconds = round(epoch(COALESCE(CAST(? AS TIMESTAMPTZ), started_at)) - epoch(started_at), 3),
                   error = ?
            WHERE run_id = ? AND destination = ? AND object_type = ? AND status = 'running'""",
                     [last, created + updated + rejected + failed, created, updated, rejected, failed, last,
                      f"interrupted: the sync's process ended before the run finished; {pending} record(s) left "
                      "pending (not sent yet, or sent without a confirmed answer) are sent again by the next run",
                      run_id, destination, object_type])
    return [r[0] for r in runs]


def record_run(conn, run: dict, *, seconds: float, considered: int, tally: Tally, calls: int) -> dict:
    """Complete the run's row of sync_runs (``run``, from ``begin_run``) with its outcomes and
    return it."""
    row = {**run, "finished_at": dt.datetime.now(dt.timezone.utc), "considered": considered,
           "created": tally.created, "updated": tally.updated, "rejected": tally.rejected, "failed": tally.failed,
           "calls": calls, "seconds": round(seconds, 3), "status": "completed", "error": None}
    _write_run(conn, row)
    return row


def _write_run(conn, row: dict) -> None:
    """Replace a run's row of sync_runs, in one transaction (a kill between the delete and
    the insert must not lose it)."""
    names = [n for n, _ in RUN_COLUMNS]
    with transaction(conn):
        conn.execute(f"DELETE FROM {RUNS} WHERE run_id = ? AND destination = ? AND object_type = ?",
                     [row["run_id"], row["destination"], row["object_type"]])
        conn.execute(f"INSERT INTO {RUNS} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                     [row.get(n) for n in names])
