"""The Blob store's managed-identity path, as Azure Functions runs it: the platform's identity
endpoint (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``) played by a local HTTP server, the store's
account by a local HTTPS server. Each case runs in a child process, because the failure being
guarded against is an abort of the whole process (exit 134: an uncaught C++ exception in the
Azure C++ SDK inside pyarrow's AzureFileSystem), which nothing in Python can catch.

The fake identity endpoint answers as the App Service managed identity endpoint documents
("How to use managed identities for App Service and Azure Functions", REST protocol,
api-version 2019-08-01: ``GET IDENTITY_ENDPOINT?resource=...&api-version=...&client_id=...``
with the ``X-IDENTITY-HEADER`` header; 200 with ``access_token``, ``expires_on``, ``resource``,
``token_type``): a token only for the app's one user-assigned identity, named by its client id,
and 400 for a request that names none, since an app with only a user-assigned identity has no
system-assigned one. The fake account answers what the Blob REST API answers a client that
creates its container (``Create Container``: 201) and reads a blob that is not there
(``Get Blob Properties`` / ``Get Blob``: 404 ``BlobNotFound``).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.compute.batch_emulator import self_signed_certificate
from tests.identity_endpoint import IdentityEndpoint, LocalServer

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "7c3f2b1e-0000-4000-8000-000000000001"  # the app's user-assigned identity


class Account(LocalServer):
    """A storage account over HTTPS that has an empty container: 201 to Create Container,
    404 BlobNotFound to anything else. It records the Authorization headers it was sent."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.authorizations: list[str] = []

    def start(self) -> Account:
        account = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                account.authorizations.append(self.headers.get("Authorization", ""))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.command == "PUT" and "restype=container" in self.path:
                    self.send_response(201)
                    self.send_header("ETag", '"0x1"')
                    self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound'
                        b"</Code><Message>The specified blob does not exist.</Message></Error>")
                self.send_response(404)
                self.send_header("x-ms-error-code", "BlobNotFound")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_DELETE = _answer

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self.url = f"https://127.0.0.1:{self.serve(Handler, context)}/devstoreaccount1"
        return self


CHILD = r"""
import json, sys
from fleetscore.errors import FleetscoreError
from fleetscore.storage.blob import BlobStore

out = {}
try:
    store = BlobStore("fleetscore", account_url=sys.argv[1], retries=0)
    out["arrow"] = store._arrow is not None
    try:
        store.open("windows/2024/03/01/01/part-0.parquet")
        out["opened"] = True
    finally:
        store.close()
except FleetscoreError as exc:
    out["error"] = [type(exc).__name__, [c.__name__ for c in type(exc).__mro__], str(exc)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def _child(account: Account, identity: IdentityEndpoint, cert: str, **env: str | None):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "APPLICATIONINSIGHTS_"))}
    environ.update(IDENTITY_ENDPOINT=identity.url, IDENTITY_HEADER=identity.secret,
                   REQUESTS_CA_BUNDLE=cert, PYTHONPATH=str(ROOT))
    environ.update({k: v for k, v in env.items() if v is not None})
    proc = subprocess.run([sys.executable, "-c", CHILD, account.url], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=environ)
    return proc


@pytest.fixture
def servers(certificate):
    cert, key = certificate
    started = []

    def start(refuse_after: int | None = None) -> tuple[Account, IdentityEndpoint]:
        account = Account(cert, key).start()
        identity = IdentityEndpoint("token-for-the-app", client_id=CLIENT_ID,
                                    refuse_after=refuse_after).start()
        started.extend([account, identity])
        return account, identity

    yield start
    for server in started:
        server.stop()


def _result(proc: subprocess.CompletedProcess) -> dict:
    # An abort (SIGABRT: -6 from subprocess, 134 from a shell) is the failure guarded against.
    assert proc.returncode == 0, (f"the store's process died with {proc.returncode}: "
                                  f"{proc.stderr[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.reliability("R75")
@pytest.mark.parametrize("refuse_after", [None, 1], ids=["token-granted", "token-refused-later"])
def test_the_first_read_with_the_apps_user_assigned_identity_never_aborts_the_process(
        servers, certificate, refuse_after):
    """The first hour with data: an account URL, the app's user-assigned identity named by
    AZURE_CLIENT_ID, a Parquet file opened. Before, pyarrow's AzureFileSystem asked the identity
    endpoint for a token with no client id, got 400 and aborted the process; with the client
    id it still aborts once the endpoint refuses. Now the read goes through the Python SDK with
    the app's identity, and a missing blob or a refused token is a StoreError."""
    account, identity = servers(refuse_after)
    out = _result(_child(account, identity, certificate[0], AZURE_CLIENT_ID=CLIENT_ID))
    assert out["arrow"] is False
    kind, mro, message = out["error"]
    assert kind == "NotFound" and "StoreError" in mro
    assert "windows/2024/03/01/01/part-0.parquet not found in store az://fleetscore" in message
    # Every token request named the app's identity, and the account saw the app's token.
    assert identity.requests and all(r.get("client_id") == CLIENT_ID for r in identity.requests)
    assert account.authorizations and \
        set(account.authorizations) == {"Bearer token-for-the-app"}


@pytest.mark.reliability("R75")
def test_no_token_at_all_is_a_store_error_naming_the_container(servers, certificate):
    """The identity endpoint refuses everything (a wrong AZURE_CLIENT_ID, or none on an app
    with only a user-assigned identity): a StoreError when the store is opened, the process
    alive, the account never called without a token."""
    account, identity = servers(refuse_after=0)
    for client_id in ("00000000-0000-4000-8000-00000000dead", None):
        out = _result(_child(account, identity, certificate[0], AZURE_CLIENT_ID=client_id))
        kind, mro, message = out["error"]
        assert "StoreError" in mro and "cannot open blob container 'fleetscore'" in message
    assert not [a for a in account.authorizations if a]


def test_only_keys_and_sas_map_onto_pyarrows_filesystem():
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import ContainerClient

    from fleetscore.storage.blob import _arrow_filesystem

    url = "https://fleetacct.blob.core.windows.net"
    assert _arrow_filesystem(ContainerClient(url, "c", credential=DefaultAzureCredential()),
                             "c") is None
    assert _arrow_filesystem(ContainerClient(url, "c"), "c") is None  # anonymous
    keyed = ContainerClient.from_connection_string(
        "DefaultEndpointsProtocol=https;AccountName=fleetacct;AccountKey=a2V5;"
        "EndpointSuffix=core.windows.net", "c")
    assert _arrow_filesystem(keyed, "c") is not None
