"""A real HTTP server on localhost standing for a webhook receiver (Slack, Teams, an on-call
tool): it records every POST and answers as a test scripts it (a status, or a hang)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.headers: list[dict] = []
        self.script: list[int | str] = []  # per POST: a status, or "hang"; then 200
        self.hang_s = 5.0
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = webhook.script.pop(0) if webhook.script else 200
                webhook.posts.append(json.loads(body))
                webhook.headers.append(dict(self.headers))
                if answer == "hang":
                    time.sleep(webhook.hang_s)
                    answer = 200
                self.send_response(int(answer))
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
