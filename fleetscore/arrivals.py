"""Arrival records: which sensors have points for an hour, and how many.

Written by ``fleetscore ingest`` locally and by the Event Hub function in the cloud; read by the
planner, which needs to know which sensors have data without opening the window files. Each
record is named by its source (a file's content hash, an event batch's id), so a duplicate
delivery rewrites nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

from .errors import AlreadyExists, InputError
from .hours import Hour
from .sensors import Sensor
from .stores import Store


def arrivals_folder(hour: Hour) -> str:
    return f"arrivals/{hour.path}"


def arrival_path(hour: Hour, source_id: str) -> str:
    return f"{arrivals_folder(hour)}/{source_id}.json"


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
    if part is not None:
        body["part"], body["sha256"] = part
    try:
        store.put(arrival_path(hour, source_id), json.dumps(body).encode(), overwrite=False)
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
    """Points per sensor for the hour, summed over every source."""
    total: Counter[Sensor] = Counter()
    for path in store.list(arrivals_folder(hour)):
        if path.endswith(".json"):
            total.update(_parse(store.get(path), path))
    return total


def read_arrivals_many(store: Store, hours: Iterable[Hour]) -> dict[Hour, Counter[Sensor]]:
    """``read_arrivals`` for many hours at once (planning a backfill)."""
    return {hour: read_arrivals(store, hour) for hour in hours}


def _parse(data: bytes, path: str) -> Counter[Sensor]:
    try:
        body = json.loads(data)
        return Counter({Sensor(d, t): int(n) for d, t, n in body["sensors"]})
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"arrival record {path} is malformed: {exc}") from exc


def hours_with_arrivals(store: Store) -> list[Hour]:
    """Every hour that has at least one arrival record, in order."""
    hours = set()
    for path in store.list("arrivals"):
        parts = path.split("/")
        if len(parts) == 6:
            try:
                hours.add(Hour.parse(f"{parts[1]}-{parts[2]}-{parts[3]}T{parts[4]}"))
            except Exception:  # noqa: BLE001 - a stray file in arrivals/ is not an hour
                continue
    return sorted(hours)
