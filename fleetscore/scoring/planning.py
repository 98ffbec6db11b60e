"""The plan of an hour's run: which sensors are scored, grouped into units, and who is left out.

A sensor is planned when it has both points for the hour (per the arrival records) and a
model. Sensors with a model but no data, or data but no model, are left out and named. Units
hold one sensor by default, and groups once the fleet is large, so the number of units (and
of tasks, and of orchestration history) stays bounded.

A plan belongs to one run: ``runs/HOUR/RUN/plan.json`` (unit ids, sizes, left-out sensors)
and ``runs/HOUR/RUN/units/{unit}.json`` (one unit's sensors, so a unit reads its own list
only). ``make_plan`` is pure reading; only a run (or ``fleetscore plan --save``) stores one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, parse_sensors
from fleetscore.data.arrivals import read_arrivals
from fleetscore.errors import InputError, NotFound, UsageError
from fleetscore.storage import Store

# Small fleets get one sensor per unit (a unit is the unit of failure and of rerun); larger
# ones are grouped so each worker gets a few units: enough to balance load, few enough that
# per-unit costs (reading the plan, the bank's shards, a process or a container start) vanish.
SMALL_FLEET = 200
UNITS_PER_WORKER = 4
MAX_UNITS = 1000
# The fast path's cost per sensor (docs/benchmarks.md) and the shortest Batch task worth a
# container start.
SECONDS_PER_SENSOR = 160e-6  # one core, whole run (docs/benchmarks.md)
MIN_TASK_SECONDS = 120.0


@dataclass(frozen=True)
class Unit:
    id: str
    sensors: tuple[Sensor, ...]
    format: str = "csv"  # of the unit's predictions file: csv or parquet
    size: int | None = None  # its sensors' number when ``sensors`` was not read (a summary)

    @property
    def count(self) -> int:
        return len(self.sensors) if self.size is None else self.size

    def to_json(self) -> dict:
        return {"id": self.id, "sensors": list(map("/".join, self.sensors)), "format": self.format}

    @classmethod
    def from_json(cls, body: dict) -> Unit:
        return cls(body["id"], tuple(parse_sensors(body["sensors"])), body.get("format", "csv"))


@dataclass(frozen=True)
class Plan:
    window: Hour
    units: tuple[Unit, ...]
    no_data: tuple[Sensor, ...]
    no_model: tuple[Sensor, ...]
    unit_size: int
    restricted: bool = False  # planned for chosen sensors only (a rerun of a few)
    format: str = "csv"  # of the predictions files
    # Sensors with data whose stored model is damaged (bank.registry_damage), and why: not
    # scored, failed by the run's end with the reason, their earlier rows kept.
    damaged: tuple[tuple[Sensor, str], ...] = ()

    @property
    def sensors(self) -> int:
        return sum(u.count for u in self.units)

    def to_json(self, *, with_sensors: bool = True) -> dict:
        units = [u.to_json() if with_sensors else {"id": u.id, "size": u.count}
                 for u in self.units]
        return {
            "window": str(self.window),
            "unit_size": self.unit_size,
            "units": units,
            "no_data": [str(s) for s in self.no_data],
            "no_model": [str(s) for s in self.no_model],
            "restricted": self.restricted,
            "format": self.format,
            "damaged": [[str(s), why] for s, why in self.damaged],
        }


def auto_unit_size(n_sensors: int, *, parallel: int = 1, min_task_seconds: float = 0.0) -> int:
    """Sensors per unit: one for small fleets; else a few units per worker (``parallel``), at
    most MAX_UNITS units, and units of at least ``min_task_seconds`` of work (Batch tasks)."""
    if n_sensors <= SMALL_FLEET:
        return 1
    size = math.ceil(n_sensors / (UNITS_PER_WORKER * max(1, parallel)))
    size = max(size, math.ceil(n_sensors / MAX_UNITS))
    if min_task_seconds:
        size = max(size, math.ceil(min_task_seconds / SECONDS_PER_SENSOR))
    return min(size, n_sensors)


def unit_id(index: int) -> str:
    return f"u{index:06d}"


def make_plan(
    store: Store, hour: Hour, *, unit_size: int | None = None,
    sensors: Iterable[Sensor] | None = None, parallel: int = 1, min_task_seconds: float = 0.0,
    fmt: str = "csv",
) -> Plan:
    from fleetscore.model.bank import sensors_with_models

    return plan_hour(hour, read_arrivals(store, hour), sensors_with_models(store), unit_size=unit_size,
                     sensors=sensors, parallel=parallel, min_task_seconds=min_task_seconds,
                     fmt=fmt)


def plan_hour(
    hour: Hour, arrivals: Mapping[Sensor, int], with_model: set[Sensor], *,
    unit_size: int | None = None, sensors: Iterable[Sensor] | None = None, parallel: int = 1,
    min_task_seconds: float = 0.0, fmt: str = "csv", damaged: Mapping[Sensor, str] | None = None,
) -> Plan:
    """The plan, from what the store says (the hour's arrival counts, the sensors with a
    model, those whose model is damaged): pure, so a backfill plans many hours from one read
    of each."""
    from fleetscore.data.predictions import FORMATS

    if fmt not in FORMATS:
        raise UsageError(f"invalid predictions format {fmt!r}: expected {' or '.join(FORMATS)}")
    if unit_size is not None and unit_size < 1:
        raise UsageError(f"invalid unit size {unit_size}: expected 1 or more")
    # In arrival order (ingest writes records sorted): sorting then costs one linear pass.
    # The usual hour (every sensor with data has a model) takes only set operations in C.
    with_data = list(arrivals) if all(map((0).__lt__, arrivals.values())) else \
        [s for s, n in arrivals.items() if n > 0]
    if sensors is not None:
        chosen = set(sensors)
        with_data = [s for s in with_data if s in chosen]
        with_model = with_model & chosen
    if with_model.issuperset(with_data):
        planned, no_model = sorted(with_data), []
        no_data = [] if len(with_model) == len(planned) else \
            sorted(with_model.difference(planned))
    else:
        planned = sorted([s for s in with_data if s in with_model])  # Sensors are tuples
        no_model = sorted([s for s in with_data if s not in with_model])
        no_data = sorted(with_model.difference(with_data))
    broken: tuple[tuple[Sensor, str], ...] = ()
    if damaged:
        broken = tuple((s, damaged[s]) for s in planned if s in damaged)
        planned = [s for s in planned if s not in damaged]
    size = unit_size or auto_unit_size(len(planned), parallel=parallel,
                                       min_task_seconds=min_task_seconds)
    units = tuple(
        Unit(unit_id(i // size), tuple(planned[i : i + size]), fmt)
        for i in range(0, len(planned), size)
    )
    return Plan(
        window=hour, units=units, no_data=tuple(no_data), no_model=tuple(no_model), unit_size=size,
        restricted=sensors is not None, format=fmt, damaged=broken,
    )


def hour_folder(hour: Hour) -> str:
    """Where the runs of an hour keep their plans and staged outputs."""
    return f"runs/{hour}"


def run_folder(hour: Hour, run_id: str) -> str:
    return f"{hour_folder(hour)}/{run_id}"


def plan_path(hour: Hour, run_id: str) -> str:
    return f"{run_folder(hour, run_id)}/plan.json"


def unit_path(hour: Hour, run_id: str, unit: str) -> str:
    return f"{run_folder(hour, run_id)}/units/{unit}.json"


def save_plan(store: Store, plan: Plan, run_id: str) -> str:
    for unit in plan.units:
        store.put(unit_path(plan.window, run_id, unit.id), json.dumps(unit.to_json()).encode())
    # Written last: a plan file means every unit file it names exists.
    path = plan_path(plan.window, run_id)
    store.put(path, json.dumps(plan.to_json(with_sensors=False), indent=1).encode())
    return path


def load_unit(store: Store, hour: Hour, run_id: str, unit: str) -> Unit:
    path = unit_path(hour, run_id, unit)
    try:
        body = json.loads(store.get(path))
        return Unit.from_json(body)
    except NotFound as exc:
        raise InputError(f"unit {unit} is not in the plan of run {run_id} of {hour} "
                         f"({path} not found)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unit file {path} is malformed: {exc}") from exc


def plan_sizes(store: Store, hour: Hour, run_id: str) -> dict[str, int]:
    """Sensors per unit of the run's plan, from the plan file alone (no unit file read)."""
    try:
        summary = json.loads(store.get(plan_path(hour, run_id)))
        return {u["id"]: int(u.get("size", 0)) for u in summary["units"]}
    except NotFound:
        return {}
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"plan file {plan_path(hour, run_id)} is malformed: {exc}") from exc


def load_plan(store: Store, hour: Hour, run_id: str, *, sensors: bool = True) -> Plan | None:
    """The run's stored plan with every unit's sensors, or None when it has none. With
    ``sensors=False`` only the plan file is read: units have their ``size``, no sensors (a
    fleet's unit files are read by the units themselves, not again by whoever ends the run)."""
    path = plan_path(hour, run_id)
    try:
        summary = json.loads(store.get(path))
    except NotFound:
        return None
    except ValueError as exc:
        raise InputError(f"plan file {path} is malformed: {exc}") from exc
    return Plan(
        window=hour,
        units=tuple(load_unit(store, hour, run_id, u["id"]) if sensors else
                    Unit(u["id"], (), summary.get("format", "csv"), int(u.get("size", 0)))
                    for u in summary["units"]),
        no_data=tuple(Sensor.parse(s) for s in summary.get("no_data", ())),
        no_model=tuple(Sensor.parse(s) for s in summary.get("no_model", ())),
        unit_size=summary.get("unit_size", 1),
        restricted=bool(summary.get("restricted", False)),
        format=summary.get("format", "csv"),
        damaged=tuple((Sensor.parse(s), why) for s, why in summary.get("damaged", ())),
    )
