"""``fleetscore ingest``: the local stand-in for Stream Analytics and the arrival recorder."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from .arrivals import points_per_sensor, record_arrivals
from .errors import AlreadyExists
from .hours import Hour
from .readings import BLOCK_BYTES, Reject, iter_readings
from .stores import Store
from .windows import aggregate, check_interval, combine, encode_part, part_path, split_hours

# Partial aggregates are combined every few blocks so memory follows the number of windows,
# not the number of readings.
_COMBINE_EVERY = 8
REJECTS_KEPT = 100_000


@dataclass(frozen=True)
class IngestResult:
    source: str
    source_id: str
    rows: int
    rejected: int
    rejects_sample: tuple[Reject, ...]
    rejects_path: str | None
    hours: tuple[Hour, ...]
    parts_written: int
    parts_existing: int
    sensors: int
    windows: int
    seconds: float
    hours_detail: dict[str, int] = field(default_factory=dict)


def source_id(path: str | os.PathLike[str], interval_s: int) -> str:
    """Content hash of the file (and the interval): same input, same names in the store."""
    digest = hashlib.sha256(f"interval={interval_s}\n".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:20]


def ingest_file(
    store: Store, path: str | os.PathLike[str], *, interval_s: int = 60,
    block_bytes: int = BLOCK_BYTES,
) -> IngestResult:
    check_interval(interval_s)
    started = time.perf_counter()
    partials: list[pa.Table] = []
    rejects: list[Reject] = []
    rejected = rows = 0
    for block, block_rejects in iter_readings(path, block_bytes=block_bytes):
        rows += block.num_rows
        rejected += len(block_rejects)
        rejects.extend(block_rejects[: max(0, REJECTS_KEPT - len(rejects))])
        partials.append(aggregate(block, interval_s))
        if len(partials) >= _COMBINE_EVERY:
            partials = [combine(partials)]
    sid = source_id(path, interval_s)
    per_hour = split_hours(combine(partials))
    written = existing = 0
    sensors = set()
    windows = 0
    for hour, table in sorted(per_hour.items()):
        counts = points_per_sensor(table)
        sensors.update(counts)
        windows += table.num_rows
        data = encode_part(table)
        try:
            store.put(part_path(hour, sid), data, overwrite=False)
            written += 1
        except AlreadyExists:
            existing += 1
        # After the part: an arrival must never announce data that is not there yet.
        record_arrivals(store, hour, sid, counts, source=Path(path).name,
                        part=(part_path(hour, sid), hashlib.sha256(data).hexdigest()))
    rejects_path = None
    if rejects:
        rejects_path = f"rejects/ingest-{sid}.csv"
        store.put(rejects_path, _rejects_csv(rejects))
    return IngestResult(
        source=str(path), source_id=sid, rows=rows, rejected=rejected,
        rejects_sample=tuple(rejects[:10]), rejects_path=rejects_path,
        hours=tuple(sorted(per_hour)), parts_written=written, parts_existing=existing,
        sensors=len(sensors), windows=windows, seconds=time.perf_counter() - started,
        hours_detail={str(h): t.num_rows for h, t in sorted(per_hour.items())},
    )


def _rejects_csv(rejects: list[Reject]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "reason", "text"])
    for r in rejects:
        writer.writerow([r.line, r.reason, r.text])
    return out.getvalue().encode()
