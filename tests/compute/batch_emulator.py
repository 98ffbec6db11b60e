"""A local emulator of the Azure Batch data plane, spoken to by the real ``azure.batch.BatchClient``
(azure-batch 15.1.0, api-version 2025-06-01) over HTTP or HTTPS.

Two modes:

- **scripted** (no ``runner``): added tasks stay ``active`` until the test moves them with
  ``set_task`` (the lifecycle tests, and the 20,000-unit polling test, which starts no process);
- **running** (a ``runner``): added tasks really run on ``slots`` worker threads, each in a
  fresh task directory ``<root>/<job>/<task>/`` with ``wd/`` as the working directory and
  ``stdout.txt``/``stderr.txt`` beside it, as a Batch node lays it out. ``ProcessRunner`` starts
  ``<python> -P -m scoring_container <args>`` with only the installed packages on the path;
  ``PodmanRunner`` runs the task's container image as the node's Docker-compatible runtime does.

What it models, from the service's REST reference (learn.microsoft.com/rest/api/batchservice/...):

- ``Task - Add Collection`` (``POST /jobs/{job}/addtaskcollection``): at most 100 tasks and
  1 MB a request (413 RequestBodyTooLarge beyond), per-task results, ``TaskExists`` for a task
  id already in the job; 404 ``JobNotFound`` for an unknown job.
- ``Task - List`` (``GET /jobs/{job}/tasks``): pages of ``maxresults`` (default and at most
  1,000) chained by ``odata.nextLink``; ``$select`` (top-level properties); ``$filter`` as in
  "OData filters in Batch" (rest/api/batchservice/odata-filters-in-batch): ``eq``/``ne`` on
  ``id``, ``state``, ``executionInfo/result``, ``executionInfo/exitCode``, ``startswith(id,
  '...')``, combined with ``and``/``or`` and parentheses; anything else is refused with 400
  ``InvalidQueryParameterValue``; 404 ``JobNotFound`` for an unknown job.
- ``Job - Get Task Counts`` (``GET /jobs/{job}/taskcounts``,
  rest/api/batchservice/get-the-task-counts-for-a-job): ``taskCounts`` and ``taskSlotCounts``
  (active, running (preparing counted as running), completed, succeeded, failed).
- Task states ``active -> running -> completed`` and ``executionInfo`` as "Task - Get" reports
  it (BatchTaskExecutionInfo): ``retryCount`` (nonzero exits are retried up to
  ``constraints.maxTaskRetryCount``, -1 unlimited; exit 0 never: BatchTaskConstraints,
  "The Batch service retries a Task if its exit code is nonzero ... this value specifically
  controls the number of retries for the Task executable due to a nonzero exit code"; a
  task's ``exitConditions.exitCodes[].exitOptions`` hold only ``jobAction`` and
  ``dependencyAction``, so no exit code can turn the retry off), ``requeueCount``,
  ``startTime`` (the latest attempt's), ``lastRetryTime``, ``endTime``, ``exitCode``,
  ``result`` success/failure, ``failureInfo`` {category usererror, code FailureExitCode} for a
  nonzero exit.
- ``Job - Update`` (``PATCH /jobs/{job}``): ``onAllTasksComplete: terminatejob`` completes the
  job once every task has; a completed job refuses changes with 409 ``JobCompleted``
  (BatchJobState.Completed: "All Tasks have terminated, and the system will not accept any
  more Tasks or any further changes to the Job"; BatchErrorCode.JobCompleted: "a job
  operation was attempted on a completed job").
- ``Task - Terminate`` (204; 409 ``TaskCompleted`` for a completed task) and ``File - Get From
  Task`` (``GET /jobs/{job}/tasks/{task}/files/{path}``, relative to the task directory).
- Authentication ("Authenticate requests to the Azure Batch service",
  rest/api/batchservice/authenticate-requests-to-the-azure-batch-service): ``SharedKey
  ACCOUNT:SIGNATURE`` or ``Bearer TOKEN`` (Microsoft Entra ID). With ``auth_modes=("AAD",)``,
  as infra/modules/batch.bicep deploys the account (``allowedAuthenticationModes: ['AAD']``),
  SharedKey is refused with 403 ``AuthenticationFailed`` and the detail "The specified type of
  authentication SharedKey is not allowed for this account" (the service's answer, quoted in
  Azure/BatchExplorer#239). A missing or unknown bearer token gets 401.
- Throttling: ``throttle = N`` answers the next N requests with 429 and ``Retry-After``.

Not modelled: nodes, autoscale, preemption (tests script ``requeueCount`` themselves), job
schedules. ``maxWallClockTime`` kills the attempt and completes the task with failureInfo code
``MaxWallClockTimeExceeded`` (our label; not retried).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

import isodate

API_VERSION = "2025-06-01"
PAGE_MAX = 1000
ENTRYPOINT_PREFIX = ["python", "-m", "scoring_container"]  # stripped as parse_args does
SHARED_KEY_REFUSED = ("The specified type of authentication SharedKey is not allowed for this "
                      "account.")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Call:
    method: str
    path: str
    query: dict
    body: object
    headers: dict = field(default_factory=dict)


# --- $filter ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\()|(\))|('(?:[^']|'')*')|(-?\d+)|([A-Za-z_][\w/]*)|(,))")
_FIELDS = {"id": "id", "state": "state", "executionInfo/result": "result",
           "executionInfo/exitCode": "exitCode"}


class FilterError(ValueError):
    pass


def parse_filter(text: str) -> Callable[[dict], bool]:
    """``a eq 'x' or (b ne 'y' and startswith(id,'u'))`` -> a predicate on a task's JSON."""
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise FilterError(f"cannot parse $filter at {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastindex
        value = m.group(kind)
        tokens.append((("(", ")", "str", "int", "word", ",")[kind - 1], value))
    i = 0

    def peek():
        return tokens[i] if i < len(tokens) else (None, None)

    def take(kind=None, value=None):
        nonlocal i
        tok = peek()
        if tok[0] is None or (kind and tok[0] != kind) or (value and tok[1] != value):
            raise FilterError(f"unexpected {tok[1]!r} in $filter {text!r}")
        i += 1
        return tok[1]

    def literal():
        kind, value = peek()
        take()
        if kind == "str":
            return value[1:-1].replace("''", "'")
        if kind == "int":
            return int(value)
        raise FilterError(f"expected a literal in $filter {text!r}")

    def get(task: dict, name: str):
        if name == "id" or name == "state":
            return task.get(name)
        return (task.get("executionInfo") or {}).get(_FIELDS[name])

    def term():
        if peek()[0] == "(":
            take("(")
            inner = disjunction()
            take(")")
            return inner
        name = take("word")
        if name == "startswith":
            take("(")
            prop = take("word")
            if prop != "id":
                raise FilterError(f"startswith is allowed on id only, not {prop}")
            take(",")
            prefix = literal()
            take(")")
            return lambda t: str(t.get("id", "")).startswith(prefix)
        if name not in _FIELDS:
            raise FilterError(f"property {name} cannot be filtered on when listing tasks")
        op = take("word")
        if op not in ("eq", "ne"):
            raise FilterError(f"operator {op} is not allowed on {name}")
        value = literal()
        if op == "eq":
            return lambda t: get(t, name) == value
        return lambda t: get(t, name) != value

    def conjunction():
        parts = [term()]
        while peek() == ("word", "and"):
            take()
            parts.append(term())
        return parts[0] if len(parts) == 1 else (lambda t: all(p(t) for p in parts))

    def disjunction():
        parts = [conjunction()]
        while peek() == ("word", "or"):
            take()
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else (lambda t: any(p(t) for p in parts))

    predicate = disjunction()
    if i != len(tokens):
        raise FilterError(f"trailing {tokens[i][1]!r} in $filter {text!r}")
    return predicate


# --- runners: what a node does with a task ------------------------------------------------------


@dataclass
class Attempt:
    """One run of a task's command line on a node."""

    task: dict
    job: str
    task_dir: Path
    env: dict
    timeout: float | None


class ProcessRunner:
    """The task as a process: ``<python> -P -m scoring_container <args>`` in the task's working
    directory, with ``site`` (a folder of installed packages) as the only source of our code, the
    task's environment settings and nothing else of the test's environment."""

    def __init__(self, python: str, site: Path) -> None:
        self.python, self.site = python, Path(site)
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}

    def argv(self, command_line: str) -> list[str]:
        args = shlex.split(command_line)
        if args[:3] == ENTRYPOINT_PREFIX:  # the ENTRYPOINT names the interpreter itself
            args = args[3:]
        return [self.python, "-P", "-m", "scoring_container", *args]

    def __call__(self, attempt: Attempt) -> int:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.site), "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "HOME": str(attempt.task_dir / "wd"), **attempt.env}
        return _run(self.argv(attempt.task["commandLine"]), attempt, env, self.processes)


class PodmanRunner:
    """The task as a container of its ``containerSettings.imageName``, as Batch runs a container
    task: the task directory mounted and, as ``containerSettings.workingDirectory`` says
    (TaskContainerSettings: "taskWorkingDirectory", the default, "Use the standard Batch service
    Task working directory"; "containerImageDefault", "Use the working directory defined in the
    container Image"), made current or not, its environment settings, its container run
    options, its command line as the ENTRYPOINT's arguments, host network (the emulators)."""

    def __init__(self, podman, mount: str = "/taskdir") -> None:
        self.podman, self.mount = podman, mount  # tests/conftest.py's Podman (its env)
        self.processes: dict[tuple[str, str], subprocess.Popen] = {}

    def __call__(self, attempt: Attempt) -> int:
        settings = attempt.task.get("containerSettings") or {}
        args = ["run", *shlex.split(settings.get("containerRunOptions") or ""), "--network",
                "host", "-v", f"{attempt.task_dir / 'wd'}:{self.mount}"]
        if settings.get("workingDirectory", "taskWorkingDirectory") == "taskWorkingDirectory":
            args += ["-w", self.mount]
        for name, value in attempt.env.items():
            args += ["-e", f"{name}={value}"]
        args += [settings["imageName"], *shlex.split(attempt.task["commandLine"])]
        return _run(["podman", *args], attempt, self.podman.env, self.processes)


def _run(argv: list[str], attempt: Attempt, env: dict, processes: dict) -> int:
    with open(attempt.task_dir / "stdout.txt", "wb") as out, \
            open(attempt.task_dir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(argv, cwd=attempt.task_dir / "wd", env=env, stdout=out,
                                stderr=err, start_new_session=True)
        processes[(attempt.job, attempt.task["id"])] = proc
        try:
            return proc.wait(timeout=attempt.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            processes.pop((attempt.job, attempt.task["id"]), None)


def install_packages(target: Path, root: Path) -> Path:
    """Install fleetscore and scoring_container (no dependencies: the venv has them) into
    ``target`` from a copy of the sources, as the image's Dockerfile does; the repository itself
    is never on the task's path."""
    src = Path(tempfile.mkdtemp(prefix="fleetscore-src-"))
    try:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, src / name)
        for package in ("fleetscore", "scoring_container"):
            shutil.copytree(root / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--no-compile", "--target", str(target), str(src)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot install the packages for task processes:\n{proc.stderr}")
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return target


_SITES: dict[str, Path] = {}


def installed_site(base: Path, root: Path) -> Path:
    """``install_packages`` once per test session (``base``: the session's temp folder)."""
    key = str(base)
    if key not in _SITES:
        _SITES[key] = install_packages(Path(base) / "task-site", root)
    return _SITES[key]


# --- the emulator -------------------------------------------------------------------------------


class BatchEmulator:
    def __init__(self, *, runner: Callable[[Attempt], int] | None = None, slots: int = 2,
                 auth_modes: tuple[str, ...] = ("SharedKey", "AAD"), tokens: set[str] | None = None,
                 account: str = "acct", tls: tuple[str, str] | None = None,
                 task_root: Path | None = None, extra_env: dict | None = None) -> None:
        self.runner, self.slots = runner, slots
        self.auth_modes, self.tokens, self.account, self.tls = auth_modes, tokens, account, tls
        self.task_root = Path(task_root or tempfile.mkdtemp(prefix="batch-emulator-"))
        self.extra_env = dict(extra_env or {})  # e.g. what the pool's managed identity stands for
        self.pools: dict = {}
        self.jobs: dict = {}
        self.tasks: dict = {}  # (job, task) -> the task's JSON, in the order added
        self.files: dict = {}  # (job, task, path) -> bytes, for scripted tests
        self.calls: list[Call] = []
        self.errors: list[str] = []  # protocol violations seen
        self.throttle = 0  # answer the next N requests with 429
        self.fail_first: dict[str, int] = {}  # task id -> attempts that exit 1 before it runs
        self.attempts: dict[tuple[str, str], int] = {}
        # Called with a task's working directory before its first attempt (what a job's
        # resource files would put there).
        self.prepare_task_dir: Callable[[Path], None] | None = None
        self.lock = threading.RLock()
        self._queue: list[tuple[str, str]] = []
        self._wake = threading.Condition(self.lock)
        self._stopping = False
        self._workers: list[threading.Thread] = []

    # --- server -------------------------------------------------------------------------------

    def start(self) -> BatchEmulator:
        emulator = self

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
                self.send_header("request-id", str(uuid.uuid4()))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int, code: str, message: str, values: list | None = None,
                       headers: dict | None = None):
                body = {"code": code, "message": {"lang": "en-US", "value": message}}
                if values:
                    body["values"] = values
                self._reply(status, body, headers)

            def _handle(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                emulator.calls.append(Call(self.command, url.path, query, body,
                                           dict(self.headers.items())))
                if query.get("api-version") != API_VERSION:
                    emulator.errors.append(f"{self.command} {url.path}: api-version "
                                           f"{query.get('api-version')}")
                refused = emulator.authenticate(self.headers.get("Authorization", ""))
                if refused:
                    return self._error(*refused)
                if emulator.throttle > 0:
                    emulator.throttle -= 1
                    return self._error(429, "TooManyRequests", "slow down",
                                       headers={"Retry-After": "1"})
                with emulator.lock:
                    return emulator.route(self, url.path, query, body, raw)

            do_GET = do_POST = do_PATCH = do_PUT = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        if self.runner is not None:
            for n in range(self.slots):
                worker = threading.Thread(target=self._work, name=f"batch-node-{n}", daemon=True)
                worker.start()
                self._workers.append(worker)
        return self

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self._wake.notify_all()
        for processes in (getattr(self.runner, "processes", {}),):
            for proc in list(processes.values()):
                proc.kill()
        for worker in self._workers:
            worker.join(timeout=30)
        self.server.shutdown()
        self.server.server_close()

    def authenticate(self, header: str):
        scheme, _, credential = header.partition(" ")
        if scheme == "SharedKey":
            if "SharedKey" not in self.auth_modes:
                return (403, "AuthenticationFailed",
                        "Server failed to authenticate the request. Make sure the value of "
                        "Authorization header is formed correctly including the signature.",
                        [{"key": "AuthenticationErrorDetail", "value": SHARED_KEY_REFUSED}])
            if not credential.startswith(f"{self.account}:"):
                return (403, "AuthenticationFailed", f"not signed by account {self.account}")
            return None
        if scheme == "Bearer" and "AAD" in self.auth_modes:
            if credential and (self.tokens is None or credential in self.tokens):
                return None
            return (401, "AuthenticationFailed", "the bearer token is not valid for this account")
        return (401, "AuthenticationFailed", "the request is not authenticated")

    # --- routes -------------------------------------------------------------------------------

    def route(self, h, path: str, query: dict, body, raw: bytes):
        method = h.command
        if m := re.fullmatch(r"/pools/([^/]+)", path):
            pool = unquote(m.group(1))
            if method in ("HEAD", "GET"):
                return h._reply(200, self.pools[pool]) if pool in self.pools else \
                    h._error(404, "PoolNotFound", f"The specified pool does not exist: {pool}")
        if path == "/pools" and method == "POST":
            if body["id"] in self.pools:
                return h._error(409, "PoolExists", "The specified pool already exists.")
            self.pools[body["id"]] = body
            return h._reply(201)
        if path == "/jobs" and method == "POST":
            if body["id"] in self.jobs:
                return h._error(409, "JobExists", "The specified job already exists.")
            if body.get("onAllTasksComplete") == "terminatejob":
                self.errors.append(f"job {body['id']} created with terminatejob: races the tasks")
            self.jobs[body["id"]] = {**body, "state": "active", "creationTime": _now()}
            return h._reply(201)
        if m := re.fullmatch(r"/jobs/([^/]+)(/.*)?", path):
            job = unquote(m.group(1))
            if job not in self.jobs:
                return h._error(404, "JobNotFound", "The specified job does not exist.")
            rest = m.group(2) or ""
            if rest == "" and method == "PATCH":
                if self.jobs[job].get("state") == "completed":
                    return h._error(409, "JobCompleted", "The specified job is completed.")
                self.jobs[job].update(body)
                self._maybe_terminate_job(job)
                return h._reply(200)
            if rest == "":
                return h._reply(200, {"id": job, **self.jobs[job]})
            if rest == "/addtaskcollection" and method == "POST":
                return self._add_tasks(h, job, body, raw)
            if rest == "/tasks" and method == "GET":
                return self._list_tasks(h, job, query)
            if rest == "/taskcounts" and method == "GET":
                return h._reply(200, self.task_counts(job))
            if t := re.fullmatch(r"/tasks/([^/]+)/terminate", rest):
                return self._terminate(h, job, unquote(t.group(1)))
            if t := re.fullmatch(r"/tasks/([^/]+)/files/(.+)", rest):
                return self._file(h, job, unquote(t.group(1)), unquote(t.group(2)))
            if t := re.fullmatch(r"/tasks/([^/]+)", rest):
                task = self.tasks.get((job, unquote(t.group(1))))
                if task is None:
                    return h._error(404, "TaskNotFound", "The specified task does not exist.")
                return h._reply(200, task)
        return h._error(404, "NotFound", f"{method} {path} is not in the emulator")

    def _add_tasks(self, h, job: str, body, raw: bytes):
        values = body["value"]
        if len(values) > 100 or len(raw) > 1_000_000:
            self.errors.append(f"addtaskcollection with {len(values)} tasks, {len(raw)} bytes")
            return h._error(413, "RequestBodyTooLarge", "at most 100 tasks and 1 MB a request")
        results = []
        for spec in values:
            if (job, spec["id"]) in self.tasks:
                message = {"lang": "en-US", "value": "The specified task already exists."}
                results.append({"status": "clienterror", "taskId": spec["id"],
                                "error": {"code": "TaskExists", "message": message}})
                continue
            self.add_task(job, spec)
            results.append({"status": "success", "taskId": spec["id"]})
        return h._reply(200, {"value": results})

    def add_task(self, job: str, spec: dict, *, state: str = "active") -> dict:
        now = _now()
        constraints = {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "retentionTime": "P7D",
                       "maxTaskRetryCount": 0, **(spec.get("constraints") or {})}
        task = {**spec, "url": f"{getattr(self, 'endpoint', '')}/jobs/{job}/tasks/{spec['id']}",
                "eTag": f"0x{uuid.uuid4().hex[:15].upper()}", "creationTime": now,
                "lastModified": now, "state": state, "stateTransitionTime": now,
                "constraints": constraints,
                "executionInfo": {"retryCount": 0, "requeueCount": 0}}
        with self.lock:
            self.tasks[(job, spec["id"])] = task
            if self.runner is not None and state == "active":
                self._queue.append((job, spec["id"]))
                self._wake.notify()
        return task

    def _list_tasks(self, h, job: str, query: dict):
        try:
            keep = parse_filter(query["$filter"]) if query.get("$filter") else (lambda t: True)
        except FilterError as exc:
            return h._error(400, "InvalidQueryParameterValue", str(exc),
                            [{"key": "QueryParameterName", "value": "$filter"}])
        size = int(query.get("maxresults") or PAGE_MAX)
        if not 1 <= size <= PAGE_MAX:
            return h._error(400, "InvalidQueryParameterValue", "maxresults is 1 to 1000",
                            [{"key": "QueryParameterName", "value": "maxresults"}])
        start = int(query.get("$skiptoken") or 0)
        matching = [t for (j, _), t in self.tasks.items() if j == job and keep(t)]
        page = matching[start : start + size]
        select = [s.strip() for s in query.get("$select", "").split(",") if s.strip()]
        if select:
            page = [{k: t[k] for k in select if k in t} for t in page]
        body: dict = {"value": page}
        if start + size < len(matching):
            params = {k: v for k, v in query.items() if k != "api-version"}
            params["$skiptoken"] = str(start + size)
            body["odata.nextLink"] = (f"{self.endpoint}/jobs/{quote(job)}/tasks?"
                                      + urlencode(params, quote_via=quote))
        return h._reply(200, body)

    def task_counts(self, job: str) -> dict:
        counts = {"active": 0, "running": 0, "completed": 0, "succeeded": 0, "failed": 0}
        for (j, _), task in self.tasks.items():
            if j != job:
                continue
            state = "running" if task["state"] == "preparing" else task["state"]
            counts[state] = counts.get(state, 0) + 1
            if task["state"] == "completed":
                counts["succeeded" if task["executionInfo"].get("result") == "success"
                       else "failed"] += 1
        return {"taskCounts": counts, "taskSlotCounts": dict(counts)}

    def _terminate(self, h, job: str, task_id: str):
        task = self.tasks.get((job, task_id))
        if task is None:
            return h._error(404, "TaskNotFound", "The specified task does not exist.")
        if task["state"] == "completed":
            return h._error(409, "TaskCompleted", "The specified task is already completed.")
        proc = getattr(self.runner, "processes", {}).get((job, task_id))
        if proc is not None:
            proc.kill()
        self._complete(job, task_id, None, failure={
            "category": "usererror", "code": "TaskEnded",
            "message": "Task Was Ended by User Request"})
        return h._reply(204)

    def _file(self, h, job: str, task_id: str, path: str):
        data = self.files.get((job, task_id, path))
        disk = self.task_root / job / task_id / path
        if data is None and (job, task_id) in self.tasks and disk.is_file():
            data = disk.read_bytes()
        if data is None:
            return h._error(404, "FileNotFound", "The specified file does not exist.")
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        return None

    # --- task lifecycles ----------------------------------------------------------------------

    def set_task(self, job: str, task: str, state: str, **execution) -> None:
        """Scripted mode: move a task (and merge executionInfo fields) as the test says."""
        with self.lock:
            body = self.tasks[(job, task)]
            body["state"], body["stateTransitionTime"] = state, _now()
            body["executionInfo"].update(execution)
            self._maybe_terminate_job(job)

    def _complete(self, job: str, task_id: str, exit_code: int | None,
                  failure: dict | None = None) -> None:
        with self.lock:
            task = self.tasks[(job, task_id)]
            info = task["executionInfo"]
            info.update(endTime=_now(), result="success" if failure is None else "failure")
            if exit_code is not None:
                info["exitCode"] = exit_code
            if failure is not None:
                info["failureInfo"] = failure
            task["state"], task["stateTransitionTime"] = "completed", _now()
            self._maybe_terminate_job(job)

    def _maybe_terminate_job(self, job: str) -> None:
        body = self.jobs.get(job)
        if body and body.get("onAllTasksComplete") == "terminatejob" and all(
                t["state"] == "completed" for (j, _), t in self.tasks.items() if j == job):
            body["state"] = "completed"

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job, task_id = self._queue.pop(0)
                task = self.tasks[(job, task_id)]
                if task["state"] != "active":
                    continue
            self._run_task(job, task_id, task)

    def _run_task(self, job: str, task_id: str, task: dict) -> None:
        task_dir = self.task_root / job / task_id
        (task_dir / "wd").mkdir(parents=True, exist_ok=True)
        if self.prepare_task_dir is not None:
            self.prepare_task_dir(task_dir / "wd")
        env = {e["name"]: e["value"] for e in task.get("environmentSettings") or []}
        env.update(self.extra_env)
        env.update(AZ_BATCH_JOB_ID=job, AZ_BATCH_TASK_ID=task_id, AZ_BATCH_TASK_DIR=str(task_dir),
                   AZ_BATCH_TASK_WORKING_DIR=str(task_dir / "wd"))
        limit = isodate.parse_duration(task["constraints"]["maxWallClockTime"]).total_seconds()
        retries = int(task["constraints"].get("maxTaskRetryCount", 0))
        while True:
            with self.lock:
                if task["state"] == "completed":  # terminated meanwhile
                    return
                info = task["executionInfo"]
                started = _now()
                if task["state"] == "running":
                    info["lastRetryTime"] = started
                task["state"], task["stateTransitionTime"] = "running", started
                info["startTime"] = started
                attempt = self.attempts[(job, task_id)] = self.attempts.get((job, task_id), 0) + 1
            try:
                if attempt <= self.fail_first.get(task_id, 0):
                    (task_dir / "stderr.txt").write_text(
                        f"emulator: attempt {attempt} of task {task_id} failed as injected\n")
                    code = 1
                else:
                    code = self.runner(Attempt(task, job, task_dir, env,
                                               None if limit > 10 ** 7 else limit))
            except subprocess.TimeoutExpired:
                self._complete(job, task_id, None, failure={
                    "category": "usererror", "code": "MaxWallClockTimeExceeded",
                    "message": "The task ran longer than its maxWallClockTime"})
                return
            if task["state"] == "completed":  # terminated while running
                return
            if code == 0:
                self._complete(job, task_id, 0)
                return
            with self.lock:
                if retries == -1 or info["retryCount"] < retries:
                    info["retryCount"] += 1
                    continue
            self._complete(job, task_id, code, failure={
                "category": "usererror", "code": "FailureExitCode",
                "message": "The task exited with an exit code representing a failure"})
            return

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until no task is active or running (running mode)."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if all(t["state"] == "completed" for t in self.tasks.values()):
                    return
            time.sleep(0.05)
        raise TimeoutError("tasks still active or running")

    # --- what the tests read ------------------------------------------------------------------

    def requests(self, method: str, pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.fullmatch(pattern, c.path)]


def self_signed_certificate(folder: Path) -> tuple[str, str]:
    """(cert.pem, key.pem) for 127.0.0.1 and localhost; cert.pem doubles as the CA bundle the
    test trusts (REQUESTS_CA_BUNDLE)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batch-emulator.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)
