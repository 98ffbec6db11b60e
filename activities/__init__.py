"""Activities: parse the input, call the run lifecycle (fleetscore.runs.lifecycle), return a JSON-safe
dict. Errors raise; the orchestrator's retry policy and its failure handling decide."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import azure.durable_functions as df

from fleetscore import runtime
from fleetscore.alerts.records import load_rules
from fleetscore.contracts import FAILED, UnitOutcome
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import BackendError, LockLost, StoreError, error_class
from fleetscore.runs import lifecycle as runs
from fleetscore.runs.alerting import deliver_owed
from fleetscore.scoring.planning import MIN_TASK_SECONDS
from orchestrators.names import FINALIZE, PLAN, STATUS, SUBMIT

bp = df.Blueprint()
log = logging.getLogger("fleetscore.activities")
# Activities the Functions host runs at once (host.json maxConcurrentActivityFunctions).
LOCAL_ACTIVITY_PARALLELISM = 8


def _load(payload) -> dict:
    return json.loads(payload) if isinstance(payload, str | bytes) else payload


def _now() -> datetime:
    return datetime.now(UTC)


@bp.activity_trigger(input_name="payload", activity=PLAN)
def plan_window(payload) -> dict:
    """Take the hour's lock for the orchestration's run id and plan the hour."""
    body = _load(payload)
    started = time.perf_counter()
    sensors = [Sensor.parse(s) for s in body["sensors"]] if body.get("sensors") else None
    settings = runtime.settings()
    if settings.backend == "batch":
        parallel, min_task = settings.batch.max_nodes * settings.batch.tasks_per_node, MIN_TASK_SECONDS
    else:
        parallel, min_task = LOCAL_ACTIVITY_PARALLELISM, 0.0
    ticket = runs.begin(runtime.store(), Hour.parse(body["window"]), run_id=body["run_id"],
                        now=_now(), deadline=datetime.fromisoformat(body["deadline"]),
                        sensors=sensors, unit_size=body.get("unit_size"), parallel=parallel,
                        min_task_seconds=min_task, ttl=settings.lock_ttl,
                        fmt=settings.predictions_format)
    log.info("plan %s: %d units", ticket.window, len(ticket.units),
             extra={"window": ticket.window, "run_id": ticket.run_id, "units": len(ticket.units),
                    "sensors": ticket.sensors, "duration": time.perf_counter() - started})
    return ticket.to_json()


@bp.activity_trigger(input_name="payload", activity=SUBMIT)
def submit_units(payload) -> dict:
    body = _load(payload)
    started = time.perf_counter()
    backend = runtime.backend()
    outcomes = runs.submit(runtime.store(), backend, Hour.parse(body["window"]),
                           body["run_id"], list(body["units"]))
    if backend.inline:
        _raise_transient(outcomes)
    for unit, outcome in outcomes.items():
        log.info("unit %s of %s: %s", unit, body["window"], outcome.state,
                 extra={"window": body["window"], "unit": unit, "state": outcome.state,
                        "sensors": outcome.scored, "anomalies": outcome.anomalies,
                        "duration": time.perf_counter() - started})
    return {unit: outcome.to_json() for unit, outcome in outcomes.items()}


def _raise_transient(outcomes: dict[str, UnitOutcome]) -> None:
    """A unit scored here that met a store or backend error (a blip) fails this activity, so
    the orchestrator's retry policy runs it again, as Batch retries a task whose container
    exited on one; a final error (bad input, a model) stays the unit's outcome."""
    for unit, outcome in outcomes.items():
        kind = outcome.error_kind
        if outcome.state == FAILED and kind and issubclass(error_class(kind),
                                                           (StoreError, BackendError)):
            raise error_class(kind)(f"unit {unit}: {outcome.error}")


@bp.activity_trigger(input_name="payload", activity=STATUS)
def unit_status(payload) -> dict:
    """Renews the hour's lock, reads the units' states, cancels what passed the deadline.
    Once another run has taken the hour, this run stops: its units are cancelled (no further
    Batch task starts) and failed as LockLost, instead of polled until the deadline."""
    body = _load(payload)
    hour, run_id, units = Hour.parse(body["window"]), body["run_id"], list(body["units"])
    backend = runtime.backend()
    try:
        states = runs.poll(runtime.store(), backend, hour, run_id, units, now=_now(),
                           deadline=datetime.fromisoformat(body["deadline"]),
                           ttl=runtime.settings().lock_ttl,
                           max_failed_percent=runtime.settings().max_failed_percent)
    except LockLost as exc:
        backend.cancel(hour, units, run_id=run_id)
        return {u: UnitOutcome.failure(u, exc.kind, str(exc)).to_json() for u in units}
    return {unit: state.to_json() for unit, state in states.items()}


@bp.activity_trigger(input_name="payload", activity=FINALIZE)
def finalize_window(payload) -> dict:
    body = _load(payload)
    summary = runs.finalize(runtime.store(), Hour.parse(body["window"]), body["run_id"],
                            {u: UnitOutcome.from_json(o) for u, o in body["outcomes"].items()},
                            started=datetime.fromisoformat(body["started"]),
                            now=_now(), backend_name=body["backend"], backend=runtime.backend(),
                            ttl=runtime.settings().lock_ttl,
                            max_failed_percent=runtime.settings().max_failed_percent).to_json()
    _deliver_alerts(summary["window"])
    top = summary.pop("top_anomalous")
    log.info("run %s: %s", summary["window"], summary["status"],
             extra={k: v for k, v in summary.items() if not isinstance(v, list)})
    for sensor, count in top:
        log.info("anomalies of %s in %s: %d", sensor, summary["window"], count,
                 extra={"window": summary["window"], "sensor": sensor, "anomalies": count})
    summary["failures"] = summary["failures"][:50]  # the full list is in the manifest
    return summary


def _deliver_alerts(window: str) -> None:
    """The alerts the hour raised (and any still owed to a failing sink), after the hour is
    closed: a sink never holds the hour's lock, and never fails the run."""
    try:
        rules = load_rules(runtime.store())
        if rules is None:
            return
        report = deliver_owed(runtime.store(), rules, now=_now(),
                              deadline=runtime.settings().deadline, store_url=runtime.store().url)
        log.info("alerts after %s: %d sent, %d failed", window, report.sent, report.failed,
                 extra={"window": window, "sent": report.sent, "failed": report.failed})
    except Exception as exc:  # noqa: BLE001 - alerts never fail the run
        log.warning("alerts after %s not delivered: %s", window, exc, extra={"window": window})
