"""The steps of an hour's run as the Durable orchestration calls them: plan, submit, status,
finalize. Each takes and returns small JSON-safe dicts (paths and ids, never data), so
activities are one-line adapters and the orchestration history stays small.

A rerun of some sensors reruns the units of the hour's stored plan that hold them (whole
units, so each predictions file is replaced whole and never duplicated), and finalize
rebuilds the hour's manifest from every unit's stored result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from .backends.base import FAILED, ComputeBackend
from .errors import UsageError
from .hours import Hour
from .planning import load_plan, load_unit, make_plan, plan_path, save_plan
from .runs import new_run_id, read_unit_result, result_path, run_unit
from .runs import finalize as finalize_run
from .scoring import UnitResult
from .sensors import Sensor
from .stores import Store


def plan_step(store: Store, hour: Hour, *, sensors: Iterable[Sensor] | None = None,
              unit_size: int | None = None, parallel: int = 1,
              min_task_seconds: float = 0.0) -> dict:
    chosen = set(sensors) if sensors is not None else None
    existing = load_plan(store, hour) if chosen else None
    if existing is not None:
        plan = existing
        units = [u for u in plan.units if chosen & set(u.sensors)]
        missing = chosen - {s for u in units for s in u.sensors}
    else:
        plan = make_plan(store, hour, unit_size=unit_size, sensors=chosen, parallel=parallel,
                         min_task_seconds=min_task_seconds)
        save_plan(store, plan)
        units = list(plan.units)
        missing = set()
    for unit in units:
        # A result left by an earlier run must never stand for this run's.
        store.delete(result_path(hour, unit.id))
    return {
        "window": str(hour),
        "run_id": new_run_id(datetime.now(UTC)),
        "plan": plan_path(hour),
        "units": [u.id for u in units],
        "sensors": sum(len(u.sensors) for u in units),
        "planned_units": len(plan.units),
        "no_data": len(plan.no_data),
        "no_model": len(plan.no_model),
        "not_planned": sorted(map(str, missing)),
    }


def submit_step(store: Store, hour: Hour, unit_ids: list[str], backend: ComputeBackend | None,
                *, run_id: str = "") -> dict[str, dict]:
    """Start units. Without a backend each unit is scored here, inside the activity."""
    if backend is None:
        out = {}
        for unit_id in unit_ids:
            result = run_unit(store, hour, unit_id)
            out[unit_id] = outcome(unit_id, result.status, result)
        return out
    backend.submit(hour, [load_unit(store, hour, u) for u in unit_ids], run_id=run_id)
    return {u: {"unit": u, "state": "pending"} for u in unit_ids}


def status_step(store: Store, hour: Hour, unit_ids: list[str], backend: ComputeBackend | None,
                *, run_id: str = "") -> dict[str, dict]:
    if backend is None:
        out = {}
        for unit_id in unit_ids:
            result = read_unit_result(store, hour, unit_id)
            out[unit_id] = outcome(unit_id, result.status, result) if result else \
                {"unit": unit_id, "state": FAILED, "error_kind": "ResultMissing",
                 "error": f"unit {unit_id} has no result in the store"}
        return out
    statuses = backend.poll(hour, unit_ids, run_id=run_id, timeout=0)
    return {
        unit: outcome(unit, s.state, s.result) if s.result is not None else
        {"unit": unit, "state": s.state, "error_kind": s.error_kind, "error": s.error}
        for unit, s in statuses.items()
    }


def outcome(unit_id: str, state: str, result: UnitResult | None) -> dict:
    body = {"unit": unit_id, "state": state}
    if result is not None:
        body.update(scored=result.scored, failed=len(result.failures), anomalies=result.anomalies)
    return body


TOP_ANOMALOUS = 20  # sensors per run logged for the monitoring queries


def finalize_step(store: Store, hour: Hour, outcomes: Mapping[str, dict], *, started: datetime,
                  duration_s: float, backend: str, compute: ComputeBackend | None = None,
                  run_id: str = "") -> dict:
    if compute is not None:
        compute.finish(hour, run_id=run_id)
    plan = load_plan(store, hour)
    if plan is None:
        raise UsageError(f"no plan for {hour}: the plan step did not run")
    results = [_unit_result(store, hour, unit.id, unit.sensors, outcomes.get(unit.id))
               for unit in plan.units]
    summary = finalize_run(store, plan, results, started=started, duration_s=duration_s,
                           backend=backend)
    by_sensor = {k: v for r in results for k, v in r.anomalies_by_sensor.items()}
    top = sorted(by_sensor.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ANOMALOUS]
    return {"window": summary.window, "status": summary.status, "scored": summary.scored,
            "failed": summary.failed, "anomalies": summary.anomalies,
            "no_data": summary.no_data, "no_model": summary.no_model,
            "manifest": summary.manifest, "top_anomalous": [[s, n] for s, n in top]}


def _unit_result(store: Store, hour: Hour, unit_id: str, sensors, state: dict | None) -> UnitResult:
    """The unit's stored result; else why it has none, as a failure of each of its sensors."""
    stored = read_unit_result(store, hour, unit_id)
    if stored is not None:
        return stored
    if state is None:
        kind, message = "NotRun", f"unit {unit_id} is planned but never ran: rerun the hour"
    else:
        kind = state.get("error_kind") or "UnitFailed"
        message = state.get("error") or f"unit {unit_id} ended {state.get('state')} without a result"
    return UnitResult.all_failed(str(hour), unit_id, sensors, kind, message)
