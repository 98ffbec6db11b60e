"""``refit_models``: the refit of fleetscore.runs.refit, driven with durable timers.

begin (the models lock for this refit, the plan) -> submit the training groups (Batch tasks of
the scoring image in its train mode; or trained inside the activity with the local backend) ->
loop: durable timer + status activity (renews the lock, reads the tasks' states) until every
group is done or the deadline -> finish (compare, promote, bank, manifest, release the lock,
the Application Insights event). The refit id is made here, deterministically (a replay gives
the same one): the lock's token, the Batch job's name and the manifest's.

A refit that cannot start (the lock held by another refit or command, too few hours with
data) ends after begin, with its own manifest saying so. A group whose task fails, or whose
activities keep failing, is failed with the reason and the others go on; the polls continue as
new every ``polls_per_execution`` so the history stays small over a long training. Activities
are retried by hand (``score_window._call``), never with ``call_activity_with_retry``
(azure-functions-durable-python#603).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import azure.durable_functions as df

from .names import REFIT_BEGIN, REFIT_FINISH, REFIT_MODELS, REFIT_STATUS, REFIT_SUBMIT
from .score_window import _call

bp = df.Blueprint()
log = logging.getLogger("fleetscore.orchestrator")

DEFAULTS = {"poll_seconds": 30, "deadline_minutes": 120, "polls_per_execution": 20,
            "max_groups": 1, "backend": "local"}
DONE = ("succeeded", "failed")


@bp.orchestration_trigger(context_name="context", orchestration=REFIT_MODELS)
def refit_models(context: df.DurableOrchestrationContext):
    job = {**DEFAULTS, **(context.get_input() or {})}
    if "waiting" not in job:  # the first execution: begin and submit
        started = context.current_utc_datetime
        refit_id = f"refit-{started:%Y%m%dT%H%M%S}-{context.new_uuid().replace('-', '')[:6]}"
        begun = yield from _call(context, REFIT_BEGIN, {
            "refit_id": refit_id, "started": started.isoformat(), "options": job.get("options"),
            "max_groups": job["max_groups"]})
        if begun["status"] != "planned":
            return begun  # locked or no data: its manifest is written, nothing was trained
        outcomes = yield from _submit(context, refit_id, begun["groups"])
        job = {**job, "refit_id": refit_id, "outcomes": outcomes,
               "deadline": (started + timedelta(minutes=job["deadline_minutes"])).isoformat(),
               "waiting": [g for g in begun["groups"] if outcomes[g]["state"] not in DONE]}
        if not context.is_replaying:
            log.info("refit %s: %d groups, %d sensors", refit_id, len(begun["groups"]),
                     begun["sensors"], extra={"refit_id": refit_id})
    outcomes = dict(job["outcomes"])
    waiting = yield from _wait(context, job, outcomes)
    if waiting:
        # Bounded history: a fresh execution with the groups still training.
        context.continue_as_new({**job, "waiting": waiting, "outcomes": outcomes})
        return None
    summary = yield from _call(context, REFIT_FINISH, {"refit_id": job["refit_id"],
                                                       "outcomes": outcomes})
    if not context.is_replaying:
        log.info("refit %s: %s", job["refit_id"], summary["status"],
                 extra={"refit_id": job["refit_id"]})
    return summary


def _submit(context: df.DurableOrchestrationContext, refit_id: str, groups: list[str]):
    """Every group submitted in one activity (retried); if it still fails, every group is
    failed with the reason and the refit goes on to finish, which releases the lock."""
    try:
        return (yield from _call(context, REFIT_SUBMIT, {"refit_id": refit_id,
                                                         "groups": groups}))
    except Exception as exc:  # noqa: BLE001 - the activity's error, already retried
        reason = f"submit failed: {str(exc).strip()}"
        return {g: {"state": "failed", "error": reason} for g in groups}


def _wait(context: df.DurableOrchestrationContext, job: dict, outcomes: dict):
    """Poll until no group is waiting (returns []) or this execution has polled enough
    (returns the groups still waiting). The status activity renews the lock and fails the
    groups past the deadline; this guard ends the wait if status calls keep failing past it."""
    waiting = list(job["waiting"])
    give_up = datetime.fromisoformat(job["deadline"]) + 2 * timedelta(seconds=job["poll_seconds"])
    for _ in range(max(1, int(job["polls_per_execution"]))):
        if not waiting:
            return []
        if context.current_utc_datetime >= give_up:
            outcomes.update({g: {"state": "failed", "error": (
                f"group {g} did not finish before {job['deadline']}")} for g in waiting})
            return []
        yield context.create_timer(context.current_utc_datetime
                                   + timedelta(seconds=job["poll_seconds"]))
        try:
            states = yield from _call(context, REFIT_STATUS, {
                "refit_id": job["refit_id"], "groups": waiting, "deadline": job["deadline"]})
        except Exception as exc:  # noqa: BLE001 - already retried: poll again next time
            if not context.is_replaying:
                log.warning("refit %s: status failed, will poll again: %s", job["refit_id"],
                            exc, extra={"refit_id": job["refit_id"]})
            continue
        outcomes.update({g: s for g, s in states.items() if s["state"] in DONE})
        waiting = [g for g in waiting if outcomes[g]["state"] not in DONE]
    return waiting
