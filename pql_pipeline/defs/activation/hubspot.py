"""HubSpot CRM v3 batch upserts: the HTTP side of the CRM sync.

``POST {base_url}/crm/v3/objects/{companies|contacts}/batch/upsert`` with
``{"inputs": [{"id", "idProperty", "objectWriteTraceId", "properties"}]}``, at most
``batch_size`` (HubSpot: 100) inputs a call, property values as strings. Each input's
``objectWriteTraceId`` is its record key, so a 207 multi-status answer says which inputs
were rejected and why; results carry ``new`` (created vs updated) and the object id.

Faults: a sliding-window limiter keeps at most ``rate_limit_requests`` calls in any
``rate_limit_window_seconds`` (HubSpot: 100-190 per 10 s by plan); 429 waits for
``Retry-After`` (else backs off); 5xx, 408, 425, timeouts and broken connections are
transient: they back off exponentially with jitter, up to ``max_attempts`` calls per batch,
and what is still undelivered is ``failed`` (retried by the next run). Other 4xx answers are
permanent: the refused records are ``rejected`` once with the server's message and are not
sent again until their payload or the sending code (``BODY_VERSION``) changes; a batch
refused as a whole is split until the refused records are found (one invalid input must
not hold back 99 valid ones). 401 and 403 stop the sync with an error that says to check
the token's scopes, 404 and 405 one that says to check the base URL; a URL that cannot be
requested at all stops it without a single retry.

Results are matched to inputs by ``objectWriteTraceId`` (the record key) and, because the
spec marks it optional, else by the id property the answer echoes (``email``,
``pql_account_id``); a record the server accepted is never reported as failed.

The token is only ever put in the Authorization header of a request; it is not logged,
kept in metadata, nor written to the outbox, and every server answer is redacted
(``pql_pipeline.lib.secrets``) before it is stored or logged, in case it quotes the request.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from dataclasses import dataclass, field

import requests

from pql_pipeline.defs.activation.ledger import Outcome
from pql_pipeline.lib.secrets import redact

# what the request bodies look like: a change re-sends records a server rejected before
BODY_VERSION = "2"
# answers worth another attempt (429 and 5xx besides): the same request may succeed later
TRANSIENT_STATUSES = frozenset({408, 425})
# a request that can never be sent as configured: no retry helps
UNSENDABLE = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
              requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader, requests.exceptions.URLRequired)


class DestinationError(RuntimeError):
    """The destination refused the credentials, or its URL cannot be requested: nothing more
    can be sent until someone fixes it (the records stay pending and are sent by the next run)."""


class RateLimiter:
    """At most ``requests`` calls in any sliding window of ``window`` seconds."""

    def __init__(self, requests_: int, window: float, clock=time.monotonic, sleep=time.sleep):
        self.requests, self.window = requests_, window
        self.sent: collections.deque[float] = collections.deque()
        self.clock, self.sleep = clock, sleep
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = self.clock()
                while self.sent and now - self.sent[0] >= self.window:
                    self.sent.popleft()
                if len(self.sent) < self.requests:
                    self.sent.append(now)
                    return
                wait = self.window - (now - self.sent[0])
            self.sleep(wait)


@dataclass
class CallStats:
    calls: int = 0
    retries: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0
    statuses: dict = field(default_factory=dict)


@dataclass
class Transport:
    """POSTs with the destination's rate limit and retries: 429 waits for ``Retry-After``
    (or ``X-RateLimit-Reset``), 5xx, timeouts and broken connections back off exponentially
    with jitter, up to ``max_attempts`` calls. Returns the final answer, or None and the
    last error when every attempt failed."""

    rate_limit_requests: int = 100
    rate_limit_window_seconds: float = 10.0
    max_attempts: int = 6
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    timeout_seconds: float = 30.0
    stats: CallStats = field(default_factory=CallStats)
    secrets: tuple = ()        # values redacted from every answer kept or logged (the client's token)

    def __post_init__(self):
        self.limiter = RateLimiter(self.rate_limit_requests, self.rate_limit_window_seconds)
        self.rng = random.Random()
        self.lock = threading.Lock()
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One keep-alive session per thread (batches may be sent from several)."""
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** attempt)
        return base * (0.5 + self.rng.random())   # jitter around the exponential step

    def post(self, url: str, body: dict | bytes, headers: dict) -> tuple[requests.Response | None, str]:
        last_error = "not sent"
        for attempt in range(self.max_attempts):
            self.limiter.acquire()
            with self.lock:
                self.stats.calls += 1
            try:
                if isinstance(body, bytes):
                    r = self.session.post(url, data=body, timeout=self.timeout_seconds, headers=headers)
                else:
                    r = self.session.post(url, json=body, timeout=self.timeout_seconds, headers=headers)
            except UNSENDABLE as e:
                # the exception's text can quote the request (its headers): only its type is kept
                shown = redact(url.split("?")[0], self.secrets)
                raise DestinationError(f"{shown!r} cannot be requested ({type(e).__name__}): check the "
                                       "destination's URL in the configuration") from None
            except requests.RequestException as e:
                last_error, delay = f"{type(e).__name__}: no answer", self.backoff(attempt)
            else:
                with self.lock:
                    self.stats.statuses[r.status_code] = self.stats.statuses.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    with self.lock:
                        self.stats.throttled += 1
                    last_error = "429 rate limited"
                    delay = min(_retry_after(r) or self.backoff(attempt), max(self.max_backoff_seconds, 1.0))
                elif r.status_code >= 500 or r.status_code in TRANSIENT_STATUSES:
                    last_error, delay = f"{r.status_code} from the destination", self.backoff(attempt)
                else:
                    return r, ""
            if attempt + 1 < self.max_attempts:   # no wait after the last attempt
                self._wait(delay)
        return None, f"gave up after {self.max_attempts} attempts: {last_error}"

    def message(self, r: requests.Response) -> str:
        """The server's message, redacted (an error body may quote the request's headers),
        then shortened (a secret cut in two would no longer be recognised)."""
        return redact(_message(r), self.secrets)[:MESSAGE_CHARS]

    def _wait(self, seconds: float) -> None:
        with self.lock:
            self.stats.retries += 1
            self.stats.waited_seconds += seconds
        time.sleep(seconds)


@dataclass
class HubSpotClient:
    base_url: str
    access_token: str | None
    batch_size: int = 100
    transport: Transport = field(default_factory=Transport)
    concurrency: int = 1        # batches in flight at once (the rate limit is shared)

    def __post_init__(self):
        if self.access_token:
            self.transport.secrets = (*self.transport.secrets, self.access_token)

    @property
    def stats(self) -> CallStats:
        return self.transport.stats

    @property
    def dry_run(self) -> bool:
        return not self.access_token

    def url(self, object_type: str) -> str:
        return f"{self.base_url.rstrip('/')}/crm/v3/objects/{object_type}/batch/upsert"

    @staticmethod
    def body(id_property: str, records: list[tuple[str, str, dict]]) -> dict:
        """``records``: (record key, id value, properties)."""
        return {"inputs": [{"id": id_value, "idProperty": id_property, "objectWriteTraceId": key,
                            "properties": {k: _string(v) for k, v in props.items()}}
                           for key, id_value, props in records]}

    def upsert(self, object_type: str, id_property: str, records: list[tuple[str, str, dict]]) -> list[Outcome]:
        """Send one batch; the outcome of every record (synced, rejected or failed). A batch
        HubSpot refuses as a whole (a 4xx: one invalid input can refuse all 100) is split
        until the refused records are found, so the others are not held with them."""
        outcomes, refusal = self._attempt(object_type, id_property, records)
        return outcomes if refusal is None else self._isolate(object_type, id_property, records, refusal)

    def _attempt(self, object_type: str, id_property: str,
                 records: list[tuple[str, str, dict]]) -> tuple[list[Outcome], str | None]:
        """One call: the records' outcomes, or the refusal of the whole batch (a 4xx)."""
        keys = [k for k, _, _ in records]
        url = self.url(object_type)
        r, error = self.transport.post(url, self.body(id_property, records),
                                       {"Authorization": f"Bearer {self.access_token}",
                                        "Content-Type": "application/json"})
        if r is None:
            return [Outcome(k, "failed", error=error) for k in keys], None
        if r.status_code in (200, 201, 207):
            return match_outcomes(r.status_code, _json(r), records, id_property, self.transport.secrets), None
        message = self.transport.message(r)
        if r.status_code in (401, 403):
            raise DestinationError(
                f"HubSpot answered {r.status_code} to {url}: check that HUBSPOT_ACCESS_TOKEN is "
                f"a valid private-app token with the crm.objects.{object_type}.write scope ({message})")
        if r.status_code in (404, 405):
            raise DestinationError(f"HubSpot answered {r.status_code} to {redact(url, self.transport.secrets)}: the "
                                   f"endpoint does not exist; check activation.crm.base_url ({message})")
        # another 4xx: the batch was refused (e.g. an invalid value, a property that does not exist);
        # the same body gets the same answer
        return [], f"{r.status_code}: {message}"

    def _isolate(self, object_type: str, id_property: str, records: list[tuple[str, str, dict]],
                 refusal: str) -> list[Outcome]:
        """The outcomes of a refused batch's records: its halves are sent on their own,
        recursively, until each refusal is pinned on single records. When both halves repeat
        the refusal word for word, one record of each half is sent alone: if both are refused
        with those words too, the fault is the batch's (a property that does not exist), and
        every record is rejected with it at once instead of one call per record."""
        if len(records) == 1:
            return [Outcome(records[0][0], "rejected", error=refusal)]
        halves = [records[: len(records) // 2], records[len(records) // 2:]]
        tries = [self._attempt(object_type, id_property, half) for half in halves]
        if len(records) > 2 and all(again == refusal for _, again in tries):
            probes = [self._attempt(object_type, id_property, half[:1]) for half in halves]
            if all(again == refusal for _, again in probes):
                return [Outcome(k, "rejected", error=refusal) for k, _, _ in records]
            out: list[Outcome] = []
            for half, (outcomes, again) in zip(halves, probes):
                out += outcomes if again is None else [Outcome(half[0][0], "rejected", error=again)]
                out += self.upsert(object_type, id_property, half[1:]) if len(half) > 1 else []
            return out
        out = []
        for half, (outcomes, again) in zip(halves, tries):
            out += outcomes if again is None else self._isolate(object_type, id_property, half, again)
        return out


# categories of a 207's per-input errors that another attempt may get past
TRANSIENT_CATEGORIES = frozenset({"RATE_LIMITS", "INTERNAL_ERROR", "TIMEOUT", "SERVICE_UNAVAILABLE"})


def match_outcomes(status: int, data: dict, records: list[tuple[str, str, dict]], id_property: str,
                   secrets=()) -> list[Outcome]:
    """Each input's outcome from a 200/207 batch answer. Results and errors are matched to
    inputs by ``objectWriteTraceId`` and, where the answer leaves it out (the spec marks it
    optional), by the id property's value the answer echoes (``properties[id_property]``
    of a result, ``context[id_property]`` of an error; HubSpot compares e-mails without case).
    An input no result and no error names was not confirmed: ``failed`` (sent again), with
    the answer's unmatched error messages if it had any."""
    keys = [k for k, _, _ in records]
    by_id: dict[str, str] = {}
    for k, id_value, _ in records:
        if id_value is not None:
            by_id.setdefault(str(id_value).strip().lower(), k)

    def key_of(trace, ids) -> list[str]:
        found = [t for t in (trace if isinstance(trace, list) else [trace]) if t in by_key]
        if found:
            return found
        values = ids if isinstance(ids, list) else [ids]
        return [by_id[str(v).strip().lower()] for v in values if v is not None and str(v).strip().lower() in by_id]

    by_key = set(keys)
    data = data if isinstance(data, dict) else {}
    done: dict[str, Outcome] = {}
    for res in data.get("results") or []:
        if not isinstance(res, dict):
            continue
        props = res.get("properties") if isinstance(res.get("properties"), dict) else {}
        for key in key_of(res.get("objectWriteTraceId"), props.get(id_property)):
            done.setdefault(key, Outcome(key, "synced", created=bool(res.get("new")),
                                         remote_id=str(res.get("id") or "")))
    unmatched_errors = []
    for err in data.get("errors") or []:
        if not isinstance(err, dict):
            continue
        category = str(err.get("category") or "error")
        msg = redact(f"{category}: {err.get('message') or 'rejected'}", secrets)[:MESSAGE_CHARS]
        context = err.get("context") if isinstance(err.get("context"), dict) else {}
        matched = key_of(context.get("objectWriteTraceId") or [], context.get(id_property) or [])
        if not matched:
            unmatched_errors.append(msg)
        state = "failed" if category.upper() in TRANSIENT_CATEGORIES else "rejected"
        for key in matched:
            done.setdefault(key, Outcome(key, state, error=msg))
    why = f"{status} without a result for this input"
    if unmatched_errors:
        why += "; the answer's errors: " + " | ".join(dict.fromkeys(unmatched_errors))[:500]
    # an input the answer does not mention was not confirmed: retried, never assumed sent
    return [done.get(k) or Outcome(k, "failed", error=why) for k in keys]


def _json(r: requests.Response):
    try:
        return r.json()
    except ValueError:
        return {}


def _string(v) -> str:
    """HubSpot property values are strings; booleans as true/false, missing as empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _retry_after(r: requests.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` (HubSpot) or ``X-RateLimit-Reset`` (Intercom: the
    Unix time the window resets)."""
    try:
        return max(0.0, float(r.headers.get("Retry-After", "")))
    except ValueError:
        pass
    try:
        return min(60.0, max(0.0, float(r.headers.get("X-RateLimit-Reset", "")) - time.time()))
    except ValueError:
        return None


MESSAGE_CHARS = 300


def _message(r: requests.Response) -> str:
    """The answer's ``message``, else its body, whole: redact before shortening it."""
    try:
        data = r.json()
        return str((data.get("message") if isinstance(data, dict) else None) or r.text)
    except ValueError:
        return r.text


def outbox_request(client: HubSpotClient, object_type: str, id_property: str,
                   records: list[tuple[str, str, dict]]) -> dict:
    """The exact request a batch would make, without credentials (the dry-run outbox)."""
    return {"method": "POST", "url": client.url(object_type),
            "headers": json.dumps({"Content-Type": "application/json", "Authorization": "Bearer <HUBSPOT_ACCESS_TOKEN>"}),
            "body": json.dumps(client.body(id_property, records))}
