"""One stand-in for the managed-identity endpoint of App Service and Azure Functions, shared by
the tests of every path that asks it for a token (Blob reads, telemetry, Batch, the rehearsal).

It speaks what azure.identity's ManagedIdentityCredential (and so DefaultAzureCredential) and
the Azure C++ SDK inside pyarrow send on App Service: ``GET IDENTITY_ENDPOINT?resource=...
&api-version=2019-08-01[&client_id=...]`` with the ``X-IDENTITY-HEADER`` header holding
``IDENTITY_HEADER`` (azure-identity's ``_internal/managed_identity_client`` and
``app_service`` sources). An app with only a user-assigned identity answers 400 to a request
that names no client id or another one: ``client_id`` makes this fake do the same.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread (TLS with ``context``)."""

    server: ThreadingHTTPServer

    def serve(self, handler: type[BaseHTTPRequestHandler],
              context: ssl.SSLContext | None = None) -> int:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class IdentityEndpoint(LocalServer):
    """Hands out ``token``; with ``client_id``, only to requests naming it (400 otherwise);
    with ``refuse_after``, 400 to every request after that many. Records every query."""

    def __init__(self, token: str = "token", *, client_id: str | None = None,
                 refuse_after: int | None = None, secret: str | None = None) -> None:
        self.token, self.client_id, self.refuse_after = token, client_id, refuse_after
        self.secret = secret or uuid.uuid4().hex
        self.requests: list[dict] = []

    def _answer(self, query: dict, header: str | None) -> tuple[int, dict]:
        self.requests.append(query)
        if header != self.secret:
            return 401, {"error": "missing X-IDENTITY-HEADER"}
        refused = self.refuse_after is not None and len(self.requests) > self.refuse_after
        if refused or (self.client_id is not None and query.get("client_id") != self.client_id):
            return 400, {"statusCode": 400,
                         "message": "Unable to load the proper Managed Identity."}
        return 200, {"access_token": self.token, "expires_on": str(int(time.time()) + 3600),
                     "resource": query.get("resource"), "token_type": "Bearer",
                     "client_id": query.get("client_id", "system")}

    def start(self) -> IdentityEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                status, body = endpoint._answer(query, self.headers.get("X-IDENTITY-HEADER"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.url = f"http://127.0.0.1:{self.serve(Handler)}/msi/token"
        return self

    def __enter__(self) -> IdentityEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.secret}
