"""Arrivals from the Stream Analytics output hub: what the ``record_arrivals`` function does.

Each event body holds Stream Analytics output rows, JSON objects with ``DeviceId`` (or
``Device``), ``Tag``, ``WindowEnd``, ``Value`` and ``Count``: one object, a JSON array, or one
object per line. Good rows become arrival records through the same ``record_arrivals`` that
``fleetscore ingest`` uses. Each record is named by its event's identity, so a redelivered
event rewrites nothing and never double-counts. A malformed row or event is kept, with the
reason, under ``rejects/events/``, and never fails the batch (a failing batch would be
redelivered forever).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleetscore import telemetry
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, is_valid_id
from fleetscore.data.arrivals import record_arrivals
from fleetscore.data.readings import parse_ts
from fleetscore.storage import Store

MAX_BODY_BYTES = 1 << 20  # an Event Hubs event is at most 1 MB


@dataclass(frozen=True)
class Event:
    body: bytes
    sequence_number: int | None = None
    offset: str | None = None
    enqueued_time: datetime | None = None
    partition_key: str | None = None

    @property
    def id(self) -> str:
        """Stable across redeliveries of the same event."""
        ident = f"{self.sequence_number}|{self.offset}|{self.enqueued_time}|{self.partition_key}|"
        return hashlib.sha256(ident.encode() + self.body).hexdigest()[:24]


@dataclass(frozen=True)
class EventRejects:
    event_id: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ArrivalBatch:
    events: int
    rows: int
    recorded: int  # new arrival records
    duplicates: int  # records that already existed (redelivered events)
    rejected_rows: int
    rejects: tuple[EventRejects, ...] = field(default_factory=tuple)
    hours: tuple[str, ...] = ()


@dataclass(frozen=True)
class WindowRow:
    sensor: Sensor
    end_ms: int


def parse_body(body: bytes) -> tuple[list[WindowRow], list[str]]:
    """Rows and reasons for the rejected ones (one reason per bad row or for the whole body)."""
    if len(body) > MAX_BODY_BYTES:
        return [], [f"body of {len(body)} bytes is larger than an event can be"]
    try:
        text = body.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return [], ["body is not UTF-8"]
    if not text:
        return [], ["empty body"]
    objects: list = []
    reasons: list[str] = []
    try:
        parsed = json.loads(text)
        objects = parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        # Stream Analytics' "line separated" JSON format: one object per line.
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                objects.append(json.loads(line))
            except ValueError:
                reasons.append(f"line {number}: not JSON: {line[:80]!r}")
    rows = []
    for index, obj in enumerate(objects):
        row = _row(obj)
        if isinstance(row, str):
            reasons.append(f"row {index + 1}: {row}")
        else:
            rows.append(row)
    return rows, reasons


def _row(obj) -> WindowRow | str:
    if not isinstance(obj, dict):
        return "not a JSON object"
    device = obj.get("DeviceId", obj.get("Device"))
    tag = obj.get("Tag")
    device = str(device) if isinstance(device, int) and not isinstance(device, bool) else device
    tag = str(tag) if isinstance(tag, int) and not isinstance(tag, bool) else tag
    if not isinstance(device, str) or not is_valid_id(device):
        return f"invalid or missing DeviceId {str(device)[:40]!r}"
    if not isinstance(tag, str) or not is_valid_id(tag):
        return f"invalid or missing Tag {str(tag)[:40]!r}"
    end = obj.get("WindowEnd")
    end_ms = parse_ts(end) if isinstance(end, str) else None
    if end_ms is None:
        return f"invalid or missing WindowEnd {str(end)[:40]!r}"
    value, count = obj.get("Value"), obj.get("Count", 1)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"Value {str(value)[:40]!r} is not a finite number"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return f"Count {str(count)[:40]!r} is not a positive whole number"
    return WindowRow(Sensor(device, tag), end_ms)


def record_events(store: Store, events: Iterable[Event]) -> ArrivalBatch:
    n_events = rows_total = recorded = duplicates = rejected = 0
    rejects: list[EventRejects] = []
    hours_seen: set[Hour] = set()
    for event in events:
        n_events += 1
        rows, reasons = parse_body(event.body)
        rows_total += len(rows)
        if reasons:
            rejected += len(reasons)
            rejects.append(EventRejects(event.id, tuple(reasons)))
            _keep_reject(store, event, reasons)
        per_hour: dict[Hour, set[WindowRow]] = defaultdict(set)
        for row in rows:
            per_hour[Hour.of_label_ms(row.end_ms)].add(row)  # a repeated row counts once
        now_ms = datetime.now(UTC).timestamp() * 1000
        for hour, hour_rows in per_hour.items():
            hours_seen.add(hour)
            telemetry.record_arrival_lag(str(hour), (now_ms - max(r.end_ms for r in hour_rows)) / 1000)
            counts = Counter(r.sensor for r in hour_rows)
            if record_arrivals(store, hour, f"eh-{event.id}", counts, source="eventhub"):
                recorded += 1
            else:
                duplicates += 1
    return ArrivalBatch(n_events, rows_total, recorded, duplicates, rejected, tuple(rejects),
                        tuple(sorted(map(str, hours_seen))))


def _keep_reject(store: Store, event: Event, reasons: list[str]) -> None:
    body = {
        "event": {"sequence_number": event.sequence_number, "offset": event.offset,
                  "enqueued_time": event.enqueued_time.isoformat() if event.enqueued_time else None,
                  "partition_key": event.partition_key},
        "reasons": reasons[:100],
        "body": event.body[:4096].decode("utf-8", errors="replace"),
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store.put(f"rejects/events/{event.id}.json", json.dumps(body, indent=1).encode())
