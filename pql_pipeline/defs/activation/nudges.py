"""In-app nudges: an event per self-serve PQL that triggers an in-app message in a messaging
tool, behind a small channel interface.

Channels:

- **intercom**: ``POST {base_url}/events`` (``Intercom-Version: 2.15``, the version whose
  published OpenAPI document the tests validate every body against) with ``event_name``,
  ``created_at`` (Unix seconds), ``user_id`` (the product's user id, Intercom's external id)
  and at most 10 ``metadata`` keys, every value a string as the spec's
  ``create_data_event_request`` requires; Intercom answers 202 and drops a duplicate (same
  user, name and ``created_at``), so ``created_at`` is deterministic: midnight UTC of the
  scored day.
- **webhook**: ``POST`` of the same nudge as JSON to your URL, signed with HMAC-SHA256 of
  the body under a shared secret (``X-PQL-Signature: sha256=<hex>``, ``X-PQL-Timestamp``),
  for any tool that can receive one.

Rules (on top of the sync ledger's: diff, retries across runs, resume, dry run):

- one nudge per user, event and day: the record key is ``<user>|<event>|<day>``, so a
  re-run of a day never nudges twice;
- a frequency cap: no nudge to a user who got one within ``cap_days`` (from the ledger's
  accepted nudges), highest probability first;
- only users the scores routed ``in_app`` (routing already suppresses users of accounts
  sales works and caps nudges per account).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

import pandas as pd

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.defs.activation.hubspot import DestinationError, Transport
from pql_pipeline.lib.engine import sql_literal
from pql_pipeline.lib.warehouse import table_exists

MAX_METADATA_KEYS = 10   # Intercom's limit for an event's metadata
INTERCOM_VERSION = "2.15"
# what the nudge bodies look like: a change sends again the nudges a channel rejected before
BODY_VERSION = "2"


def created_at(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), dt.timezone.utc).timestamp())


@dataclass
class NudgeChannel:
    """Sends one nudge (a dict: user_id, email, event_name, created_at, metadata)."""

    name: str
    url: str
    secret: str | None
    transport: Transport

    def __post_init__(self):
        if self.secret:
            self.transport.secrets = (*self.transport.secrets, self.secret)

    @property
    def dry_run(self) -> bool:
        return not self.secret

    def request(self, nudge: dict) -> tuple[bytes, dict]:
        raise NotImplementedError

    def redacted_headers(self, headers: dict) -> dict:
        return {k: ("<redacted>" if k.lower() in ("authorization", "x-pql-signature") else v)
                for k, v in headers.items()}

    def send(self, key: str, nudge: dict) -> L.Outcome:
        body, headers = self.request(nudge)
        r, error = self.transport.post(self.url, body, headers)
        if r is None:
            return L.Outcome(key, "failed", error=error)
        if r.status_code in (200, 201, 202, 204):
            return L.Outcome(key, "synced", created=True)
        message = self.transport.message(r)
        if r.status_code in (401, 403):
            # a webhook URL can itself be a credential: only its origin is shown
            raise DestinationError(f"{self.name} answered {r.status_code} to {_origin(self.url)}: check its token or "
                                   f"secret ({message})")
        # any other 4xx refuses this body: sent again only once the nudge or the code changes
        return L.Outcome(key, "rejected", error=f"{r.status_code}: {message}")


class IntercomChannel(NudgeChannel):
    def request(self, nudge: dict) -> tuple[bytes, dict]:
        body = {"event_name": nudge["event_name"], "created_at": nudge["created_at"], "user_id": nudge["user_id"],
                "metadata": nudge["metadata"]}
        if nudge.get("email"):
            body["email"] = nudge["email"]
        return json.dumps(body, sort_keys=True).encode(), {
            "Authorization": f"Bearer {self.secret}", "Content-Type": "application/json",
            "Accept": "application/json", "Intercom-Version": INTERCOM_VERSION}


class WebhookChannel(NudgeChannel):
    def request(self, nudge: dict) -> tuple[bytes, dict]:
        body = json.dumps(nudge, sort_keys=True).encode()
        ts = str(int(time.time()))
        sig = hmac.new((self.secret or "").encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return body, {"Content-Type": "application/json", "X-PQL-Timestamp": ts, "X-PQL-Signature": f"sha256={sig}"}


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def verify_webhook(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (documented for webhook users; used by the tests)."""
    want = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={want}", signature)


def nudge_candidates(conn, day: dt.date, event_name: str) -> pd.DataFrame:
    """The users routed in_app on ``day`` (highest probability first) with what the message
    can say: the nudge as the channel receives it."""
    if not table_exists(conn, "pql_scores"):
        return pd.DataFrame(columns=["record_key", "user_id", "probability", "nudge"])
    email = "u.email" if table_exists(conn, "users") else "CAST(NULL AS VARCHAR)"
    users = "LEFT JOIN users AS u ON u.user_id = s.user_id" if table_exists(conn, "users") else ""
    df = conn.execute(f"""
        SELECT s.user_id, {email} AS email, s.account_id, s.probability, s.tier, s.reason_text, s.milestones_hit,
               s.model_version, s.segment
        FROM pql_scores AS s {users}
        WHERE s.snapshot_date = ? AND s.route = 'in_app'
        ORDER BY s.probability DESC, s.user_id""", [day]).df()
    nudges = []
    for r in df.itertuples():
        reasons = (r.reason_text or "").split("; ") if isinstance(r.reason_text, str) else []
        meta = {"pql_score": str(round(float(r.probability), 4)), "pql_tier": r.tier,
                "top_reason": reasons[0][:250] if reasons else None, "milestones": r.milestones_hit,
                "account_id": r.account_id, "segment": r.segment, "model_version": r.model_version,
                "scored_on": day.isoformat()}
        # Intercom's create_data_event_request: metadata values are strings
        meta = {k: str(v) for k, v in meta.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}
        meta = dict(list(meta.items())[:MAX_METADATA_KEYS])
        nudges.append({"user_id": r.user_id, "email": r.email if isinstance(r.email, str) else None,
                       "event_name": event_name, "created_at": created_at(day), "metadata": meta})
    return pd.DataFrame({"record_key": [f"{u}|{event_name}|{day.isoformat()}" for u in df["user_id"]],
                         "user_id": df["user_id"], "probability": df["probability"], "nudge": nudges})


def capped_users(conn, destination: str, day: dt.date, cap_days: int) -> set[str]:
    """Users the destination accepted a nudge for within ``cap_days`` before ``day``."""
    if not cap_days or not table_exists(conn, L.LEDGER):
        return set()
    rows = conn.execute(f"""
        SELECT DISTINCT split_part(record_key, '|', 1) FROM {L.LEDGER}
        WHERE destination = {sql_literal(destination)} AND object_type = 'nudges' AND status = 'synced'
          AND snapshot_date < ? AND snapshot_date > ?""", [day, day - dt.timedelta(days=cap_days)]).fetchall()
    return {r[0] for r in rows}


def send_nudges(conn, channel: NudgeChannel, day: dt.date, event_name: str, cap_days: int, run_id: str,
                full_resync: bool = False) -> dict:
    """Nudge the day's in_app users through ``channel`` (or write the requests to the outbox
    in a dry run); returns the run's row of sync_runs (``capped`` added)."""
    L.ensure_tables(conn)
    dest = L.ledger_destination(channel.name, channel.dry_run)
    started, t0 = dt.datetime.now(dt.timezone.utc), time.monotonic()
    L.close_interrupted(conn, channel.name, "nudges")
    if full_resync:
        L.reset(conn, dest, "nudges")
    # a day older than one already nudged (a late file re-ran it) nudges nobody: later days' verdicts
    # and the cap already decided, and a stale nudge could break the cap
    newest = conn.execute(f"SELECT max(snapshot_date) FROM {L.LEDGER} WHERE destination = ? "
                          "AND object_type = 'nudges'", [dest]).fetchall()[0][0]
    stale = newest is not None and newest > day
    # a nudge of an earlier day that was not delivered is not sent late: today's verdicts,
    # routing and cap decide (its row stays, marked expired)
    conn.execute(f"""
        UPDATE {L.LEDGER} SET status = 'expired', last_error = 'not delivered on its day; a later day decides',
               updated_at = now()
        WHERE destination = ? AND object_type = 'nudges' AND status <> 'synced' AND snapshot_date < ?""",
                 [dest, day])
    cand = nudge_candidates(conn, day, event_name)
    considered = len(cand)
    if stale:
        cand = cand.iloc[0:0]
    capped = capped_users(conn, dest, day, cap_days)
    allowed = cand[~cand["user_id"].isin(capped)]
    # a nudge is sent once per key: a day scored again (other metadata) does not nudge again
    records = pd.DataFrame({"record_key": allowed["record_key"], "payload": allowed["nudge"],
                            "payload_hash": [L.payload_hash({"nudge": k}) for k in allowed["record_key"]],
                            "snapshot_date": day})
    p = L.plan(conn, dest, "nudges", records, code_version=BODY_VERSION)
    todo = p.to_send
    calls_before = channel.transport.stats.calls
    tally = L.Tally()
    run = L.begin_run(conn, run_id=run_id, destination=channel.name, object_type="nudges", dry_run=channel.dry_run,
                      snapshot_date=day, started=started, plan_=p, full_resync=full_resync)
    if len(todo):
        L.mark_pending(conn, dest, "nudges", todo, run_id, code_version=BODY_VERSION)
        payloads = dict(zip(todo["record_key"], todo["payload"]))
        if channel.dry_run:
            # nothing leaves the machine: every request goes to the outbox, and every outcome to
            # the ledger, in one statement each
            now, requests = dt.datetime.now(dt.timezone.utc), []
            for seq, nudge in enumerate(payloads.values(), start=1):
                body, headers = channel.request(nudge)
                requests.append((run_id, channel.name, "nudges", seq, "POST", channel.url,
                                 json.dumps(channel.redacted_headers(headers)), body.decode(), 1, now))
            outcomes = [L.Outcome(key, "synced", created=True) for key in payloads]
            L.write_outbox(conn, requests)
            L.record_outcomes(conn, dest, "nudges", run_id, outcomes, payloads)
            tally.add(outcomes)
        else:
            for key, nudge in payloads.items():
                outcome = channel.send(key, nudge)       # recorded one by one: an interruption loses none
                L.record_outcomes(conn, dest, "nudges", run_id, [outcome], payloads)
                tally.add([outcome])
    row = L.record_run(conn, run, seconds=time.monotonic() - t0, considered=considered, tally=tally,
                       calls=channel.transport.stats.calls - calls_before)
    row["capped"] = int(cand["user_id"].isin(capped).sum())
    if stale:
        row["skipped_stale"] = considered
    return row
