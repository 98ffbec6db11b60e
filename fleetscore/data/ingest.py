"""``fleetscore ingest``: the local stand-in for Stream Analytics and the arrival recorder.

A reading is counted once, whatever files it arrives in. Each source keeps its readings, per
hour, in ``readings/YYYY/MM/DD/HH/part-{source}.parquet`` (sorted by Device, Tag, TS): a new
file's readings whose (Device, Tag, TS) another source already stored are skipped and counted
as duplicates, and only the fresh ones are aggregated into the source's window part.
Parts are immutable and named by the source's content hash, so ingesting a file again (or
again after a crash) writes nothing it wrote before.

Sparse hours: an hour in which the source has fewer than ``SPARSE_HOUR_WINDOWS`` windows is
not given files of its own. All the source's sparse hours of one day share one readings part
(``readings/YYYY/MM/DD/day/part-{source}.parquet``), one window part
(``windows/YYYY/MM/DD/day/...``, see fleetscore/data/windows.py) and one arrival record with each
hour's counts (``arrivals/YYYY/MM/DD/day/{source}.json``), so a backfill of years of a small
fleet writes files per day with data, not per hour. Dense hours keep their hour files.

The file is worked on as a whole: readings are deduplicated with one anti-join per batch of
stored keys, aggregated once, and split into parts with one sort. Memory follows the file
being ingested plus a bounded batch of stored keys (``STORED_KEYS_BATCH``), never the whole
store. For each part, the readings go first, the windows next, the arrival record last: an
arrival record never announces data that is not there yet.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetscore.core.hours import MS_PER_HOUR, Hour
from fleetscore.core.sensor_codes import sort_by_sensor
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import record_arrivals, record_day_arrivals
from fleetscore.data.readings import BLOCK_BYTES, READINGS_SCHEMA, Reject, iter_readings
from fleetscore.data.windows import (
    DAY_FOLDER,
    HOURS_PER_DAY,
    aggregate,
    area_folder,
    by_day,
    check_interval,
    day_part_path,
    day_path,
    encode_part,
    finish_windows,
    list_days,
    part_path,
    window_end_ms,
)
from fleetscore.errors import AlreadyExists, InputError
from fleetscore.storage import Store

REJECTS_KEPT = 100_000
# Fewer windows than this in an hour (for one source): the hour goes into the source's day
# part. 128 is two sensors' full hour of 1-minute windows: a fleet's hour keeps its own files
# (what compaction, units and tests address), a trickle of readings shares a file per day.
SPARSE_HOUR_WINDOWS = 128
STORED_KEYS_BATCH = 4_000_000  # stored reading keys held at once while deduplicating
DEDUP_ROWS = 1_000_000  # a file's readings deduplicated at once (whole hours)
_KEY = ["Device", "Tag", "TS"]
_KEY_SCHEMA = pa.schema([READINGS_SCHEMA.field(k) for k in _KEY])


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
    return area_folder("readings", hour)


def readings_path(hour: Hour, source: str) -> str:
    return f"{readings_folder(hour)}/part-{source}.parquet"


def day_readings_folder(hour: Hour) -> str:
    return area_folder("readings", hour, day=True)


def day_readings_path(hour: Hour, source: str) -> str:
    return f"{day_readings_folder(hour)}/part-{source}.parquet"


def ingest_file(
    store: Store, path: str | os.PathLike[str], *, interval_s: int = 60,
    block_bytes: int = BLOCK_BYTES, progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Ingest one readings file. ``progress(done, total)``: bytes read, then hours written."""
    check_interval(interval_s)
    started = time.perf_counter()
    readings, rows, rejected, rejects = _read(path, block_bytes, progress)
    sid = source_id(path, interval_s)
    # The hour whose run scores the reading's window, so each hour's readings sit together.
    readings = _first_per_key(readings, _hours_of(readings["TS"].to_numpy(), interval_s))
    touched = np.unique(_hours_of(readings["TS"].to_numpy(), interval_s))
    if progress and len(touched):
        progress(0, len(touched))
    stored, own_hours, own_days = _stored_parts(store, touched, sid)
    fresh = _not_stored(store, readings, stored)
    windows_table, window_hours = _windows(fresh, interval_s)
    hours, per_hour = np.unique(window_hours, return_counts=True)
    dense_hours = _dense_hours(store, hours, per_hour, own_hours, own_days)
    readings_sorted, reading_keys = _by_part(fresh, _hours_of(fresh["TS"].to_numpy(), interval_s),
                                             dense_hours, "TS")
    windows_sorted, window_keys = _by_part(windows_table, window_hours, dense_hours, "WindowEnd")
    written, existing = _write_parts(
        store, sid, Path(path).name, readings_sorted, reading_keys, windows_sorted, window_keys,
        progress=progress, total_hours=len(touched))
    rejects_path = None
    if rejects:
        rejects_path = f"rejects/ingest-{sid}.csv"
        store.put(rejects_path, _rejects_csv(rejects))
    return IngestResult(
        source=str(path), source_id=sid, rows=rows, rejected=rejected,
        rejects_sample=tuple(rejects[:10]), rejects_path=rejects_path,
        hours=tuple(Hour(int(h)) for h in hours), parts_written=written,
        parts_existing=existing, duplicates=readings.num_rows - fresh.num_rows,
        sensors=_distinct_sensors(windows_table), windows=windows_table.num_rows,
        seconds=time.perf_counter() - started,
        hours_detail={str(Hour(int(h))): int(n) for h, n in zip(hours, per_hour, strict=True)},
    )


def _read(path: str | os.PathLike[str], block_bytes: int,
          progress: Callable[[int, int], None] | None
          ) -> tuple[pa.Table, int, int, list[Reject]]:
    """The file's valid readings, its row count, how many were rejected and the first
    REJECTS_KEPT rejects."""
    blocks: list[pa.Table] = []
    rejects: list[Reject] = []
    rejected = rows = 0
    for block, block_rejects in iter_readings(path, block_bytes=block_bytes, progress=progress):
        rows += block.num_rows
        rejected += len(block_rejects)
        rejects.extend(block_rejects[: max(0, REJECTS_KEPT - len(rejects))])
        if block.num_rows:
            blocks.append(block)
    readings = pa.concat_tables(blocks) if blocks else READINGS_SCHEMA.empty_table()
    return readings, rows, rejected, rejects


def _dense_hours(store: Store, hours: np.ndarray, per_hour: np.ndarray, own_hours: np.ndarray,
                 own_days: np.ndarray) -> np.ndarray:
    """The hours that get files of their own: the dense ones, and any this source already
    gave hour files (or a day part) in an earlier ingest of the same file, so a rerun or a
    re-ingest completes the layout it started and never lays one hour out twice."""
    dense = (per_hour >= SPARSE_HOUR_WINDOWS) | np.isin(hours, own_hours)
    if len(own_days):
        dense &= ~np.isin(hours, _hours_in_parts(store, own_days))
    return hours[dense]


def _write_parts(store: Store, sid: str, source: str, readings_sorted: pa.Table,
                 reading_keys: np.ndarray, windows_sorted: pa.Table, window_keys: np.ndarray,
                 *, progress: Callable[[int, int], None] | None, total_hours: int
                 ) -> tuple[int, int]:
    """Each part's readings, then its windows, then its arrival records (an arrival must
    never announce data that is not there yet). Returns window parts (written, existing)."""
    counts = _arrivals_by_part(windows_sorted, window_keys)
    written = existing = done_hours = 0
    # Every fresh reading has its window in the same part, and every window its readings.
    reading_cuts = {key: (r0, r1) for key, r0, r1 in _cuts(reading_keys)}
    for index, (key, w0, w1) in enumerate(_cuts(window_keys)):
        r0, r1 = reading_cuts[key]
        if progress and index and index % 64 == 0:
            progress(done_hours, total_hours)
        day, slot = divmod(key, _SLOTS)
        part_hours = counts[key]
        first = Hour(day * HOURS_PER_DAY) if slot == _DAY_SLOT \
            else Hour(day * HOURS_PER_DAY + slot - 1)
        paths = (day_readings_path(first, sid), day_part_path(first, sid)) \
            if slot == _DAY_SLOT else (readings_path(first, sid), part_path(first, sid))
        _put_once(store, paths[0], _encode_readings(readings_sorted.slice(r0, r1 - r0)))
        data = encode_part(windows_sorted.slice(w0, w1 - w0))
        if _put_once(store, paths[1], data):
            written += 1
        else:
            existing += 1
        part = (paths[1], hashlib.sha256(data).hexdigest())
        if slot == _DAY_SLOT:
            record_day_arrivals(store, first, sid, part_hours, source=source, part=part)
        else:
            record_arrivals(store, first, sid, part_hours[first], source=source, part=part)
        done_hours += len(part_hours)
    if progress:
        progress(total_hours, total_hours)
    return written, existing


# A part's key: day * _SLOTS + slot, slot 0 for the day part, 1 + hour of the day for an hour
# part; so sorting by key puts a day's parts together, the day part first.
_SLOTS = HOURS_PER_DAY + 1
_DAY_SLOT = 0


def _hours_of(ts_ms: np.ndarray, interval_s: int) -> np.ndarray:
    return (window_end_ms(ts_ms, interval_s) - 1) // MS_PER_HOUR


def _part_keys(hours: np.ndarray, dense_hours: np.ndarray) -> np.ndarray:
    days, slots = np.divmod(hours, HOURS_PER_DAY)
    return days * _SLOTS + np.where(np.isin(hours, dense_hours), slots + 1, _DAY_SLOT)


def _by_part(table: pa.Table, hours: np.ndarray, dense_hours: np.ndarray,
             time_column: str) -> tuple[pa.Table, np.ndarray]:
    """The table sorted by part, then Device, Tag, time (one sort), with each row's part key."""
    keys = _part_keys(hours, dense_hours)
    order = sort_by_sensor(table, [time_column], first=keys)
    return table.take(order), keys[order.to_numpy()]


def _cuts(keys: np.ndarray) -> list[tuple[int, int, int]]:
    """(key, first row, end row) of each run of equal keys in a sorted key array."""
    if len(keys) == 0:
        return []
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate(([0], change))
    stops = np.concatenate((change, [len(keys)]))
    return list(zip(keys[starts].tolist(), starts.tolist(), stops.tolist(), strict=True))


def _windows(fresh: pa.Table, interval_s: int) -> tuple[pa.Table, np.ndarray]:
    """The fresh readings' windows (PART_SCHEMA, unordered) and each window's hour."""
    return finish_windows(aggregate(fresh, interval_s))


def _arrivals_by_part(windows: pa.Table, keys: np.ndarray) -> dict[int, dict[Hour, Counter]]:
    """Windows per sensor, per hour, per part (one group-by for the whole file)."""
    if windows.num_rows == 0:
        return {}
    ends = pc.cast(windows["WindowEnd"], pa.int64()).to_numpy()
    grouped = pa.table({
        "_part": pa.array(keys, pa.int64()),
        "_hour": pa.array((ends - 1) // MS_PER_HOUR, pa.int64()),
        "Device": windows["Device"], "Tag": windows["Tag"],
    }).group_by(["_part", "_hour", "Device", "Tag"], use_threads=False).aggregate(
        [("_hour", "count")])
    out: dict[int, dict[Hour, Counter]] = {}
    hours: dict[int, Hour] = {}
    for key, hour, device, tag, n in zip(
            grouped["_part"].to_pylist(), grouped["_hour"].to_pylist(),
            grouped["Device"].to_pylist(), grouped["Tag"].to_pylist(),
            grouped["_hour_count"].to_pylist(), strict=True):
        h = hours.get(hour) or hours.setdefault(hour, Hour(hour))
        # Ids were validated in bulk when the file was read.
        out.setdefault(key, {}).setdefault(h, Counter())[Sensor.unchecked(device, tag)] = n
    return out


def _distinct_sensors(windows: pa.Table) -> int:
    if windows.num_rows == 0:
        return 0
    return windows.group_by(["Device", "Tag"], use_threads=False).aggregate([]).num_rows


def _put_once(store: Store, path: str, data: bytes) -> bool:
    try:
        store.put(path, data, overwrite=False)
        return True
    except AlreadyExists:
        return False


def _first_per_key(readings: pa.Table, hours: np.ndarray) -> pa.Table:
    """One reading per (Device, Tag, TS) within the file: the first one (the reader named
    the repeats within a block, duplicates and conflicts; across blocks the first is kept).

    A key's readings all fall in one hour, so runs of whole hours of at most DEDUP_ROWS
    readings are deduplicated one at a time: the hash table follows a run, not the file
    (10 million readings held 1.9 GB in one)."""
    runs = _hour_runs(hours, DEDUP_ROWS)
    if len(runs) <= 1:
        return _first_per_key_of(readings)
    return pa.concat_tables([_first_per_key_of(readings.filter(pa.array(
        (hours >= lo) & (hours <= hi)))) for lo, hi in runs])


def _hour_runs(hours: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive hours (first, last) of at most ``limit`` readings each (a bigger hour
    alone)."""
    if not len(hours):
        return []
    values, counts = np.unique(hours, return_counts=True)
    cumulative = np.cumsum(counts)
    out, start, base = [], 0, 0
    while start < len(values):
        # The last hour that keeps the run within the limit (at least one hour).
        end = max(start, int(np.searchsorted(cumulative, base + limit, side="right")) - 1)
        out.append((int(values[start]), int(values[end])))
        base = int(cumulative[end])
        start = end + 1
    return out


def _first_per_key_of(readings: pa.Table) -> pa.Table:
    grouped = readings.group_by(_KEY, use_threads=False).aggregate([("Value", "first")])
    if grouped.num_rows == readings.num_rows:
        return readings
    return pa.table([grouped["Device"], grouped["Tag"], grouped["TS"], grouped["Value_first"]],
                    schema=READINGS_SCHEMA)


def _stored_parts(store: Store, hours: np.ndarray,
                  sid: str) -> tuple[list[str], np.ndarray, list[str]]:
    """The readings parts other sources stored for the hours (their hour parts and the day
    parts of their days), listed one day at a time; and this source's own parts: the hours it
    already gave hour files, the day parts it already wrote.

    This source's own parts are left out of the comparison, so a crashed ingest of the same
    file completes when rerun."""
    stored: list[str] = []
    own_hours: list[int] = []
    own_days: list[str] = []
    wanted = {int(h) for h in hours}
    days = by_day(Hour(int(h)) for h in hours)
    listed = list_days(store, "readings", days)
    for day, day_hours in days.items():
        folder = f"readings/{day_path(day_hours[0])}/"
        own_day = day_readings_path(day_hours[0], sid)
        first = day * HOURS_PER_DAY
        for path in listed[day]:
            if not path.endswith(".parquet"):
                continue
            sub = path[len(folder):].split("/", 1)
            if len(sub) < 2:
                continue
            if sub[0] == DAY_FOLDER:
                (own_days if path == own_day else stored).append(path)
                continue
            try:
                hour = first + int(sub[0])
            except ValueError:
                continue  # not an hour folder: no reading of the hours can be there
            if hour not in wanted:
                continue
            if path == readings_path(Hour(hour), sid):
                own_hours.append(hour)
            else:
                stored.append(path)
    return stored, np.array(own_hours, dtype=np.int64), own_days


def _read_keys(store: Store, path: str, columns: list[str]) -> pa.Table:
    try:
        with store.open(path) as handle:
            return pq.read_table(handle, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"readings file {path} is unreadable: {exc}") from exc


def _not_stored(store: Store, readings: pa.Table, stored: list[str]) -> pa.Table:
    """The readings none of the ``stored`` parts holds: one anti-join per batch of parts of at
    most STORED_KEYS_BATCH keys (so memory holds one batch, not the store)."""
    batch: list[pa.Table] = []
    held = 0
    for index, path in enumerate(stored):
        keys = _read_keys(store, path, _KEY).select(_KEY).cast(_KEY_SCHEMA)
        batch.append(keys)
        held += keys.num_rows
        if held >= STORED_KEYS_BATCH or index == len(stored) - 1:
            if readings.num_rows:
                readings = readings.join(pa.concat_tables(batch), _KEY, join_type="left anti",
                                         use_threads=False)
            batch, held = [], 0
    return readings.select(READINGS_SCHEMA.names).cast(READINGS_SCHEMA)


def _hours_in_parts(store: Store, paths: list[str]) -> np.ndarray:
    """The hours of the readings in the given readings parts."""
    hours = [(-(-_read_keys(store, p, ["TS"])["TS"].to_numpy() // MS_PER_HOUR)) - 1
             for p in paths]
    return np.unique(np.concatenate(hours)) if hours else np.empty(0, np.int64)


def _encode_readings(readings: pa.Table) -> bytes:
    """A part of readings already sorted by Device, Tag, TS."""
    sink = io.BytesIO()
    pq.write_table(readings, sink, compression="zstd")
    return sink.getvalue()


def _rejects_csv(rejects: list[Reject]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "reason", "text"])
    for r in rejects:
        writer.writerow([r.line, r.reason, r.text])
    return out.getvalue().encode()
