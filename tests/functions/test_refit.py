"""The scheduled refit through the whole cloud path, rehearsed on this machine:

the refit timer (triggers/refit.py) -> the ``refit_models`` orchestrator, replayed through the
Durable SDK (tests/functions/durable_driver.py) -> the app's real refit activities with
FLEETSCORE_BACKEND=batch -> ``BatchBackend`` (the real azure-batch client, over https, with
the managed identity's bearer token) -> the Batch emulator -> the scoring container in its
train mode, as a process of the installed packages in its own task directory -> Azurite.

And the timer's wiring: off (not even indexed) without FLEETSCORE_REFIT_SCHEDULE, its schedule
the setting's binding expression with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.functions.timer import TimerRequest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.model.registry import model_path
from fleetscore.model.versions import MODELS_LOCK, read_history
from fleetscore.runs import refit as policy
from tests.compute.batch_emulator import (
    BatchEmulator,
    ProcessRunner,
    installed_site,
    self_signed_certificate,
)
from tests.functions.durable_driver import drive
from tests.identity_endpoint import IdentityEndpoint

ROOT = Path(__file__).resolve().parents[2]
SENSORS = ["1/1", "1/2", "dev_a/t.x"]
ACTIVITIES = ("refit_begin", "refit_submit", "refit_status", "refit_finish")
TIMER_WALL_TIME = 0.25  # seconds a durable timer of the poll loop stands for, here


@pytest.fixture
def cloud(functions_env, tmp_path, tmp_path_factory, monkeypatch):
    """The app's settings on Azurite and a Batch account (Entra ID only) whose tasks run the
    installed packages; three sensors over 2024-03-01T00..02 with champions trained on T00."""
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.training import train
    from tests.conftest import minute_readings, write_readings

    cert, key = self_signed_certificate(tmp_path / "tls")
    identity = IdentityEndpoint("functions-identity-token").start()
    runner = ProcessRunner(sys.executable, installed_site(tmp_path_factory.getbasetemp(), ROOT))
    batch = BatchEmulator(
        runner=runner, slots=2, auth_modes=("AAD",), tokens={"functions-identity-token"},
        tls=(cert, key), task_root=tmp_path / "nodes",
        extra_env={"FLEETSCORE_STORAGE_CONNECTION_STRING":
                   os.environ["FLEETSCORE_STORAGE_CONNECTION_STRING"]}).start()
    for name in ("AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT",
                 "IDENTITY_SERVER_THUMBPRINT", "AZURE_TOKEN_CREDENTIALS",
                 "FLEETSCORE_BATCH_ACCOUNT_KEY", "FLEETSCORE_BATCH_ACCOUNT_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        **identity.environment(), "REQUESTS_CA_BUNDLE": cert,
        "FLEETSCORE_BACKEND": "batch", "FLEETSCORE_BATCH_ENDPOINT": batch.endpoint,
        "FLEETSCORE_BATCH_IMAGE": "fleetscore-scoring:rehearsal",
        "FLEETSCORE_BATCH_MAX_NODES": "1", "FLEETSCORE_BATCH_TASKS_PER_NODE": "2",  # 2 groups
        "FLEETSCORE_REFIT_SCHEDULE": "0 30 2 * * *", "FLEETSCORE_REFIT_DAYS": "1",
        "FLEETSCORE_REFIT_COMPARE_HOURS": "2", "FLEETSCORE_REFIT_MAX_ANOMALY_RATE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    functions_env.reset()
    rows = []
    for i, (device, tag) in enumerate(s.split("/") for s in SENSORS):
        rows += minute_readings(device, tag, "2024-03-01 00:00:00", 180, seed=i,
                                level=10 * (i + 1))
    store = functions_env.store()
    ingest_file(store, write_readings(tmp_path / "fleet.csv", sorted(rows)))
    train(store, until=Hour.parse("2024-03-01T00"))
    try:
        yield store, batch
    finally:
        functions_env.reset()
        batch.stop()
        identity.stop()


def _refit(app_functions, durable_fake, run_async):
    """The timer fires; the orchestration it starts is replayed against the real activities."""
    import triggers.refit

    timer = triggers.refit.scheduled_refit.build().get_user_function()
    before = len(durable_fake.starts)
    run_async(timer(timer=TimerRequest(past_due=False), client=durable_fake.binding))
    [(name, instance, orchestration_input)] = durable_fake.starts[before:]
    assert (name, instance) == ("refit_models", "refit")
    real = {n: app_functions[n].get_user_function() for n in ACTIVITIES}

    def status_after_the_timer(payload):
        time.sleep(TIMER_WALL_TIME)  # the poll's durable timer, in wall time for the tasks
        return real["refit_status"](payload)

    orchestrators = {"refit_models":
                     app_functions["refit_models"].get_user_function().orchestrator_function}
    replay = drive(orchestrators, name, orchestration_input,
                   {**real, "refit_status": status_after_the_timer}, start=datetime.now(UTC))
    durable_fake.set_status("refit", "Completed", replay.output)
    return replay


def test_the_scheduled_refit_through_the_durable_driver_and_the_batch_emulator(
        cloud, app_functions, durable_fake, run_async, caplog):
    store, batch = cloud
    caplog.set_level(logging.INFO, logger="fleetscore.refit")
    replay = _refit(app_functions, durable_fake, run_async)
    summary = replay.output
    assert (summary["status"], summary["trained"], summary["promoted"], summary["left"]) == \
        ("succeeded", 3, 3, 0), summary
    assert summary["groups"] == 2 and summary["by"] == "functions"
    refit_id = summary["refit_id"]

    # Challengers trained by the tasks, then promoted: each champion is the refit's version,
    # byte for byte, and the bank follows.
    manifest = policy.read_manifest(store, refit_id)
    stored = json.loads(json.dumps(manifest.to_json()))
    stored.pop("sensors")  # the orchestration's output is the manifest less this detail
    assert {**stored, "manifest": f"refit/{refit_id}.json"} == summary
    for sensor in SENSORS:
        history = read_history(store, Sensor.parse(sensor))
        assert [(v.number, v.role) for v in history.versions] == [(1, "retired"), (2, "champion")]
        assert history.events[-1].by == "refit"
        assert manifest.sensors[sensor] == policy.SensorOutcome(policy.PROMOTED, 2)
        data = store.get(model_path(Sensor.parse(sensor)))
        assert hashlib.sha256(data).hexdigest() == history.champion.sha256
    assert manifest.bank.startswith("model bank: 3 of 3")
    assert not store.exists(MODELS_LOCK)  # released
    assert list(store.list(f"refit/{refit_id}/")) == []  # working files dropped

    # Batch's side: one job of two tasks of the same image in its train mode, sealed.
    [job] = batch.jobs
    assert job == f"fs-{refit_id}" and batch.jobs[job]["onAllTasksComplete"] == "terminatejob"
    tasks = {t: body for (j, t), body in batch.tasks.items() if j == job}
    assert sorted(tasks) == ["g000000", "g000001"]
    for group, body in tasks.items():
        assert body["commandLine"].startswith("python -m scoring_container train --store az://")
        assert f"--refit {refit_id} --group {group}" in body["commandLine"]
        assert body["containerSettings"]["imageName"] == "fleetscore-scoring:rehearsal"
        assert body["executionInfo"]["exitCode"] == 0
        stderr = (batch.task_root / job / group / "stderr.txt").read_text()
        assert f"group {group} of {refit_id}: trained" in stderr
    assert batch.errors == []
    assert {n for n, _ in replay.calls} == set(ACTIVITIES)

    # Application Insights: one FleetscoreRefit custom event with the manifest's counts.
    [event] = [r for r in caplog.records
               if getattr(r, "microsoft.custom_event.name", None) == "FleetscoreRefit"]
    assert (event.refit_id, event.refit_status, event.refit_promoted) == \
        (refit_id, "succeeded", 3)


def test_the_orchestrator_waits_in_bounded_executions_and_fails_groups_past_the_deadline(
        app_functions):
    """Replayed with stand-in activities: tasks that never end are polled across executions
    (continue-as-new) and failed at the deadline; finish still runs, with the reasons."""
    finished = {}

    def finish(payload):
        finished.update(payload)
        return {"status": "failed"}

    activities = {
        "refit_begin": lambda p: {"status": "planned", "refit_id": p["refit_id"],
                                  "groups": ["g000000", "g000001"], "sensors": 2},
        "refit_submit": lambda p: {g: {"state": "pending"} for g in p["groups"]},
        "refit_status": lambda p: {g: {"state": "running", "error": ""} for g in p["groups"]},
        "refit_finish": finish,
    }
    orchestrators = {"refit_models":
                     app_functions["refit_models"].get_user_function().orchestrator_function}
    replay = drive(orchestrators, "refit_models", {"poll_seconds": 60, "deadline_minutes": 10,
                                                   "polls_per_execution": 4}, activities)
    assert replay.output == {"status": "failed"} and replay.executions >= 3
    assert replay.longest_history < 60
    assert {o["state"] for o in finished["outcomes"].values()} == {"failed"}
    assert all("did not finish before" in o["error"] for o in finished["outcomes"].values())


def test_a_refit_while_another_holds_the_lock_says_so_and_trains_nothing(
        cloud, app_functions, durable_fake, run_async):
    store, batch = cloud
    other = policy.RefitLock(store, "refit-20240301T000000-other", ttl=timedelta(minutes=10))
    assert other.take()
    replay = _refit(app_functions, durable_fake, run_async)
    summary = replay.output
    assert summary["status"] == policy.LOCKED and summary["trained"] == 0
    assert "held by refit refit-20240301T000000-other (until " in summary["reason"]
    assert policy.read_manifest(store, summary["refit_id"]).status == policy.LOCKED
    assert [n for n, _ in replay.calls] == ["refit_begin"]  # no submit, no Batch job
    assert batch.jobs == {}
    assert all(len(read_history(store, Sensor.parse(s)).versions) == 1 for s in SENSORS)
    assert json.loads(store.get(MODELS_LOCK))["token"] == "refit-20240301T000000-other"
    other.release()


def test_the_timer_does_not_start_a_refit_while_one_runs(cloud, durable_fake, run_async):
    import triggers.refit

    durable_fake.set_status("refit", "Running")
    timer = triggers.refit.scheduled_refit.build().get_user_function()
    run_async(timer(timer=TimerRequest(past_due=False), client=durable_fake.binding))
    assert durable_fake.starts == [] and durable_fake.refused == []


@pytest.mark.parametrize("schedule", ["", "0 30 2 * * *"])
def test_the_refit_timer_is_off_without_a_schedule(schedule):
    """Indexed as the host indexes the app, in a fresh process with the setting (or not)."""
    code = ("import json, function_app\n"
            "fs = {f.get_function_name(): f for f in function_app.app.get_functions()}\n"
            "t = fs.get('scheduled_refit')\n"
            "print(json.dumps(None if t is None else [json.loads(b) if isinstance(b, str) "
            "else b for b in t.get_raw_bindings()]))\n")
    env = {k: v for k, v in os.environ.items() if k != "FLEETSCORE_REFIT_SCHEDULE"}
    if schedule:
        env["FLEETSCORE_REFIT_SCHEDULE"] = schedule
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bindings = json.loads(done.stdout.strip().splitlines()[-1])
    if not schedule:
        assert bindings is None
        return
    timer = {b["type"]: b for b in bindings}["timerTrigger"]
    assert timer["schedule"] == "%FLEETSCORE_REFIT_SCHEDULE%"
    assert timer.get("runOnStartup") in (False, None)
