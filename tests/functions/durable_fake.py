"""A local fake of the Durable Functions extension's HTTP API, so the SDK's real
``DurableOrchestrationClient`` (aiohttp) talks to something: start an orchestration, get an
instance's status. Instances can be put in any state by the test."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DurableFake:
    def __init__(self) -> None:
        self.instances: dict[str, dict] = {}
        self.starts: list[tuple[str, str, object]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: object | None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
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
                fake.starts.append((name, iid, body))
                fake.instances[iid] = {"name": name, "instanceId": iid, "runtimeStatus": "Pending",
                                       "input": body, "output": None, "createdTime": now,
                                       "lastUpdatedTime": now, "customStatus": None}
                self._send(202, {"id": iid})

            def do_GET(self) -> None:  # noqa: N802
                match = re.fullmatch(r"/durabletask/instances/([^/?]+)", self.path.split("?")[0])
                if not match or match.group(1) not in fake.instances:
                    return self._send(404, None)  # the real host answers 404 with no body
                status = fake.instances[match.group(1)]
                code = {"Completed": 200, "Failed": 500, "Terminated": 400}.get(status["runtimeStatus"], 202)
                self._send(code, status)

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
                "createNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?code=test",
                "createAndWaitOnNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&code=test",
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
