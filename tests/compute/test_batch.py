"""The Batch backend with the real azure-batch BatchClient talking HTTP to a local fake of the
Batch REST API: requests are checked, task lifecycles are played, nothing is patched."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import isodate
import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from fleetscore.compute.batch import (
    AUTOSCALE_FORMULA,
    BatchBackend,
    autoscale_formula,
    command_line,
    job_id,
)
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import BackendError, UsageError
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import Backoff, run_hour, run_unit
from fleetscore.scoring.planning import Unit, make_plan, save_plan
from fleetscore.settings import BatchSettings, Settings
from tests.compute.batch_fake import FakeBatch

H1 = Hour.parse("2024-03-01T01")
RUN = "r1"
JOB = job_id(H1, RUN)
IDENTITY = ("/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/"
            "userAssignedIdentities/fleet")


@pytest.fixture
def fake():
    batch = FakeBatch().start()
    yield batch
    batch.stop()


@pytest.fixture
def batch_settings(fake) -> Settings:
    return Settings(
        storage_account_url="https://acct.blob.core.windows.net",
        storage_connection_string="DefaultEndpointsProtocol=https;AccountKey=c2VjcmV0;",
        batch=BatchSettings(
            endpoint=fake.endpoint, account_name="acct", account_key="a2V5", max_nodes=7,
            image="fleetacr.azurecr.io/fleetscore-scoring:0.1.0", registry="fleetacr.azurecr.io",
            identity_resource_id=IDENTITY, identity_client_id="client-id-1",
            logs_container_url="https://acct.blob.core.windows.net/fleetscore",
            task_timeout_minutes=30,
        ),
    )


@pytest.fixture
def backend(trained_store, batch_settings):
    client = BatchClient(batch_settings.batch.endpoint,
                         AzureNamedKeyCredential("acct", batch_settings.batch.account_key))
    be = BatchBackend(trained_store, "az://fleetscore", batch_settings, client=client, environ={},
                      engine=ENGINE)
    yield be
    be.close()


def _units(n: int) -> list[Unit]:
    return [Unit(f"u{i:06d}", (Sensor("1", "1"),)) for i in range(n)]


def test_batch_formula_shape_and_settings_substitution():
    formula = autoscale_formula(12)
    statements = [s.strip() for s in formula.split(";") if s.strip()]
    assigned = {s.split("=", 1)[0].strip() for s in statements}
    assert {"$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption"} <= assigned
    assert "$NodeDeallocationOption = taskcompletion" in formula
    assert "min(12, $pending / 1)" in formula
    assert "GetSamplePercent(TimeInterval_Minute * 5)" in formula  # guard for missing samples
    assert "max(0, $PendingTasks.GetSample(1))" in formula  # from zero: last sample, or 0
    assert "$TargetDedicatedNodes = $nodes" in formula and "$TargetLowPriorityNodes = 0" in formula
    spot = autoscale_formula(3, spot=True)
    assert "$TargetDedicatedNodes = 0" in spot and "$TargetLowPriorityNodes = $nodes" in spot
    assert "{" not in formula and "}" not in formula
    assert formula.count(";") == AUTOSCALE_FORMULA.count(";") == 24
    with pytest.raises(UsageError):
        autoscale_formula(0)


def test_batch_pool_created_once_with_containers_registry_identity_and_autoscale(backend, fake):
    backend.submit(H1, _units(1), run_id=RUN)
    backend._pool_ready = False
    backend.submit(H1, _units(1), run_id=RUN)  # finds the pool instead of creating it again
    assert len(fake.requests("POST", "/pools")) == 1
    pool = fake.pools["fleetscore"]
    assert pool["vmSize"] == "Standard_D2s_v5"
    assert pool["enableAutoScale"] is True
    assert isodate.parse_duration(pool["autoScaleEvaluationInterval"]) == timedelta(minutes=5)
    assert "min(7, $pending / 2)" in pool["autoScaleFormula"]
    assert pool["taskSlotsPerNode"] == 2
    vm = pool["virtualMachineConfiguration"]
    assert vm["nodeAgentSKUId"].startswith("batch.node.ubuntu")
    containers = vm["containerConfiguration"]
    assert containers["type"] == "dockerCompatible"
    assert containers["containerImageNames"] == ["fleetacr.azurecr.io/fleetscore-scoring:0.1.0"]
    assert containers["containerRegistries"] == [{
        "registryServer": "fleetacr.azurecr.io", "identityReference": {"resourceId": IDENTITY}}]
    assert fake.errors == []


def test_batch_tasks_run_the_container_with_constraints_env_and_log_upload(backend, fake, batch_settings):
    backend.submit(H1, _units(1), run_id=RUN)
    task = fake.tasks[(JOB, "u000000")]
    assert task["commandLine"] == command_line("az://fleetscore", H1, RUN, "u000000") == \
        "python -m scoring_container --store az://fleetscore --window 2024-03-01T01 --run r1 " \
        "--unit u000000"
    # The image's WORKDIR, not the task directory (the task user's; tests/test_container.py).
    assert task["containerSettings"] == {"imageName": "fleetacr.azurecr.io/fleetscore-scoring:0.1.0",
                                         "containerRunOptions": "--rm",
                                         "workingDirectory": "containerImageDefault"}
    assert task["constraints"]["maxTaskRetryCount"] == 2
    assert isodate.parse_duration(task["constraints"]["maxWallClockTime"]) == timedelta(minutes=30)
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env == {"FLEETSCORE_STORE": "az://fleetscore", "AZURE_CLIENT_ID": "client-id-1",
                   "FLEETSCORE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"}
    [output] = task["outputFiles"]
    assert output["filePattern"] == "../std*.txt"
    destination = output["destination"]["container"]
    assert destination["path"] == "logs/2024-03-01T01/u000000"
    assert destination["identityReference"] == {"resourceId": IDENTITY}
    assert output["uploadOptions"] == {"uploadCondition": "taskcompletion"}
    # No secret anywhere in what was sent to Batch.
    sent = repr([c.body for c in fake.calls])
    for secret in ("a2V5", "c2VjcmV0", "AccountKey"):
        assert secret not in sent
    assert fake.errors == []


@pytest.mark.reliability("R74")
def test_batch_tasks_carry_app_insights_and_the_pool_identity_for_unit_metrics(
        trained_store, batch_settings, fake, monkeypatch):
    """Unit metrics on Batch: each task gets the app's APPLICATIONINSIGHTS_CONNECTION_STRING
    and the pool identity's client id as environment settings (the pool identity has
    Monitoring Metrics Publisher), never on the command line."""
    connection = ("InstrumentationKey=00000000-0000-0000-0000-000000000001;"
                  "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/")
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", connection)
    client = BatchClient(batch_settings.batch.endpoint, AzureNamedKeyCredential("acct", "a2V5"))
    backend = BatchBackend(trained_store, "az://fleetscore", batch_settings, client=client, engine=ENGINE)
    try:
        backend.submit(H1, _units(2), run_id=RUN)
    finally:
        backend.close()
    [request] = fake.requests("POST", r"/jobs/[^/]+/addtaskcollection")
    for task in request.body["value"]:
        env = {e["name"]: e["value"] for e in task["environmentSettings"]}
        assert env["APPLICATIONINSIGHTS_CONNECTION_STRING"] == connection
        assert env["AZURE_CLIENT_ID"] == "client-id-1"  # FLEETSCORE_BATCH_IDENTITY_CLIENT_ID
        assert "InstrumentationKey" not in task["commandLine"]
    # Without the setting (local runs, or an app without Application Insights) none is sent.
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING")
    quiet = BatchBackend(trained_store, "az://fleetscore", batch_settings, client=BatchClient(
        batch_settings.batch.endpoint, AzureNamedKeyCredential("acct", "a2V5")), engine=ENGINE)
    try:
        names = {e.name for e in quiet.task_spec(H1, "u000000", RUN).environment_settings}
    finally:
        quiet.close()
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in names and "AZURE_CLIENT_ID" in names
    assert fake.errors == []


def test_batch_tasks_added_in_chunks_of_100_and_job_sealed_only_at_finish(backend, fake):
    backend.submit(H1, _units(250), run_id=RUN)
    chunks = [len(c.body["value"]) for c in fake.requests("POST", r"/jobs/[^/]+/addtaskcollection")]
    assert chunks == [100, 100, 50]
    assert fake.jobs[JOB]["onAllTasksComplete"] == "noaction"
    assert fake.jobs[JOB]["poolInfo"] == {"poolId": "fleetscore"}
    backend.finish(H1, run_id=RUN)
    assert fake.jobs[JOB]["onAllTasksComplete"] == "terminatejob"
    assert fake.errors == []


def test_batch_resubmission_finds_existing_tasks_and_job(backend, fake):
    units = _units(3)
    backend.submit(H1, units, run_id=RUN)
    fresh = BatchBackend(backend._store, "az://fleetscore", backend.settings,
                         client=BatchClient(fake.endpoint, AzureNamedKeyCredential("acct", "a2V5")),
                         engine=ENGINE)
    fresh.submit(H1, units, run_id=RUN)  # an activity retried in another worker
    assert len(fake.tasks) == 3 and len(fake.requests("POST", "/jobs")) == 2
    assert len(fake.jobs) == 1
    fresh.close()
    # Another run of the same hour is another job: no task of the old run stands for the new.
    backend.submit(H1, units, run_id="r2")
    assert len(fake.jobs) == 2 and len(fake.tasks) == 6


def test_batch_throttling_is_retried_after_retry_after(backend, fake):
    fake.throttle = 2
    backend.submit(H1, _units(2), run_id=RUN)
    assert len(fake.tasks) == 2
    statuses = [c for c in fake.calls if c.method == "HEAD"]
    assert len(statuses) >= 3  # two 429s, then the real answer


@pytest.mark.reliability("R21")
def test_batch_lifecycle_success_partial_failure_retries_and_preemption(backend, fake, trained_store):
    plan = make_plan(trained_store, H1)
    save_plan(trained_store, plan, RUN)
    backend.submit(H1, plan.units, run_id=RUN)
    ids = [u.id for u in plan.units]
    assert {s.state for s in backend.poll(H1, ids, run_id=RUN).values()} == {"pending"}

    # u000000: runs, is preempted and requeued by Batch (still pending), then succeeds.
    fake.set_task(JOB, "u000000", "running")
    assert backend.poll(H1, ids, run_id=RUN)["u000000"].state == "running"
    fake.set_task(JOB, "u000000", "active", requeueCount=1)
    assert backend.poll(H1, ids, run_id=RUN)["u000000"].state == "pending"
    run_unit(trained_store, H1, RUN, "u000000")  # what the container does on the node
    fake.set_task(JOB, "u000000", "completed", exitCode=0, result="success")

    # u000001: a broken model; the container exits 3 after Batch's two retries.
    from fleetscore.model.registry import model_path
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    run_unit(trained_store, H1, RUN, "u000001")
    fake.set_task(JOB, "u000001", "completed", exitCode=3, retryCount=2, result="failure")

    # u000002: the container crashes; Batch gives up after its retries.
    fake.files[(JOB, "u000002", "stderr.txt")] = b"loading\nTraceback ...\nMemoryError: out of memory\n"
    fake.set_task(JOB, "u000002", "completed", exitCode=137, retryCount=2, result="failure",
                  failureInfo={"category": "usererror", "code": "FailureExitCode",
                               "message": "The task exited with an exit code representing a failure"})
    states = backend.poll(H1, ids, run_id=RUN)
    assert states["u000000"].state == "succeeded" and states["u000000"].result.scored == 1
    # Its one sensor failed: the unit is failed, with the sensor's reason from its result.
    assert states["u000001"].state == "failed"
    assert states["u000001"].result.failures[0].sensor == "1/2"
    assert states["u000001"].result.failures[0].kind == "ModelError"
    failed = states["u000002"]
    assert failed.state == "failed" and failed.error_kind == "TaskUserError"
    assert "exit code 137" in failed.error and "MemoryError: out of memory" in failed.error
    assert "FailureExitCode" in failed.error


def test_batch_task_completed_without_result_or_missing_is_failed(backend, fake, trained_store):
    backend.submit(H1, _units(1), run_id=RUN)
    fake.set_task(JOB, "u000000", "completed", exitCode=0)
    states = backend.poll(H1, ["u000000", "u000009"], run_id=RUN)
    assert states["u000000"].error_kind == "ResultMissing"
    assert states["u000009"].error_kind == "TaskMissing"


def test_batch_errors_become_backend_errors(trained_store, batch_settings):
    dead = replace(batch_settings, batch=replace(batch_settings.batch, endpoint="http://127.0.0.1:9"))
    client = BatchClient("http://127.0.0.1:9", AzureNamedKeyCredential("acct", "a2V5"),
                         retry_total=0)
    be = BatchBackend(trained_store, "az://fleetscore", dead, client=client, engine=ENGINE)
    with pytest.raises(BackendError, match="Azure Batch failed on pool fleetscore"):
        be.submit(H1, _units(1), run_id=RUN)
    be.close()


def test_batch_run_of_an_hour_end_to_end_through_the_run_loop(backend, fake, trained_store):
    """The run loop drives the Batch backend; a thread plays the nodes: run the unit, complete it."""
    import threading

    stop = threading.Event()

    def nodes():
        while not stop.is_set():
            for (job, task), body in list(fake.tasks.items()):
                if body["state"] == "active":
                    run_unit(trained_store, H1, job.split("-", 2)[2], task)
                    fake.set_task(job, task, "completed", exitCode=0)
            stop.wait(0.05)

    worker = threading.Thread(target=nodes, daemon=True)
    worker.start()
    try:
        summary = run_hour(trained_store, H1, backend, backoff=Backoff(first=0.05, most=0.2))
    finally:
        stop.set()
        worker.join()
    assert (summary.status, summary.scored) == ("succeeded", 3)
    assert [j["onAllTasksComplete"] for j in fake.jobs.values()] == ["terminatejob"]
    assert not [e for e in fake.errors if not re.search("api-version", e)]


@pytest.mark.reliability("R29")
def test_the_run_loop_sleeps_between_batch_listings_and_terminates_late_tasks(
        backend, fake, trained_store):
    """Tasks that never finish: the loop backs off between listings (no busy polling) and, at
    the deadline, terminates the tasks on Batch."""
    import time

    started = time.monotonic()
    summary = run_hour(trained_store, H1, backend, deadline=timedelta(seconds=1.5),
                       backoff=Backoff(first=0.1, factor=2, most=0.4))
    elapsed = time.monotonic() - started
    listings = fake.requests("GET", r"/jobs/[^/]+/tasks")
    assert 3 <= len(listings) <= 12, len(listings)  # about 1.5 s at 0.1 .. 0.4 s a poll
    assert elapsed >= 1.4
    terminated = fake.requests("POST", r"/jobs/[^/]+/tasks/[^/]+/terminate")
    assert sorted(c.path.split("/")[4] for c in terminated) == ["u000000", "u000001", "u000002"]
    assert {t["state"] for t in fake.tasks.values()} == {"completed"}
    assert summary.status == "failed"
    assert {f["kind"] for f in summary.failures} == {"DeadlineExceeded"}


def test_a_retried_finish_finds_the_job_completed_and_is_done(backend, fake):
    """finish seals the job; its tasks complete, so Batch completes the job; a finalize
    retried after that (a store error later in the close) seals it again and meets 409
    JobCompleted: the job is sealed already, not an error."""
    units = _units(2)
    backend.submit(H1, units, run_id=RUN)
    backend.finish(H1, run_id=RUN)
    for unit in units:
        fake.set_task(JOB, unit.id, "completed", exitCode=0, result="success")
    assert fake.jobs[JOB]["state"] == "completed"
    backend.finish(H1, run_id=RUN)  # the retry: no BackendError
    assert len(fake.requests("PATCH", rf"/jobs/{JOB}")) == 2 and fake.errors == []
