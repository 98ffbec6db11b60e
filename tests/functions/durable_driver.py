"""A small stand-in for the Durable Functions extension, for tests: it replays an orchestrator
through the SDK's own ``Orchestrator.handle`` with a JSON history, reads the actions the SDK
returns the way the extension does, appends the events the extension would append, and replays
again until the orchestration is done. Activities are Python callables (the app's real
activities or test doubles); sub-orchestrations are driven the same way, recursively.

What is modelled, and where it comes from:

- **The context JSON** is the extension's: ``upperSchemaVersion`` V2 and
  ``upperSchemaVersionNew`` V3 (as integers 1 and 2: the SDK's ``ReplaySchema``), with
  ``maximumShortTimerDuration`` and ``longRunningTimerIntervalDuration`` (Azure Storage: 6 and
  3 days). Source: azure-functions-durable-extension,
  src/WebJobs.Extensions.DurableTask/Bindings/OrchestrationTriggerAttributeBindingProvider.cs
  (``OrchestrationContextToString``); the SDK side: azure/durable_functions/models/
  DurableOrchestrationContext.py (``__init__``: ``upperSchemaVersionNew`` wins when higher).
  Under V2+ the SDK returns one flat list of actions (``actions: [[...]]``) with compound
  ``WhenAll``/``WhenAny`` actions (type 12/11, ``compoundActions``); a retryable call is itself a
  ``WhenAll`` of one ``CallActivityWithRetry`` (Task.py: ``RetryAbleTask`` is a ``WhenAllTask``).
- **Task ids are the extension's, not the SDK's.** The extension replays the SDK's actions in an
  orchestration "shim" (OutOfProcOrchestrationShim.cs, ``ProcessAsyncActionsV2``): each
  top-level action is invoked and *awaited* in turn, ``WhenAll``/``WhenAny`` become .NET
  ``Task.WhenAll``/``Task.WhenAny`` (``WhenAny`` resumes the shim at the first completion, and
  ``WhenAll`` only once every child is done, failed or not), and every call takes the next
  Durable Task sequence number when it is made. A retried call is DTFx's retry interceptor:
  after a failure a timer (``firstRetryInterval``), then a new attempt under a new id; after the
  last failure one more timer, then the failure (the SDK models the same: Task.py,
  ``RetryAbleTask.try_set_value``). :class:`Shim` does all this from the full history at every
  episode, as DTFx does; the SDK's own ids are then checked against it. When they disagree the
  real orchestration hangs (azure-functions-durable-python#603: task_any over retried calls,
  then new work), and here the driver fails with "disagree".
- **Completions in batches, in any order**: with ``rng``, every episode delivers a random
  non-empty subset of the open work in a random order (activities run then; timers fire, the
  clock moving to their ``FireAt``); without it, one task per episode, lowest id first.
- **Sub-orchestration ids** as DTFx makes them when the SDK passes none
  (``call_sub_orchestrator`` without ``instance_id``): ``{parent execution id}:{task id}``
  (DurableTask.Core TaskOrchestrationContext.CreateSubOrchestrationInstanceCore). Each
  execution has its own execution id.
- **ContinueAsNew**: the SDK answers ``isDone`` with a ContinueAsNew action (type 4); the
  instance restarts with the new input, a new execution id and a fresh history. A parent sees
  its sub-orchestration complete only when the last execution returns.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType as H
from azure.durable_functions.orchestrator import Orchestrator

Activity = Callable[[Any], Any]

# What the extension puts in every orchestration trigger's context (see the module docstring).
EXTENSION_CONTEXT = {"upperSchemaVersion": 1, "upperSchemaVersionNew": 2,
                     "maximumShortTimerDuration": "6.00:00:00",
                     "longRunningTimerIntervalDuration": "3.00:00:00"}

CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY, CALL_SUB, CALL_SUB_WITH_RETRY = 0, 1, 2, 3
CONTINUE_AS_NEW, CREATE_TIMER, WHEN_ANY, WHEN_ALL = 4, 5, 11, 12
SCHEDULING = {int(H.TASK_SCHEDULED): "activity", int(H.TIMER_CREATED): "timer",
              int(H.SUB_ORCHESTRATION_INSTANCE_CREATED): "sub"}
COMPLETIONS = {int(H.TASK_COMPLETED): "TaskScheduledId", int(H.TASK_FAILED): "TaskScheduledId",
               int(H.TIMER_FIRED): "TimerId",
               int(H.SUB_ORCHESTRATION_INSTANCE_COMPLETED): "TaskScheduledId",
               int(H.SUB_ORCHESTRATION_INSTANCE_FAILED): "TaskScheduledId"}
FAILURES = {int(H.TASK_FAILED), int(H.SUB_ORCHESTRATION_INSTANCE_FAILED)}


class Disagreement(AssertionError):
    """The SDK and the extension no longer agree on which task an id is: a hung orchestration."""


@dataclass
class Replay:
    output: Any
    history: list[dict]
    calls: list[tuple[str, Any]] = field(default_factory=list)
    episodes: int = 0
    sub_orchestrations: list[Replay] = field(default_factory=list)
    context_json: str = ""
    instance_id: str = ""
    executions: int = 1
    longest_history: int = 0
    inputs: list[Any] = field(default_factory=list)  # each execution's input
    clock: datetime | None = None
    # Every action type the SDK asked for in any episode (compound actions' children too),
    # sub-orchestrations included: CALL_ACTIVITY_WITH_RETRY among them means a retried call.
    action_types: set[int] = field(default_factory=set)


def event(kind: H, clock: datetime, event_id: int = -1, **fields) -> dict:
    return {"EventType": int(kind), "EventId": event_id, "IsPlayed": False,
            "Timestamp": clock.isoformat(), **fields}


def context_json(history: list[dict], instance_id: str, input_: Any,
                 parent_instance_id: str | None = None) -> str:
    return json.dumps({"history": history, "instanceId": instance_id, "isReplaying": False,
                       "parentInstanceId": parent_instance_id, "input": json.dumps(input_),
                       **EXTENSION_CONTEXT})


def handle(fn, history: list[dict], instance_id: str, input_: Any,
           parent_instance_id: str | None = None):
    context = DurableOrchestrationContext.from_json(
        context_json(history, instance_id, input_, parent_instance_id))
    return json.loads(Orchestrator(fn).handle(context)), context


class _Future:
    def __init__(self) -> None:
        self.done = False
        self.failed = False
        self.callbacks: list[Callable[[], None]] = []

    def resolve(self, failed: bool = False) -> None:
        if self.done:
            return
        self.done, self.failed = True, failed
        for callback in self.callbacks:
            callback()

    def then(self, callback: Callable[[], None]) -> None:
        if self.done:
            callback()
        else:
            self.callbacks.append(callback)


class Shim:
    """The extension's replay of the SDK's actions against the history (see module docstring).

    After :meth:`run`: ``work`` maps every id the shim has issued to what it is (kind, name,
    input, fire_at, instance_id), ``open`` is the ids issued and not completed in the history,
    ``continue_as_new`` the input of a ContinueAsNew action (or the ``_NONE`` marker)."""

    _NONE = object()

    def __init__(self, actions: list[dict], history: list[dict], execution_id: str) -> None:
        self.actions, self.history, self.execution_id = actions, history, execution_id
        self.counter = 0
        self.next_action = 0
        self.now = datetime.fromisoformat(history[0]["Timestamp"])
        self.work: dict[int, dict] = {}
        self.waiting: dict[int, Callable[[dict], None]] = {}
        self.continue_as_new: Any = self._NONE
        self.scheduled = {e["EventId"]: e for e in history if e["EventType"] in SCHEDULING}

    def run(self) -> Shim:
        self._advance()
        for e in self.history:
            if e["EventType"] == int(H.ORCHESTRATOR_STARTED):
                self.now = max(self.now, datetime.fromisoformat(e["Timestamp"]))
            elif e["EventType"] in COMPLETIONS:
                key = e[COMPLETIONS[e["EventType"]]]
                if key not in self.waiting:
                    raise Disagreement(f"the history completes task {key}, which the extension "
                                       "never scheduled in this replay")
                self.waiting.pop(key)(e)
        return self

    @property
    def open(self) -> set[int]:
        return set(self.waiting)

    def _advance(self) -> None:
        while self.next_action < len(self.actions):
            future = self._invoke(self.actions[self.next_action])
            self.next_action += 1
            if not future.done:
                future.then(self._advance)
                return

    def _issue(self, kind: str, future: _Future, **what) -> int:
        task_id, self.counter = self.counter, self.counter + 1
        if kind == "sub" and not what.get("instance_id"):
            what["instance_id"] = f"{self.execution_id}:{task_id}"
        self.work[task_id] = {"kind": kind, **what}
        past = self.scheduled.get(task_id)
        if past is not None:  # DTFx's non-determinism check: same kind, same function
            named = what.get("name", past.get("Name"))
            if SCHEDULING[past["EventType"]] != kind or past.get("Name") != named:
                raise Disagreement(f"task {task_id} was {SCHEDULING[past['EventType']]} "
                                   f"{past.get('Name')} in the history, now {kind} {what.get('name')}")
        self.waiting[task_id] = lambda e: future.resolve(e["EventType"] in FAILURES)
        return task_id

    def _invoke(self, action: dict) -> _Future:
        kind = action["actionType"]
        future = _Future()
        if kind == CALL_ACTIVITY:
            self._issue("activity", future, name=action["functionName"],
                        input=json.loads(action["input"]) if action.get("input") else None)
        elif kind == CALL_ACTIVITY_WITH_RETRY:
            self._retry(action, future, attempt=1)
        elif kind == CALL_SUB:
            self._issue("sub", future, name=action["functionName"],
                        input=json.loads(action["input"]) if action.get("input") else None,
                        instance_id=action.get("instanceId"))
        elif kind == CREATE_TIMER:
            self._issue("timer", future, fire_at=datetime.fromisoformat(action["fireAt"]))
        elif kind == CONTINUE_AS_NEW:
            self.continue_as_new = json.loads(action["input"]) if action.get("input") else None
            future.resolve()
        elif kind in (WHEN_ALL, WHEN_ANY):
            children = [self._invoke(a) for a in action["compoundActions"]]
            if not children:
                future.resolve()

            def settle() -> None:
                done = [c for c in children if c.done]
                if kind == WHEN_ANY and done:
                    future.resolve()
                elif len(done) == len(children):
                    future.resolve(any(c.failed for c in children))
            for child in children:
                child.then(settle)
        else:
            raise AssertionError(f"the driver does not know action type {kind}: {action}")
        return future

    def _retry(self, action: dict, future: _Future, attempt: int) -> None:
        options = action["retryOptions"]
        attempt_future = _Future()
        self._issue("activity", attempt_future, name=action["functionName"],
                    input=json.loads(action["input"]) if action.get("input") else None)

        def after_attempt() -> None:
            if not attempt_future.failed:
                future.resolve()
                return
            delay = timedelta(milliseconds=options["firstRetryIntervalInMilliseconds"]
                              * options.get("backoffCoefficient", 1) ** (attempt - 1))
            timer = _Future()
            self._issue("timer", timer, fire_at=self.now + delay)

            def after_timer() -> None:
                if attempt >= options["maxNumberOfAttempts"]:
                    future.resolve(failed=True)
                else:
                    self._retry(action, future, attempt + 1)
            timer.then(after_timer)
        attempt_future.then(after_attempt)


def _execution_id(instance_id: str, execution: int) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"durable-driver/{instance_id}/{execution}").hex


def _action_types(actions: list[dict]) -> set[int]:
    out: set[int] = set()
    for action in actions:
        out.add(action["actionType"])
        out |= _action_types(action.get("compoundActions") or [])
    return out


def _sdk_open(context: DurableOrchestrationContext) -> set[int]:
    return {k for k, v in context.open_tasks.items() if isinstance(k, int) and v}


def drive(
    orchestrators: dict[str, Callable], name: str, input_: Any, activities: dict[str, Activity],
    *, instance_id: str = "test-instance", start: datetime | None = None,
    max_steps: int = 5000, rng: random.Random | None = None,
    parent_instance_id: str | None = None,
) -> Replay:
    clock = start or datetime(2024, 3, 1, 2, 5, tzinfo=UTC)
    fn = orchestrators[name]
    replay = Replay(None, [], instance_id=instance_id, executions=0)
    steps = 0
    while True:  # one pass per execution: ContinueAsNew starts the next one
        execution_id = _execution_id(instance_id, replay.executions)
        replay.executions += 1
        replay.inputs.append(input_)
        history = [event(H.ORCHESTRATOR_STARTED, clock),
                   event(H.EXECUTION_STARTED, clock, Name=name, Version="",
                         OrchestrationInstance={"InstanceId": instance_id,
                                                "ExecutionId": execution_id},
                         ParentInstance=({"OrchestrationInstance": {"InstanceId": parent_instance_id}}
                                         if parent_instance_id else None),
                         Input=json.dumps(input_))]
        replay.history = history
        work: dict[int, dict] = {}
        while True:
            steps += 1
            if steps > max_steps:
                raise AssertionError(f"orchestration {name} did not finish in {max_steps} steps")
            out, context = handle(fn, history, instance_id, input_, parent_instance_id)
            for e in history:
                e["IsPlayed"] = True  # everything before the next episode has been played
            replay.episodes += 1
            replay.longest_history = max(replay.longest_history, len(history))
            actions = out["actions"][0] if out["actions"] else []
            replay.action_types |= _action_types(actions)
            shim = Shim(actions, history, execution_id).run()
            if out.get("isDone"):
                if shim.continue_as_new is not Shim._NONE:
                    input_ = shim.continue_as_new
                    history.append(event(H.ORCHESTRATOR_COMPLETED, clock))
                    break
                replay.output = out.get("output")
                replay.context_json = context_json(history, instance_id, input_, parent_instance_id)
                replay.clock = clock
                return replay
            for task_id in sorted(shim.open - set(work)):
                work[task_id] = what = shim.work[task_id]
                if what["kind"] == "activity":
                    history.append(event(H.TASK_SCHEDULED, clock, task_id, Name=what["name"],
                                         Version="", Input=json.dumps(what["input"])))
                elif what["kind"] == "timer":
                    history.append(event(H.TIMER_CREATED, clock, task_id,
                                         FireAt=what["fire_at"].isoformat()))
                else:
                    history.append(event(H.SUB_ORCHESTRATION_INSTANCE_CREATED, clock, task_id,
                                         Name=what["name"], InstanceId=what["instance_id"],
                                         Input=json.dumps(what["input"])))
            history.append(event(H.ORCHESTRATOR_COMPLETED, clock))
            if _sdk_open(context) != set(work):
                raise Disagreement(
                    f"{name} ({instance_id}): the SDK waits on tasks {sorted(_sdk_open(context))}, "
                    f"the extension on {sorted(work)}; the orchestration would hang "
                    "(azure-functions-durable-python#603)")
            if not work:
                raise AssertionError(f"orchestration {name} is stuck with no open task: {out}")
            if rng is None:
                batch = [min(work)]
            else:
                batch = rng.sample(sorted(work), rng.randint(1, len(work)))
            completions = []
            for task_id in batch:
                what = work.pop(task_id)
                if what["kind"] == "timer":
                    clock = max(clock, what["fire_at"])
                    completions.append(event(H.TIMER_FIRED, clock, TimerId=task_id,
                                             FireAt=what["fire_at"].isoformat()))
                elif what["kind"] == "activity":
                    replay.calls.append((what["name"], what["input"]))
                    try:
                        result = activities[what["name"]](what["input"])
                    except Exception as exc:  # noqa: BLE001 - becomes the host's TASK_FAILED
                        completions.append(event(H.TASK_FAILED, clock, TaskScheduledId=task_id,
                                                 Reason=f"{type(exc).__name__}: {exc}", Details=""))
                    else:
                        completions.append(event(H.TASK_COMPLETED, clock, TaskScheduledId=task_id,
                                                 Result=json.dumps(result)))
                else:
                    try:
                        sub = drive(orchestrators, what["name"], what["input"], activities,
                                    instance_id=what["instance_id"], start=clock,
                                    max_steps=max_steps, rng=rng, parent_instance_id=instance_id)
                    except Disagreement:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the sub-orchestration failed
                        completions.append(event(H.SUB_ORCHESTRATION_INSTANCE_FAILED, clock,
                                                 TaskScheduledId=task_id, Reason=str(exc),
                                                 Details=""))
                    else:
                        replay.sub_orchestrations.append(sub)
                        replay.action_types |= sub.action_types
                        replay.calls.extend(sub.calls)
                        clock = max(clock, sub.clock)
                        completions.append(event(H.SUB_ORCHESTRATION_INSTANCE_COMPLETED, clock,
                                                 TaskScheduledId=task_id,
                                                 Result=json.dumps(sub.output)))
            history.append(event(H.ORCHESTRATOR_STARTED, clock))
            history.extend(completions)
