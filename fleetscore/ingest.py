"""``fleetscore ingest``: the local stand-in for Stream Analytics and the arrival recorder.

A reading is counted once, whatever files it arrives in. Each source keeps its readings, per
hour, in ``readings/YYYY/MM/DD/HH/part-{source}.parquet`` (sorted by Device, Tag, TS): a new
file's readings whose (Device, Tag, TS) another source already stored are skipped and counted
as duplicates, and only the fresh ones are aggregated into the source's window part. Memory
follows the file being ingested and one hour of stored keys at a time, never the whole store.
Parts are immutable and named by the source's content hash, so ingesting a file again (or
again after a crash) writes nothing it wrote before.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .arrivals import points_per_sensor, record_arrivals
from .errors import AlreadyExists, InputError
from .hours import MS_PER_HOUR, Hour
from .readings import BLOCK_BYTES, READINGS_SCHEMA, Reject, iter_readings
from .stores import Store
from .windows import aggregate, check_interval, encode_part, part_path, split_hours, window_end_ms

REJECTS_KEPT = 100_000
_KEY = ["Device", "Tag", "TS"]


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
    duplicates: int  # readings another source had already stored, skipped
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


def readings_folder(hour: Hour) -> str:
    return f"readings/{hour.path}"


def readings_path(hour: Hour, source: str) -> str:
    return f"{readings_folder(hour)}/part-{source}.parquet"


def ingest_file(
    store: Store, path: str | os.PathLike[str], *, interval_s: int = 60,
    block_bytes: int = BLOCK_BYTES, progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Ingest one readings file. ``progress(done, total)``: bytes read, then hours written."""
    check_interval(interval_s)
    started = time.perf_counter()
    by_hour: dict[int, list[pa.Table]] = {}
    rejects: list[Reject] = []
    rejected = rows = 0
    for block, block_rejects in iter_readings(path, block_bytes=block_bytes, progress=progress):
        rows += block.num_rows
        rejected += len(block_rejects)
        rejects.extend(block_rejects[: max(0, REJECTS_KEPT - len(rejects))])
        # The hour whose run scores the reading's window, so each hour's readings sit together.
        hours = (window_end_ms(block["TS"].to_numpy(), interval_s) - 1) // MS_PER_HOUR
        for index in np.unique(hours):
            by_hour.setdefault(int(index), []).append(block.filter(pa.array(hours == index)))
    sid = source_id(path, interval_s)
    written = existing = duplicates = windows = 0
    sensors = set()
    detail = {}
    total_hours = len(by_hour)
    for done, index in enumerate(sorted(by_hour)):
        if progress and done % 64 == 0:
            progress(done, total_hours)
        hour = Hour(index)
        readings = _first_per_key(pa.concat_tables(by_hour.pop(index)))
        fresh = _not_stored(store, hour, readings, sid)
        duplicates += readings.num_rows - fresh.num_rows
        if not fresh.num_rows:
            continue
        _put_once(store, readings_path(hour, sid), _encode_readings(fresh))
        table = split_hours(aggregate(fresh, interval_s))[hour]
        counts = points_per_sensor(table)
        sensors.update(counts)
        windows += table.num_rows
        detail[str(hour)] = table.num_rows
        data = encode_part(table)
        if _put_once(store, part_path(hour, sid), data):
            written += 1
        else:
            existing += 1
        # After the part: an arrival must never announce data that is not there yet.
        record_arrivals(store, hour, sid, counts, source=Path(path).name,
                        part=(part_path(hour, sid), hashlib.sha256(data).hexdigest()))
    if progress:
        progress(total_hours, total_hours)
    rejects_path = None
    if rejects:
        rejects_path = f"rejects/ingest-{sid}.csv"
        store.put(rejects_path, _rejects_csv(rejects))
    return IngestResult(
        source=str(path), source_id=sid, rows=rows, rejected=rejected,
        rejects_sample=tuple(rejects[:10]), rejects_path=rejects_path,
        hours=tuple(Hour.parse(h) for h in detail), parts_written=written,
        parts_existing=existing, duplicates=duplicates, sensors=len(sensors), windows=windows,
        seconds=time.perf_counter() - started, hours_detail=detail,
    )


def _put_once(store: Store, path: str, data: bytes) -> bool:
    try:
        store.put(path, data, overwrite=False)
        return True
    except AlreadyExists:
        return False


def _first_per_key(readings: pa.Table) -> pa.Table:
    """One reading per (Device, Tag, TS) within the file: the first one (exact repeats were
    already named as duplicates by the reader; a repeat with another value is dropped)."""
    grouped = readings.group_by(_KEY, use_threads=False).aggregate([("Value", "first")])
    if grouped.num_rows == readings.num_rows:
        return readings
    return pa.table([grouped["Device"], grouped["Tag"], grouped["TS"], grouped["Value_first"]],
                    schema=READINGS_SCHEMA)


def _not_stored(store: Store, hour: Hour, readings: pa.Table, sid: str) -> pa.Table:
    """The readings no other source has stored for the hour. This source's own part is left
    out of the comparison, so a crashed ingest of the same file completes when rerun."""
    own = readings_path(hour, sid)
    stored = []
    for path in store.list(readings_folder(hour)):
        if path.endswith(".parquet") and path != own:
            try:
                with store.open(path) as handle:
                    stored.append(pq.read_table(handle, columns=_KEY))
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"readings file {path} is unreadable: {exc}") from exc
    if not stored:
        return readings
    keys = pa.concat_tables(stored).append_column("_seen", pa.array(
        np.ones(sum(t.num_rows for t in stored), dtype=bool)))
    joined = readings.join(keys, _KEY, join_type="left outer", use_threads=False)
    fresh = joined.filter(pc.is_null(joined["_seen"]))
    return fresh.select(READINGS_SCHEMA.names).cast(READINGS_SCHEMA)


def _encode_readings(readings: pa.Table) -> bytes:
    ordered = readings.sort_by([(k, "ascending") for k in _KEY])
    sink = io.BytesIO()
    pq.write_table(ordered, sink, compression="zstd")
    return sink.getvalue()


def _rejects_csv(rejects: list[Reject]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "reason", "text"])
    for r in rejects:
        writer.writerow([r.line, r.reason, r.text])
    return out.getvalue().encode()
