"""Arrival records: which sensors have points for an hour, and how many.

Written by ``fleetscore ingest`` locally and by the Event Hub function in the cloud; read by the
planner, which needs to know which sensors have data without opening the window files. Each
record is named by its source (a file's content hash, an event batch's id), so a duplicate
delivery rewrites nothing.

A source's sparse hours of one day (see fleetscore/data/windows.py, day parts) are recorded once
for the day, ``arrivals/YYYY/MM/DD/day/{source}.json``, with each hour's sensor counts: the
readers add a day record's entry for an hour to the hour's own records, and the many-hour
readers read each day record once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, sensor_columns
from fleetscore.data.windows import (
    DAY_FOLDER,
    HOURS_PER_DAY,
    area_folder,
    by_day,
    day_of,
    day_path,
    list_days,
)
from fleetscore.errors import AlreadyExists, InputError, UsageError
from fleetscore.storage import Store


def arrivals_folder(hour: Hour) -> str:
    return area_folder("arrivals", hour)


def arrival_path(hour: Hour, source_id: str) -> str:
    return f"{arrivals_folder(hour)}/{source_id}.json"


def day_arrivals_folder(hour: Hour) -> str:
    return area_folder("arrivals", hour, day=True)


def day_arrival_path(hour: Hour, source_id: str) -> str:
    """The record of a source's sparse hours of the hour's day."""
    return f"{day_arrivals_folder(hour)}/{source_id}.json"


def record_arrivals(
    store: Store, hour: Hour, source_id: str, points: Counter[Sensor], *, source: str = "",
    part: tuple[str, str] | None = None,
) -> bool:
    """Write the record once; return False when this source was already recorded.

    ``part`` is the (path, sha256) of the window file the source wrote, so a file changed or
    truncated after the fact is detected (``fleetscore verify``)."""
    body = {
        "window": str(hour),
        "source": source,
        "sensors": [[s.device, s.tag, int(n)] for s, n in sorted(points.items())],
    }
    return _put_record(store, arrival_path(hour, source_id), body, part)


def record_day_arrivals(
    store: Store, day: Hour, source_id: str, hours: dict[Hour, Counter[Sensor]], *,
    source: str = "", part: tuple[str, str] | None = None,
) -> bool:
    """Write a day record once (``day``: any hour of the day; ``hours``: each hour's points per
    sensor); return False when this source was already recorded for the day. ``part`` as in
    ``record_arrivals``: the day part's (path, sha256)."""
    if any(day_of(h) != day_of(day) for h in hours):
        raise ValueError(f"hours outside the day of {day} in a day record")
    body = {
        "day": day.start.strftime("%Y-%m-%d"),
        "source": source,
        "hours": {str(h): [[s.device, s.tag, int(n)] for s, n in sorted(points.items())]
                  for h, points in sorted(hours.items())},
    }
    return _put_record(store, day_arrival_path(day, source_id), body, part)


def _put_record(store: Store, path: str, body: dict, part: tuple[str, str] | None) -> bool:
    """Create the record once (the part's path and sha256 beside the counts); False when this
    source's record is already there."""
    if part is not None:
        body["part"], body["sha256"] = part
    try:
        store.put(path, json.dumps(body).encode(), overwrite=False)
    except AlreadyExists:
        return False
    return True


def points_per_sensor(windows: pa.Table) -> Counter[Sensor]:
    """Count windows per sensor in a table with Device and Tag columns."""
    if windows.num_rows == 0:
        return Counter()
    grouped = windows.group_by(["Device", "Tag"]).aggregate([("Device", "count")])
    return Counter(
        {
            Sensor(d, t): n
            for d, t, n in zip(
                grouped["Device"].to_pylist(), grouped["Tag"].to_pylist(),
                grouped["Device_count"].to_pylist(), strict=True,
            )
        }
    )


def read_arrivals(store: Store, hour: Hour) -> Counter[Sensor]:
    """Points per sensor for the hour, summed over every source (hour and day records)."""
    total: Counter[Sensor] = Counter()
    for path in store.list(arrivals_folder(hour)):
        if path.endswith(".json"):
            _add(total, _parse(store.get(path), path))
    for path in store.list(day_arrivals_folder(hour)):
        if path.endswith(".json"):
            _add(total, _parse_day(store.get(path), path).get(hour, {}))
    return total


def read_arrivals_many(store: Store, hours: Iterable[Hour]) -> dict[Hour, Counter[Sensor]]:
    """``read_arrivals`` for many hours at once (planning a backfill, training): each day is
    listed once and each day record read once, for all the hours asked of its day."""
    hours = list(hours)
    out: dict[Hour, Counter[Sensor]] = {}
    days = by_day(hours)
    listed = list_days(store, "arrivals", days)
    for day, day_hours in days.items():
        folder = f"arrivals/{day_path(day_hours[0])}/"
        wanted = {f"{hour.index % HOURS_PER_DAY:02d}": hour for hour in day_hours}
        totals = {hour: Counter() for hour in day_hours}
        for path in listed[day]:
            sub = path[len(folder):].split("/", 1)
            if len(sub) < 2 or not path.endswith(".json"):
                continue
            if sub[0] == DAY_FOLDER:
                for hour, points in _parse_day(store.get(path), path).items():
                    if hour in totals:
                        totals[hour].update(points)
            elif sub[0] in wanted:
                _add(totals[wanted[sub[0]]], _parse(store.get(path), path))
        out.update(totals)
    return {hour: out[hour] for hour in hours}


def _counts(rows: list) -> dict[Sensor, int]:
    """A record's ``[[device, tag, points], ...]``, column by column (a fleet's hour has
    hundreds of thousands of rows)."""
    if not rows:
        return {}
    if set(map(len, rows)) != {3}:
        raise ValueError("expected rows of [device, tag, points]")
    devices, tags, points = zip(*rows, strict=True)
    return dict(zip(sensor_columns(devices, tags), map(int, points), strict=True))


def _add(total: Counter[Sensor], counts: dict[Sensor, int]) -> None:
    """Sum a record's counts into ``total`` (the first record is copied in C, not summed)."""
    if total:
        total.update(counts)
    else:
        dict.update(total, counts)


def _parse(data: bytes, path: str) -> dict[Sensor, int]:
    try:
        return _counts(json.loads(data)["sensors"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"arrival record {path} is malformed: {exc}") from exc


def _parse_day(data: bytes, path: str) -> dict[Hour, dict[Sensor, int]]:
    """A day record's points per sensor, per hour of its day (its folder's day)."""
    parts = path.split("/")
    try:
        first = Hour.parse(f"{parts[1]}-{parts[2]}-{parts[3]}T00")
        prefix = f"{parts[1]}-{parts[2]}-{parts[3]}T"
        body = json.loads(data)
        hours = {}
        for name, rows in body["hours"].items():
            hour_of_day = int(name[len(prefix):]) if name.startswith(prefix) else -1
            if not 0 <= hour_of_day < HOURS_PER_DAY or len(name) != len(prefix) + 2:
                raise ValueError(f"hour {name!r} is not an hour of the day {prefix[:-1]}")
            hours[first + hour_of_day] = _counts(rows)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, UsageError) as exc:
        raise InputError(f"arrival record {path} is malformed: {exc}") from exc
    return hours


def hours_with_arrivals(store: Store) -> list[Hour]:
    """Every hour that has at least one arrival record (of its own, or an entry in a day
    record, each day record read once), in order."""
    hours = set()
    for path in store.list("arrivals"):
        parts = path.split("/")
        if len(parts) != 6:
            continue
        if parts[4] == DAY_FOLDER:
            if path.endswith(".json"):
                hours.update(_parse_day(store.get(path), path))
            continue
        try:
            hours.add(Hour.parse(f"{parts[1]}-{parts[2]}-{parts[3]}T{parts[4]}"))
        except Exception:  # noqa: BLE001 - a stray file in arrivals/ is not an hour
            continue
    return sorted(hours)
