"""A local stand-in for HubSpot's CRM batch upsert API on 127.0.0.1, with fault injection.

It implements ``POST /crm/v3/objects/{objectType}/batch/upsert`` as documented: bearer
token, a body valid against the published schema (``spec.py``: the CRM v3 OpenAPI
document's ``BatchInputSimplePublicObjectBatchInputUpsert``; an invalid one gets 400), at
most 100 inputs, upsert by the unique ``idProperty`` value; answers 200 with ``results``
(``id``, ``new``, ``objectWriteTraceId``, ``properties``) or 207 with ``errors`` whose
``context.objectWriteTraceId`` names the rejected inputs, each answer valid against the
spec's response schemas. Every request is recorded.

Answers the spec allows but a client may not expect: ``trace_ids = False`` leaves the
optional ``objectWriteTraceId`` out of results and names rejected inputs by the id
property in the error's ``context``; ``echo_auth`` quotes the request's Authorization
header in error messages (as some proxies and gateways do).

Faults are queued and consumed one per request: ``429`` (with Retry-After), ``500``,
``timeout`` (answers after the client gave up), ``reset`` (closes the connection before
answering), ``lost`` (applies the upsert, then closes the connection: the client never
learns it succeeded), ``slow`` (applies the upsert, answers ``timeout_sleep`` seconds
later). ``reject`` is a predicate on an input: matching inputs get a 207
VALIDATION_ERROR (e.g. an invalid e-mail).
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

from pql_pipeline_tests.defs.activation.spec import HUBSPOT, problems
from pql_pipeline_tests.local_http import LocalServer, reply


class FakeHubSpot(LocalServer):
    def __init__(self, token: str = "pat-test-token", max_inputs: int = 100):
        super().__init__()
        self.token, self.max_inputs = token, max_inputs
        self.objects: dict[tuple[str, str], dict] = {}     # (object type, id value) -> object
        self.upserts: collections.Counter = collections.Counter()   # (object type, id value) -> times applied
        self.requests: list[dict] = []
        self.faults: collections.deque[str] = collections.deque()
        self.spec_violations: list[str] = []
        self.reject = lambda obj_type, inp: None      # -> error message to reject the input
        self.retry_after = "0.05"
        self.timeout_sleep = 1.5
        self.trace_ids = True
        self.validate = True       # against the spec (about 10 ms a call: the sync benchmark turns it off)
        self.echo_auth = False
        self.refuse: str | None = None     # a message: every batch is refused with 400 (a permanent error)
        # an input's message: a batch holding such an input is refused as a whole with 400, as HubSpot
        # does for an invalid property value
        self.refuse_batch = lambda obj_type, inp: None
        self.lock = threading.Lock()
        self._next_id = 1000

    @property
    def url(self) -> str:
        return self.base_url

    def calls(self, path_part: str = "batch/upsert") -> list[dict]:
        return [r for r in self.requests if path_part in r["path"]]

    # ------------------------------------------------------------------ the API
    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            self.requests.append({"path": h.path, "headers": dict(h.headers), "body": raw.decode(), "fault": fault})
        if fault == "reset":
            return self._reset(h)
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
            return self._send(h, 500, {"message": "too late"})
        quoted = f" (request had Authorization: {h.headers.get('Authorization')})" if self.echo_auth else ""
        if fault == "429":
            return self._send(h, 429, _error("RATE_LIMITS", "Slow down" + quoted), {"Retry-After": self.retry_after})
        if fault == "500":
            return self._send(h, 500, _error("INTERNAL_ERROR", "internal error" + quoted))
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, _error("INVALID_AUTHENTICATION", "Authentication credentials not found." + quoted))
        parts = h.path.strip("/").split("/")
        if len(parts) != 6 or parts[:3] != ["crm", "v3", "objects"] or parts[4:] != ["batch", "upsert"]:
            return self._send(h, 404, {"message": f"no route {h.path}"})
        obj_type = parts[3]
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send(h, 400, _error("VALIDATION_ERROR", "Invalid input JSON"))
        problem = self._invalid(body)
        if problem:
            return self._send(h, 400, _error("VALIDATION_ERROR", problem))
        if self.refuse:
            return self._send(h, 400, _error("VALIDATION_ERROR", self.refuse + quoted))
        inputs = body["inputs"]
        invalid = next((m for m in (self.refuse_batch(obj_type, inp) for inp in inputs) if m), None)
        if invalid:
            return self._send(h, 400, _error("VALIDATION_ERROR", invalid + quoted))
        results, errors = [], []
        with self.lock:
            for inp in inputs:
                msg = self.reject(obj_type, inp)
                if msg:
                    context = ({"objectWriteTraceId": [inp["objectWriteTraceId"]]} if self.trace_ids
                               else {inp["idProperty"]: [inp["id"]]})
                    errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": msg + quoted,
                                   "context": context, "errors": [], "links": {}})
                    continue
                key = (obj_type, inp["id"])
                new = key not in self.objects
                if new:
                    self._next_id += 1
                    self.objects[key] = {"id": str(self._next_id), "properties": {}}
                self.objects[key]["properties"].update(inp["properties"])
                self.upserts[key] += 1
                result = {"id": self.objects[key]["id"], "new": new,
                          "properties": {**self.objects[key]["properties"], inp["idProperty"]: inp["id"]},
                          "archived": False, "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
                if self.trace_ids:
                    result["objectWriteTraceId"] = inp["objectWriteTraceId"]
                results.append(result)
        if fault == "lost":
            return self._reset(h)
        if fault == "slow":          # applied, but the answer takes long (a client may die waiting)
            time.sleep(self.timeout_sleep)
        answer = {"status": "COMPLETE", "results": results, "startedAt": "2026-01-01T00:00:00Z",
                  "completedAt": "2026-01-01T00:00:01Z"}
        if errors:
            answer.update({"errors": errors, "numErrors": len(errors)})
        schema = "BatchResponseSimplePublicUpsertObjectWithErrors" if errors else "BatchResponseSimplePublicUpsertObject"
        wrong = problems(HUBSPOT, schema, answer) if self.validate else []
        assert not wrong, f"the stand-in's own answer breaks the spec: {wrong}"
        self._send(h, 207 if errors else 200, answer)

    def _invalid(self, body) -> str | None:
        """Why the body is refused: the published request schema, then HubSpot's documented
        rules the schema does not state (at most 100 inputs, an upsert needs idProperty)."""
        wrong = problems(HUBSPOT, "BatchInputSimplePublicObjectBatchInputUpsert", body) if self.validate else []
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            wrong = wrong or ["inputs must be a list"]
        if wrong:
            self.spec_violations.extend(wrong)
            return "; ".join(wrong[:3])
        inputs = body["inputs"]
        if not inputs:
            return "inputs must be a non-empty list"
        if len(inputs) > self.max_inputs:
            return f"at most {self.max_inputs} inputs per batch, got {len(inputs)}"
        if any(set(inp) - {"id", "idProperty", "objectWriteTraceId", "properties"} for inp in inputs):
            return "unknown fields in an input"
        if any(not isinstance(inp.get("idProperty"), str) for inp in inputs):
            return "an upsert matches by idProperty: every input needs one"
        return None

    @staticmethod
    def _send(h, status: int, body: dict | None, headers: dict | None = None) -> None:
        reply(h, status, body, headers)

    @staticmethod
    def _reset(h) -> None:
        h.close_connection = True
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _error(category: str, message: str) -> dict:
    """An error body as the spec's ``Error`` schema has it."""
    return {"status": "error", "category": category, "message": message,
            "correlationId": "0f0e0d0c-aaaa-4bbb-8ccc-000000000000"}


def fast_client(url: str, token: str | None, **policy):
    """A HubSpot client with a test's pace: generous rate limit, millisecond back-offs."""
    from pql_pipeline.defs.activation.hubspot import HubSpotClient, Transport

    kw = dict(rate_limit_requests=1000, rate_limit_window_seconds=1.0, backoff_seconds=0.01,
              max_backoff_seconds=0.05, timeout_seconds=0.5)
    return HubSpotClient(base_url=url, access_token=token, transport=Transport(**{**kw, **policy}))
