"""The run lifecycle of an hour, written once for every entry point.

```
begin     take the hour's lock, drop stale staging, plan, store the plan under the run id
submit    hand the units to a backend
poll      renew the lock, read the units' states, cancel what passed the deadline
finalize  promote this run's outputs unit by unit, keep the last good rows of what failed,
          write the manifest, release the lock, drop the run's staging
```

The CLI drives these in a loop (``run_hour``: polls with backoff until done or the deadline);
the Durable orchestrator calls the same four functions as activities, between durable timers.
Everything they exchange is small and JSON-safe (ids and states, never data).

A run writes only under ``runs/HOUR/RUN/``: units read their sensor lists there and stage
their predictions and results there. The hour's visible predictions (``predictions/HOUR/``,
listed in the manifest ``runs/HOUR.json``) change only in ``finalize``, and only for units
that finished within the deadline, so a crash, a failed rerun or a late straggler never
removes or overwrites good predictions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore import __version__, telemetry
from fleetscore.compute.base import FAILED, PARTIAL, SUCCEEDED, ComputeBackend, UnitStatus
from fleetscore.contracts import (
    EXIT_CODES,
    Failure,
    PredictionsFile,
    RunManifest,
    SensorCounts,
    UnitOutcome,
    UnitSummary,
)
from fleetscore.core.hours import Hour
from fleetscore.core.sensor_codes import sensor_keys
from fleetscore.core.sensors import Sensor
from fleetscore.data.compaction import compact_for_run
from fleetscore.data.predictions import SCHEMA as PREDICTIONS_SCHEMA
from fleetscore.data.predictions import decode, encode, format_of, predictions_folder
from fleetscore.errors import InputError, NotFound, UsageError
from fleetscore.model.bank import registry_damage
from fleetscore.runs import locks
from fleetscore.runs.alerting import alerts_for_hour, manifest_path, noisy_guard
from fleetscore.runs.locks import LOCK_TTL
from fleetscore.scoring.planning import (
    Plan,
    hour_folder,
    load_plan,
    load_unit,
    make_plan,
    plan_sizes,
    run_folder,
    save_plan,
)
from fleetscore.scoring.score import SensorFailure, UnitResult, score_unit, top_counts
from fleetscore.storage import Store

Progress = Callable[[int, int], None]
DEADLINE = timedelta(minutes=120)


def new_run_id(now: datetime) -> str:
    """Names one attempt at an hour (Batch jobs are per attempt): time plus a random suffix."""
    return f"{now:%Y%m%d%H%M%S}{secrets.token_hex(3)}"


def staged_path(hour: Hour, run_id: str, unit_id: str, fmt: str = "csv") -> str:
    return f"{run_folder(hour, run_id)}/predictions/{unit_id}.{fmt}"


def result_path(hour: Hour, run_id: str, unit_id: str) -> str:
    return f"{run_folder(hour, run_id)}/results/{unit_id}.json"


def failed_marker_path(hour: Hour, run_id: str, unit_id: str, failed: int) -> str:
    return f"{run_folder(hour, run_id)}/failed/{unit_id}.{failed}"


def failed_so_far(store: Store, hour: Hour, run_id: str) -> int:
    """Sensors the run's finished units failed, from their markers (a retried unit's
    largest count)."""
    most: dict[str, int] = {}
    for path in store.list(f"{run_folder(hour, run_id)}/failed"):
        unit, _, n = path.rsplit("/", 1)[-1].rpartition(".")
        if n.isdigit():
            most[unit] = max(most.get(unit, 0), int(n))
    return sum(most.values())


def finished_units(store: Store, hour: Hour, run_id: str) -> set[str]:
    """Units of the run that wrote their result."""
    folder = f"{run_folder(hour, run_id)}/results/"
    return {p[len(folder):-len(".json")] for p in store.list(folder.rstrip("/"))
            if p.endswith(".json")}


# --- a unit (what a worker process or a Batch task runs) ------------------------------------


def run_unit(store: Store, hour: Hour, run_id: str, unit_id: str) -> UnitResult:
    """Score one planned unit into the run's staging and record its result."""
    with telemetry.span("fleetscore.unit", window=str(hour), unit=unit_id) as span:
        unit = load_unit(store, hour, run_id, unit_id)
        result = score_unit(store, hour, unit.sensors, unit_id=unit.id,
                            out=staged_path(hour, run_id, unit.id, unit.format))
        store.put(result_path(hour, run_id, unit.id), json.dumps(result.to_json()).encode())
        if result.failures:  # what the error threshold counts, from a listing alone
            store.put(failed_marker_path(hour, run_id, unit.id, len(result.failures)), b"")
        span.set_attribute("sensors", result.sensors)
        span.set_attribute("anomalies", result.anomalies)
        span.set_attribute("failed", len(result.failures))
    telemetry.record_unit(result)
    return result


def record_unusable(store: Store, hour: Hour, run_id: str, unit_id: str, kind: str,
                    message: str) -> UnitResult:
    """A unit that cannot run at all (no such unit, a malformed sensor list): its result says
    so, so the backend reads a final answer instead of retrying what no retry can fix."""
    result = UnitResult(unit_id=unit_id, window=str(hour), sensors=0, scored=0, points=0,
                        anomalies=0, error=f"{kind}: {message}")
    store.put(result_path(hour, run_id, unit_id), json.dumps(result.to_json()).encode())
    return result


def read_unit_result(store: Store, hour: Hour, run_id: str, unit_id: str) -> UnitResult | None:
    try:
        return UnitResult.from_json(json.loads(store.get(result_path(hour, run_id, unit_id))))
    except NotFound:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"unit result {result_path(hour, run_id, unit_id)} is malformed: "
                         f"{exc}") from exc


# --- begin ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """What ``begin`` hands the rest of the run (and the orchestrator its activities)."""

    window: str
    run_id: str
    units: tuple[str, ...]
    sensors: int
    deadline: str  # ISO time: units still running then are cancelled and failed
    no_data: int
    no_model: int
    not_planned: tuple[str, ...] = ()  # chosen sensors with no data or no model

    def to_json(self) -> dict:
        return {"window": self.window, "run_id": self.run_id, "units": list(self.units),
                "sensors": self.sensors, "deadline": self.deadline, "no_data": self.no_data,
                "no_model": self.no_model, "not_planned": list(self.not_planned)}

    @classmethod
    def from_json(cls, body: Mapping) -> Ticket:
        return cls(window=body["window"], run_id=body["run_id"], units=tuple(body["units"]),
                   sensors=int(body["sensors"]), deadline=body["deadline"],
                   no_data=int(body.get("no_data", 0)), no_model=int(body.get("no_model", 0)),
                   not_planned=tuple(body.get("not_planned", ())))


def check_ended(hour: Hour, now: datetime) -> None:
    if hour.end_ms > int(now.timestamp() * 1000):
        raise UsageError(f"hour {hour} has not ended yet (now is {now:%Y-%m-%dT%H:%M}Z): "
                         "its windows are still open")


def begin(
    store: Store, hour: Hour, *, run_id: str, now: datetime, deadline: datetime,
    sensors: Iterable[Sensor] | None = None, unit_size: int | None = None, parallel: int = 1,
    min_task_seconds: float = 0.0, ttl: timedelta = LOCK_TTL, pid: int | None = None,
    fmt: str = "csv",
) -> Ticket:
    """Take the hour and plan it. Idempotent for the same ``run_id`` (a retried activity)."""
    check_ended(hour, now)
    locks.acquire(store, hour, run_id, now=now, ttl=ttl, pid=pid)
    try:
        drop_staging(store, hour, keep=run_id)
        compact_for_run(store, hour)  # once per hour's files: units then read O(their sensors)
        chosen = None if sensors is None else sorted(set(sensors))
        plan = make_plan(store, hour, unit_size=unit_size, sensors=chosen,
                         parallel=parallel, min_task_seconds=min_task_seconds, fmt=fmt)
        save_plan(store, plan, run_id)
    except BaseException:
        locks.release(store, hour, run_id)
        raise
    planned = {s for u in plan.units for s in u.sensors} if chosen else set()
    return Ticket(window=str(hour), run_id=run_id, units=tuple(u.id for u in plan.units),
                  sensors=plan.sensors, deadline=deadline.isoformat(),
                  no_data=len(plan.no_data), no_model=len(plan.no_model),
                  not_planned=tuple(str(s) for s in (chosen or ()) if s not in planned))


def drop_staging(store: Store, hour: Hour, *, keep: str | None = None) -> None:
    """Delete what runs of the hour staged, except run ``keep``'s: a crashed or superseded
    run's files are never promoted, so they are only clutter."""
    mine = f"{run_folder(hour, keep)}/" if keep else None
    for path in store.list(hour_folder(hour)):
        if mine is None or not path.startswith(mine):
            store.delete(path)


# --- submit and poll ------------------------------------------------------------------------


def outcome(unit_id: str, status: UnitStatus) -> UnitOutcome:
    """A backend's status of a unit as the run carries it."""
    r = status.result
    return UnitOutcome(
        unit_id, status.state, result=r is not None,
        scored=r.scored if r is not None else None,
        failed=len(r.failures) if r is not None else None,
        anomalies=r.anomalies if r is not None else None,
        error_kind=status.error_kind, error=(status.error or "")[:1000] or None)


def submit(store: Store, backend: ComputeBackend, hour: Hour, run_id: str,
           unit_ids: Sequence[str]) -> dict[str, UnitOutcome]:
    """Start units; an inline backend has scored them when this returns. Backends start a
    unit by its id and the unit reads its own sensors: only the plan file is read here."""
    plan = load_plan(store, hour, run_id, sensors=False)
    known = {u.id: u for u in plan.units} if plan is not None else {}
    for u in unit_ids:
        if u not in known:
            load_unit(store, hour, run_id, u)  # raises: says which unit, and why
    backend.submit(hour, [known[u] for u in unit_ids], run_id=run_id)
    if backend.inline:
        statuses = backend.poll(hour, list(unit_ids), run_id=run_id, timeout=0)
        return {u: outcome(u, statuses[u]) for u in unit_ids}
    return {u: UnitOutcome.pending(u) for u in unit_ids}


def poll(
    store: Store, backend: ComputeBackend, hour: Hour, run_id: str, unit_ids: Sequence[str], *,
    now: datetime, deadline: datetime, timeout: float = 0.0, renew: bool = True,
    ttl: timedelta = LOCK_TTL, max_failed_percent: float | None = None,
) -> dict[str, UnitOutcome]:
    """The units' states. Renews the run's lock (LockLost: another run took the hour, stop);
    units still running at the deadline, or once more than ``max_failed_percent`` of the
    hour's sensors failed, are cancelled on their backend (Batch: terminated) and failed."""
    if renew:
        locks.renew(store, hour, run_id, now=now, ttl=ttl)
    statuses = backend.poll(hour, list(unit_ids), run_id=run_id, timeout=timeout)
    out = {u: outcome(u, statuses[u]) for u in unit_ids}
    if now >= deadline:
        late = [u for u in unit_ids if not statuses[u].done]
        if late:
            backend.cancel(hour, late, run_id=run_id)
            for u in late:
                out[u] = UnitOutcome.failure(u, "DeadlineExceeded",
                                        f"unit {u} did not finish before {deadline.isoformat()}")
    if max_failed_percent is not None:
        _stop_past_threshold(store, backend, hour, run_id, out, max_failed_percent)
    return out


def _stop_past_threshold(store: Store, backend: ComputeBackend, hour: Hour, run_id: str,
                         out: dict[str, UnitOutcome], max_failed_percent: float) -> None:
    waiting = [u for u, o in out.items() if not o.terminal]
    if not waiting:
        return
    plan = load_plan(store, hour, run_id, sensors=False)
    planned = plan.sensors if plan is not None else 0
    if not planned or failed_so_far(store, hour, run_id) * 100 <= max_failed_percent * planned:
        return
    # A unit that wrote its result has run, whatever its backend says yet (a worker's
    # future ends after the unit's last write): the next poll reads what it did.
    ran = finished_units(store, hour, run_id)
    waiting = [u for u in waiting if u not in ran]
    if not waiting:
        return
    backend.cancel(hour, waiting, run_id=run_id)
    out.update({u: UnitOutcome.failure(
        u, THRESHOLD_EXCEEDED, f"unit {u} was not run: more than {max_failed_percent:g}% of "
        f"the hour's {planned} sensors had already failed") for u in waiting})


# --- finalize -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    window: str
    run_id: str
    status: str
    planned: int
    scored: int
    failed: int
    no_data: int
    no_model: int
    anomalies: int
    failures: tuple[dict, ...]
    kept_from_earlier_run: tuple[str, ...]
    manifest: str
    duration_s: float
    top_anomalous: tuple[tuple[str, int], ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict:
        return {"window": self.window, "run_id": self.run_id, "status": self.status,
                "exit_code": self.exit_code, "planned": self.planned, "scored": self.scored,
                "failed": self.failed, "no_data": self.no_data, "no_model": self.no_model,
                "anomalies": self.anomalies, "failures": list(self.failures),
                "kept_from_earlier_run": list(self.kept_from_earlier_run),
                "manifest": self.manifest, "duration_s": self.duration_s,
                "top_anomalous": [list(t) for t in self.top_anomalous]}

    @classmethod
    def from_json(cls, body: Mapping) -> RunSummary:
        return cls(
            window=body["window"], run_id=body["run_id"], status=body["status"],
            planned=body["planned"], scored=body["scored"], failed=body["failed"],
            no_data=body["no_data"], no_model=body["no_model"], anomalies=body["anomalies"],
            failures=tuple(body["failures"]),
            kept_from_earlier_run=tuple(body["kept_from_earlier_run"]),
            manifest=body["manifest"], duration_s=body["duration_s"],
            top_anomalous=tuple(tuple(t) for t in body.get("top_anomalous", ())))


def finalize(
    store: Store, hour: Hour, run_id: str, outcomes: Mapping[str, UnitOutcome], *, started: datetime,
    now: datetime, backend_name: str, backend: ComputeBackend | None = None,
    ttl: timedelta = LOCK_TTL, damaged: Callable[[], Mapping[Sensor, str]] | None = None,
    max_failed_percent: float | None = None,
) -> RunSummary:
    """End the run: promote what finished, write the manifest, release the hour.
    ``damaged``: the registry's damage (``bank.registry_damage``), when it was looked for
    while the units ran; else it is looked for here.

    Idempotent: a retried finalize of a run that already wrote its manifest returns it."""
    done = readable_manifest(store, hour)
    closed = closed_manifest(store, hour, run_id, manifest=done)
    if closed is not None:
        drop_staging(store, hour, keep=None)
        return summary_of(closed)
    # Still ours? If another run took the hour, it owns the visible outputs: promote nothing.
    locks.renew(store, hour, run_id, now=now, ttl=ttl)
    plan = load_plan(store, hour, run_id, sensors=False)
    if plan is None:
        raise UsageError(f"run {run_id} of {hour} has no plan: its begin step did not run")
    results, unfinished = [], []
    for unit in plan.units:
        state = outcomes.get(unit.id) or UnitOutcome.pending(unit.id)
        results.append(_final_result(store, hour, run_id, unit.id, state))
        if not state.terminal:
            unfinished.append(unit.id)
    if backend is not None:
        if unfinished:
            backend.cancel(hour, unfinished, run_id=run_id)
        backend.finish(hour, run_id=run_id)
    broken = damaged() if damaged is not None else registry_damage(store)
    if broken:
        results = [without_damaged(store, r, broken) for r in results]
    return close_hour(store, hour, run_id, plan, results, previous=done, started=started,
                      now=now, backend_name=backend_name, max_failed_percent=max_failed_percent)


def without_damaged(store: Store, result: UnitResult, damaged: Mapping[Sensor, str]
                    ) -> UnitResult:
    """The unit's result with the sensors whose stored model is damaged failed, and their
    rows (scored from the bank's intact compiled copy) left out of its staged predictions:
    a model the registry can no longer vouch for makes no visible prediction."""
    if not result.predictions:
        return result
    table = decode(store.get(result.predictions), result.predictions)
    keys = sensor_keys(table["Device"], table["Tag"])
    bad = pa.array(sorted({str(s) for s in damaged}), pa.string())
    hit = pc.is_in(keys, value_set=bad)
    if not pc.any(hit).as_py():
        return result
    gone = table.filter(hit)
    gone_keys = pc.unique(pc.filter(keys, hit)).to_pylist()
    kept = table.filter(pc.invert(hit))
    path = result.predictions.replace("/predictions/", "/checked/", 1)
    data = encode([kept], format_of(path))
    store.put(path, data)
    failures = tuple(SensorFailure(k, "ModelError", damaged[Sensor.parse(k)])
                     for k in gone_keys)
    return replace(
        result, scored=result.scored - len(gone_keys), points=result.points - gone.num_rows,
        anomalies=result.anomalies - int(pc.sum(gone["Prediction"]).as_py() or 0),
        failures=result.failures + failures,
        top_anomalous={k: v for k, v in result.top_anomalous.items() if k not in gone_keys},
        predictions=path if kept.num_rows else None,
        predictions_sha256=hashlib.sha256(data).hexdigest() if kept.num_rows else None)


def close_hour(
    store: Store, hour: Hour, run_id: str, plan: Plan, results: Sequence[UnitResult], *,
    previous: RunManifest | None, started: datetime, now: datetime, backend_name: str,
    payloads: Mapping[str, bytes] | None = None, duration_s: float | None = None,
    max_failed_percent: float | None = None,
) -> RunSummary:
    """The end of every run of an hour, its lock just renewed: promote, write the manifest,
    sweep what it no longer lists, release the hour, drop the run's staging. ``previous``:
    the hour's manifest before this run; ``payloads``: the units' predictions when they are in
    memory (a backfill's), else they are read from the run's staging. ``duration_s``: the
    hour's own share of a run that did many hours (default: from ``started`` to ``now``)."""
    if plan.damaged:  # left out of the units when planned (a backfill's spans)
        results = [*results, UnitResult(
            unit_id="registry", window=str(hour), sensors=len(plan.damaged), scored=0,
            points=0, anomalies=0, failures=tuple(
                SensorFailure(str(s), "ModelError", why) for s, why in plan.damaged))]
    vanished = vanished_sensors(store, hour, run_id, plan, results, previous)
    if vanished:
        results = [*results, UnitResult.all_failed(
            str(hour), "inputs", [Sensor.parse(s) for s in vanished], "InputMissing",
            f"had predictions from run {previous.run_id} but has no data or no model in "
            f"this rerun: {missing_inputs(store, hour)}; its earlier predictions are kept")]
    # The threshold judges this run's own sensors; failures standing from the hour's last run
    # (a rerun of a few sensors) are the hour's, not this run's.
    over = over_threshold(plan, results, max_failed_percent)
    results = [*results, *standing_failures(store, hour, run_id, plan, previous)]
    if over:  # the hour fails whole; what was visible stays visible (its manifest damaged:
        # what its folder holds)
        files = visible_files(store, hour, previous)
        kept: list[str] = []
    else:
        files, kept = promote(store, hour, run_id, plan, results, manifest=previous,
                              payloads=payloads)
    manifest = build_manifest(plan, results, run_id=run_id, files=files, kept=kept,
                              started=started, finished=now, backend=backend_name)
    if over:
        manifest = replace(manifest, status="failed", reason=over)
    if duration_s is not None:
        manifest = replace(manifest, duration_s=round(duration_s, 3))
    hour_rows = _once(lambda: _rows(store, files))  # the guard and the alerts read it once
    # The units counted their noisy candidates; the visible rows are read only when they are
    # not all this run's (an hour failed whole keeps the earlier rows; a rerun of a few
    # sensors, or one that kept a failed sensor's earlier rows, counted only some of them).
    counted = None if over or plan.restricted or kept else {
        k: (f, n) for r in results for k, (f, n) in r.flagged.items()}
    guard = noisy_guard(store, hour, rows=hour_rows, counted=counted,
                        manifest_of=lambda h: readable_manifest(store, h),
                        rows_of=lambda h, m: _rows(store, visible_files(store, h, m)))
    keys = alerts_for_hour(
        store, hour, run_id, status=manifest.status, reason=manifest.reason or _why(manifest),
        rows=hour_rows, now=now, noisy=guard.noisy,
        previous_rows=lambda: _rows(store, visible_files(store, hour - 1)))
    manifest = replace(manifest, alerts=keys, noisy=guard.noisy, flag_counts=guard.flag_counts)
    store.put(manifest_path(hour), manifest.encode())
    sweep(store, hour, {f.path for f in files})
    locks.release(store, hour, run_id)
    drop_staging(store, hour)
    return summary_of(manifest)


THRESHOLD_EXCEEDED = "ThresholdExceeded"  # a unit cancelled because the threshold was passed


def over_threshold(plan: Plan, results: Sequence[UnitResult],
                   max_failed_percent: float | None) -> str:
    """Why the hour fails whole (more than ``max_failed_percent`` of its planned sensors
    failed), or "" when it does not."""
    if max_failed_percent is None or not plan.sensors:
        return ""
    kinds = Counter(f.kind for r in results for f in r.failures)
    if sum(kinds.values()) * 100 <= max_failed_percent * plan.sensors:
        return ""
    stopped = kinds.pop(THRESHOLD_EXCEEDED, 0)
    not_run = f" ({stopped} not run once it was passed)" if stopped else ""
    return (f"{sum(kinds.values())} of {plan.sensors} sensors failed{not_run}, more than the "
            f"{max_failed_percent:g}% allowed: nothing of this run was promoted")


def _why(manifest: RunManifest) -> str:
    kinds = Counter(f.kind for f in manifest.failures)
    listed = ", ".join(f"{k} {n}" for k, n in kinds.most_common(3))
    return f"{manifest.sensors.failed} of {manifest.sensors.planned} sensors failed ({listed})"


def _once(read: Callable[[], pa.Table | None]) -> Callable[[], pa.Table | None]:
    """``read``, called at most once: later calls return its first answer."""
    done: list[pa.Table | None] = []

    def first() -> pa.Table | None:
        if not done:
            done.append(read())
        return done[0]
    return first


def _rows(store: Store, files: Sequence[PredictionsFile]) -> pa.Table | None:
    """The rows of an hour's visible predictions files (None: the hour has none)."""
    tables = [decode(store.get(f.path), f.path) for f in files]
    return pa.concat_tables(tables) if tables else None


def vanished_sensors(store: Store, hour: Hour, run_id: str, plan: Plan,
                     results: Sequence[UnitResult], previous: RunManifest | None) -> list[str]:
    """Sensors the hour's last run scored that this run (of the whole hour) neither scored nor
    failed: their input or model went missing since, and a rerun must not turn their good
    predictions into nothing. Reads nothing unless the counts say some are missing."""
    if previous is None or plan.restricted:
        return []
    reached = sum(r.scored + len(r.failures) for r in results)
    visible = previous.sensors.scored + len(previous.kept_from_earlier_run)
    if reached >= visible:
        return []
    # A sensor with data and no model now had its model withdrawn: its rows go (R28).
    ours = {f.sensor for r in results for f in r.failures} | {str(s) for s in plan.no_model}
    no_data = {s for r in results for s in r.no_data}
    ours.update(planned_keys(store, hour, run_id, plan) - no_data)
    before: set[str] = set()
    for entry in visible_files(store, hour, previous):
        try:
            table = decode(store.get(entry.path), entry.path)
        except (NotFound, InputError):
            continue
        before.update(pc.unique(sensor_keys(table["Device"], table["Tag"])).to_pylist())
    return sorted(before - ours)


def planned_keys(store: Store, hour: Hour, run_id: str, plan: Plan) -> set[str]:
    """Every sensor the plan's units hold, as ``Device/Tag`` keys (a summarized unit's list
    read from the run's staging)."""
    return {str(s) for u in plan.units for s in (
        u.sensors if u.size is None else load_unit(store, hour, run_id, u.id).sensors)}


STANDING = "earlier"  # the unit named by a failure carried on from the hour's last run


def standing_failures(store: Store, hour: Hour, run_id: str, plan: Plan,
                      previous: RunManifest | None) -> list[UnitResult]:
    """For a rerun of a few sensors: the failures of the hour's last run among the sensors it
    did not rerun, which still stand (their rows are as they were). Without them the hour
    would read ``succeeded`` with a sensor still failed, and a range would skip it."""
    if not plan.restricted or previous is None or not previous.failures:
        return []
    planned = planned_keys(store, hour, run_id, plan)
    standing = tuple(SensorFailure(f.sensor, f.kind, f.message if f.unit == STANDING else
                                   f"{f.message} (run {previous.run_id}; not rerun since)")
                     for f in previous.failures if f.sensor not in planned)
    if not standing:
        return []
    return [UnitResult(unit_id=STANDING, window=str(hour), sensors=len(standing), scored=0,
                       points=0, anomalies=0, failures=standing)]


def missing_inputs(store: Store, hour: Hour) -> str:
    """What of the hour's input is gone, in words naming the files: the hour's own records
    and its day's (a sparse hour's windows are in its day's part)."""
    from fleetscore.data.arrivals import arrivals_folder, day_arrivals_folder

    gone = []
    records = [*store.list(arrivals_folder(hour)), *store.list(day_arrivals_folder(hour))]
    for path in records:
        try:
            body = json.loads(store.get(path))
            part = body.get("part")
            if "hours" in body and str(hour) not in body["hours"]:
                continue  # a day record of other hours of the day
        except (ValueError, AttributeError, TypeError, NotFound):
            gone.append(f"{path} is damaged")
            continue
        if part and not store.exists(part):
            gone.append(f"{part} is missing")
    if gone:
        return ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else "")
    return f"no arrival record under {arrivals_folder(hour)}/ names it (`fleetscore verify`)"


def summary_of(manifest: RunManifest) -> RunSummary:
    counts = manifest.sensors
    return RunSummary(
        window=manifest.window, run_id=manifest.run_id, status=manifest.status,
        planned=counts.planned, scored=counts.scored, failed=counts.failed,
        no_data=counts.no_data, no_model=counts.no_model, anomalies=manifest.anomalies,
        failures=tuple(f.to_json() for f in manifest.failures),
        kept_from_earlier_run=manifest.kept_from_earlier_run,
        manifest=manifest_path(Hour.parse(manifest.window)),
        duration_s=manifest.duration_s, top_anomalous=manifest.top_anomalous,
    )


def _final_result(store: Store, hour: Hour, run_id: str, unit_id: str,
                  state: UnitOutcome) -> UnitResult:
    """The unit's staged result if it finished in time; else why not, per sensor."""
    result = _staged_result(hour, run_id, unit_id, state, store)
    if isinstance(result, UnitResult):
        return result
    kind, message = result
    return UnitResult.all_failed(str(hour), unit_id, load_unit(store, hour, run_id, unit_id).sensors,
                                 kind, message)


def _staged_result(hour: Hour, run_id: str, unit_id: str, state: UnitOutcome,
                   store: Store) -> UnitResult | tuple[str, str]:
    """The unit's result, or (kind, message) of why it has none."""
    if state.result:
        stored = read_unit_result(store, hour, run_id, unit_id)
        if stored is None:
            return "ResultMissing", f"unit {unit_id} finished without a result"
        if stored.error is not None:
            kind, _, message = stored.error.partition(": ")
            return kind, message
        return stored
    if state.state == FAILED:
        return state.error_kind or "UnitFailed", state.error or f"unit {unit_id} failed"
    return "NotFinished", f"unit {unit_id} did not finish in run {run_id}"


def visible_files(store: Store, hour: Hour, manifest: RunManifest | None = None
                  ) -> list[PredictionsFile]:
    """The hour's visible predictions files, as its manifest lists them (or, with no readable
    manifest, as its folder holds them). ``manifest``: already read."""
    manifest = manifest if manifest is not None else readable_manifest(store, hour)
    if manifest is not None and manifest.predictions is not None:
        return list(manifest.predictions)
    return [PredictionsFile(path=p, run_id=manifest.run_id if manifest else None)
            for p in store.list(predictions_folder(hour)) if p.endswith((".csv", ".parquet"))]


def promote(store: Store, hour: Hour, run_id: str, plan: Plan, results: Sequence[UnitResult],
            *, manifest: RunManifest | None = None, payloads: Mapping[str, bytes] | None = None,
            ) -> tuple[list[PredictionsFile], list[str]]:
    """The hour's new visible files: this run's units, plus the earlier rows of sensors this
    run did not replace (its failed sensors; for a rerun of a few sensors, all the others).
    Returns the files and the failed sensors whose earlier rows were kept."""
    folder = predictions_folder(hour)
    files: list[PredictionsFile] = []
    for r in results:
        if r.predictions:
            target = f"{folder}/{r.unit_id}-{run_id}.{format_of(r.predictions)}"
            if payloads is not None:
                store.put(target, payloads[r.unit_id])
            else:
                store.copy(r.predictions, target)  # a directory store: a link, not the bytes
            files.append(PredictionsFile(target, r.predictions_sha256, run_id, r.unit_id))
    failed = {f.sensor for r in results for f in r.failures}
    ours = {f.path for f in files}
    previous = [f for f in visible_files(store, hour, manifest) if f.path not in ours]
    if not previous or not (failed or plan.restricted):
        return files, []
    # A rerun of chosen sensors (a few): its units' sensors, read if the plan is a summary.
    planned = planned_keys(store, hour, run_id, plan) if plan.restricted else set()

    def kept_mask(keys: pa.ChunkedArray) -> pa.ChunkedArray:
        in_failed = pc.is_in(keys, value_set=pa.array(sorted(failed), pa.string()))
        if not plan.restricted:
            return in_failed
        outside = pc.invert(pc.is_in(keys, value_set=pa.array(sorted(planned), pa.string())))
        return pc.or_(in_failed, outside)

    carried, kept = [], set()
    for entry in previous:
        try:
            table = decode(store.get(entry.path), entry.path)
        except (NotFound, InputError):  # gone or damaged: no row of it can be carried on
            continue
        keys = sensor_keys(table["Device"], table["Tag"])
        mask = kept_mask(keys)
        rows = table.filter(mask)
        kept.update(pc.unique(pc.filter(keys, mask)).to_pylist())
        if rows.num_rows == table.num_rows:
            files.append(entry)  # untouched by this run: stays as it is
        elif rows.num_rows:
            carried.append(rows)
    if carried:
        data = encode(carried, plan.format)
        target = f"{folder}/kept-{run_id}.{plan.format}"
        store.put(target, data)
        files.append(PredictionsFile(target, hashlib.sha256(data).hexdigest(), run_id, "kept"))
    return files, sorted(kept & failed)


def sweep(store: Store, hour: Hour, keep: set[str]) -> None:
    """Remove the hour's predictions files the manifest no longer lists (replaced ones, and
    any left by a run that crashed between promotion and its manifest)."""
    for path in store.list(predictions_folder(hour)):
        if path not in keep:
            store.delete(path)


def run_status(results: Sequence[UnitResult], plan: Plan) -> str:
    failures = sum(len(r.failures) for r in results)
    scored = sum(r.scored for r in results)
    if failures:
        return "partial" if scored else "failed"
    if scored:
        return "succeeded"
    # Nothing scored, nothing failed: the hour has no sensor with both data and a model (the
    # manifest counts those with data and no model: the reason, when there are some).
    return "no_data"


def build_manifest(plan: Plan, results: Sequence[UnitResult], *, run_id: str,
                   files: list[PredictionsFile], kept: list[str], started: datetime,
                   finished: datetime, backend: str) -> RunManifest:
    failures = tuple(Failure(f.sensor, f.kind, f.message, r.unit_id)
                     for r in results for f in r.failures)
    no_data = sorted({*map(str, plan.no_data), *(s for r in results for s in r.no_data)})
    return RunManifest(
        window=str(plan.window), run_id=run_id, status=run_status(results, plan),
        restricted=plan.restricted,
        started=started.isoformat(timespec="seconds"),
        finished=finished.isoformat(timespec="seconds"),
        started_at=started.isoformat(timespec="microseconds"),
        duration_s=round((finished - started).total_seconds(), 3),
        backend=backend, version=__version__, unit_size=plan.unit_size, units=len(plan.units),
        sensors=SensorCounts(planned=plan.sensors, scored=sum(r.scored for r in results),
                             failed=len(failures), no_data=len(no_data),
                             no_model=len(plan.no_model)),
        points=sum(r.points for r in results), anomalies=sum(r.anomalies for r in results),
        failures=failures, kept_from_earlier_run=tuple(kept), no_data=tuple(no_data),
        no_model=tuple(str(s) for s in plan.no_model),
        top_anomalous=tuple(top_counts(kv for r in results for kv in r.top_anomalous.items())),
        predictions=tuple(files),
        unit_results=tuple(UnitSummary(r.unit_id, r.status, r.sensors, r.scored, r.anomalies,
                                       r.duration_s, r.models_at) for r in results),
        shadow=tuple(r.shadow for r in results if r.shadow is not None),
    )


def read_manifest(store: Store, hour: Hour) -> RunManifest | None:
    """The hour's manifest, None if it has none; InputError if it is damaged."""
    try:
        return RunManifest.decode(store.get(manifest_path(hour)), manifest_path(hour))
    except NotFound:
        return None


def readable_manifest(store: Store, hour: Hour) -> RunManifest | None:
    """The hour's manifest, or None when it has none or it is damaged: what a run that
    replaces it needs (the hour's files are then taken from its folder, so a failed
    sensor's earlier rows are still kept)."""
    try:
        return read_manifest(store, hour)
    except InputError:
        return None


def closed_manifest(store: Store, hour: Hour, run_id: str, *,
                    manifest: RunManifest | None = None) -> RunManifest | None:
    """The hour's manifest if run ``run_id`` wrote it and let the hour go (it is closed:
    a retried finalize, or a backfill's span that died after closing it), else None.
    ``manifest``: the hour's manifest, already read."""
    manifest = manifest if manifest is not None else readable_manifest(store, hour)
    if manifest is not None and manifest.run_id == run_id \
            and not locks.holds(store, hour, run_id):
        return manifest
    return None


def manifest_paths(store: Store) -> list[str]:
    """The run manifests ``runs/HOUR.json`` (not the runs' folders beneath them), sorted."""
    return [p for p in store.list("runs") if p.count("/") == 1 and p.endswith(".json")]


def list_manifests(store: Store) -> list[RunManifest]:
    """Every readable run manifest (``verify`` and ``runs`` name the damaged ones)."""
    out = []
    for path in manifest_paths(store):
        try:
            out.append(RunManifest.decode(store.get(path), path))
        except (InputError, NotFound):
            continue
    return sorted(out, key=lambda m: m.window)


# --- the loop (the CLI; the orchestrator has its own, with durable timers) ------------------


@dataclass(frozen=True)
class Backoff:
    """Seconds between polls: start small (local units finish in milliseconds), grow to
    ``most`` (a Batch listing per poll is a request, not free)."""

    first: float = 0.05
    factor: float = 1.5
    most: float = 5.0

    def delays(self) -> Iterable[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.most, delay * self.factor)


BACKOFF = Backoff()


def run_hour(
    store: Store, hour: Hour, backend: ComputeBackend, *, sensors: Iterable[Sensor] | None = None,
    unit_size: int | None = None, deadline: timedelta = DEADLINE, ttl: timedelta = LOCK_TTL,
    progress: Progress | None = None, backoff: Backoff = BACKOFF, fmt: str = "csv",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep, max_failed_percent: float | None = None,
) -> RunSummary:
    """One hour, start to end, in this process: begin, submit, poll until every unit is done or
    the deadline passes, finalize. On any error the run's lock is released and nothing it
    staged is promoted. Past ``max_failed_percent`` of the hour's sensors failed, the units
    not yet done are cancelled (no further Batch task starts) and the hour fails whole."""
    started = clock()
    run_id = new_run_id(started)
    ends = started + deadline
    # The registry is checked against the bank while the hour is planned and scored (it
    # lists models/); finalize applies what it finds.
    checker = ThreadPoolExecutor(1)
    damage = checker.submit(registry_damage, store)
    with telemetry.span("fleetscore.run", window=str(hour)), _shutting(checker):
        backend.start()  # workers get ready while the hour is planned
        ticket = begin(store, hour, run_id=run_id, now=started, deadline=ends, sensors=sensors,
                       unit_size=unit_size, parallel=backend.workers, ttl=ttl,
                       pid=os.getpid(), fmt=fmt)
        units = list(ticket.units)
        try:
            if backend.inline and progress:
                # An inline backend scores inside submit: one unit at a time, so the bar moves.
                sizes = _unit_sizes(store, hour, run_id, dict.fromkeys(units))
                states: dict[str, UnitOutcome] = {}
                done = 0
                progress(0, ticket.sensors)
                for unit in units:
                    states.update(submit(store, backend, hour, run_id, [unit]))
                    done += sizes[unit]
                    progress(done, ticket.sensors)
            else:
                states = submit(store, backend, hour, run_id, units) if units else {}
            states = _wait(store, backend, hour, run_id, states, ends=ends, ttl=ttl,
                           progress=progress, backoff=backoff, clock=clock, sleep=sleep,
                           total=ticket.sensors, max_failed_percent=max_failed_percent)
            return finalize(store, hour, run_id, states, started=started, now=clock(),
                            backend_name=backend.name, backend=backend, ttl=ttl,
                            damaged=damage.result, max_failed_percent=max_failed_percent)
        except BaseException:
            try:
                if units:
                    backend.cancel(hour, units, run_id=run_id)
            finally:
                locks.release(store, hour, run_id)
            raise


@contextlib.contextmanager
def _shutting(pool: ThreadPoolExecutor) -> Iterator[None]:
    try:
        yield
    finally:
        pool.shutdown(wait=True)


def _wait(store: Store, backend: ComputeBackend, hour: Hour, run_id: str,
          states: Mapping[str, UnitOutcome], *,
          ends: datetime, ttl: timedelta, progress: Progress | None, backoff: Backoff,
          clock: Callable[[], datetime], sleep: Callable[[float], None],
          total: int, max_failed_percent: float | None = None) -> dict[str, UnitOutcome]:
    states = dict(states)
    sizes = _unit_sizes(store, hour, run_id, states)
    renew_every = min(ttl / 4, timedelta(minutes=1))
    last_renewal = clock()
    for delay in backoff.delays():
        pending = [u for u, s in states.items() if not s.terminal]
        if progress:
            progress(sum(sizes[u] for u, s in states.items() if s.terminal), total)
        if not pending:
            return states
        now = clock()
        renew = now - last_renewal >= renew_every
        states.update(poll(store, backend, hour, run_id, pending, now=now, deadline=ends,
                           timeout=delay, renew=renew, ttl=ttl,
                           max_failed_percent=max_failed_percent))
        if renew:
            last_renewal = now
        # Backends that cannot wait (a Batch listing) return at once: sleep the rest. One that
        # waits (a local pool) returned because a unit ended: poll again at once.
        rest = delay - (clock() - now).total_seconds()
        if rest > 0 and not backend.waits \
                and any(not s.terminal for s in states.values()):
            sleep(rest)
    raise AssertionError("unreachable")  # pragma: no cover


def _unit_sizes(store: Store, hour: Hour, run_id: str, states: Mapping) -> dict[str, int]:
    sizes = plan_sizes(store, hour, run_id)
    return {u: sizes.get(u, 0) for u in states}


def hour_predictions(store: Store, hour: Hour) -> list[str]:
    """Paths of the hour's visible predictions files."""
    return [f.path for f in visible_files(store, hour)]


def read_predictions(store: Store, hour: Hour) -> pa.Table:
    """The hour's visible predictions: the files its run manifest lists."""
    tables = [decode(store.get(p), p) for p in hour_predictions(store, hour)]
    if not tables:
        return PREDICTIONS_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by(
        [("Device", "ascending"), ("Tag", "ascending"), ("TS", "ascending")])


__all__ = [
    "Backoff", "RunSummary", "Ticket", "begin", "submit", "poll", "finalize", "run_hour",
    "run_unit", "record_unusable", "read_unit_result", "read_manifest", "list_manifests",
    "manifest_path", "new_run_id", "SUCCEEDED", "PARTIAL", "FAILED",
]

