"""In-app nudges against a local Intercom stand-in and a signed webhook on 127.0.0.1: one
event per user and day, the frequency cap, faults, dry runs and signatures."""

import collections
import datetime as dt
import json

import pytest

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.defs.activation.hubspot import Transport
from pql_pipeline.defs.activation.nudges import IntercomChannel, WebhookChannel, send_nudges, verify_webhook
from pql_pipeline.defs.scoring.batch import SCORE_COLUMNS
from pql_pipeline.lib.warehouse import ensure_columns
from pql_pipeline_tests.defs.activation.spec import INTERCOM, intercom_version, problems
from pql_pipeline_tests.local_http import LocalServer, reply

TOKEN = "dG9rOmludGVyY29tLVNFQ1JFVA=="
D0 = dt.date(2026, 3, 10)


class FakeIntercom(LocalServer):
    """POST /events as Intercom documents it: bearer token, the Intercom-Version header of the
    vendored spec, a body valid against its ``create_data_event_request`` (event_name,
    created_at in Unix s, user_id; metadata values strings) with at most 10 metadata keys;
    202; duplicates (user, name, created_at) dropped. Queued faults: 429
    (X-RateLimit-Reset), 500, reset."""

    def __init__(self, token=TOKEN):
        super().__init__()
        self.token, self.requests, self.faults = token, [], collections.deque()
        self.spec_violations: list[str] = []
        self.events: collections.Counter = collections.Counter()

    def handle(self, h) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.requests.append({"path": h.path, "headers": dict(h.headers), "body": body})
        fault = self.faults.popleft() if self.faults else None
        if fault == "reset":
            h.close_connection = True
            h.connection.close()
            return
        if fault in ("429", "500"):
            extra = {"X-RateLimit-Reset": "0"} if fault == "429" else {}
            return reply(h, int(fault), {"type": "error.list"}, extra)
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return reply(h, 401, {"type": "error.list", "errors": [{"code": "unauthorized"}]})
        ev = json.loads(body)
        wrong = problems(INTERCOM, "create_data_event_request", ev)
        if h.headers.get("Intercom-Version") != intercom_version():
            wrong.append(f"Intercom-Version {h.headers.get('Intercom-Version')!r}, not {intercom_version()!r}")
        if len(ev.get("metadata") or {}) > 10:
            wrong.append("more than 10 metadata keys")
        if h.path != "/events" or wrong:
            self.spec_violations.extend(wrong)
            return reply(h, 400, {"type": "error.list", "errors": [{"code": "parameter_invalid",
                                                                    "message": "; ".join(wrong)}]})
        self.events[(ev["user_id"], ev["event_name"], ev["created_at"])] += 1
        reply(h, 202, None)

    @property
    def url(self):
        return f"{self.base_url}/events"


@pytest.fixture
def intercom():
    with FakeIntercom() as s:
        yield s


def fast() -> Transport:
    return Transport(rate_limit_requests=1000, rate_limit_window_seconds=1.0, backoff_seconds=0.01,
                     max_backoff_seconds=0.05, timeout_seconds=1.0)


def scored(conn, day, users):
    """users: (user_id, probability, route)"""
    ensure_columns(conn, "pql_scores", SCORE_COLUMNS)
    conn.execute("CREATE TABLE IF NOT EXISTS users (user_id VARCHAR, email VARCHAR)")
    for u, p, route in users:
        conn.execute("INSERT INTO pql_scores (snapshot_date, user_id, account_id, probability, tier, route, "
                     "reason_text, milestones_hit, model_version, segment) VALUES (?, ?, 'acc-' || ?, ?, 'hot', ?, "
                     "'created 4 projects; invited 2 teammates', 'Project Created >= 3 in 14 d', 'm1', 'smb')",
                     [day, u, u, p, route])
        if not conn.execute("SELECT count(*) FROM users WHERE user_id = ?", [u]).fetchall()[0][0]:
            conn.execute("INSERT INTO users VALUES (?, ?)", [u, f"{u}@example.com"])


def test_one_nudge_per_user_and_day_within_the_cap(conn, intercom):
    ch = IntercomChannel("intercom", intercom.url, TOKEN, fast())
    scored(conn, D0, [("a", 0.5, "in_app"), ("b", 0.4, "in_app"), ("c", 0.9, "sales"), ("d", 0.2, "none")])
    row = send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")
    assert (row["considered"], row["sent"], row["created"], row["calls"]) == (2, 2, 2, 2)
    created = int(dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc).timestamp())
    assert set(intercom.events) == {("a", "pql-nudge", created), ("b", "pql-nudge", created)}
    ev = json.loads(intercom.requests[0]["body"])
    assert ev["metadata"]["top_reason"] == "created 4 projects" and len(ev["metadata"]) <= 10
    assert ev["email"] == "a@example.com" and ev["metadata"]["pql_score"] == "0.5"
    # the same day again: nobody is nudged twice
    again = send_nudges(conn, ch, D0, "pql-nudge", 7, "r2")
    assert (again["unchanged"], again["sent"], again["calls"]) == (2, 0, 0)
    # three days later a is still in_app, e is new: the cap holds a back
    later = D0 + dt.timedelta(days=3)
    scored(conn, later, [("a", 0.6, "in_app"), ("e", 0.3, "in_app")])
    row = send_nudges(conn, ch, later, "pql-nudge", 7, "r3")
    assert (row["considered"], row["capped"], row["sent"]) == (2, 1, 1)
    assert ("e", "pql-nudge", created + 3 * 86400) in intercom.events
    # after the cap a gets the next one
    much_later = D0 + dt.timedelta(days=8)
    scored(conn, much_later, [("a", 0.6, "in_app")])
    assert send_nudges(conn, ch, much_later, "pql-nudge", 7, "r4")["sent"] == 1
    assert max(intercom.events.values()) == 1 and len(intercom.events) == 4
    # a late file re-runs an older day: it nudges nobody (the newer days and the cap decided)
    scored(conn, D0 + dt.timedelta(days=5), [("a", 0.7, "in_app"), ("f", 0.5, "in_app")])
    stale = send_nudges(conn, ch, D0 + dt.timedelta(days=5), "pql-nudge", 7, "r5")
    assert (stale["considered"], stale["sent"], stale["skipped_stale"], stale["calls"]) == (2, 0, 2, 0)
    assert len(intercom.events) == 4


def test_faults_are_retried_and_intercom_sees_each_event_once(conn, intercom):
    intercom.faults.extend(["429", "500", "reset"])
    ch = IntercomChannel("intercom", intercom.url, TOKEN, fast())
    scored(conn, D0, [(f"u{i}", 0.5, "in_app") for i in range(5)])
    row = send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")
    assert (row["sent"], row["created"], row["failed"], row["calls"]) == (5, 5, 0, 8)
    assert len(intercom.events) == 5 and max(intercom.events.values()) == 1


def test_dry_run_keeps_the_requests_and_no_secret(conn, intercom):
    ch = IntercomChannel("intercom", intercom.url, None, fast())
    scored(conn, D0, [("a", 0.5, "in_app"), ("b", 0.7, "in_app"), ("c", 0.6, "in_app")])
    row = send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")
    assert row["dry_run"] and row["sent"] == row["created"] == 3 and intercom.requests == []
    # one request per nudge, numbered, each recorded as delivered to the dry run
    out = conn.execute(f"SELECT seq, object_type, url, headers, body, records FROM {L.OUTBOX} ORDER BY seq").fetchall()
    assert [q for q, *_ in out] == [1, 2, 3] and sorted(json.loads(b)["user_id"] for *_, b, _ in out) == ["a", "b", "c"]
    assert all(t == "nudges" and u == intercom.url and n == 1 for _, t, u, _, _, n in out)
    assert all(json.loads(h)["Authorization"] == "<redacted>" for _, _, _, h, _, _ in out)
    assert all(problems(INTERCOM, "create_data_event_request", json.loads(b)) == [] for *_, b, _ in out)
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE object_type = 'nudges' AND status = 'synced' "
                        "AND last_run_id = 'r1'").fetchall()[0][0] == 3
    assert send_nudges(conn, ch, D0, "pql-nudge", 7, "r1b")["sent"] == 0     # the dry run does not repeat them
    # the real channel later still sends them
    real = send_nudges(conn, IntercomChannel("intercom", intercom.url, TOKEN, fast()), D0, "pql-nudge", 7, "r2")
    assert real["sent"] == 3 and len(intercom.events) == 3
    dump = " ".join(str(v) for t in (L.LEDGER, L.OUTBOX, L.RUNS) for r in conn.execute(f"SELECT * FROM {t}").fetchall()
                    for v in r)
    assert TOKEN not in dump


def test_the_webhook_is_signed_with_the_shared_secret(conn):
    got = []

    def receive(h) -> None:
        body = h.rfile.read(int(h.headers["Content-Length"]))
        got.append((h.headers["X-PQL-Timestamp"], body, h.headers["X-PQL-Signature"]))
        h.send_response(204)
        h.end_headers()

    with LocalServer(receive) as server:
        secret = "whsec-test-123"
        ch = WebhookChannel("webhook", f"{server.base_url}/nudge", secret, fast())
        scored(conn, D0, [("a", 0.5, "in_app")])
        assert send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")["created"] == 1
        ts, body, sig = got[0]
        assert verify_webhook(secret, ts, body, sig)
        assert not verify_webhook(secret, ts, body.replace(b'"a"', b'"b"'), sig)
        assert not verify_webhook("another-secret", ts, body, sig)
        assert json.loads(body)["event_name"] == "pql-nudge"


def test_a_day_without_in_app_users_sends_nothing_and_records_the_run(conn, intercom):
    ch = IntercomChannel("intercom", intercom.url, TOKEN, fast())
    scored(conn, D0, [("a", 0.5, "in_app")])
    send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")
    scored(conn, D0 + dt.timedelta(days=1), [("b", 0.9, "sales")])     # nobody to nudge, a ledger exists
    row = send_nudges(conn, ch, D0 + dt.timedelta(days=1), "pql-nudge", 7, "r2")
    assert (row["considered"], row["sent"], row["calls"]) == (0, 0, 0)
    assert conn.execute(f"SELECT count(*) FROM {L.RUNS}").fetchall() == [(2,)]


def test_an_undelivered_nudge_is_not_sent_late_and_a_rescored_day_does_not_nudge_again(conn, intercom):
    ch = IntercomChannel("intercom", intercom.url, TOKEN, Transport(max_attempts=1, backoff_seconds=0.01))
    scored(conn, D0, [("a", 0.5, "in_app")])
    intercom.faults.append("500")
    assert send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")["failed"] == 1
    # the day is scored again (other metadata): a once-accepted nudge is not sent again
    ch = IntercomChannel("intercom", intercom.url, TOKEN, fast())
    assert send_nudges(conn, ch, D0, "pql-nudge", 7, "r2")["created"] == 1
    conn.execute("UPDATE pql_scores SET probability = 0.7, reason_text = 'connected Slack' WHERE user_id = 'a'")
    assert send_nudges(conn, ch, D0, "pql-nudge", 7, "r3")["sent"] == 0
    # b's nudge fails on D0; on the next day b is routed to sales: yesterday's nudge is not sent late
    scored(conn, D0, [("b", 0.4, "in_app")])
    intercom.faults.extend(["500"] * 6)
    assert send_nudges(conn, ch, D0, "pql-nudge", 7, "r4")["failed"] == 1
    scored(conn, D0 + dt.timedelta(days=1), [("b", 0.9, "sales")])
    nxt = send_nudges(conn, ch, D0 + dt.timedelta(days=1), "pql-nudge", 7, "r5")
    assert (nxt["retried"], nxt["sent"]) == (0, 0)
    assert conn.execute(f"SELECT status FROM {L.LEDGER} WHERE record_key LIKE 'b|%'").fetchall() == [("expired",)]
    assert set(intercom.events) == {("a", "pql-nudge", int(dt.datetime(2026, 3, 10, tzinfo=dt.timezone.utc).timestamp()))}


def test_a_refused_nudge_is_not_sent_again_and_an_echoed_secret_is_never_stored(conn):
    """A 404 (user not found) whose body quotes the request's credentials: rejected once,
    redacted, and held on the next run of the same day."""
    requests_seen = []

    def refuse(h):
        requests_seen.append(h.headers.get("Authorization"))
        reply(h, 404, {"type": "error.list", "errors": [
            {"code": "not_found", "message": f"User Not Found (Authorization: {h.headers.get('Authorization')})"}]})

    with LocalServer(refuse) as server:
        ch = IntercomChannel("intercom", f"{server.base_url}/events", TOKEN, fast())
        scored(conn, D0, [("a", 0.5, "in_app")])
        row = send_nudges(conn, ch, D0, "pql-nudge", 7, "r1")
        assert (row["sent"], row["rejected"], row["calls"]) == (1, 1, 1)
        again = send_nudges(conn, ch, D0, "pql-nudge", 7, "r2")
        assert (again["sent"], again["held"], again["calls"]) == (0, 1, 0) and len(requests_seen) == 1
    stored = " ".join(str(v) for t in (L.LEDGER, L.RUNS, L.REJECTIONS)
                      for r in conn.execute(f"SELECT * FROM {t}").fetchall() for v in r)
    assert "User Not Found" in stored and "[redacted]" in stored and TOKEN not in stored
