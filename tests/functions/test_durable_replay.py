"""The orchestrators as the Durable extension drives them: completions in batches and in any
order, the extension's task ids, its sub-orchestration ids, ContinueAsNew (durable_driver)."""

from __future__ import annotations

import json
import random
from datetime import datetime

import azure.durable_functions as df
import pytest
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType as H
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functions.durable_driver import Disagreement, drive
from tests.functions.test_orchestrator import WINDOW, Doubles


def _scenario():
    return Doubles([f"u{i:06d}" for i in range(5)], running_polls=3,
                   submit_failures={"u000001": 1, "u000003": 7}, status_failures=2)


REQUEST = {"window": WINDOW, "fanout": 2, "submit_chunk": 1, "polls_per_execution": 2}


def _outcome(replay) -> dict:
    return {u: (o["state"], o.get("error_kind")) for u, o in replay.output["outcomes"].items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_durable_any_order_and_batching_gives_the_same_outcome(orchestrator_functions, seed):
    """Failed submits retried, failing status polls, three sub-orchestrations, continue_as_new:
    whatever the order and the batching of completions, the same hour comes out."""
    reference = drive(orchestrator_functions, "score_window", REQUEST, _scenario().activities())
    replay = drive(orchestrator_functions, "score_window", REQUEST, _scenario().activities(),
                   rng=random.Random(seed))
    assert _outcome(replay) == _outcome(reference) == {
        "u000000": ("succeeded", None), "u000001": ("succeeded", None),
        "u000002": ("succeeded", None), "u000003": ("failed", "SubmitFailed"),
        "u000004": ("succeeded", None)}
    assert replay.output["status"] == "partial"
    submits = [u for n, p in replay.calls if n == "submit_units" for u in p["units"]]
    assert submits.count("u000003") == 3 and submits.count("u000001") == 2


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(failures=st.lists(st.integers(0, 4), min_size=1, max_size=6),
       running=st.integers(0, 3), status_failures=st.integers(0, 3), fanout=st.integers(1, 3),
       per_execution=st.integers(1, 3), chunk=st.integers(1, 2), seed=st.integers(0, 2**32 - 1))
def test_durable_drawn_scenarios_any_order_same_outcome(orchestrator_functions, failures, running,
                                                         status_failures, fanout, per_execution,
                                                         chunk, seed):
    units = [f"u{i:06d}" for i in range(len(failures))]
    request = {"window": WINDOW, "fanout": fanout, "submit_chunk": chunk,
               "polls_per_execution": per_execution}

    def doubles():
        return Doubles(units, running_polls=running, status_failures=status_failures,
                       submit_failures=dict(zip(units, failures, strict=True))).activities()

    reference = drive(orchestrator_functions, "score_window", request, doubles())
    replay = drive(orchestrator_functions, "score_window", request, doubles(),
                   rng=random.Random(seed), max_steps=20_000)
    assert _outcome(replay) == _outcome(reference)
    assert sorted(replay.output["outcomes"]) == units
    if chunk == 1:  # a unit fails when its three submits all fail
        assert {u for u, (state, _) in _outcome(replay).items() if state == "failed"} == \
            {u for u, f in zip(units, failures, strict=True) if f >= 3}


def test_durable_task_any_over_retried_calls_then_new_work_is_caught():
    """The hang of azure-functions-durable-python#603, the pattern score_units used: task_any
    over call_activity_with_retry, one fails once, then new work. The driver's model of the
    extension gives the new work another id than the SDK does."""
    bp = df.Blueprint()

    @bp.orchestration_trigger(context_name="context", orchestration="hangs")
    def hangs(context):
        options = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=2)
        tasks = [context.call_activity_with_retry("work", options, i) for i in range(2)]
        while tasks:
            done = yield context.task_any(tasks)
            tasks.remove(done)
        return (yield context.call_activity("work", 9))

    failures = {1: 1}

    def work(i):
        if failures.get(i, 0) > 0:
            failures[i] -= 1
            raise RuntimeError("blip")
        return i

    app = df.DFApp()
    app.register_functions(bp)
    [fn] = [f.get_user_function().orchestrator_function for f in app.get_functions()]
    with pytest.raises(Disagreement):
        drive({"hangs": fn}, "hangs", None, {"work": work})


def test_durable_sub_orchestration_ids_are_the_frameworks(orchestrator_functions):
    doubles = Doubles([f"u{i:06d}" for i in range(3)])
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW, "fanout": 1},
                   doubles.activities(), instance_id="score-20240301T01")
    started = replay.history[1]["OrchestrationInstance"]
    execution_id = started["ExecutionId"]
    created = [e for e in replay.history if e["EventType"] == int(H.SUB_ORCHESTRATION_INSTANCE_CREATED)]
    # DTFx, when the SDK passes no instance id: "{parent execution id}:{task id}".
    assert [e["InstanceId"] for e in created] == [f"{execution_id}:{e['EventId']}" for e in created]
    assert [s.instance_id for s in replay.sub_orchestrations] == [e["InstanceId"] for e in created]
    context = json.loads(replay.sub_orchestrations[0].context_json)
    assert context["parentInstanceId"] == "score-20240301T01"
    assert (context["upperSchemaVersion"], context["upperSchemaVersionNew"]) == (1, 2)
    # A rerun of the hour (same instance id, a new execution) gets new sub-orchestration ids.
    again = drive(orchestrator_functions, "score_window", {"window": WINDOW, "fanout": 1},
                  Doubles([f"u{i:06d}" for i in range(3)]).activities(),
                  instance_id="score-20240301T01-rerun")
    assert not {s.instance_id for s in again.sub_orchestrations} & \
        {s.instance_id for s in replay.sub_orchestrations}


def test_durable_long_poll_loop_continues_as_new_with_bounded_history(orchestrator_functions):
    """Two hours of 30 s polls (240): the sub-orchestration continues as new every 20 polls;
    no execution's history grows with the number of polls, and the parent gets every outcome,
    those of units finished in earlier executions included."""
    units = [f"u{i:06d}" for i in range(4)]

    class Staggered(Doubles):
        def status(self, p):  # u000000 finishes at once, the others one by one, the last late
            out = {}
            for unit in p["units"]:
                self.polls[unit] += 1
                done = self.polls[unit] > 10 + 70 * units.index(unit)
                out[unit] = {"unit": unit, "state": "succeeded" if done else "running"}
            return out

    doubles = Staggered(units, running_polls=1)
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW},
                   doubles.activities(), max_steps=20_000)
    [sub] = replay.sub_orchestrations
    assert doubles.polls["u000003"] == 221
    assert sub.executions == 12  # 221 polls, 20 per execution
    assert sub.longest_history <= 8 * 20 + 20  # 8 events a poll, 20 polls; ~1,800 without
    assert sorted(replay.output["outcomes"]) == units
    assert {o["state"] for o in replay.output["outcomes"].values()} == {"succeeded"}
    # The last execution started with only the unit still running, and the others' outcomes.
    last_input = json.loads(json.loads(sub.context_json)["input"])
    assert last_input["waiting"] == ["u000003"]
    assert {u for u, o in last_input["outcomes"].items() if o["state"] == "succeeded"} == \
        set(units[:3])


def test_durable_continue_as_new_restarts_with_the_new_input(orchestrator_functions):
    doubles = Doubles(["u000000", "u000001"], running_polls=5)
    first = {"window": WINDOW, "run_id": "r", "units": ["u000000", "u000001"], "poll_seconds": 30,
             "deadline": "2024-03-01T04:05:00+00:00", "polls_per_execution": 2}
    replay = drive(orchestrator_functions, "score_units", first, doubles.activities())
    assert replay.executions == 3 and replay.inputs[0] == first
    assert [i.get("waiting") for i in replay.inputs] == [None, ["u000000", "u000001"]] * 1 + \
        [["u000000", "u000001"]]
    assert {u: o["state"] for u, o in replay.output.items()} == {"u000000": "succeeded",
                                                                 "u000001": "succeeded"}
    # Submitted once: a new execution never submits again.
    assert [n for n, _ in replay.calls].count("submit_units") == 2
    assert doubles.polls == {"u000000": 6, "u000001": 6}


def test_durable_failed_sub_orchestration_fails_its_units_not_the_hour(orchestrator_functions):
    real = orchestrator_functions["score_units"]

    def crashing(context):
        if "u000002" in context.get_input()["units"]:
            raise RuntimeError("score_units crashed")
        return (yield from real(context))

    units = [f"u{i:06d}" for i in range(5)]
    for seed in (None, 1, 2, 3):
        replay = drive({**orchestrator_functions, "score_units": crashing}, "score_window",
                       {"window": WINDOW, "fanout": 2}, Doubles(units).activities(),
                       rng=None if seed is None else random.Random(seed))
        outcomes = replay.output["outcomes"]
        assert {u: o["state"] for u, o in outcomes.items()} == {
            "u000000": "succeeded", "u000001": "succeeded", "u000002": "failed",
            "u000003": "failed", "u000004": "succeeded"}
        assert outcomes["u000003"]["error_kind"] == "OrchestrationFailed"
        assert "score_units crashed" in outcomes["u000003"]["error"]
        assert replay.output["status"] == "partial"


@pytest.mark.reliability("R72")
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_durable_failing_status_and_plan_are_retried_by_hand_and_the_run_completes(
        orchestrator_functions, seed):
    """The status poll (and the plan before the fan-out) used call_activity_with_retry followed
    by new work, a timer or sub-orchestrations: the pattern of azure-functions-durable-python
    #603, where a retried call leaves the orchestration hung. Now plain calls, a durable timer
    between attempts, as the submits: the SDK never asks for a retried call, the failing
    activities are called again after the retry interval, and the hour completes."""
    from tests.functions.durable_driver import CALL_ACTIVITY_WITH_RETRY

    units = ["u000000", "u000001"]
    doubles = Doubles(units, running_polls=1, status_failures=2)
    plan_failures = [1]

    def flaky_plan(p):
        if plan_failures[0]:
            plan_failures[0] -= 1
            raise RuntimeError("store blip while planning")
        return doubles.plan(p)

    activities = {**doubles.activities(), "plan_window": flaky_plan}
    replay = drive(orchestrator_functions, "score_window", {"window": WINDOW}, activities,
                   rng=None if seed is None else random.Random(seed))
    assert replay.output["status"] == "succeeded"
    assert {u: o["state"] for u, o in replay.output["outcomes"].items()} == \
        dict.fromkeys(units, "succeeded")
    assert CALL_ACTIVITY_WITH_RETRY not in replay.action_types
    names = [n for n, _ in replay.calls]
    assert names.count("plan_window") == 2 and names.count("finalize_window") == 1
    # Two failed polls, each retried after 5 s, then a "running" and a "succeeded" answer.
    assert names.count("unit_status") == 4
    [sub] = replay.sub_orchestrations
    kinds = [(e["EventType"], e.get("Name")) for e in sub.history
             if e["EventType"] in (int(H.TASK_SCHEDULED), int(H.TIMER_CREATED))]
    statuses = [i for i, k in enumerate(kinds) if k == (int(H.TASK_SCHEDULED), "unit_status")]
    created = [e for e in sub.history if e["EventType"] == int(H.TIMER_CREATED)]
    gaps = sorted({(datetime.fromisoformat(b["FireAt"]) - datetime.fromisoformat(a["FireAt"]))
                   .total_seconds() for a, b in zip(created, created[1:], strict=False)})
    assert 5.0 in gaps and 30.0 in gaps  # retry timers (5 s) between the poll timers (30 s)
    for index in statuses[1:]:
        assert kinds[index - 1][0] == int(H.TIMER_CREATED)  # every call follows its own timer
