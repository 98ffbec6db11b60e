"""Activities: parse the input, call fleetscore, return a JSON-safe dict. Errors raise."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

import azure.durable_functions as df

from fleetscore import runtime
from fleetscore.hours import Hour
from fleetscore.planning import MIN_TASK_SECONDS
from fleetscore.sensors import Sensor
from fleetscore.steps import finalize_step, plan_step, status_step, submit_step
from orchestrators.names import FINALIZE, PLAN, STATUS, SUBMIT

bp = df.Blueprint()
log = logging.getLogger("fleetscore.activities")
# Activities the Functions host runs at once (host.json maxConcurrentActivityFunctions).
LOCAL_ACTIVITY_PARALLELISM = 8


def _load(payload) -> dict:
    return json.loads(payload) if isinstance(payload, str | bytes) else payload


@bp.activity_trigger(input_name="payload", activity=PLAN)
def plan_window(payload) -> dict:
    body = _load(payload)
    started = time.perf_counter()
    sensors = [Sensor.parse(s) for s in body["sensors"]] if body.get("sensors") else None
    settings = runtime.settings()
    if settings.backend == "batch":
        parallel, min_task = settings.batch.max_nodes * settings.batch.tasks_per_node, MIN_TASK_SECONDS
    else:
        parallel, min_task = LOCAL_ACTIVITY_PARALLELISM, 0.0
    plan = plan_step(runtime.store(), Hour.parse(body["window"]), sensors=sensors,
                     unit_size=body.get("unit_size"), parallel=parallel, min_task_seconds=min_task)
    log.info("plan %s: %d units", plan["window"], len(plan["units"]),
             extra={"window": plan["window"], "units": len(plan["units"]),
                    "sensors": plan["sensors"], "duration": time.perf_counter() - started})
    return plan


@bp.activity_trigger(input_name="payload", activity=SUBMIT)
def submit_units(payload) -> dict:
    body = _load(payload)
    started = time.perf_counter()
    outcomes = submit_step(runtime.store(), Hour.parse(body["window"]), list(body["units"]),
                           runtime.backend(), run_id=body.get("run_id", ""))
    for unit, outcome in outcomes.items():
        log.info("unit %s of %s: %s", unit, body["window"], outcome["state"],
                 extra={"window": body["window"], "unit": unit, "state": outcome["state"],
                        "sensors": outcome.get("scored"), "anomalies": outcome.get("anomalies"),
                        "duration": time.perf_counter() - started})
    return outcomes


@bp.activity_trigger(input_name="payload", activity=STATUS)
def unit_status(payload) -> dict:
    body = _load(payload)
    return status_step(runtime.store(), Hour.parse(body["window"]), list(body["units"]),
                       runtime.backend(), run_id=body.get("run_id", ""))


@bp.activity_trigger(input_name="payload", activity=FINALIZE)
def finalize_window(payload) -> dict:
    body = _load(payload)
    summary = finalize_step(runtime.store(), Hour.parse(body["window"]), body["outcomes"],
                            started=datetime.fromisoformat(body["started"]),
                            duration_s=float(body["duration_s"]), backend=body["backend"],
                            compute=runtime.backend(), run_id=body.get("run_id", ""))
    top = summary.pop("top_anomalous")
    log.info("run %s: %s", summary["window"], summary["status"],
             extra={**summary, "duration": body["duration_s"]})
    for sensor, count in top:
        log.info("anomalies of %s in %s: %d", sensor, summary["window"], count,
                 extra={"window": summary["window"], "sensor": sensor, "anomalies": count})
    return summary
