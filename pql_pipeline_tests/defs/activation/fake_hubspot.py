"""A local stand-in for HubSpot's CRM batch upsert API on 127.0.0.1, with fault injection.

It implements ``POST /crm/v3/objects/{objectType}/batch/upsert`` as documented: bearer
token, ``inputs`` of ``{id, idProperty, objectWriteTraceId, properties}`` (at most 100,
string property values), upsert by the unique ``idProperty`` value, answers 200 with
``results`` (``id``, ``new``, ``objectWriteTraceId``, ``properties``) or 207 with ``errors``
whose ``context.objectWriteTraceId`` names the rejected inputs. Every request is recorded.

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

from pql_pipeline_tests.local_http import LocalServer, reply


class FakeHubSpot(LocalServer):
    def __init__(self, token: str = "pat-test-token", max_inputs: int = 100):
        super().__init__()
        self.token, self.max_inputs = token, max_inputs
        self.objects: dict[tuple[str, str], dict] = {}     # (object type, id value) -> object
        self.upserts: collections.Counter = collections.Counter()   # (object type, id value) -> times applied
        self.requests: list[dict] = []
        self.faults: collections.deque[str] = collections.deque()
        self.reject = lambda obj_type, inp: None      # -> error message to reject the input
        self.retry_after = "0.05"
        self.timeout_sleep = 1.5
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
        if fault == "429":
            return self._send(h, 429, {"status": "error", "category": "RATE_LIMITS", "message": "Slow down"},
                              {"Retry-After": self.retry_after})
        if fault == "500":
            return self._send(h, 500, {"status": "error", "message": "internal error"})
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"status": "error", "category": "INVALID_AUTHENTICATION",
                                       "message": "Authentication credentials not found."})
        parts = h.path.strip("/").split("/")
        if len(parts) != 6 or parts[:3] != ["crm", "v3", "objects"] or parts[4:] != ["batch", "upsert"]:
            return self._send(h, 404, {"message": f"no route {h.path}"})
        obj_type = parts[3]
        try:
            body = json.loads(raw)
            inputs = body["inputs"]
        except (ValueError, KeyError, TypeError):
            return self._send(h, 400, {"status": "error", "category": "VALIDATION_ERROR", "message": "Invalid input JSON"})
        problem = self._invalid(inputs)
        if problem:
            return self._send(h, 400, {"status": "error", "category": "VALIDATION_ERROR", "message": problem})
        results, errors = [], []
        with self.lock:
            for inp in inputs:
                msg = self.reject(obj_type, inp)
                if msg:
                    errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": msg,
                                   "context": {"objectWriteTraceId": [inp["objectWriteTraceId"]]}})
                    continue
                key = (obj_type, inp["id"])
                new = key not in self.objects
                if new:
                    self._next_id += 1
                    self.objects[key] = {"id": str(self._next_id), "properties": {}}
                self.objects[key]["properties"].update(inp["properties"])
                self.upserts[key] += 1
                results.append({"id": self.objects[key]["id"], "new": new,
                                "objectWriteTraceId": inp["objectWriteTraceId"],
                                "properties": dict(self.objects[key]["properties"]), "archived": False,
                                "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"})
        if fault == "lost":
            return self._reset(h)
        if fault == "slow":          # applied, but the answer takes long (a client may die waiting)
            time.sleep(self.timeout_sleep)
        answer = {"status": "COMPLETE", "results": results, "startedAt": "2026-01-01T00:00:00Z",
                  "completedAt": "2026-01-01T00:00:01Z"}
        if errors:
            answer.update({"errors": errors, "numErrors": len(errors)})
        self._send(h, 207 if errors else 200, answer)

    def _invalid(self, inputs) -> str | None:
        if not isinstance(inputs, list) or not inputs:
            return "inputs must be a non-empty list"
        if len(inputs) > self.max_inputs:
            return f"at most {self.max_inputs} inputs per batch, got {len(inputs)}"
        for inp in inputs:
            if set(inp) - {"id", "idProperty", "objectWriteTraceId", "properties"}:
                return f"unknown fields {sorted(set(inp) - {'id', 'idProperty', 'objectWriteTraceId', 'properties'})}"
            if not isinstance(inp.get("id"), str) or not isinstance(inp.get("idProperty"), str):
                return "id and idProperty must be strings"
            props = inp.get("properties")
            if not isinstance(props, dict) or any(not isinstance(v, str) for v in props.values()):
                return "property values must be strings"
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
