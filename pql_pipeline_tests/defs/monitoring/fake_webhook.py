"""A local stand-in for a Slack incoming webhook on 127.0.0.1: it accepts what Slack accepts
(``text`` and/or ``blocks`` of known types within Slack's size limits), answers 400 like
Slack otherwise, records every body and can be told to fail the next requests."""

from __future__ import annotations

import collections
import json
from http.server import BaseHTTPRequestHandler

from pql_pipeline_tests.local_http import LocalServer, reply

BLOCK_TYPES = {"header", "section", "context", "divider", "actions", "image", "rich_text"}


def slack_error(body) -> str | None:
    """What Slack would reject in ``body``, or None."""
    if not isinstance(body, dict) or not (isinstance(body.get("text"), str) or body.get("blocks")):
        return "no_text"
    for block in body.get("blocks") or []:
        if block.get("type") not in BLOCK_TYPES:
            return "invalid_blocks"
        text = (block.get("text") or {}).get("text", "")
        if block["type"] == "header" and (block["text"].get("type") != "plain_text" or len(text) > 150):
            return "invalid_blocks"
        if len(text) > 3000 or len(block.get("fields") or []) > 10:
            return "invalid_blocks"
    return None


class FakeWebhook(LocalServer):
    def __init__(self):
        super().__init__()
        self.bodies: list[dict] = []
        self.raw: list[bytes] = []
        self.faults: collections.deque[int] = collections.deque()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        data = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        self.raw.append(data)
        if self.faults:
            reply(h, self.faults.popleft(), {"error": "injected"})
            return
        try:
            body = json.loads(data)
        except ValueError:
            reply(h, 400, {"error": "invalid_payload"})
            return
        error = slack_error(body)
        if error:
            reply(h, 400, {"error": error})
            return
        self.bodies.append(body)
        h.send_response(200)
        h.send_header("Content-Length", "2")
        h.end_headers()
        h.wfile.write(b"ok")

    @property
    def url(self) -> str:
        return f"{self.base_url}/services/T000/B000/hook"
