"""Every hour of a range and how its run went: what `fleetscore runs` and the report show.

An hour is either run (its manifest's status: succeeded, partial, failed, no_data) or
``never_run``; hours with data that were never run are the ones an operator must see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .arrivals import hours_with_arrivals
from .hours import Hour, hour_range
from .runs import list_manifests
from .stores import Store

STATUSES = ("succeeded", "partial", "failed", "no_data", "never_run")


@dataclass(frozen=True)
class HourRow:
    window: str
    status: str
    has_data: bool
    scored: int | None = None
    failed: int | None = None
    anomalies: int | None = None
    finished: str | None = None
    run_id: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def hour_rows(store: Store, *, first: Hour | None = None, last: Hour | None = None) -> list[HourRow]:
    """One row per hour from ``first`` to ``last`` (default: the hours with data or a run)."""
    data = set(hours_with_arrivals(store))
    manifests = {Hour.parse(m["window"]): m for m in list_manifests(store) if "window" in m}
    known = sorted(data | set(manifests))
    first = first or (known[0] if known else None)
    last = last or (known[-1] if known else None)
    if first is None or last is None:
        return []
    rows = []
    for hour in hour_range(first, last):
        m = manifests.get(hour)
        if m is None:
            rows.append(HourRow(str(hour), "never_run", hour in data))
            continue
        sensors = m.get("sensors", {})
        rows.append(HourRow(str(hour), m.get("status", "failed"), hour in data,
                            scored=sensors.get("scored"), failed=sensors.get("failed"),
                            anomalies=m.get("anomalies"), finished=m.get("finished"),
                            run_id=m.get("run_id")))
    return rows
