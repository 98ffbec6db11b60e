"""Aggregated windows: the Stream Analytics equivalent and the window files of the store.

Aggregation follows Stream Analytics' ``TumblingWindow(second, I)``: windows aligned to the
epoch, each window ``(end - I, end]`` labelled by its end, value = mean of the readings, with
their count. A window belongs to the run of the hour H when its label is in (H:00, H+1:00].

Each ingested source writes one Parquet *part* per hour it touches, named by the source's
content hash: ingesting the same source twice writes nothing new, and a later source with late
points adds a part. Readers combine parts (count-weighted means), so merging never rewrites
an existing file. Parts are sorted by Device, Tag, WindowEnd with small row groups, so a unit
reads only the row groups of its own sensors. The Stream Analytics job's files are not sorted:
an hour of several files is compacted once per run (fleetscore/data/compaction.py) and readers read
the compacted files, plus any raw file that arrived since.

Sparse hours (a source with few windows in the hour, ``ingest.SPARSE_HOUR_WINDOWS``) are not
worth a file each: a source's sparse hours of one day go into one *day part*,
``windows/YYYY/MM/DD/day/part-{source}.parquet`` (same schema, sorted the same way). Readers
read an hour's files plus the rows of that hour in the day's day parts, merged by the same
rules, in the order the hour files would have had (by file name), so the layout never changes
a value. ``read_points_many`` reads each day part once for all the hours asked of its day.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetscore.core.hours import MS_PER_HOUR, Hour
from fleetscore.core.sensor_codes import sensor_codes, sensor_keys, sort_by_sensor
from fleetscore.core.sensors import Sensor, sorted_unique
from fleetscore.data import compacted
from fleetscore.data.readings import valid_ids
from fleetscore.errors import InputError, NotFound, UsageError
from fleetscore.storage import Store

ROW_GROUP_ROWS = 16_384
PART_SCHEMA = pa.schema(
    [
        ("Device", pa.string()),
        ("Tag", pa.string()),
        ("WindowEnd", pa.timestamp("ms", tz="UTC")),
        ("Value", pa.float64()),
        ("Count", pa.int64()),
    ]
)
# Partial aggregates: sums, so parts of one window from several blocks combine exactly.
PARTIAL_SCHEMA = pa.schema(
    [("Device", pa.string()), ("Tag", pa.string()), ("End", pa.int64()), ("Sum", pa.float64()),
     ("Count", pa.int64())]
)
_KEYS = ["Device", "Tag", "End"]


def check_interval(interval_s: int) -> int:
    if not isinstance(interval_s, int) or interval_s < 1 or 3600 % interval_s:
        raise UsageError(
            f"invalid interval {interval_s!r}: expected seconds that divide an hour (1 .. 3600, "
            "e.g. 60), so every hour holds whole windows"
        )
    return interval_s


def window_end_ms(ts_ms: np.ndarray, interval_s: int) -> np.ndarray:
    """Label of the window (end - I, end] holding each timestamp: the end, aligned to the epoch."""
    step = interval_s * 1000
    return -((-ts_ms) // step) * step


def aggregate(readings: pa.Table, interval_s: int) -> pa.Table:
    """Readings (Device, Tag, TS ms, Value) -> partial aggregates (Device, Tag, End, Sum, Count)."""
    if readings.num_rows == 0:
        return PARTIAL_SCHEMA.empty_table()
    # A canonical order makes each float sum, and so each mean, independent of the order the
    # readings arrived in: the same readings always give the same bits. The order is that of
    # (Device, Tag, TS, Value); sensors are sorted and grouped by their codes, not their names.
    codes = sensor_codes(readings["Device"], readings["Tag"])
    order = sort_by_sensor(readings, ["TS", "Value"], codes=codes)
    ends = window_end_ms(readings["TS"].take(order).to_numpy(), interval_s)
    table = pa.table({"_sensor": codes.codes[order.to_numpy()], "End": pa.array(ends, pa.int64()),
                      "Value": readings["Value"].take(order)})
    grouped = table.group_by(["_sensor", "End"], use_threads=False).aggregate(
        [("Value", "sum"), ("Value", "count")]
    )
    device, tag = codes.device_tag(grouped["_sensor"].to_numpy())
    return _partials(device, tag, grouped["End"], grouped["Value_sum"], grouped["Value_count"])


def combine(partials: Iterable[pa.Table]) -> pa.Table:
    """Merge partial aggregates of the same windows (sums and counts add)."""
    tables = [t for t in partials if t.num_rows]
    if not tables:
        return PARTIAL_SCHEMA.empty_table()
    if len(tables) == 1:
        return tables[0]
    grouped = pa.concat_tables(tables).group_by(_KEYS, use_threads=False).aggregate(
        [("Sum", "sum"), ("Count", "sum")]
    )
    return _partials(grouped["Device"], grouped["Tag"], grouped["End"], grouped["Sum_sum"],
                     grouped["Count_sum"])


def _partials(device, tag, end, sums, counts) -> pa.Table:
    return pa.table([device, tag, end, sums, pc.cast(counts, pa.int64())], schema=PARTIAL_SCHEMA)


def finish_windows(partials: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """Final windows (PART_SCHEMA, in the partials' order: the mean of each window's sum and
    count) and the index of each window's hour."""
    ends = partials["End"].to_numpy()
    table = pa.table(
        [partials["Device"], partials["Tag"],
         pc.cast(partials["End"], pa.timestamp("ms", tz="UTC")),
         pc.divide(partials["Sum"], pc.cast(partials["Count"], pa.float64())),
         partials["Count"]],
        schema=PART_SCHEMA,
    )
    return table, (ends - 1) // MS_PER_HOUR


def windows_folder(hour: Hour) -> str:
    return area_folder("windows", hour)


def part_path(hour: Hour, source_id: str) -> str:
    return f"{windows_folder(hour)}/part-{source_id}.parquet"


DAY_FOLDER = "day"  # beside a day's hour folders (00 .. 23): the day parts of its sparse hours
HOURS_PER_DAY = 24


def day_of(hour: Hour) -> int:
    """The UTC day holding the hour, as whole days since the epoch."""
    return hour.index // HOURS_PER_DAY


def day_path(hour: Hour) -> str:
    """``YYYY/MM/DD``: the folder of the hour's day (its hour folders and its ``day`` folder)."""
    return hour.path[:10]


def area_folder(area: str, hour: Hour, *, day: bool = False) -> str:
    """Where an area of ingested data (windows, readings, arrivals) keeps the hour's files,
    or with ``day`` the day files of the hour's day (its sparse hours)."""
    return f"{area}/{day_path(hour)}/{DAY_FOLDER}" if day else f"{area}/{hour.path}"


def day_windows_folder(hour: Hour) -> str:
    return area_folder("windows", hour, day=True)


def day_part_path(hour: Hour, source_id: str) -> str:
    """The day part holding a source's sparse hours of the hour's day."""
    return f"{day_windows_folder(hour)}/part-{source_id}.parquet"


def by_day(hours: Iterable[Hour]) -> dict[int, list[Hour]]:
    """Hours grouped by their day, each day's hours in the order given."""
    out: dict[int, list[Hour]] = {}
    for hour in hours:
        out.setdefault(day_of(hour), []).append(hour)
    return out


MONTH_LISTING_DAYS = 15  # a month with this many days asked of it is listed once, not by day


def list_days(store: Store, area: str, days: Iterable[int]) -> dict[int, list[str]]:
    """What ``store.list(f"{area}/YYYY/MM/DD")`` gives for each of the days (whole days since
    the epoch): a month of which many days are wanted is listed once, the others by day."""
    months: dict[str, list[int]] = {}
    for day in sorted(set(days)):
        months.setdefault(Hour(day * HOURS_PER_DAY).path[:7], []).append(day)
    out: dict[int, list[str]] = {}
    for month, month_days in months.items():
        if len(month_days) >= MONTH_LISTING_DAYS:
            by_name = {Hour(d * HOURS_PER_DAY).path[8:10]: d for d in month_days}
            for d in month_days:
                out[d] = []
            start = len(area) + len(month) + 2  # area/YYYY/MM/ then DD/...
            for path in store.list(f"{area}/{month}"):
                day = by_name.get(path[start:start + 2])
                if day is not None and path[start + 2:start + 3] == "/":
                    out[day].append(path)
        else:
            for d in month_days:
                out[d] = list(store.list(f"{area}/{Hour(d * HOURS_PER_DAY).path[:10]}"))
    return out


def encode_part(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    # A table of one row group is written without the option: the same bytes, and a small
    # part (a day part) costs half as long to encode.
    options = {"row_group_size": ROW_GROUP_ROWS} if table.num_rows > ROW_GROUP_ROWS else {}
    pq.write_table(table, sink, compression="zstd", **options)
    return sink.getvalue()


@dataclass(frozen=True)
class SensorPoints:
    """One sensor's aggregated points of one hour, in time order."""

    sensor: Sensor
    ends_ms: np.ndarray  # int64 window labels
    values: np.ndarray  # float64 means
    counts: np.ndarray  # int64 readings per window


def read_points(store: Store, hour: Hour, sensors: Iterable[Sensor] | None = None) -> pa.Table:
    """The hour's windows (Device, Tag, End ms, Value, Count), parts combined, sorted.

    With ``sensors``, only the files and row groups that can hold them are read. When the hour
    is compacted (fleetscore/data/compaction.py), its compacted files stand for the raw files they
    cover, and only raw files that arrived since (late files) are read beside them. The rows of
    the hour in the day's day parts are read beside them too.
    """
    wanted = _wanted(sensors)
    raw = [path for path in store.list(windows_folder(hour)) if path.endswith(".parquet")]
    slices = {}
    for path in store.list(day_windows_folder(hour)):
        if path.endswith(".parquet"):
            table = _read_day_part(store, path, wanted)
            ends = table["End"].to_numpy()
            keep = (ends > hour.start_ms) & (ends <= hour.end_ms)
            slices[path] = table if keep.all() else table.filter(pa.array(keep))
    return _hour_points(store, hour, raw, slices, wanted)


def read_points_many(store: Store, hours: Iterable[Hour],
                     sensors: Iterable[Sensor] | None = None) -> dict[Hour, pa.Table]:
    """``read_points`` for many hours at once (a backfill's span of hours): each hour's table,
    as ``read_points`` gives it. Each day is listed once (its hour folders and its day parts
    together) and each day part is read once for all the hours asked of its day."""
    wanted = _wanted(sensors)
    hours = list(hours)
    out: dict[Hour, pa.Table] = {}
    days = by_day(hours)
    listed = list_days(store, "windows", days)
    for day, day_hours in days.items():
        folder = f"windows/{day_path(day_hours[0])}/"
        raw: dict[str, list[str]] = {}
        day_parts = []
        for path in listed[day]:
            if not path.endswith(".parquet"):
                continue
            sub = path[len(folder):].split("/", 1)
            if len(sub) < 2:
                continue  # a file directly in the day's folder belongs to no hour
            if sub[0] == DAY_FOLDER:
                day_parts.append(path)
            else:
                raw.setdefault(sub[0], []).append(path)
        slices: dict[Hour, dict[str, pa.Table]] = {}
        for path in day_parts:
            for hour, table in _split_by_hour(_read_day_part(store, path, wanted)).items():
                slices.setdefault(hour, {})[path] = table
        for hour in day_hours:
            if hour not in out:
                out[hour] = _hour_points(store, hour, raw.get(_hour_name(hour), []),
                                         slices.get(hour, {}), wanted)
    return {hour: out[hour] for hour in hours}


def read_raw_points(store: Store, hour: Hour, paths: Iterable[str]) -> pa.Table:
    """Every window of the given raw files, combined and sorted (what compaction rewrites);
    rows whose ids are invalid are left out, as no unit could ever ask for them."""
    return _combine_tables([_read_part(store, path, None, invalid="drop") for path in paths])


def _hour_name(hour: Hour) -> str:
    """The hour's folder name within its day: ``HH``."""
    return f"{hour.index % HOURS_PER_DAY:02d}"


def _wanted(sensors: Iterable[Sensor] | None) -> list[Sensor] | None:
    return None if sensors is None else sorted_unique(sensors)


def _read_day_part(store: Store, path: str, wanted: list[Sensor] | None) -> pa.Table:
    """A day part's rows (of the wanted sensors), sorted by Device, Tag, End: ingest writes
    them so, and sorting here keeps every hour's slice sorted whoever wrote the file."""
    table = _read_part(store, path, wanted, whole=True)
    if table.num_rows < 2 or table.schema.metadata == _SORTED:
        return table
    return table.take(sort_by_sensor(table, ["End"]))


def _split_by_hour(table: pa.Table) -> dict[Hour, pa.Table]:
    """A sorted points table's rows per hour (one stable sort), each hour's rows still sorted."""
    if table.num_rows == 0:
        return {}
    hours = (table["End"].to_numpy() - 1) // MS_PER_HOUR
    if hours[0] == hours[-1] and (hours == hours[0]).all():
        return {Hour(int(hours[0])): table}
    order = np.argsort(hours, kind="stable")
    hours = hours[order]
    table = table.take(pa.array(order))
    cuts = np.flatnonzero(hours[1:] != hours[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    stops = np.concatenate((cuts, [len(hours)]))
    return {Hour(int(hours[a])): table.slice(a, b - a) for a, b in zip(starts, stops, strict=True)}


def _hour_points(store: Store, hour: Hour, raw: list[str], slices: dict[str, pa.Table],
                 wanted: list[Sensor] | None) -> pa.Table:
    """Combine the hour's raw files (or their compaction) with its rows of the day parts.

    Files are combined in the order of their names (an hour file by its path in the hour
    folder, a day part by its path in the day folder), the order the hour's folder would list
    them in had the day parts been hour parts: merged means add up in the same order."""
    manifest = compacted.usable_manifest(store, hour, raw)
    tables: list[pa.Table] = []
    covered: set[str] = set()
    if manifest is not None:
        covered = {s["path"] for s in manifest["sources"]}
        try:
            tables = [_read_part(store, f["path"], wanted, tail=f.get("tail"))
                      for f in compacted.files_for(manifest, wanted)]
        except NotFound:  # compacted files removed under a stale manifest: read the raw ones
            tables, covered = [], set()
    # windows/YYYY/MM/DD/HH/name, windows/YYYY/MM/DD/day/name: compared by name
    named = [(path.split("/", 5)[5], 0, path) for path in raw if path not in covered]
    named += [(path.split("/", 5)[5], 1, path) for path in slices]
    for _, kind, path in sorted(named):
        tables.append(_read_part(store, path, wanted) if kind == 0 else slices[path])
    if not manifest and not raw:
        present = [t for t in tables if t.num_rows]
        if len(present) == 1:
            # one day part's rows: already sorted, nothing to merge
            return present[0].replace_schema_metadata(None)
    return _combine_tables(tables)


def _combine_tables(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return _POINTS_SCHEMA.empty_table()
    if len(tables) == 1 and tables[0].schema.metadata == _SORTED:
        return tables[0].replace_schema_metadata(None)
    # A stable sort keeps the files' order among rows of one window, so merged sums add in
    # the same order as before; merging (a group-by) only when some window is in two files.
    table = pa.concat_tables(tables).replace_schema_metadata(None)
    table = table.take(sort_by_sensor(table, ["End"]))
    if len(tables) > 1 and _repeats(table):
        table = _merge_parts(table)
        table = table.take(sort_by_sensor(table, ["End"]))
    return table


def _repeats(table: pa.Table) -> bool:
    """Does a sorted points table hold a window twice?"""
    n = table.num_rows
    same = None
    for name in ("End", "Tag", "Device"):
        column = table[name]
        eq = pc.equal(column.slice(1), column.slice(0, n - 1))
        same = eq if same is None else pc.and_(same, eq)
    return bool(pc.any(same).as_py())


_POINTS_SCHEMA = pa.schema(
    [("Device", pa.string()), ("Tag", pa.string()), ("End", pa.int64()), ("Value", pa.float64()),
     ("Count", pa.int64())]
)


def _read_part(store: Store, path: str, wanted: list[Sensor] | None, *,
               invalid: str = "raise", tail: int | None = None, whole: bool = False) -> pa.Table:
    """``whole``: fetch the file in one request and parse it in memory (day parts: small by
    construction, so one request beats a footer read and then ranges)."""
    try:
        if whole:
            parquet = pq.ParquetFile(pa.BufferReader(store.get(path)), **_dictionary_ids(wanted))
            table = _read_groups(parquet, wanted)
        else:
            with store.open(path) as handle:
                # ``tail``: the footer's exact length (compacted files record it), read in
                # one request instead of the reader's default 64 KiB guess.
                metadata = _footer(handle, tail) if tail else None
                # pre_buffer: the row groups' column chunks are fetched as few coalesced
                # ranges (one request each on Blob storage), not one read per column chunk.
                parquet = pq.ParquetFile(handle, pre_buffer=True, metadata=metadata,
                                         **_dictionary_ids(wanted))
                table = _read_groups(parquet, wanted)
        missing = {"Device", "Tag", "WindowEnd", "Value", "Count"} - set(table.column_names)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"window file {path} is unreadable: {exc}") from exc
    except KeyError as exc:
        raise InputError(f"window file {path} is not a window file: no column {exc}") from exc
    if wanted is not None:
        return _wanted_rows(table, wanted)
    if table.num_rows:
        # Window files can come from outside (Stream Analytics): check their ids in bulk.
        bad = pc.invert(pc.and_(valid_ids(table["Device"]), valid_ids(table["Tag"])))
        if invalid == "drop":
            table = table.filter(pc.invert(bad))
        elif pc.any(bad).as_py():
            row = table.filter(bad).slice(0, 1).to_pylist()[0]
            raise InputError(f"window file {path} holds an invalid id: Device {row['Device']!r}, "
                             f"Tag {row['Tag']!r}")
    return pa.table(
        [pc.cast(table["Device"], pa.string()), pc.cast(table["Tag"], pa.string()),
         _ends_ms(table["WindowEnd"]), pc.cast(table["Value"], pa.float64()),
         pc.cast(table["Count"], pa.int64())],
        schema=_POINTS_SCHEMA,
    )


def _dictionary_ids(wanted: list[Sensor] | None) -> dict:
    """A unit's read takes ids as dictionaries: it matches the few distinct ids of its row
    groups against its sensors, not every row's strings."""
    return {} if wanted is None else {"read_dictionary": ["Device", "Tag"]}


def _ends_ms(column) -> pa.ChunkedArray:
    # Files written by Stream Analytics may carry micro- or nanosecond timestamps.
    return pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC")), pa.int64())


_SORTED = {b"fleetscore.sorted": b"Device,Tag,End"}
DENSE_PAIRS = 1 << 22  # (device, tag) pairs a unit's read may tabulate (32 MB), else bisects


def _wanted_rows(table: pa.Table, wanted: list[Sensor]) -> pa.Table:
    """The rows of the ``wanted`` sensors (sorted), ids as plain strings. Each row's sensor
    is found through the id dictionaries (a few thousand distinct ids, not a string per
    row); a table found in the wanted order is marked sorted, so combining one file's rows
    sorts nothing."""
    if table.num_rows == 0:
        return _POINTS_SCHEMA.empty_table()
    table = table.unify_dictionaries()  # one dictionary per column for all row groups
    device, tag = _dictionary(table["Device"]), _dictionary(table["Tag"])
    n_tags = max(1, len(tag.dictionary))
    wanted_devices = pa.array([s.device for s in wanted], pa.string())
    wanted_tags = pa.array([s.tag for s in wanted], pa.string())
    at_device = pc.index_in(wanted_devices, value_set=device.dictionary)
    at_tag = pc.index_in(wanted_tags, value_set=tag.dictionary)
    both = pc.and_(pc.is_valid(at_device), pc.is_valid(at_tag)).to_numpy(zero_copy_only=False)
    # Each wanted sensor's (device, tag) pair of the dictionaries as one number; each row's
    # pair is looked up among them: in a table of every pair when that stays small, else by
    # bisection (memory then follows the rows, not devices x tags).
    pairs = (pc.fill_null(at_device, 0).to_numpy().astype(np.int64) * n_tags
             + pc.fill_null(at_tag, 0).to_numpy())[both]
    valid = (pc.is_valid(device.indices).to_numpy(zero_copy_only=False)
             & pc.is_valid(tag.indices).to_numpy(zero_copy_only=False))  # a null id: no sensor
    row_pairs = np.where(valid, pc.fill_null(device.indices, 0).to_numpy().astype(np.int64)
                         * n_tags + pc.fill_null(tag.indices, 0).to_numpy(), 0)
    size = max(1, len(device.dictionary)) * n_tags
    if size <= DENSE_PAIRS:
        lookup = np.full(size, -1, dtype=np.int64)
        lookup[pairs] = np.flatnonzero(both)
        code = np.where(valid, lookup[row_pairs], -1)
    elif len(pairs):
        which = np.flatnonzero(both)[np.argsort(pairs, kind="stable")]
        pairs = np.sort(pairs)
        at = np.minimum(np.searchsorted(pairs, row_pairs), len(pairs) - 1)
        code = np.where(valid & (pairs[at] == row_pairs), which[at], -1)
    else:
        code = np.full(len(row_pairs), -1, dtype=np.int64)
    rows = np.flatnonzero(code >= 0)
    code = code[rows]
    ends = _ends_ms(table["WindowEnd"]).to_numpy()[rows] if len(rows) else np.zeros(0, np.int64)
    take = pa.array(rows)
    out = pa.table(
        [wanted_devices.take(pa.array(code)), wanted_tags.take(pa.array(code)),
         pa.array(ends, pa.int64()), pc.cast(table["Value"].take(take), pa.float64()),
         pc.cast(table["Count"].take(take), pa.int64())],
        schema=_POINTS_SCHEMA)
    ordered = len(code) < 2 or bool(
        ((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (ends[1:] > ends[:-1]))).all())
    return out.replace_schema_metadata(_SORTED) if ordered else out


def _dictionary(column: pa.ChunkedArray) -> pa.DictionaryArray:
    if not pa.types.is_dictionary(column.type):  # an empty read has no dictionaries
        column = pc.dictionary_encode(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _read_groups(parquet: pq.ParquetFile, wanted: list[Sensor] | None) -> pa.Table:
    groups = _row_groups(parquet, wanted)
    if not groups:
        return PART_SCHEMA.empty_table()
    return parquet.read_row_groups(groups, columns=list(PART_SCHEMA.names), use_threads=False)


def _footer(handle, tail: int) -> pq.FileMetaData:
    handle.seek(-tail, io.SEEK_END)
    data = handle.read(tail)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + data))


def _row_groups(parquet: pq.ParquetFile, wanted: list[Sensor] | None) -> list[int]:
    meta = parquet.metadata
    if wanted is None:
        return list(range(meta.num_row_groups))
    devices = sorted({s.device for s in wanted})
    column = parquet.schema_arrow.get_field_index("Device")
    keep = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            keep.append(i)
            continue
        low, high = stats.min, stats.max
        if isinstance(low, bytes):
            low, high = low.decode(), high.decode()
        # Keep groups whose Device range holds a wanted device (a bisection, so a unit of
        # many sensors costs O(groups x log devices)).
        if bisect.bisect_left(devices, low) < bisect.bisect_right(devices, high):
            keep.append(i)
    return keep


def _merge_parts(table: pa.Table) -> pa.Table:
    """Several parts may hold the same window (late points): count-weighted mean.

    A window held by one part keeps its stored value bit for bit.
    """
    weighted = table.append_column("W", pc.multiply(table["Value"], pc.cast(table["Count"], pa.float64())))
    grouped = weighted.group_by(["Device", "Tag", "End"], use_threads=False).aggregate(
        [("W", "sum"), ("Count", "sum"), ("Value", "min"), ("Value", "count")]
    )
    single = pc.equal(grouped["Value_count"], 1)
    mean = pc.divide(grouped["W_sum"], pc.cast(grouped["Count_sum"], pa.float64()))
    return pa.table(
        [grouped["Device"], grouped["Tag"], grouped["End"],
         pc.if_else(single, grouped["Value_min"], mean), pc.cast(grouped["Count_sum"], pa.int64())],
        schema=_POINTS_SCHEMA,
    )


def sensor_runs(points: pa.Table) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Where each sensor's rows start and stop in a sorted points table, and its
    ``Device/Tag`` key."""
    n = points.num_rows
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pa.array([], pa.string())
    devices, tags = points["Device"], points["Tag"]
    change = pc.or_(pc.not_equal(devices.slice(1), devices.slice(0, n - 1)),
                    pc.not_equal(tags.slice(1), tags.slice(0, n - 1)))
    starts = np.concatenate(([0], np.flatnonzero(change.to_numpy(zero_copy_only=False)) + 1))
    stops = np.concatenate((starts[1:], [n]))
    at = pa.array(starts)
    return starts, stops, sensor_keys(devices.take(at), tags.take(at))


def by_sensor(points: pa.Table) -> dict[Sensor, SensorPoints]:
    """Split a sorted points table into per-sensor arrays."""
    if points.num_rows == 0:
        return {}
    starts, stops, _ = sensor_runs(points)
    at = pa.array(starts)
    devices = points["Device"].take(at).to_pylist()
    tags = points["Tag"].take(at).to_pylist()
    ends = points["End"].to_numpy()
    values = points["Value"].to_numpy()
    counts = points["Count"].to_numpy()
    out = {}
    for device, tag, a, b in zip(devices, tags, starts, stops, strict=True):
        # Ids were filtered against validated sensors or checked in bulk when read.
        sensor = Sensor.unchecked(device, tag)
        out[sensor] = SensorPoints(sensor, ends[a:b], values[a:b], counts[a:b])
    return out
