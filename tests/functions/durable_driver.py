"""A tiny stand-in for the Durable Task host, for tests: it replays an orchestrator through the
SDK's own ``Orchestrator.handle`` with a JSON history, resolves one open task at a time (the
lowest id the SDK has open), appends the event the host would append, and replays again until
the orchestration is done. Activities are Python callables (the app's real activities or test
doubles); sub-orchestrations are driven the same way, recursively.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType as H
from azure.durable_functions.orchestrator import Orchestrator

Activity = Callable[[Any], Any]


@dataclass
class Replay:
    output: Any
    history: list[dict]
    calls: list[tuple[str, Any]] = field(default_factory=list)
    episodes: int = 0
    sub_orchestrations: list["Replay"] = field(default_factory=list)
    context_json: str = ""


def event(kind: H, clock: datetime, event_id: int = -1, **fields) -> dict:
    return {"EventType": int(kind), "EventId": event_id, "IsPlayed": False,
            "Timestamp": clock.isoformat(), **fields}


def context_json(history: list[dict], instance_id: str, input_: Any) -> str:
    return json.dumps({"history": history, "instanceId": instance_id, "isReplaying": False,
                       "parentInstanceId": None, "input": json.dumps(input_)})


def handle(fn, history: list[dict], instance_id: str, input_: Any):
    context = DurableOrchestrationContext.from_json(context_json(history, instance_id, input_))
    return json.loads(Orchestrator(fn).handle(context)), context


def drive(
    orchestrators: dict[str, Callable], name: str, input_: Any, activities: dict[str, Activity],
    *, instance_id: str = "test-instance", start: datetime | None = None,
    max_steps: int = 5000,
) -> Replay:
    clock = start or datetime(2024, 3, 1, 2, 5, tzinfo=UTC)
    fn = orchestrators[name]
    history = [event(H.ORCHESTRATOR_STARTED, clock),
               event(H.EXECUTION_STARTED, clock, Name=name, Version="",
                     OrchestrationInstance={"InstanceId": instance_id}, Input=json.dumps(input_))]
    replay = Replay(None, history)
    for _ in range(max_steps):
        out, context = handle(fn, history, instance_id, input_)
        replay.episodes += 1
        if out.get("isDone"):
            replay.output = out.get("output")
            replay.context_json = context_json(history, instance_id, input_)
            return replay
        open_ids = sorted(k for k in context.open_tasks if isinstance(k, int))
        if not open_ids:
            raise AssertionError(f"orchestration {name} is stuck with no open task: {out}")
        task_id = open_ids[0]
        task = context.open_tasks[task_id]
        task = task[0] if isinstance(task, list) else task
        action = task.action_repr[0] if isinstance(task.action_repr, list) else task.action_repr
        kind = type(action).__name__
        parent = getattr(task, "parent", None)
        if kind == "NoOpAction" and parent is not None and not parent.is_waiting_on_timer:
            # A retry: the SDK reschedules the parent's activity under a new id.
            action = parent.actions[0] if isinstance(parent.actions, list) else parent.actions
            kind = type(action).__name__
        history.append(event(H.ORCHESTRATOR_COMPLETED, clock))
        if kind in ("CallActivityAction", "CallActivityWithRetryAction"):
            payload = json.loads(action.input_) if isinstance(action.input_, str) else action.input_
            replay.calls.append((action.function_name, payload))
            history.append(event(H.TASK_SCHEDULED, clock, task_id, Name=action.function_name,
                                 Version=""))
            history.append(event(H.ORCHESTRATOR_STARTED, clock))
            try:
                result = activities[action.function_name](payload)
            except Exception as exc:  # noqa: BLE001 - becomes the host's TASK_FAILED
                history.append(event(H.TASK_FAILED, clock, TaskScheduledId=task_id,
                                     Reason=f"{type(exc).__name__}: {exc}", Details=""))
            else:
                history.append(event(H.TASK_COMPLETED, clock, TaskScheduledId=task_id,
                                     Result=json.dumps(result)))
        elif kind in ("CreateTimerAction", "NoOpAction"):
            fire_at = getattr(action, "fire_at", None) or clock + timedelta(seconds=5)
            history.append(event(H.TIMER_CREATED, clock, task_id, FireAt=fire_at.isoformat()))
            clock = max(clock, fire_at)
            history.append(event(H.ORCHESTRATOR_STARTED, clock))
            history.append(event(H.TIMER_FIRED, clock, TimerId=task_id, FireAt=fire_at.isoformat()))
        elif kind == "CallSubOrchestratorAction":
            sub_input = json.loads(action._input)
            sub_id = f"{instance_id}:{task_id}"
            history.append(event(H.SUB_ORCHESTRATION_INSTANCE_CREATED, clock, task_id,
                                 Name=action.function_name, InstanceId=sub_id,
                                 Input=json.dumps(sub_input)))
            try:
                sub = drive(orchestrators, action.function_name, sub_input, activities,
                            instance_id=sub_id, start=clock, max_steps=max_steps)
            except Exception as exc:  # noqa: BLE001 - the sub-orchestration failed
                history.append(event(H.ORCHESTRATOR_STARTED, clock))
                history.append(event(H.SUB_ORCHESTRATION_INSTANCE_FAILED, clock,
                                     TaskScheduledId=task_id, Reason=str(exc), Details=""))
            else:
                replay.sub_orchestrations.append(sub)
                replay.calls.extend(sub.calls)
                history.append(event(H.ORCHESTRATOR_STARTED, clock))
                history.append(event(H.SUB_ORCHESTRATION_INSTANCE_COMPLETED, clock,
                                     TaskScheduledId=task_id, Result=json.dumps(sub.output)))
        else:
            raise AssertionError(f"the driver does not know {kind}")
    raise AssertionError(f"orchestration {name} did not finish in {max_steps} steps")
