"""Starters and the arrival recorder: the hourly timer, the runs HTTP API, the Event Hub."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import azure.durable_functions as df
import azure.functions as func
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus

from fleetscore import runtime
from fleetscore.core.hours import Hour, previous_full_hour
from fleetscore.core.requests import RequestError, parse_run_request
from fleetscore.data.events import Event, record_events
from fleetscore.errors import FleetscoreError, InputError
from fleetscore.runs.lifecycle import read_manifest
from orchestrators.names import SCORE_WINDOW, instance_id

bp = df.Blueprint()
log = logging.getLogger("fleetscore.triggers")

# A run in one of these states must not be started again by the timer.
_ACTIVE = {OrchestrationRuntimeStatus.Pending, OrchestrationRuntimeStatus.Running,
           OrchestrationRuntimeStatus.ContinuedAsNew, OrchestrationRuntimeStatus.Suspended}
_DONE = {OrchestrationRuntimeStatus.Completed}


async def _status(client: df.DurableOrchestrationClient, iid: str):
    """The instance's status, or None when there is none (the host answers 404 with no body,
    which the SDK cannot parse)."""
    try:
        status = await client.get_status(iid)
    except TypeError:
        return None
    return status if status is not None and status.runtime_status is not None else None


async def _start(client: df.DurableOrchestrationClient, iid: str, body: dict,
                 name: str = SCORE_WINDOW) -> bool:
    """Start the instance; False when the extension refuses because it is already running.

    The extension refuses to start an instance id that is Pending or Running (its default
    ``overridableExistingInstanceStates``); the SDK raises whatever the extension answered, so
    the instance's status decides: running now means another starter won the race."""
    try:
        await client.start_new(name, iid, body)
    except Exception:
        existing = await _status(client, iid)
        if existing is not None and existing.runtime_status in _ACTIVE:
            return False
        raise
    return True


def _json(body: dict, status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@bp.timer_trigger(schedule="%SCORING_SCHEDULE%", arg_name="timer", run_on_startup=False)
@bp.durable_client_input(client_name="client")
async def scheduled_run(timer: func.TimerRequest, client) -> None:
    window = str(previous_full_hour(datetime.now(UTC)))
    iid = instance_id(window)
    existing = await _status(client, iid)
    if existing is not None and existing.runtime_status in _ACTIVE | _DONE:
        log.info("%s is %s: not started again (reruns go through POST /api/runs)", iid,
                 existing.runtime_status.value, extra={"window": window})
        return
    if not await _start(client, iid, runtime.settings().orchestration_input(window)):
        log.info("%s was started by another starter at the same moment: not started again",
                 iid, extra={"window": window})
        return
    log.info("started %s", iid, extra={"window": window, "past_due": timer.past_due})


@bp.route(route="runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def start_runs(req: func.HttpRequest, client) -> func.HttpResponse:
    try:
        request = parse_run_request(req.get_body(), datetime.now(UTC))
    except RequestError as exc:
        return _json({"error": str(exc)}, 400)
    windows = [str(h) for h in request.hours]
    # Check every hour before starting any, so a 409 never leaves half a range started.
    for window in windows:
        existing = await _status(client, instance_id(window))
        if existing is None:
            continue
        if existing.runtime_status in _ACTIVE:
            return _json({"error": f"{window} is already running", "id": instance_id(window)}, 409)
        if existing.runtime_status in _DONE and not request.force:
            return _json({"error": f"{window} has already been scored; send \"force\": true "
                                   "to rerun it", "id": instance_id(window)}, 409)
    sensors = [str(s) for s in request.sensors] if request.sensors else None
    started: list[str] = []
    for window in windows:
        if not await _start(client, instance_id(window), runtime.settings().orchestration_input(
                window, sensors=sensors, force=request.force)):
            # Started by another starter (the hourly timer) since the check above.
            body = {"error": f"{window} is already running", "id": instance_id(window)}
            if started:
                body["started"] = [{"window": w, "id": instance_id(w)} for w in started]
            return _json(body, 409)
        started.append(window)
        log.info("started %s", instance_id(window), extra={"window": window,
                                                           "sensors": len(sensors or [])})
    if len(windows) == 1:
        return client.create_check_status_response(req, instance_id(windows[0]))
    body = {"runs": [{"window": w, **client.create_http_management_payload(instance_id(w))}
                     for w in windows]}
    return _json(body, 202)


@bp.route(route="runs/{window}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def get_run(req: func.HttpRequest, client) -> func.HttpResponse:
    try:
        hour = Hour.parse(req.route_params.get("window", ""))
    except FleetscoreError as exc:
        return _json({"error": str(exc)}, 400)
    window = str(hour)
    status = await _status(client, instance_id(window))
    try:
        manifest, damaged = read_manifest(runtime.store(), hour), None
    except InputError as exc:  # the status is still known; `fleetscore verify` names the file
        manifest, damaged = None, str(exc)
    if status is None and manifest is None and damaged is None:
        return _json({"error": f"{window} has never been run"}, 404)
    body: dict = {"window": window, "id": instance_id(window)}
    if status is not None:
        body["runtimeStatus"] = status.runtime_status.value
        body["createdTime"] = status.created_time.isoformat() if status.created_time else None
        body["lastUpdatedTime"] = (status.last_updated_time.isoformat()
                                   if status.last_updated_time else None)
        body["output"] = status.output
    if manifest is not None:
        full = manifest.to_json()
        body["manifest"] = {k: full[k] for k in ("status", "sensors", "anomalies", "started",
                                                 "finished", "duration_s", "run_id")}
        body["manifest"]["failures"] = full["failures"][:50]  # the full list is in the store
        # Sensors whose rows are from an earlier run (they failed in this one): said, not hidden.
        body["manifest"]["kept_from_earlier_run"] = full["kept_from_earlier_run"][:50]
    if damaged is not None:
        body["manifest"] = {"error": damaged}
    return _json(body, 200)


# The host advances an Event Hub's checkpoint whether a batch succeeds or fails: without a
# retry policy, a batch whose store write failed (a 503 past the store's own retries) would be
# lost from that event on. Records are written create-if-absent per event, so a retried batch
# counts nothing twice (R15); it is retried until the store answers.
@bp.retry(strategy="exponential_backoff", max_retry_count="-1", minimum_interval="00:00:05",
          maximum_interval="00:05:00")
@bp.event_hub_message_trigger(arg_name="events", event_hub_name="%WINDOWS_EVENTHUB%",
                              connection="WindowsEventHub", cardinality="many")
def record_arrivals(events: list[func.EventHubEvent]) -> None:
    batch = record_events(runtime.store(), [
        Event(body=e.get_body(), sequence_number=e.sequence_number, offset=e.offset,
              enqueued_time=e.enqueued_time, partition_key=e.partition_key)
        for e in events
    ])
    for rejected in batch.rejects:
        # Logged and kept, never raised: bad rows would fail every retry of the batch.
        log.warning("rejected rows of event %s: %s", rejected.event_id, "; ".join(rejected.reasons[:5]),
                    extra={"event": rejected.event_id, "rejected": len(rejected.reasons)})
    log.info("arrivals: %d events, %d rows, %d records, %d duplicates, %d rejected",
             batch.events, batch.rows, batch.recorded, batch.duplicates, batch.rejected_rows,
             extra={"events": batch.events, "rows": batch.rows, "hours": ",".join(batch.hours)})
