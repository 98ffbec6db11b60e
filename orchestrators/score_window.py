"""``score_window``: the run lifecycle of fleetscore.runs.lifecycle, driven with durable timers.

plan (begin: the hour's lock, the plan) -> bounded fan-out of units -> finalize (promote,
manifest, release the lock). The run id is made here, deterministically (replay gives the same
one), so the lock taken in plan and released in finalize names this orchestration's run.

Units are fanned out in sub-orchestrations of at most ``fanout`` units each, so no history
grows past a few hundred tasks even at 100,000+ units. Inside one, every unit is submitted
(an idempotent activity: the same unit is the same task; failed chunks are retried in rounds),
then one monitor loop of a durable timer and a status activity follows all of them; each status
poll renews the hour's lock and cancels units past the deadline. Every activity is retried by
hand (plain calls and durable timers, ``_call`` and ``_submit``), never with
``call_activity_with_retry`` (azure-functions-durable-python#603). After ``polls_per_execution``
polls the sub-orchestration continues as new with the units still running and the outcomes so
far, so its history stays bounded over a two-hour deadline. A unit whose activity keeps failing
after its retries, or whose sub-orchestration fails, is reported failed with the reason; it
never fails the hour.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import azure.durable_functions as df
from azure.durable_functions.models.Task import TaskState

from fleetscore.contracts import UnitOutcome

from .names import FINALIZE, PLAN, SCORE_UNITS, SCORE_WINDOW, STATUS, SUBMIT

bp = df.Blueprint()
log = logging.getLogger("fleetscore.orchestrator")

DEFAULTS = {"fanout": 200, "submit_chunk": 1, "poll_seconds": 30, "unit_deadline_minutes": 120,
            "polls_per_execution": 20}


def retry() -> df.RetryOptions:
    """Transient errors (a store blip, Batch throttling) get two more tries, 5 s apart."""
    options = df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=3)
    return options


def _call(context: df.DurableOrchestrationContext, name: str, payload: dict):
    """One activity, retried by hand as the retry policy says: a plain ``call_activity``, on
    failure a durable timer of ``first_retry_interval``, then a new plain call; the last
    failure is raised. ``yield from _call(...)`` gives the activity's result.

    Never ``call_activity_with_retry``: once such a call has been retried, the next yield that
    issues new tasks (the status poll's next timer, the fan-out after the plan) can leave the
    SDK and the extension disagreeing on task ids, and the orchestration hangs silently
    (azure-functions-durable-python#603, closed as won't fix). A plain call takes its one id
    when it is scheduled, and so does each timer here."""
    options = retry()
    for attempt in range(1, options.max_number_of_attempts + 1):
        try:
            return (yield context.call_activity(name, payload))
        except Exception:  # noqa: BLE001 - the activity's failure, as the SDK reports it
            if attempt == options.max_number_of_attempts:
                raise
        yield context.create_timer(context.current_utc_datetime + timedelta(
            milliseconds=options.first_retry_interval_in_milliseconds))
    raise AssertionError("unreachable")  # pragma: no cover


@bp.orchestration_trigger(context_name="context", orchestration=SCORE_WINDOW)
def score_window(context: df.DurableOrchestrationContext):
    request = {**DEFAULTS, **(context.get_input() or {})}
    window = request["window"]
    started = context.current_utc_datetime
    run_id = f"{started:%Y%m%d%H%M%S}{context.new_uuid().replace('-', '')[:6]}"
    deadline = started + timedelta(minutes=request["unit_deadline_minutes"])
    plan = yield from _call(context, PLAN, {
        "window": window, "run_id": run_id, "deadline": deadline.isoformat(),
        "sensors": request.get("sensors"), "unit_size": request.get("unit_size"),
    })
    units = plan["units"]
    if not context.is_replaying:
        log.info("planned %s: %d units, %d sensors", window, len(units), plan["sensors"],
                 extra={"window": window, "run_id": run_id, "units": len(units),
                        "sensors": plan["sensors"]})
    size = max(1, int(request["fanout"]))
    batches = [units[i : i + size] for i in range(0, len(units), size)]
    outcomes: dict[str, dict] = {}
    # task_any over plain sub-orchestration calls: a sub-orchestration that fails (a bug, a
    # crash) fails its own units, not the hour, and the others' outcomes are kept.
    subs = [context.call_sub_orchestrator(SCORE_UNITS, {
        "window": window, "run_id": run_id, "units": batch,
        "submit_chunk": request["submit_chunk"], "poll_seconds": request["poll_seconds"],
        "polls_per_execution": request["polls_per_execution"], "deadline": deadline.isoformat(),
    }) for batch in batches]
    batch_of = dict(zip(map(id, subs), batches, strict=True))
    while subs:
        done = yield context.task_any(subs)
        subs.remove(done)
        if done.state is TaskState.FAILED:
            reason = f"score_units failed: {str(done.result).strip()}"
            outcomes.update({u: _failed(u, "OrchestrationFailed", reason)
                             for u in batch_of[id(done)]})
        else:
            outcomes.update(done.result)
    summary = yield from _call(context, FINALIZE, {
        "window": window, "run_id": run_id, "outcomes": outcomes, "started": started.isoformat(),
        "backend": request.get("backend", "local"),
    })
    if not context.is_replaying:
        log.info("finished %s: %s", window, summary["status"], extra=summary)
    return summary


@bp.orchestration_trigger(context_name="context", orchestration=SCORE_UNITS)
def score_units(context: df.DurableOrchestrationContext):
    job = context.get_input()
    window, run_id = job["window"], job["run_id"]
    deadline = datetime.fromisoformat(job["deadline"])
    # Carried over by continue_as_new: the outcomes so far and the units still running.
    outcomes: dict[str, dict] = dict(job.get("outcomes") or {})
    if "waiting" in job:
        waiting = list(job["waiting"])
    else:
        yield from _submit(context, job, outcomes)
        waiting = [u for u in job["units"] if not _terminal(outcomes[u])]

    # The status activity fails units at the deadline (and cancels them); this guard only ends
    # the loop if status calls themselves keep failing past it. Finalize cancels what is left.
    give_up = deadline + 2 * timedelta(seconds=job["poll_seconds"])
    per_execution = max(1, int(job.get("polls_per_execution", DEFAULTS["polls_per_execution"])))
    polls = 0
    while waiting:
        if context.current_utc_datetime >= give_up:
            for unit in waiting:
                outcomes[unit] = _failed(unit, "DeadlineExceeded",
                                         f"unit {unit} did not finish before {deadline.isoformat()}")
            break
        if polls == per_execution:
            # Bounded history: a fresh execution with the units still running. Its output (all
            # outcomes, these included) reaches the parent when the last execution returns.
            context.continue_as_new({**job, "waiting": waiting, "outcomes": outcomes})
            return None
        polls += 1
        yield context.create_timer(context.current_utc_datetime
                                   + timedelta(seconds=job["poll_seconds"]))
        try:
            states = yield from _call(context, STATUS, {
                "window": window, "run_id": run_id, "units": waiting, "deadline": job["deadline"]})
        except Exception as exc:  # noqa: BLE001 - the activity's error, already retried
            if not context.is_replaying:
                log.warning("status of %s failed, will poll again: %s", window, exc,
                            extra={"window": window})
            continue
        for unit in waiting:
            if _terminal(states[unit]):
                outcomes[unit] = states[unit]
        waiting = [u for u in waiting if u not in outcomes or not _terminal(outcomes[u])]
    return outcomes


def _submit(context: df.DurableOrchestrationContext, job: dict, outcomes: dict[str, dict]):
    """Submit every unit, chunk by chunk; failed chunks are resubmitted in rounds, as many
    as the retry policy has attempts, ``first_retry_interval`` apart.

    Plain activity calls under ``task_any``, retried here by rounds, never
    ``call_activity_with_retry`` under ``task_any``: the extension allocates the retry timers'
    and attempts' task ids while the orchestrator is still waiting on the others, and the SDK
    and the extension then disagree on ids and the orchestration hangs
    (azure-functions-durable-python#603). Plain calls take all their ids when scheduled, and
    each failed chunk is caught on its own: one unit's failure never hides the others'."""
    size = max(1, int(job.get("submit_chunk", 1)))
    pending = [job["units"][i : i + size] for i in range(0, len(job["units"]), size)]
    options = retry()
    for attempt in range(1, options.max_number_of_attempts + 1):
        tasks = [context.call_activity(SUBMIT, {"window": job["window"], "run_id": job["run_id"],
                                                "units": chunk}) for chunk in pending]
        chunk_of = dict(zip(map(id, tasks), pending, strict=True))
        failed: list[tuple[list[str], str]] = []
        while tasks:
            done = yield context.task_any(tasks)
            tasks.remove(done)
            if done.state is TaskState.FAILED:
                failed.append((chunk_of[id(done)], str(done.result).strip()))
            else:
                outcomes.update(done.result)
        if not failed:
            return
        if attempt == options.max_number_of_attempts:
            for chunk, error in failed:
                reason = f"submit failed after {attempt} attempts: {error}"
                outcomes.update({u: _failed(u, "SubmitFailed", reason) for u in chunk})
            return
        pending = [chunk for chunk, _ in failed]
        yield context.create_timer(context.current_utc_datetime + timedelta(
            milliseconds=options.first_retry_interval_in_milliseconds))


def _failed(unit: str, kind: str, message: str) -> dict:
    return UnitOutcome.failure(unit, kind, message).to_json()


def _terminal(outcome: dict) -> bool:
    """Outcomes travel between activities as JSON: read through their one decoder."""
    return UnitOutcome.from_json(outcome).terminal
