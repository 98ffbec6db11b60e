"""Running an hour: plan, units through a backend, then the run manifest.

The same three steps run under the CLI (here, with a local backend) and under the Durable
Functions orchestrator (each step an activity): ``make_plan``/``save_plan``, ``run_unit`` per
unit, and ``finalize``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from . import __version__, telemetry
from .backends.base import FAILED, ComputeBackend, UnitStatus
from .errors import InputError, NotFound
from .hours import Hour
from .locks import hour_lock
from .planning import Plan, load_unit, make_plan, run_folder, save_plan
from .predictions import predictions_folder
from .scoring import UnitResult, score_unit
from .stores import Store

Progress = Callable[[int, int], None]


def new_run_id(now: datetime) -> str:
    """Names one attempt at an hour (Batch jobs are per attempt): time plus a random suffix."""
    return f"{now:%Y%m%d%H%M%S}{secrets.token_hex(3)}"


def result_path(hour: Hour, unit_id: str) -> str:
    return f"{run_folder(hour)}/results/{unit_id}.json"


def manifest_path(hour: Hour) -> str:
    return f"runs/{hour}.json"


def run_unit(store: Store, hour: Hour, unit_id: str) -> UnitResult:
    """Score one planned unit and record its result (what a worker or a Batch task runs)."""
    with telemetry.span("fleetscore.unit", window=str(hour), unit=unit_id) as span:
        unit = load_unit(store, hour, unit_id)
        result = score_unit(store, hour, unit.sensors, unit_id=unit.id)
        store.put(result_path(hour, unit.id), json.dumps(result.to_json()).encode())
        span.set_attribute("sensors", result.sensors)
        span.set_attribute("anomalies", result.anomalies)
        span.set_attribute("failed", len(result.failures))
    telemetry.record_unit(result)
    return result


def read_unit_result(store: Store, hour: Hour, unit_id: str) -> UnitResult | None:
    try:
        return UnitResult.from_json(json.loads(store.get(result_path(hour, unit_id))))
    except NotFound:
        return None


@dataclass(frozen=True)
class RunSummary:
    window: str
    status: str
    planned: int
    scored: int
    failed: int
    no_data: int
    no_model: int
    anomalies: int
    failures: tuple[dict, ...]
    manifest: str
    duration_s: float

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "succeeded" else 3


def run_window(
    store: Store, hour: Hour, backend: ComputeBackend, *, unit_size: int | None = None,
    progress: Progress | None = None, poll_seconds: float = 0.5,
) -> RunSummary:
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with hour_lock(store, hour), telemetry.span("fleetscore.run", window=str(hour)):
        plan = make_plan(store, hour, unit_size=unit_size,
                         parallel=getattr(backend, "workers", 1))
        save_plan(store, plan)
        for unit in plan.units:
            store.delete(result_path(hour, unit.id))  # never mistake the last run's result for this one's
        results = execute(plan, backend, run_id=new_run_id(started), progress=progress,
                          poll_seconds=poll_seconds)
        return finalize(store, plan, results, started=started,
                        duration_s=time.perf_counter() - clock, backend=backend.name)


def execute(
    plan: Plan, backend: ComputeBackend, *, run_id: str = "", progress: Progress | None = None,
    poll_seconds: float = 0.5,
) -> list[UnitResult]:
    """Submit every unit and wait for all; a unit the backend could not run fails as a whole."""
    units = {unit.id: unit for unit in plan.units}
    backend.submit(plan.window, plan.units, run_id=run_id)
    pending = list(units)
    results: list[UnitResult] = []
    total = plan.sensors
    done_sensors = 0
    if progress:
        progress(0, total)
    while pending:
        statuses = backend.poll(plan.window, pending, run_id=run_id, timeout=poll_seconds)
        still = []
        for unit_id in pending:
            status = statuses[unit_id]
            if not status.done:
                still.append(unit_id)
                continue
            results.append(_result_of(plan.window, unit_id, units[unit_id].sensors, status))
            done_sensors += len(units[unit_id].sensors)
        pending = still
        if progress:
            progress(done_sensors, total)
    backend.finish(plan.window, run_id=run_id)
    return sorted(results, key=lambda r: r.unit_id)


def _result_of(hour: Hour, unit_id: str, sensors, status: UnitStatus) -> UnitResult:
    if status.result is not None:
        return status.result
    assert status.state == FAILED
    return UnitResult.all_failed(str(hour), unit_id, sensors, status.error_kind or "BackendError",
                                 status.error or "the unit failed without a reason")


def finalize(
    store: Store, plan: Plan, results: Sequence[UnitResult], *, started: datetime,
    duration_s: float, backend: str,
) -> RunSummary:
    """Write the run manifest and drop prediction files of units no longer in the plan."""
    current = {r.predictions for r in results if r.predictions}
    for path in store.list(predictions_folder(plan.window)):
        if path not in current:
            # Left by an earlier run with other units: keeping it would duplicate predictions.
            store.delete(path)
    manifest = build_manifest(plan, results, started=started, duration_s=duration_s,
                              backend=backend)
    path = manifest_path(plan.window)
    store.put(path, json.dumps(manifest, indent=1).encode())
    return RunSummary(
        window=manifest["window"], status=manifest["status"],
        planned=manifest["sensors"]["planned"], scored=manifest["sensors"]["scored"],
        failed=manifest["sensors"]["failed"], no_data=manifest["sensors"]["no_data"],
        no_model=manifest["sensors"]["no_model"], anomalies=manifest["anomalies"],
        failures=tuple(manifest["failures"]), manifest=path, duration_s=round(duration_s, 3),
    )


def build_manifest(
    plan: Plan, results: Sequence[UnitResult], *, started: datetime, duration_s: float,
    backend: str,
) -> dict:
    failures = [
        {"sensor": f.sensor, "kind": f.kind, "message": f.message, "unit": r.unit_id}
        for r in results for f in r.failures
    ]
    scored = sum(r.scored for r in results)
    no_data = sorted({*map(str, plan.no_data), *(s for r in results for s in r.no_data)})
    if not failures:
        status = "succeeded"
    else:
        status = "partial" if scored else "failed"
    return {
        "window": str(plan.window),
        "status": status,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        "backend": backend,
        "version": __version__,
        "unit_size": plan.unit_size,
        "units": len(plan.units),
        "sensors": {
            "planned": plan.sensors,
            "scored": scored,
            "failed": len(failures),
            "no_data": len(no_data),
            "no_model": len(plan.no_model),
        },
        "points": sum(r.points for r in results),
        "anomalies": sum(r.anomalies for r in results),
        "failures": failures,
        "no_data": no_data,
        "no_model": [str(s) for s in plan.no_model],
        "anomalies_by_sensor": {k: v for r in results for k, v in r.anomalies_by_sensor.items()},
        "unit_results": [
            {"id": r.unit_id, "status": r.status, "sensors": r.sensors, "scored": r.scored,
             "anomalies": r.anomalies, "duration_s": r.duration_s, "predictions": r.predictions,
             "sha256": r.predictions_sha256}
            for r in results
        ],
    }


def read_manifest(store: Store, hour: Hour) -> dict | None:
    try:
        return json.loads(store.get(manifest_path(hour)))
    except NotFound:
        return None
    except ValueError as exc:
        raise InputError(f"run manifest {manifest_path(hour)} is malformed: {exc}") from exc


def list_manifests(store: Store) -> list[dict]:
    out = []
    for path in store.list("runs"):
        name = path.split("/")[-1]
        if path.count("/") == 1 and name.endswith(".json"):
            try:
                out.append(json.loads(store.get(path)))
            except ValueError:
                continue
    return sorted(out, key=lambda m: m.get("window", ""))
