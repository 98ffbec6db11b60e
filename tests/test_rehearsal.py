"""The whole cloud path of one hour, rehearsed on this machine:

the hourly timer function -> the ``score_window`` orchestrator, replayed through the Durable SDK
(tests/functions/durable_driver.py) -> the function app's real activities with
FLEETSCORE_BACKEND=batch -> ``BatchBackend`` (the real azure-batch client, over https, with a
bearer token from DefaultAzureCredential, as the Functions app's managed identity gets it) -> the
Batch emulator (an account that allows Entra ID only, as infra deploys it) -> the scoring
container, as a process in a fresh task directory or (``container`` variant) the real image run
with podman -> Azurite.

The hour's predictions must equal the local backend's on a copy of the same data, and a unit
whose first two attempts fail is retried by the emulator as Batch retries a task
(``maxTaskRetryCount``) and then succeeds.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

from fleetscore.core.hours import Hour, previous_full_hour
from fleetscore.runs.engine import ENGINE
from tests.compute.batch_emulator import (
    BatchEmulator,
    PodmanRunner,
    ProcessRunner,
    installed_site,
    self_signed_certificate,
)
from tests.conftest import minute_readings, write_readings
from tests.functions.durable_driver import drive
from tests.identity_endpoint import IdentityEndpoint

ROOT = Path(__file__).resolve().parents[1]
SENSORS = [("1", "1"), ("1", "2"), ("dev_a", "t.x")]
ACTIVITIES = ("plan_window", "submit_units", "unit_status", "finalize_window")
TIMER_WALL_TIME = 0.25  # seconds a durable timer of the poll loop stands for, here


def _fleet(tmp_path: Path, window: Hour) -> Path:
    """Three sensors with readings every 15 s over the hour before ``window`` and ``window``."""
    first = window.start - timedelta(hours=1)
    rows = []
    for i, (device, tag) in enumerate(SENSORS):
        rows += minute_readings(device, tag, first.strftime("%Y-%m-%d %H:%M:%S"), 120, seed=i,
                                level=10 * (i + 1))
    rows.sort()
    return write_readings(tmp_path / "fleet.csv", rows)


def _rows(table) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


@pytest.mark.parametrize("node", ["process",
                                  pytest.param("container", marks=pytest.mark.container)])
def test_an_hour_through_the_whole_cloud_path(
        node, request, app_functions, orchestrator_functions, functions_env, durable_fake,
        run_async, azurite, tmp_path, tmp_path_factory, monkeypatch):
    from fleetscore.compute.local import SequentialBackend
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.training import train
    from fleetscore.runs.lifecycle import read_manifest, read_predictions, run_hour
    from fleetscore.storage import LocalStore

    started = time.monotonic()
    now = datetime.now(UTC)
    window = previous_full_hour(now)

    class Frozen(datetime):
        """The timer's clock, held at the test's start: a run across an hour boundary must
        not make the timer pick the next hour."""

        @classmethod
        def now(cls, tz=None):
            return now

    import triggers
    monkeypatch.setattr(triggers, "datetime", Frozen)
    if node == "container":
        podman, image = request.getfixturevalue("scoring_image")
        runner = PodmanRunner(podman)
    else:
        image = "fleetscore-scoring:rehearsal"
        runner = ProcessRunner(sys.executable, installed_site(tmp_path_factory.getbasetemp(), ROOT))

    # Azure, as deployed: a Batch account that allows Entra ID only, reached over https with the
    # token the Functions app's managed identity endpoint hands out.
    cert, key = self_signed_certificate(tmp_path / "tls")
    identity = IdentityEndpoint("functions-identity-token").start()
    batch = BatchEmulator(
        runner=runner, slots=2, auth_modes=("AAD",), tokens={"functions-identity-token"},
        tls=(cert, key), task_root=tmp_path / "nodes",
        # The storage emulator's connection string stands in for the pool's managed identity.
        extra_env={"FLEETSCORE_STORAGE_CONNECTION_STRING": azurite.connection_string},
    ).start()
    batch.fail_first = {"u000001": 2}  # the node fails this unit twice, then it runs
    for name in ("AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT",
                 "IDENTITY_SERVER_THUMBPRINT", "AZURE_TOKEN_CREDENTIALS",
                 "FLEETSCORE_BATCH_ACCOUNT_KEY", "FLEETSCORE_BATCH_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        **identity.environment(), "REQUESTS_CA_BUNDLE": cert,
        "FLEETSCORE_BACKEND": "batch", "FLEETSCORE_BATCH_ENDPOINT": batch.endpoint,
        "FLEETSCORE_BATCH_IMAGE": image, "FLEETSCORE_BATCH_TASK_RETRIES": "2",
        "FLEETSCORE_BATCH_TASK_TIMEOUT_MINUTES": "10", "FLEETSCORE_UNIT_SIZE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    functions_env.reset()
    try:
        store = functions_env.store()
        ingest_file(store, _fleet(tmp_path, window))
        train(store, until=Hour.from_datetime(window.start - timedelta(hours=1)))
        # The reference: the local backend scores the same hour on a copy of the data.
        reference = LocalStore(tmp_path / "reference")
        for path in store.list(""):
            reference.put(path, store.get(path))
        expected = run_hour(reference, window, SequentialBackend(reference, ENGINE), unit_size=1)
        assert (expected.status, expected.scored) == ("succeeded", 3)

        # The timer starts the previous hour's orchestration ...
        timer = app_functions["scheduled_run"].get_user_function()
        run_async(timer(timer=TimerRequest(past_due=False), client=durable_fake.binding))
        [(name, _instance, orchestration_input)] = durable_fake.starts
        assert orchestration_input["window"] == str(window)
        assert orchestration_input["backend"] == "batch"

        # ... which the Durable SDK replays against the app's real activities.
        real = {n: app_functions[n].get_user_function() for n in ACTIVITIES}

        def status_after_the_timer(payload):
            time.sleep(TIMER_WALL_TIME)  # the poll's durable timer, in wall time for the nodes
            return real["unit_status"](payload)

        replay = drive(orchestrator_functions, name, orchestration_input,
                       {**real, "unit_status": status_after_the_timer},
                       start=datetime.now(UTC))
        summary = replay.output
        assert (summary["status"], summary["scored"], summary["failed"]) == ("succeeded", 3, 0)

        # The hour's predictions are the local backend's.
        got = read_predictions(store, window)
        assert got.num_rows == read_predictions(reference, window).num_rows == 180
        assert _rows(got) == _rows(read_predictions(reference, window))
        manifest = read_manifest(store, window)
        assert manifest.status == "succeeded" and manifest.backend == "batch"

        # Batch's side of it: one job of three tasks, sealed; u000001 retried twice then fine.
        [job] = batch.jobs
        assert batch.jobs[job]["onAllTasksComplete"] == "terminatejob"
        assert batch.jobs[job]["state"] == "completed"
        tasks = {t: body for (j, t), body in batch.tasks.items() if j == job}
        assert sorted(tasks) == ["u000000", "u000001", "u000002"]
        info = tasks["u000001"]["executionInfo"]
        assert (info["retryCount"], info["exitCode"], info["result"]) == (2, 0, "success")
        assert batch.attempts[(job, "u000001")] == 3
        assert all(body["executionInfo"]["retryCount"] == 0 for t, body in tasks.items()
                   if t != "u000001")
        for unit in tasks:  # each ran in its own task directory, logs beside it
            stderr = (tmp_path / "nodes" / job / unit / "stderr.txt").read_text()
            assert f"unit {unit} of {window}: succeeded" in stderr
        # Every request to the account carried the managed identity's token; none a shared key.
        assert {c.headers.get("Authorization") for c in batch.calls} == {
            "Bearer functions-identity-token"}
        assert identity.requests[0]["resource"] == "https://batch.core.windows.net/"
        assert batch.errors == []
        # Polls asked only about the units still pending: never more than the three ids.
        for call in batch.requests("GET", f"/jobs/{job}/tasks"):
            assert call.query["$filter"].count("id eq") <= 3
    finally:
        functions_env.reset()
        batch.stop()
        identity.stop()
    if node == "process":
        assert time.monotonic() - started < 60
