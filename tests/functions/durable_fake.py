"""A local fake of the Durable Functions extension's HTTP API, so the SDK's real
``DurableOrchestrationClient`` (aiohttp) talks to something: start an orchestration, get an
instance's status. Instances can be put in any state by the test.

It answers as the extension does:

- **Get instance status** (``GET .../instances/{id}``): 404 with no body for an unknown
  instance; 202 for Pending, Running, ContinuedAsNew and Suspended, with ``Location`` (the
  status URL) and ``Retry-After: 5``; 200 for Completed, Failed, Terminated and Canceled (500
  for Failed only when asked with ``returnInternalServerErrorOnFailure=true``). Sources: the
  HTTP API reference, "Get instance status" (learn.microsoft.com/azure/azure-functions/durable/
  durable-functions-http-api), and azure-functions-durable-extension
  src/WebJobs.Extensions.DurableTask/HttpApiHandler.cs ``HandleGetStatusRequestAsync``.
- **Start** (``POST .../orchestrators/{name}/{id}``): 202 with the management payload and
  ``Location``; refused when an instance with that id is Pending, Running, ContinuedAsNew or
  Suspended: the extension's default ``overridableExistingInstanceStates`` is
  ``NonRunningStates`` ("only start a new orchestrator instance with an existing instance Id
  when the existing instance is in a terminated, failed, or completed state":
  learn.microsoft.com/dotnet/api/microsoft.azure.webjobs.extensions.durabletask.overridablestates;
  Durable Functions instance management, "Start instances", learn.microsoft.com/azure/
  azure-functions/durable/durable-functions-instance-management). The store throws
  ``OrchestrationAlreadyExistsException`` ("An Orchestration instance with the status Running
  already exists.", DurableTask.AzureStorage ``CreateTaskOrchestrationAsync``), which the
  HTTP handler answers with 500 and its error body (HttpApiHandler.cs ``HandleRequestAsync``,
  ``catch (Exception e)``); the SDK's ``start_new`` raises it. The check and the creation are
  one step, as in the store, so of two simultaneous starts exactly one wins.
- ``hold_status_reads(n)`` makes the next ``n`` status reads wait for each other, so tests can
  have two starters both see "no instance" before either starts one (the timer/HTTP race).
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACTIVE = ("Pending", "Running", "ContinuedAsNew", "Suspended")  # a start with this id is refused


class DurableFake:
    def __init__(self) -> None:
        self.instances: dict[str, dict] = {}
        self.starts: list[tuple[str, str, object]] = []
        self.refused: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()
        self.barrier: threading.Barrier | None = None
        self.barrier_left = 0
        self.start_delay = lambda body: 0.0  # seconds a start request waits: who wins a race
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: object | None, headers: dict | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                match = re.fullmatch(r"/durabletask/orchestrators/([^/?]+)/([^/?]+)", self.path.split("?")[0])
                if not match:
                    return self._send(404, None)
                name, iid = match.groups()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                if isinstance(body, str):  # the SDK sends the input JSON-encoded as a string
                    body = json.loads(body)
                now = datetime.now(UTC).isoformat()
                time.sleep(fake.start_delay(body))
                with fake.lock:  # check and create in one step, as the store does
                    existing = fake.instances.get(iid)
                    if existing is not None and existing["runtimeStatus"] in ACTIVE:
                        fake.refused.append((name, iid, body))
                        state = existing["runtimeStatus"]
                        return self._send(500, {
                            "Message": "Something went wrong while processing your request",
                            "ExceptionMessage": f"An Orchestration instance with the status "
                                                f"{state} already exists.",
                            "ExceptionType": "DurableTask.Core.Exceptions."
                                             "OrchestrationAlreadyExistsException",
                        })
                    fake.starts.append((name, iid, body))
                    fake.instances[iid] = {"name": name, "instanceId": iid, "runtimeStatus": "Pending",
                                           "input": body, "output": None, "createdTime": now,
                                           "lastUpdatedTime": now, "customStatus": None}
                payload = fake.management_payload(iid)
                self._send(202, payload, {"Location": payload["statusQueryGetUri"], "Retry-After": "10"})

            def do_GET(self) -> None:  # noqa: N802
                path, _, query = self.path.partition("?")
                match = re.fullmatch(r"/durabletask/instances/([^/?]+)", path)
                with fake.lock:
                    barrier = fake.barrier
                    if barrier is not None:
                        fake.barrier_left -= 1
                        if fake.barrier_left == 0:
                            fake.barrier = None
                if barrier is not None:
                    try:
                        barrier.wait()
                    except threading.BrokenBarrierError:
                        pass
                if not match or match.group(1) not in fake.instances:
                    return self._send(404, None)  # the real host answers 404 with no body
                status = fake.instances[match.group(1)]
                state = status["runtimeStatus"]
                if state in ACTIVE:
                    location = f"http://127.0.0.1:{fake.port}{self.path}"
                    return self._send(202, status, {"Location": location, "Retry-After": "5"})
                if state == "Failed" and "returnInternalServerErrorOnFailure=true" in query:
                    return self._send(500, status)
                self._send(200, status)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> DurableFake:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def hold_status_reads(self, parties: int) -> None:
        """The next ``parties`` status reads each wait until all of them have arrived."""
        with self.lock:
            self.barrier, self.barrier_left = threading.Barrier(parties, timeout=5), parties

    def management_payload(self, iid: str) -> dict:
        base = f"http://127.0.0.1:{self.port}/runtime/webhooks/durabletask/instances/{iid}"
        query = "taskHub=fleetscore&connection=Storage&code=test"
        return {"id": iid, "statusQueryGetUri": f"{base}?{query}",
                "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{base}/terminate?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{base}?{query}"}

    def set_status(self, iid: str, status: str, output: object = None) -> None:
        now = datetime.now(UTC).isoformat()
        self.instances[iid] = {"name": "score_window", "instanceId": iid, "runtimeStatus": status,
                               "input": None, "output": output, "createdTime": now,
                               "lastUpdatedTime": now, "customStatus": None}

    @property
    def binding(self) -> str:
        """The JSON the Functions host hands a durable client binding."""
        base = f"http://127.0.0.1:{self.port}/runtime/webhooks/durabletask"
        query = "taskHub=fleetscore&connection=Storage&code=test"
        mgmt = f"{base}/instances/INSTANCEID"
        return json.dumps({
            "taskHubName": "fleetscore",
            "creationUrls": {
                "createNewInstancePostUri":
                    f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?code=test",
                "createAndWaitOnNewInstancePostUri":
                    f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]"
                    "?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}&code=test",
            },
            "managementUrls": {
                "id": "INSTANCEID",
                "statusQueryGetUri": f"{mgmt}?{query}",
                "sendEventPostUri": f"{mgmt}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{mgmt}/terminate?reason={{text}}&{query}",
                "rewindPostUri": f"{mgmt}/rewind?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{mgmt}?{query}",
                "restartPostUri": f"{mgmt}/restart?{query}",
                "suspendPostUri": f"{mgmt}/suspend?reason={{text}}&{query}",
                "resumePostUri": f"{mgmt}/resume?reason={{text}}&{query}",
            },
            "baseUrl": base,
            "requiredQueryStringParameters": "code=test",
            "rpcBaseUrl": f"http://127.0.0.1:{self.port}/durabletask/",
            "httpBaseUrl": "",
        })
