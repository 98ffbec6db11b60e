"""A small local fake of the Azure Batch REST endpoints fleetscore uses, so the real
``azure.batch.BatchClient`` talks HTTP to it. It checks what it is sent (api-version, ids,
chunk sizes, body sizes) and plays task lifecycles the test scripts."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

API_VERSION = "2025-06-01"


@dataclass
class Call:
    method: str
    path: str
    query: dict
    body: object


@dataclass
class FakeBatch:
    pools: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)  # (job, task) -> task JSON
    files: dict = field(default_factory=dict)  # (job, task, path) -> bytes
    calls: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # protocol violations seen
    throttle: int = 0  # answer the next N requests with 429

    def start(self) -> FakeBatch:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: object | None = None, headers: dict | None = None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json; odata=minimalmetadata")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int, code: str, message: str):
                self._reply(status, {"code": code, "message": {"lang": "en-US", "value": message}})

            def _handle(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.calls.append(Call(self.command, url.path, query, body))
                if query.get("api-version") != API_VERSION:
                    fake.errors.append(f"{self.command} {url.path}: api-version {query.get('api-version')}")
                if not self.headers.get("Authorization", "").startswith("SharedKey acct:"):
                    fake.errors.append(f"{self.command} {url.path}: not signed")
                if fake.throttle > 0:
                    fake.throttle -= 1
                    return self._reply(429, {"code": "TooManyRequests",
                                             "message": {"value": "slow down"}}, {"Retry-After": "1"})
                return fake.route(self, url.path, query, body, raw)

            do_GET = do_POST = do_PATCH = do_PUT = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- routes ---------------------------------------------------------------------------

    def route(self, h, path: str, query: dict, body, raw: bytes):
        method = h.command
        if m := re.fullmatch(r"/pools/([^/]+)", path):
            pool = unquote(m.group(1))
            if method in ("HEAD", "GET"):
                return h._reply(200, self.pools[pool]) if pool in self.pools else \
                    h._error(404, "PoolNotFound", f"pool {pool} does not exist")
        if path == "/pools" and method == "POST":
            if body["id"] in self.pools:
                return h._error(409, "PoolExists", "the pool exists")
            self.pools[body["id"]] = body
            return h._reply(201)
        if path == "/jobs" and method == "POST":
            if body["id"] in self.jobs:
                return h._error(409, "JobExists", "the job exists")
            if body.get("onAllTasksComplete") == "terminatejob":
                self.errors.append(f"job {body['id']} created with terminatejob: races the tasks")
            self.jobs[body["id"]] = {**body, "state": "active"}
            return h._reply(201)
        if m := re.fullmatch(r"/jobs/([^/]+)", path):
            job = unquote(m.group(1))
            if job not in self.jobs:
                return h._error(404, "JobNotFound", f"job {job} does not exist")
            if method == "PATCH":
                self.jobs[job].update(body)
                return h._reply(200)
            return h._reply(200, {"id": job, **self.jobs[job]})
        if m := re.fullmatch(r"/jobs/([^/]+)/addtaskcollection", path):
            job = unquote(m.group(1))
            if job not in self.jobs:
                return h._error(404, "JobNotFound", f"job {job} does not exist")
            values = body["value"]
            if len(values) > 100 or len(raw) > 1_000_000:
                self.errors.append(f"addtaskcollection with {len(values)} tasks, {len(raw)} bytes")
                return h._error(413, "RequestBodyTooLarge", "at most 100 tasks and 1 MB")
            results = []
            for task in values:
                key = (job, task["id"])
                if key in self.tasks:
                    results.append({"status": "clienterror", "taskId": task["id"],
                                    "error": {"code": "TaskExists",
                                              "message": {"value": "The specified task already exists."}}})
                    continue
                self.tasks[key] = {**task, "state": "active", "executionInfo": {"retryCount": 0,
                                                                                 "requeueCount": 0}}
                results.append({"status": "success", "taskId": task["id"]})
            return h._reply(200, {"value": results})
        if m := re.fullmatch(r"/jobs/([^/]+)/tasks/([^/]+)/terminate", path):
            # REST "Tasks - Terminate Task": the task moves to the completed state (204);
            # terminating a completed task is refused with 409 TaskCompleted.
            key = (unquote(m.group(1)), unquote(m.group(2)))
            if key not in self.tasks:
                return h._error(404, "TaskNotFound", f"task {key[1]} does not exist")
            if self.tasks[key]["state"] == "completed":
                return h._error(409, "TaskCompleted", "the task has already completed")
            self.set_task(*key, "completed", result="failure", exitCode=None,
                          failureInfo={"category": "usererror", "code": "TaskEnded",
                                       "message": "Task Was Ended by User Request"})
            return h._reply(204)
        if m := re.fullmatch(r"/jobs/([^/]+)/tasks", path):
            job = unquote(m.group(1))
            value = [{"id": t, "state": task["state"], "executionInfo": task["executionInfo"]}
                     for (j, t), task in self.tasks.items() if j == job]
            return h._reply(200, {"value": value})
        if m := re.fullmatch(r"/jobs/([^/]+)/tasks/([^/]+)/files/(.+)", path):
            key = (unquote(m.group(1)), unquote(m.group(2)), unquote(m.group(3)))
            if key not in self.files:
                return h._error(404, "FileNotFound", "no such file")
            data = self.files[key]
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return None
        return h._error(404, "NotFound", f"{method} {path} is not in the fake")

    # --- lifecycles the tests play --------------------------------------------------------

    def set_task(self, job: str, task: str, state: str, **execution) -> None:
        self.tasks[(job, task)]["state"] = state
        self.tasks[(job, task)]["executionInfo"].update(execution)

    def requests(self, method: str, pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(pattern, c.path)]
