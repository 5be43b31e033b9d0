"""What the HTTP stand-ins of the tests share (HubSpot, Intercom, a signed webhook, a Slack
webhook): a threaded server on a free port of 127.0.0.1 and a JSON reply."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def reply(h: BaseHTTPRequestHandler, status: int, body: dict | None, headers: dict | None = None) -> None:
    """Answer a request: JSON ``body`` (none for None) with ``headers``."""
    data = b"" if body is None else json.dumps(body).encode()
    h.send_response(status)
    if body is not None:
        h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


class LocalServer:
    """A server on 127.0.0.1 answering POST requests with ``handle`` (a subclass's method,
    or the function given); started and stopped as a context manager."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None] | None = None):
        on_post = handle or self.handle

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                on_post(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
