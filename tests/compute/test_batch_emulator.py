"""What the Batch service does to us, played by the emulator (tests/compute/batch_emulator.py)
through the real azure-batch BatchClient over HTTP(S): paged listings, $filter and $select, task
counts, 404 JobNotFound, throttling, Entra ID only accounts, tasks that really run (a process in
a task directory) and are retried on nonzero exits; and BatchBackend's polling cost at 20,000
units, and its DefaultAzureCredential path."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

from fleetscore.compute.batch import BatchBackend, id_filters, job_id, make_client
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import BackendError, NotFound
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import result_path
from fleetscore.scoring.planning import Unit, make_plan, save_plan
from fleetscore.scoring.score import UnitResult
from fleetscore.settings import BatchSettings, Settings
from tests.compute.batch_emulator import (
    BatchEmulator,
    ProcessRunner,
    installed_site,
    self_signed_certificate,
)
from tests.identity_endpoint import IdentityEndpoint

ROOT = Path(__file__).resolve().parents[2]
H1 = Hour.parse("2024-03-01T01")
RUN = "r1"
JOB = job_id(H1, RUN)
BATCH_SCOPE = "https://batch.core.windows.net//.default"


class Tokens:
    """A TokenCredential double: hands out one bearer token and records the scopes asked."""

    def __init__(self, token: str) -> None:
        self.token, self.scopes = token, []

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def emulator():
    e = BatchEmulator().start()
    yield e
    e.stop()


def _client(e: BatchEmulator, **kwargs) -> BatchClient:
    return BatchClient(e.endpoint, AzureNamedKeyCredential("acct", "a2V5"), **kwargs)


def _seed(e: BatchEmulator, job: str, n: int, prefix: str = "t") -> list[str]:
    e.jobs[job] = {"id": job, "state": "active", "poolInfo": {"poolId": "fleetscore"}}
    ids = [f"{prefix}{i:05d}" for i in range(n)]
    for task_id in ids:
        e.add_task(job, {"id": task_id, "commandLine": "true"})
    return ids


# --- the service's protocol ---------------------------------------------------------------------


def test_listing_is_paged_at_1000_with_next_links_and_honours_maxresults(emulator):
    ids = _seed(emulator, "j", 2500)
    client = _client(emulator)
    assert [t.id for t in client.list_tasks("j")] == ids
    pages = emulator.requests("GET", "/jobs/j/tasks")
    assert len(pages) == 3 and [p.query.get("$skiptoken") for p in pages] == [None, "1000", "2000"]
    emulator.calls.clear()
    listed = list(client.list_tasks("j", max_results=300, filter="state eq 'active'",
                                    select=["id"]))
    assert [t.id for t in listed] == ids
    pages = emulator.requests("GET", "/jobs/j/tasks")
    assert len(pages) == 9  # ceil(2500 / 300), each page carrying the same query
    assert {(p.query["maxresults"], p.query["$filter"], p.query["$select"]) for p in pages} == {
        ("300", "state eq 'active'", "id")}
    with pytest.raises(HttpResponseError) as exc:
        list(client.list_tasks("j", max_results=5000))
    assert exc.value.status_code == 400
    assert emulator.errors == []


def test_filter_select_and_task_counts_as_the_service_answers(emulator):
    _seed(emulator, "j", 10)
    emulator.set_task("j", "t00000", "completed", exitCode=0, result="success")
    emulator.set_task("j", "t00001", "completed", exitCode=1, result="failure",
                      failureInfo={"category": "usererror", "code": "FailureExitCode"})
    emulator.set_task("j", "t00002", "completed", exitCode=0, result="success")
    emulator.set_task("j", "t00003", "running")
    client = _client(emulator)

    def ids(expression):
        return [t.id for t in client.list_tasks("j", filter=expression)]

    assert ids("state eq 'completed'") == ["t00000", "t00001", "t00002"]
    assert len(ids("state ne 'completed'")) == 7
    assert ids("id eq 't00004' or id eq 't00007' or id eq 'nope'") == ["t00004", "t00007"]
    assert ids("state eq 'completed' and executionInfo/result eq 'failure'") == ["t00001"]
    assert ids("startswith(id,'t0000') and (id eq 't00001' or id eq 'x00009')") == ["t00001"]
    assert ids("startswith(id,'t0000') and state eq 'completed'") == ["t00000", "t00001", "t00002"]
    assert ids("id eq 'it''s'") == []
    [task] = client.list_tasks("j", filter="id eq 't00001'", select=["id", "state"])
    assert (task.id, task.state) == ("t00001", bm.BatchTaskState.COMPLETED)
    assert task.execution_info is None and task.command_line is None  # not selected
    [task] = client.list_tasks("j", filter="id eq 't00001'")
    assert task.execution_info.exit_code == 1 and task.execution_info.failure_info.code == \
        "FailureExitCode"
    with pytest.raises(HttpResponseError) as exc:
        list(client.list_tasks("j", filter="creationTime gt 3"))
    assert exc.value.status_code == 400 and "InvalidQueryParameterValue" in str(exc.value)

    counts = client.get_job_task_counts("j").task_counts
    assert (counts.active, counts.running, counts.completed, counts.succeeded, counts.failed) == \
        (6, 1, 3, 2, 1)


def test_an_unknown_job_is_404_job_not_found(emulator):
    client = _client(emulator)
    with pytest.raises(ResourceNotFoundError, match="JobNotFound"):
        list(client.list_tasks("nojob"))
    with pytest.raises(ResourceNotFoundError, match="JobNotFound"):
        client.create_task_collection("nojob", bm.BatchTaskGroup(task_values=[
            bm.BatchTaskCreateOptions(id="a", command_line="true")]))
    with pytest.raises(ResourceNotFoundError, match="JobNotFound"):
        client.get_job_task_counts("nojob")


def test_throttling_answers_429_and_the_client_waits_retry_after(emulator):
    _seed(emulator, "j", 3)
    emulator.throttle = 2
    started = time.monotonic()
    assert len(list(_client(emulator).list_tasks("j"))) == 3
    assert time.monotonic() - started >= 1.9  # Retry-After: 1, twice
    assert len(emulator.requests("GET", "/jobs/j/tasks")) == 3


def test_an_entra_id_only_account_refuses_shared_key_and_takes_bearer_tokens_over_https(tmp_path):
    cert, key = self_signed_certificate(tmp_path / "tls")
    e = BatchEmulator(auth_modes=("AAD",), tokens={"token-1"}, tls=(cert, key)).start()
    try:
        job = bm.BatchJobCreateOptions(id="j", pool_info=bm.BatchPoolInfo(pool_id="fleetscore"))
        keyed = BatchClient(e.endpoint, AzureNamedKeyCredential("acct", "a2V5"),
                            connection_verify=cert)
        with pytest.raises(HttpResponseError) as exc:
            keyed.create_job(job)
        assert exc.value.status_code == 403
        assert "AuthenticationFailed" in str(exc.value)
        tokens = Tokens("token-1")
        BatchClient(e.endpoint, tokens, connection_verify=cert).create_job(job)
        assert "j" in e.jobs and tokens.scopes == [(BATCH_SCOPE,)]
        assert e.calls[-1].headers["Authorization"] == "Bearer token-1"
        with pytest.raises(HttpResponseError) as exc:
            BatchClient(e.endpoint, Tokens("stolen"), connection_verify=cert).get_job("j")
        assert exc.value.status_code == 401
    finally:
        e.stop()
    # The SDK's bearer policy refuses plain http (hence the emulator's https).
    plain = BatchEmulator(auth_modes=("AAD",)).start()
    try:
        with pytest.raises(ServiceRequestError, match="TLS|https"):
            BatchClient(plain.endpoint, Tokens("token-1"), retry_total=0).get_job("j")
        assert plain.calls == []
    finally:
        plain.stop()


# --- BatchBackend on the deployed path: DefaultAzureCredential ---------------------------------


def test_make_client_uses_default_azure_credential_on_an_entra_id_only_account(
        trained_store, tmp_path, monkeypatch):
    """No shared key set: make_client builds DefaultAzureCredential, which on Azure Functions
    gets its token from the managed identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER); the
    real BatchClient sends it as a bearer token over https to an account that allows Entra ID
    only. The test trusts the emulator's self-signed certificate through REQUESTS_CA_BUNDLE,
    which requests (azure-core's transport) honours; no product code knows about the test."""
    cert, key = self_signed_certificate(tmp_path / "tls")
    identity = IdentityEndpoint("mi-token-1").start()
    e = BatchEmulator(auth_modes=("AAD",), tokens={"mi-token-1"}, tls=(cert, key)).start()
    for name in ("AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT",
                 "IDENTITY_SERVER_THUMBPRINT", "AZURE_TOKEN_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**identity.environment(), "AZURE_CLIENT_ID": "fn-identity",
                        "REQUESTS_CA_BUNDLE": cert}.items():
        monkeypatch.setenv(name, value)
    try:
        settings = Settings(batch=BatchSettings(endpoint=e.endpoint, task_retries=2))
        backend = BatchBackend(trained_store, trained_store.url, settings, engine=ENGINE)
        backend.submit(H1, [Unit("u000000", (Sensor("1", "1"),))], run_id=RUN)
        assert (JOB, "u000000") in e.tasks
        assert {c.headers["Authorization"] for c in e.calls} == {"Bearer mi-token-1"}
        assert identity.requests and identity.requests[0]["resource"] == \
            "https://batch.core.windows.net/"
        assert identity.requests[0].get("client_id") == "fn-identity"
        backend.close()
        # A shared key, on this account, is refused, and says why.
        keyed = Settings(batch=BatchSettings(endpoint=e.endpoint, account_name="acct",
                                             account_key="a2V5"))
        with pytest.raises(BackendError, match="refused the credential.*HTTP 403.*Entra ID only"):
            BatchBackend(trained_store, trained_store.url, keyed, engine=ENGINE).submit(
                H1, [Unit("u000001", (Sensor("1", "1"),))], run_id=RUN)
        assert type(make_client(keyed.batch)._config.credential).__name__ == \
            "AzureNamedKeyCredential"
    finally:
        e.stop()
        identity.stop()


# --- status that scales -------------------------------------------------------------------------


class CountingStore:
    """A dict as the store of unit results, counting reads."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets = 0

    def get(self, path: str) -> bytes:
        self.gets += 1
        if path not in self.data:
            raise NotFound(path)
        return self.data[path]


def _finished(store: CountingStore, e: BatchEmulator, unit_id: str) -> None:
    result = UnitResult(unit_id=unit_id, window=str(H1), sensors=1, scored=1, points=60,
                        anomalies=0)
    store.data[result_path(H1, RUN, unit_id)] = json.dumps(result.to_json()).encode()
    e.set_task(JOB, unit_id, "completed", exitCode=0, result="success")


@pytest.mark.parametrize("units", [2_000, 20_000])
def test_a_poll_costs_requests_in_proportion_to_the_pending_units_not_the_job(emulator, units):
    store = CountingStore()
    ids = _seed(emulator, JOB, units, prefix="u")
    pending = ids[-50:]
    for unit_id in ids[:-50]:
        _finished(store, emulator, unit_id)
    backend = BatchBackend(store, "az://fleetscore", Settings(batch=BatchSettings(
        endpoint=emulator.endpoint)), client=_client(emulator), engine=ENGINE)

    # The orchestrator asks about the units it still waits for: one listing, no result read.
    emulator.calls.clear()
    states = backend.poll(H1, pending, run_id=RUN)
    assert {s.state for s in states.values()} == {"pending"}
    assert len(emulator.calls) == 1 and store.gets == 0
    [listing] = emulator.calls
    assert listing.query["$filter"].count(" or ") == 49 and "$skiptoken" not in listing.query

    # Ten of them finish: still one listing, and one result read per finished unit.
    for unit_id in pending[:10]:
        _finished(store, emulator, unit_id)
    emulator.calls.clear()
    states = backend.poll(H1, pending, run_id=RUN)
    assert sum(s.state == "succeeded" for s in states.values()) == 10
    assert len(emulator.calls) == 1 and store.gets == 10
    # Polled again, the finished ones are answered from memory: never read twice.
    emulator.calls.clear()
    backend.poll(H1, pending, run_id=RUN)
    assert len(emulator.calls) == 1 and store.gets == 10
    listed = emulator.calls[0].query["$filter"]
    assert listed.count("id eq") == 40  # only the 40 still pending are asked about
    backend.close()


def test_id_filters_are_chunked_and_quoted():
    chunks = id_filters([f"u{i:06d}" for i in range(250)])
    assert [c.count("id eq") for c in chunks] == [100, 100, 50]
    assert all(len(c) <= 2000 for c in chunks)
    long_ids = id_filters(["x" * 60 + str(i) for i in range(100)])
    assert len(long_ids) > 1 and all(len(c) <= 2000 for c in long_ids)
    assert id_filters(["it's"]) == ["id eq 'it''s'"]
    assert id_filters([]) == []


def test_a_poll_of_a_job_that_does_not_exist_fails_its_units(emulator, trained_store):
    backend = BatchBackend(trained_store, trained_store.url, Settings(batch=BatchSettings(
        endpoint=emulator.endpoint)), client=_client(emulator), engine=ENGINE)
    states = backend.poll(H1, ["u000000"], run_id="gone")
    assert states["u000000"].state == "failed" and states["u000000"].error_kind == "TaskMissing"
    assert "does not exist" in states["u000000"].error
    backend.close()


# --- tasks that really run: a process in a task directory --------------------------------------


@pytest.fixture
def site(tmp_path_factory) -> Path:
    return installed_site(tmp_path_factory.getbasetemp(), ROOT)


@pytest.fixture
def running(site, tmp_path):
    e = BatchEmulator(runner=ProcessRunner(sys.executable, site), slots=2,
                      task_root=tmp_path / "nodes").start()

    def decoys(wd: Path) -> None:
        # A task directory holds whatever a job puts there: the task must import the installed
        # packages, never the working directory's.
        for name, code in (("scoring_container", 97), ("fleetscore", 98)):
            (wd / name).mkdir(exist_ok=True)
            (wd / name / "__init__.py").write_text(f"raise SystemExit({code})\n")

    e.prepare_task_dir = decoys
    yield e
    e.stop()


def _running_backend(e: BatchEmulator, store) -> BatchBackend:
    settings = Settings(batch=BatchSettings(endpoint=e.endpoint, task_retries=2))
    return BatchBackend(store, store.url, settings, client=_client(e), engine=ENGINE)


def test_tasks_run_in_task_directories_and_are_retried_on_nonzero_exits_only(
        running, trained_store):
    plan = make_plan(trained_store, H1)
    save_plan(trained_store, plan, RUN)
    ids = [u.id for u in plan.units]
    assert ids == ["u000000", "u000001", "u000002"]
    running.fail_first = {"u000001": 2, "u000002": 5}  # twice then fine; always failing
    backend = _running_backend(running, trained_store)
    backend.submit(H1, plan.units, run_id=RUN)
    running.wait_idle(120)
    states = backend.poll(H1, ids, run_id=RUN)
    client = _client(running)

    ok = client.get_task(JOB, "u000000")
    info = ok.execution_info
    assert ok.state == bm.BatchTaskState.COMPLETED and info.exit_code == 0
    assert info.result == bm.BatchTaskExecutionResult.SUCCESS and info.retry_count == 0
    assert info.failure_info is None and info.start_time <= info.end_time
    assert states["u000000"].state == "succeeded" and states["u000000"].result.scored == 1
    wd = running.task_root / JOB / "u000000" / "wd"
    assert (wd.parent / "stderr.txt").read_text().count("u000000 of 2024-03-01T01: succeeded") == 1

    # Failed twice, retried by "Batch", succeeded on the third attempt.
    retried = client.get_task(JOB, "u000001").execution_info
    assert (retried.exit_code, retried.retry_count, retried.result) == (
        0, 2, bm.BatchTaskExecutionResult.SUCCESS)
    assert retried.last_retry_time is not None and running.attempts[(JOB, "u000001")] == 3
    assert states["u000001"].state == "succeeded"

    # Failing every time: three attempts (maxTaskRetryCount 2), then a failure with its stderr.
    failed = client.get_task(JOB, "u000002").execution_info
    assert (failed.exit_code, failed.retry_count, failed.result) == (
        1, 2, bm.BatchTaskExecutionResult.FAILURE)
    assert failed.failure_info.code == "FailureExitCode"
    assert running.attempts[(JOB, "u000002")] == 3
    status = states["u000002"]
    assert status.state == "failed" and status.error_kind == "TaskUserError"
    assert "exit code 1" in status.error and "failed as injected" in status.error
    backend.close()


@pytest.mark.reliability("R73")
def test_partial_unusable_and_bad_argument_units_exit_0_and_are_never_rerun(
        running, trained_store):
    """Batch reruns every nonzero exit up to maxTaskRetryCount: a failure no rerun can fix
    (partial, unusable, bad arguments) ends with exit 0, recorded in the unit's result when
    the arguments still name a store, an hour, a run and a unit, else said on stderr, which the
    backend reports. Before, bad arguments exited 2 and were run three times."""
    from fleetscore.model.registry import model_path

    plan = make_plan(trained_store, H1)
    save_plan(trained_store, plan, RUN)
    trained_store.put(model_path(Sensor("1", "2")), b"broken")  # u000001's one sensor
    backend = _running_backend(running, trained_store)
    ghost = Unit("u999999", (Sensor("1", "1"),))  # not in the run's plan: unusable
    backend.submit(H1, [plan.units[1], ghost], run_id=RUN)
    store = trained_store.url
    bad = {  # tasks with a wrong command line, each allowed two retries
        "u000007": f"python -m scoring_container --store {store} --window 2024-03-01T01 "
                   f"--run {RUN} --unit u000007 --threads 4",  # recordable: an unknown option
        "u000008": f"python -m scoring_container --store {store} --window 2024-3-1 --run {RUN} "
                   "--unit u000008",  # no hour: nothing recordable
        "u000009": "python -m scoring_container --store /nowhere --window 2024-03-01T01",
    }
    for task_id, command in bad.items():
        running.add_task(JOB, {"id": task_id, "commandLine": command,
                               "constraints": {"maxTaskRetryCount": 2}})
    running.wait_idle(120)
    ids = ["u000001", "u999999", *bad]
    states = backend.poll(H1, ids, run_id=RUN)
    client = _client(running)
    for task_id in ids:
        info = client.get_task(JOB, task_id).execution_info
        assert (info.exit_code, info.retry_count, running.attempts[(JOB, task_id)]) == (0, 0, 1)
        assert states[task_id].state == "failed", task_id
    assert states["u000001"].result.failures[0].kind == "ModelError"
    assert "u999999" in states["u999999"].result.error
    recorded = states["u000007"].result.error
    assert recorded.startswith("UsageError:") and "--threads" in recorded
    for task_id, said in (("u000008", "invalid hour '2024-3-1'"),
                          ("u000009", "the following arguments are required: --run, --unit")):
        assert states[task_id].error_kind == "ResultMissing"
        assert said in states[task_id].error and "not retried" in states[task_id].error
    backend.close()
