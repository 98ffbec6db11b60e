"""The orchestrators replayed through the SDK's own Orchestrator.handle with JSON histories."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

import pytest
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType as H

from tests.functions.durable_driver import drive, event, handle

WINDOW = "2024-03-01T01"


class Doubles:
    """Activity doubles with scripted behaviour; they record what they were asked."""

    def __init__(self, units, *, running_polls=0, submit_failures=None, status_failures=0,
                 state="succeeded"):
        self.units = units
        self.running_polls = running_polls
        self.submit_failures = dict(submit_failures or {})
        self.status_failures = status_failures
        self.state = state
        self.polls = Counter()
        self.submitted: list[list[str]] = []

    def plan(self, p):
        self.run_id, self.deadline = p["run_id"], p["deadline"]
        return {"window": p["window"], "run_id": p["run_id"], "units": self.units,
                "sensors": len(self.units), "deadline": p["deadline"], "no_data": 0,
                "no_model": 0, "not_planned": []}

    def submit(self, p):
        self.submitted.append(list(p["units"]))
        for unit in p["units"]:
            if self.submit_failures.get(unit, 0) > 0:
                self.submit_failures[unit] -= 1
                raise RuntimeError(f"store unavailable for {unit}")
        return {u: {"unit": u, "state": "pending" if self.running_polls else self.state}
                for u in p["units"]}

    def status(self, p):
        if self.status_failures > 0:
            self.status_failures -= 1
            raise RuntimeError("status unavailable")
        out = {}
        for unit in p["units"]:
            self.polls[unit] += 1
            done = self.polls[unit] > self.running_polls
            out[unit] = {"unit": unit, "state": self.state if done else "running"}
        return out

    @staticmethod
    def finalize(p):
        states = [o["state"] for o in p["outcomes"].values()]
        failed = sum(s == "failed" for s in states)
        return {"window": p["window"], "status": "partial" if failed else "succeeded",
                "scored": len(states) - failed, "failed": failed, "anomalies": 0,
                "outcomes": p["outcomes"], "run_id": p["run_id"]}

    def activities(self):
        return {"plan_window": self.plan, "submit_units": self.submit,
                "unit_status": self.status, "finalize_window": self.finalize}


def test_orchestrator_first_episode_schedules_the_plan(orchestrator_functions):
    clock = datetime.fromisoformat("2024-03-01T02:05:00+00:00")
    history = [event(H.ORCHESTRATOR_STARTED, clock),
               event(H.EXECUTION_STARTED, clock, Name="score_window", Version="",
                     OrchestrationInstance={"InstanceId": "score-20240301T01"},
                     Input=json.dumps({"window": WINDOW}))]
    out, _ = handle(orchestrator_functions["score_window"], history, "score-20240301T01",
                    {"window": WINDOW, "sensors": ["1/1"]})
    assert out["isDone"] is False
    # Schema V3 (what the extension asks for): one flat list of actions. The plan is a plain
    # call (0), retried by the orchestrator itself, never a CallActivityWithRetry (1).
    assert out["schemaVersion"] == 2
    [[action]] = out["actions"]
    assert action["functionName"] == "plan_window" and action["actionType"] == 0
    body = json.loads(action["input"])
    run_id = body.pop("run_id")
    assert body == {"window": WINDOW, "sensors": ["1/1"], "unit_size": None,
                    "deadline": "2024-03-01T04:05:00+00:00"}  # started + 120 minutes
    assert run_id.startswith("20240301020500") and len(run_id) == 20
    again, _ = handle(orchestrator_functions["score_window"], history, "score-20240301T01",
                      {"window": WINDOW, "sensors": ["1/1"]})
    again_action = again["actions"][0][0]
    assert json.loads(again_action["input"])["run_id"] == run_id  # replay: same id


def test_orchestrator_fans_out_in_bounded_sub_orchestrations(orchestrator_functions):
    units = [f"u{i:06d}" for i in range(5)]
    doubles = Doubles(units)
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW, "fanout": 2},
                   doubles.activities())
    assert [sub.output and sorted(sub.output) for sub in replay.sub_orchestrations] == \
        [units[0:2], units[2:4], units[4:5]]
    assert replay.output["status"] == "succeeded" and replay.output["scored"] == 5
    assert [name for name, _ in replay.calls].count("submit_units") == 5
    assert replay.calls[-1][0] == "finalize_window"


def test_orchestrator_timer_loop_polls_until_units_finish(orchestrator_functions):
    doubles = Doubles(["u000000", "u000001"], running_polls=2)
    replay = drive(orchestrator_functions, "score_window",
                   {"window": WINDOW, "poll_seconds": 30}, doubles.activities())
    sub = replay.sub_orchestrations[0]
    timers = [e for e in sub.history if e["EventType"] == int(H.TIMER_FIRED)]
    assert len(timers) == 3  # two polls saw "running", the third "succeeded"
    fired = [datetime.fromisoformat(e["FireAt"]) for e in timers]
    assert [(b - a).total_seconds() for a, b in zip(fired, fired[1:], strict=False)] == [30.0, 30.0]
    assert [n for n, _ in replay.calls].count("unit_status") == 3
    assert replay.output["status"] == "succeeded"


@pytest.mark.reliability("R22")
def test_orchestrator_activity_failure_retried_then_reported(orchestrator_functions):
    doubles = Doubles(["u000000", "u000001", "u000002"],
                      submit_failures={"u000001": 5, "u000002": 2})
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW},
                   doubles.activities())
    submits = Counter(u for n, p in replay.calls if n == "submit_units" for u in p["units"])
    assert submits == {"u000000": 1, "u000001": 3, "u000002": 3}  # 3 attempts at most
    outcomes = replay.output["outcomes"]
    assert outcomes["u000002"]["state"] == "succeeded"  # failed twice, then succeeded
    assert outcomes["u000001"]["state"] == "failed"
    assert outcomes["u000001"]["error_kind"] == "SubmitFailed"
    assert "store unavailable for u000001" in outcomes["u000001"]["error"]
    assert replay.output["status"] == "partial"


def test_orchestrator_submits_in_chunks_and_passes_the_run_id(orchestrator_functions):
    units = [f"u{i:06d}" for i in range(250)]
    doubles = Doubles(units, running_polls=1)
    replay = drive(orchestrator_functions, "score_window",
                   {"window": WINDOW, "fanout": 200, "submit_chunk": 100}, doubles.activities())
    assert [len(c) for c in doubles.submitted] == [100, 100, 50]
    run_ids = {p.get("run_id") for n, p in replay.calls}
    assert run_ids == {doubles.run_id}  # plan, submits, polls and finalize: one run
    assert replay.output["scored"] == 250
    assert {p["deadline"] for n, p in replay.calls if n == "unit_status"} == {doubles.deadline}


def test_orchestrator_unit_past_its_deadline_is_failed(orchestrator_functions):
    doubles = Doubles(["u000000"], running_polls=10_000)
    replay = drive(orchestrator_functions, "score_window",
                   {"window": WINDOW, "poll_seconds": 60, "unit_deadline_minutes": 5},
                   doubles.activities())
    outcome = replay.output["outcomes"]["u000000"]
    assert (outcome["state"], outcome["error_kind"]) == ("failed", "DeadlineExceeded")
    # The status activity fails units at the deadline; if it never does (here a double that
    # ignores it), the loop gives up two polls later and finalize cancels what is left.
    assert doubles.polls["u000000"] == 7


def test_orchestrator_status_failure_keeps_polling(orchestrator_functions):
    doubles = Doubles(["u000000"], running_polls=1, status_failures=3)
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW},
                   doubles.activities())
    assert replay.output["outcomes"]["u000000"]["state"] == "succeeded"


def test_orchestrator_with_no_units_goes_straight_to_finalize(orchestrator_functions):
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW},
                   Doubles([]).activities())
    assert [n for n, _ in replay.calls] == ["plan_window", "finalize_window"]
    assert replay.output["scored"] == 0


def test_orchestrator_replaying_the_same_history_twice_gives_the_same_actions(orchestrator_functions):
    doubles = Doubles(["u000000", "u000001"], running_polls=1, submit_failures={"u000001": 1})
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW}, doubles.activities())
    fn = orchestrator_functions["score_window"]
    # Cut the history before its last completion: both replays must ask for the same next step.
    partial = replay.history[:-1]
    first, _ = handle(fn, partial, "test-instance", {"window": WINDOW})
    second, _ = handle(fn, partial, "test-instance", {"window": WINDOW})
    assert first == second and first["isDone"] is False
    done_a, _ = handle(fn, replay.history, "test-instance", {"window": WINDOW})
    done_b, _ = handle(fn, replay.history, "test-instance", {"window": WINDOW})
    assert done_a == done_b and done_a["isDone"] and done_a["output"] == replay.output


def test_orchestrator_with_the_real_activities_on_azurite_reports_a_partial_run(
        orchestrator_functions, app_functions, functions_env, fleet_csv):
    from fleetscore.core.hours import Hour
    from fleetscore.core.sensors import Sensor
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.registry import model_path
    from fleetscore.model.training import train
    from fleetscore.runs.lifecycle import read_manifest, read_predictions

    store = functions_env.store()
    ingest_file(store, fleet_csv)
    train(store, until=Hour.parse("2024-03-01T00"))
    store.put(model_path(Sensor("1", "2")), b"corrupt")
    activities = {name: app_functions[name].get_user_function()
                  for name in ("plan_window", "submit_units", "unit_status", "finalize_window")}
    replay = drive(orchestrator_functions, "score_window",
                   functions_env.settings().orchestration_input(WINDOW), activities)
    assert replay.output["status"] == "partial"
    assert (replay.output["scored"], replay.output["failed"]) == (2, 1)
    manifest = read_manifest(store, Hour.parse(WINDOW))
    assert [(f.sensor, f.kind) for f in manifest.failures] == [("1/2", "ModelError")]
    assert read_predictions(store, Hour.parse(WINDOW)).num_rows == 120

    # A rerun of just the broken sensor, after its model is fixed, completes the hour.
    train(store, until=Hour.parse("2024-03-01T00"), sensors={Sensor("1", "2")})
    rerun = drive(orchestrator_functions, "score_window",
                  functions_env.settings().orchestration_input(WINDOW, sensors=["1/2"], force=True),
                  activities, start=datetime.fromisoformat("2024-03-01T03:00:00+00:00"))
    assert [p["units"] for n, p in rerun.calls if n == "submit_units"] == [["u000000"]]
    assert (rerun.output["status"], rerun.output["scored"]) == ("succeeded", 1)
    assert read_predictions(store, Hour.parse(WINDOW)).num_rows == 180  # the others kept
    from fleetscore.runs.locks import lock_path
    assert not store.exists(lock_path(Hour.parse(WINDOW)))  # finalize released the hour


@pytest.mark.parametrize("poll", [1, 45])
def test_orchestrator_input_carries_the_settings(poll, monkeypatch):
    from fleetscore.settings import Settings

    monkeypatch.setenv("FLEETSCORE_POLL_SECONDS", str(poll))
    body = Settings.from_env().orchestration_input(WINDOW, sensors=["1/1"])
    assert body["poll_seconds"] == poll and body["sensors"] == ["1/1"] and body["window"] == WINDOW


@pytest.mark.reliability("R18")
def test_the_durable_path_takes_the_hour_lock_a_cli_run_holds(
        orchestrator_functions, app_functions, functions_env, fleet_csv):
    """A CLI run inside the hour: the orchestration's plan activity is refused (and retried by
    the orchestrator, then the orchestration fails naming the holder), nothing is written."""
    import os
    from datetime import UTC, datetime

    from fleetscore.core.hours import Hour
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.training import train
    from fleetscore.runs import locks
    from fleetscore.runs.lifecycle import read_manifest

    store = functions_env.store()
    ingest_file(store, fleet_csv)
    train(store, until=Hour.parse("2024-03-01T00"))
    locks.acquire(store, Hour.parse(WINDOW), "cli-run", now=datetime.now(UTC), pid=os.getpid())
    activities = {name: app_functions[name].get_user_function()
                  for name in ("plan_window", "submit_units", "unit_status", "finalize_window")}
    with pytest.raises(Exception, match="already being scored"):
        drive(orchestrator_functions, "score_window",
              functions_env.settings().orchestration_input(WINDOW), activities)
    assert read_manifest(store, Hour.parse(WINDOW)) is None
    assert locks.holds(store, Hour.parse(WINDOW), "cli-run")
    assert not list(store.list("predictions"))


def test_a_store_error_in_a_unit_scored_in_its_activity_is_retried_not_final(
        orchestrator_functions, app_functions, functions_env, fleet_csv, monkeypatch):
    """With the local backend a unit is scored inside the submit activity: a store blip
    there fails the activity, and the orchestrator's retry scores the unit again (a unit
    failed for good by one 503 would keep the hour partial)."""
    from fleetscore.core.hours import Hour
    from fleetscore.data.ingest import ingest_file
    from fleetscore.errors import StoreError
    from fleetscore.model.training import train
    from fleetscore.runs import lifecycle

    store = functions_env.store()
    ingest_file(store, fleet_csv)
    train(store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    real, calls = lifecycle.score_unit, []

    def blip(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("503 Server Busy")
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "score_unit", blip)
    activities = {name: app_functions[name].get_user_function()
                  for name in ("plan_window", "submit_units", "unit_status", "finalize_window")}
    replay = drive(orchestrator_functions, "score_window",
                   functions_env.settings().orchestration_input(WINDOW), activities)
    assert (replay.output["status"], replay.output["failed"], replay.output["scored"]) == (
        "succeeded", 0, 3)
    submits = [p["units"] for n, p in replay.calls if n == "submit_units"]
    assert len(submits) == len({u for units in submits for u in units}) + 1  # one retried


def test_a_status_call_after_the_hour_was_taken_over_stops_the_run(app_functions, functions_env,
                                                                   monkeypatch):
    """Another run holds the hour now: the status activity fails this run's units as LockLost
    and cancels them on the backend, so the orchestration stops at once instead of polling
    to its deadline and blaming it."""
    import os
    from datetime import UTC, datetime, timedelta

    from fleetscore.compute.local import SequentialBackend
    from fleetscore.core.hours import Hour
    from fleetscore.runs import locks

    cancelled = []
    monkeypatch.setattr(SequentialBackend, "cancel",
                        lambda self, window, units, run_id="": cancelled.append((run_id, units)))
    hour = Hour.parse(WINDOW)
    locks.acquire(functions_env.store(), hour, "another-run", now=datetime.now(UTC),
                  pid=os.getpid())
    status = app_functions["unit_status"].get_user_function()
    out = status(payload={"window": WINDOW, "run_id": "this-run", "units": ["u000000", "u000001"],
                          "deadline": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
    assert {u: (o["state"], o["error_kind"]) for u, o in out.items()} == {
        "u000000": ("failed", "LockLost"), "u000001": ("failed", "LockLost")}
    assert cancelled == [("this-run", ["u000000", "u000001"])]
