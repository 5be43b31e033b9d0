"""A local stand-in for a Slack incoming webhook on 127.0.0.1: it accepts what Slack accepts
(``text`` and/or ``blocks`` of known types within Slack's size limits), answers 400 like
Slack otherwise, records every body and can be told to fail the next requests."""

from __future__ import annotations

import collections
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pql_pipeline_tests.defs.activation.fake_hubspot import reply

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


class FakeWebhook:
    def __init__(self):
        self.bodies: list[dict] = []
        self.raw: list[bytes] = []
        self.faults: collections.deque[int] = collections.deque()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.raw.append(data)
                if server.faults:
                    reply(self, server.faults.popleft(), {"error": "injected"})
                    return
                try:
                    body = json.loads(data)
                except ValueError:
                    reply(self, 400, {"error": "invalid_payload"})
                    return
                error = slack_error(body)
                if error:
                    reply(self, 400, {"error": error})
                    return
                server.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/services/T000/B000/hook"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
