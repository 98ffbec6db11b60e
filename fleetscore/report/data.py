"""What the report shows, read from the store: the range's hours and runs (``_Span``), their
predictions folded into arrays (``_Fold``), and what the page draws of them on its time axis
(``_Data``, ``_View``). Nothing here draws or writes HTML.

The time axis is true: one column per window of the report's range, so an hour without
predictions is an empty stretch, never squeezed out. A long range (a backfill over years) is
bucketed instead: hours, days or weeks, whichever keeps the axis under ``MAX_COLUMNS``
columns. A bucket's heatmap cell is the share of its windows flagged, its line point the mean
of its window means.

A fleet's range is read the same way whatever its size: the predictions files are parsed in
batches and folded into arrays as they come (a number a sensor, 17 bytes a prediction, up to
``KEPT_BYTES``; a larger range is read a second time for the shown sensors' rows instead, so
memory follows the fleet, not the range), and the page shows the sensors with the most
anomalies (``HEATMAP_SENSORS`` in the heatmap, ``TIMELINES`` as lines), never a row or a line
a sensor.

The sensors table's drift (``_DriftRanges``) takes its recent values from the predictions as
they are placed on the axis (each carries its window's value), so ``model.drift`` reads only
those sensors' training windows, and nothing when none records a training range.

The names with a leading underscore are the report package's own: ``html`` and ``charts``
use them, nothing outside ``fleetscore/report/`` but the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensor_codes import sensor_keys
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import hours_with_arrivals
from fleetscore.data.predictions import COLUMNS, SCHEMA, decode, format_of, predictions_folder
from fleetscore.errors import InputError, InvalidIdError, ModelError
from fleetscore.model.drift import Drift, drift_of, training_ranges
from fleetscore.runs.table import between, no_runs, read_runs
from fleetscore.storage import Store
from fleetscore.storage.base import READERS, get_many

HEATMAP_SENSORS = 60
TIMELINES = 6
BATCH_BYTES = 64 << 20  # predictions files read, then parsed and folded, together
# Predictions kept for the charts (17 bytes each: 24 hours of 10,000 sensors); a larger range
# is read twice instead (``_Fold``).
KEPT_BYTES = 256 << 20
SEPARATE_BYTES = 4 << 20  # a CSV this large is parsed on its own (small ones are joined)
DEFAULT_STEP_MS = 60_000
MAX_COLUMNS = 2000
BUCKETS_MS = (300_000, 900_000, 3_600_000, 6 * 3_600_000, 86_400_000, 7 * 86_400_000)


@dataclass(frozen=True)
class Axis:
    """The report's time axis: windows labelled by their end, every ``step_ms`` in the range."""

    start_ms: int  # the first hour's start
    end_ms: int  # the last hour's end
    step_ms: int  # a column: one window, or a bucket of windows for a long range
    window_ms: int = 0  # the windows' length, when the columns are buckets of them

    @classmethod
    def fitting(cls, start_ms: int, end_ms: int, window_ms: int) -> Axis:
        """Columns of one window, or of the smallest bucket that keeps them few enough."""
        step = window_ms
        if (end_ms - start_ms) // step > MAX_COLUMNS:
            step = next((b for b in BUCKETS_MS if b > window_ms
                         and (end_ms - start_ms) // b <= MAX_COLUMNS), BUCKETS_MS[-1])
        if step == window_ms:
            return cls(start_ms, end_ms, step)
        # Buckets are aligned to the epoch, like windows, so a day column is a UTC day.
        return cls(start_ms - start_ms % step, end_ms + (-end_ms) % step, step, window_ms)

    @property
    def bucketed(self) -> bool:
        return self.window_ms > 0 and self.step_ms > self.window_ms

    @property
    def columns(self) -> int:
        return (self.end_ms - self.start_ms) // self.step_ms

    def column(self, ends_ms: np.ndarray) -> np.ndarray:
        return (ends_ms - self.start_ms) // self.step_ms - 1

    def ends(self) -> np.ndarray:
        return self.start_ms + self.step_ms * np.arange(1, self.columns + 1, dtype=np.int64)


# --- the range and its runs -----------------------------------------------------------------


def _read_range(store: Store, first: Hour | None, last: Hour | None) -> tuple[_Span, _Fold]:
    """The range's runs, and their predictions folded (``_Fold``: read again through
    ``again`` when too many to keep); the span knows each run's predictions."""
    span = _read_span(store, first, last)
    # Only hours that were run can have predictions: read those, from their manifests' files.
    runs = span.runs
    fold = _Fold(again=lambda add: _fold_predictions(store, runs, add))
    return span.with_rows(_fold_predictions(store, runs, fold)), fold


def _read_span(store: Store, first: Hour | None, last: Hour | None) -> _Span:
    """The range's hours and runs. An end not given is taken from the hours with data
    (``_default_bounds``); with nothing to take it from, the span is empty."""
    every_run = None
    if first is None or last is None:
        bounds, every_run = _default_bounds(store)
        if bounds is not None:
            first, last = first or bounds[0], last or bounds[1]
    if first is None or last is None:
        return _Span.empty()
    if last < first:
        hour_range(first, last)  # raises: the range is reversed
    runs = (between(every_run, first, last) if every_run is not None
            else read_runs(store, first=first, last=last))
    return _Span(first, last, runs)


def _default_bounds(store: Store) -> tuple[tuple[Hour, Hour] | None, pa.Table | None]:
    """The first and last hours with data, else of the runs that found data (None without
    either), and every run when they had to be read for that."""
    # The hours that have data, not the runs: a run of an empty hour, by mistake or far in
    # the past, must not stretch every report to years of nothing.
    known = hours_with_arrivals(store)
    if known:
        return (known[0], known[-1]), None
    every_run = read_runs(store)
    ran = every_run.filter(pc.fill_null(pc.not_equal(every_run["status"], "no_data"), True))
    hours = ran["hour"].to_numpy()
    return ((Hour(int(hours.min())), Hour(int(hours.max()))) if len(hours) else None), every_run


@dataclass(frozen=True)
class _Span:
    """The report's hours and their runs, as arrays (a backfill's range is tens of
    thousands of hours: nothing below walks them one by one)."""

    first: Hour | None
    last: Hour | None
    runs: pa.Table  # runs_table.read_runs of the range: one row per run hour, in order
    rows: np.ndarray | None = None  # predictions per run (the files its manifest lists)

    @classmethod
    def empty(cls) -> _Span:
        return cls(None, None, no_runs())

    def with_rows(self, rows: np.ndarray) -> _Span:
        return _Span(self.first, self.last, self.runs, rows)

    @property
    def hours(self) -> int:
        return 0 if self.first is None else self.last.index - self.first.index + 1

    @property
    def text(self) -> str:
        return f"{self.first} .. {self.last}" if self.first is not None else "no runs"

    def offsets(self) -> np.ndarray:
        """Each run's hour, counted from the first hour of the range."""
        return self.runs["hour"].to_numpy() - (self.first.index if self.first else 0)

    def predictions_per_hour(self) -> np.ndarray:
        """Predictions in each hour of the range (0 where none or not run)."""
        per_hour = np.zeros(self.hours, dtype=np.int64)
        if self.rows is not None and len(self.rows):
            per_hour[self.offsets()] = self.rows
        return per_hour

    def hour_list(self) -> list[Hour]:
        return hour_range(self.first, self.last) if self.first is not None else []

    def noisy(self) -> dict[str, int]:
        """The sensors the runaway guard marked in the range, and in how many of its hours."""
        out: dict[str, int] = {}
        for listed in self.runs["noisy"].to_pylist():
            for n in listed or ():
                if n["sensor"]:
                    out[n["sensor"]] = out.get(n["sensor"], 0) + 1
        return out

    def manifests(self) -> list[dict]:
        """The runs as manifest-shaped dicts (for the hourly table: a short range)."""
        out = []
        for r in self.runs.drop_columns(["failures", "predictions", "noisy"]).to_pylist():
            m = {k: v for k, v in r.items() if v is not None and k not in _SENSOR_COUNTS}
            m["sensors"] = {k: r[k] for k in _SENSOR_COUNTS if r[k] is not None}
            out.append(m)
        return out


_SENSOR_COUNTS = ("planned", "scored", "failed", "no_data", "no_model")


# --- the runs' predictions files ------------------------------------------------------------

PREDICTION_COLUMNS = ("TS", "Device", "Tag", "Val", "Prediction")
_CSV_HEADER = (",".join(COLUMNS) + "\n").encode()


def _fold_predictions(store: Store, runs: pa.Table, fold) -> np.ndarray:
    """Hand the predictions of the runs' visible files to ``fold``, a table at a time (files
    parsed together up to ``BATCH_BYTES``, so memory follows a batch, not the range: a fleet's
    day is gigabytes of CSV), each file read once; returns the number of predictions in each
    run's files."""
    if runs.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    listed = runs["predictions"]
    owner = pc.list_parent_indices(listed).to_numpy()
    paths = pc.list_flatten(listed).combine_chunks().field("path").to_pylist()
    # Hours scored by an earlier version have no list: their folder's files are visible.
    for i in np.flatnonzero(pc.is_null(listed).to_numpy(zero_copy_only=False)):
        window = Hour(int(runs["hour"][int(i)].as_py()))
        folder = [p for p in store.list(predictions_folder(window))
                  if p.endswith((".csv", ".parquet"))]
        paths += folder
        owner = np.append(owner, np.full(len(folder), i, dtype=owner.dtype))
    if any(p is None for p in paths):
        raise InputError("a run manifest lists a predictions file without a path")
    unique = list(dict.fromkeys(paths))
    per_path: dict[str, int] = {}
    batch: list[str] = []
    datas: list[bytes] = []
    size = 0
    step = 1 if store.local else READERS  # as get_many reads
    for at in range(0, len(unique), step):
        chunk = unique[at:at + step]
        for path, data in zip(chunk, get_many(store, chunk), strict=True):
            batch.append(path)
            datas.append(data)
            size += len(data)
        if size >= BATCH_BYTES or at + step >= len(unique):
            tables, counts = _decode_files(batch, datas)
            per_path.update(zip(batch, counts, strict=True))
            batch, datas, size = [], [], 0
            for table in tables:
                fold(table)
    rows = np.bincount(owner, weights=[per_path[p] for p in paths],
                       minlength=runs.num_rows).astype(np.int64)
    return rows


def _decode_files(paths: list[str], datas: list[bytes]) -> tuple[list[pa.Table], list[int]]:
    """Decode predictions files (``predictions.decode``): the CSVs as written (the usual
    header, a line a row) parsed in one pass, small ones together (a backfill's hours have a
    few rows each), a large one on its own (no copy); any other file on its own."""
    counts = [0] * len(paths)
    tables: list[pa.Table] = []
    small, large = [], []
    for i, (path, data) in enumerate(zip(paths, datas, strict=True)):
        if format_of(path) == "csv" and data.startswith(_CSV_HEADER):
            counts[i] = data.count(b"\n") - 1 + (0 if data.endswith(b"\n") else 1)
            (large if len(data) >= SEPARATE_BYTES else small).append(i)
        else:
            table = decode(data, path).select(list(PREDICTION_COLUMNS))
            counts[i] = table.num_rows
            tables.append(table)
    for group in [small, *([i] for i in large)]:
        if group:
            _decode_written(paths, datas, group, counts, tables)
    return tables, counts


def _decode_written(paths: list[str], datas: list[bytes], group: list[int], counts: list[int],
                    tables: list[pa.Table]) -> None:
    """CSVs with the usual header, parsed together (each on its own if one is not as written)."""
    bodies = []
    for i in group:
        body = memoryview(datas[i])[len(_CSV_HEADER):]
        bodies += [body, b"\n"] if len(body) and not datas[i].endswith(b"\n") else [body]
    joined = pa.py_buffer(bodies[0]) if len(bodies) == 1 else pa.py_buffer(b"".join(bodies))
    del bodies
    table = None
    if joined.size:
        try:
            table = pcsv.read_csv(
                joined, read_options=pcsv.ReadOptions(column_names=list(COLUMNS)),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict(zip(SCHEMA.names, SCHEMA.types, strict=True)),
                    include_columns=list(PREDICTION_COLUMNS)))
        except pa.ArrowInvalid:
            table = None  # one file is not as written: each on its own says which
    if table is not None and table.num_rows == sum(counts[i] for i in group):
        tables.append(table)
    elif joined.size:
        for i in group:
            table = decode(datas[i], paths[i]).select(list(PREDICTION_COLUMNS))
            counts[i] = table.num_rows
            tables.append(table)


# --- data on the time axis ------------------------------------------------------------------


def _ends_ms(ts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    parsed = pc.strptime(ts, format="%Y-%m-%d %H:%M:%S", unit="ms")
    return pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)


def _step_of(ends: np.ndarray) -> int:
    """The window length: the smallest gap between distinct window ends (60 s unless
    ingested with another --interval)."""
    gaps = np.diff(ends)
    gaps = gaps[gaps > 0]
    return int(gaps.min()) if len(gaps) else DEFAULT_STEP_MS


class _Fold:
    """The predictions, folded a table at a time into what the charts need, in arrays: each
    sensor a number (its name kept once), each prediction 17 bytes (sensor, window end,
    value, label) instead of a row of strings; no Python per prediction, only per sensor.

    Which sensors the charts draw is known only once every prediction is counted. Up to
    ``KEPT_BYTES`` of predictions are kept for that; beyond, they are dropped, and ``data``
    reads the range a second time (``again``) for the shown sensors' rows only: memory then
    follows the fleet and the range's windows, not the number of predictions, for one more
    read of the files."""

    def __init__(self, again: Callable[[Callable[[pa.Table], None]], object] | None = None,
                 *, kept_bytes: int | None = None) -> None:
        self.again = again  # hands every table of predictions to its argument, once more
        self.kept_bytes = KEPT_BYTES if kept_bytes is None else kept_bytes
        self.ids: dict[str, int] = {}
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = []
        self.anomalies = np.zeros(0, dtype=np.int64)
        self.windows = np.zeros(0, dtype=np.int64)
        self.rows = 0
        self._kept = 0
        # The fleet's share per window: (ends, flagged, scored) chunks, merged as they pile up.
        self._ends: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, preds: pa.Table) -> None:
        if not preds.num_rows:
            return
        sensor, end, value, label = _numbers(
            preds, lambda names: [self.ids.setdefault(k, len(self.ids)) for k in names])
        n = len(self.ids)
        self.anomalies = np.pad(self.anomalies, (0, n - len(self.anomalies)))
        self.windows = np.pad(self.windows, (0, n - len(self.windows)))
        self.anomalies += np.bincount(sensor, weights=label, minlength=n).astype(np.int64)
        self.windows += np.bincount(sensor, minlength=n)
        ends, at = np.unique(end, return_inverse=True)
        self._ends.append((ends, np.bincount(at, weights=label, minlength=len(ends)),
                           np.bincount(at, minlength=len(ends)).astype(float)))
        if len(self._ends) >= 64:
            self._ends = [self.end_counts()]
        self.rows += preds.num_rows
        if self.parts is not None:
            self.parts.append((sensor, end, value, label))
            self._kept += sensor.nbytes + end.nbytes + value.nbytes + label.nbytes
            if self._kept > self.kept_bytes and self.again is not None:
                self.parts = None  # read again for the shown sensors: see ``data``

    def end_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window end seen, with the predictions flagged and scored at it."""
        if not self._ends:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        ends, at = np.unique(np.concatenate([e for e, _, _ in self._ends]), return_inverse=True)
        flagged = np.bincount(at, weights=np.concatenate([f for _, f, _ in self._ends]),
                              minlength=len(ends))
        scored = np.bincount(at, weights=np.concatenate([s for _, _, s in self._ends]),
                             minlength=len(ends))
        return ends, flagged, scored

    def step_ms(self) -> int:
        return _step_of(self.end_counts()[0])

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """The sensors' names, and their order on the page: most anomalies first, ties by
        name."""
        names = np.array(list(self.ids), dtype=object)
        return names, np.lexsort((names, -self.anomalies))

    def top(self, n: int) -> list[str]:
        """The first ``n`` sensors of the page (those of the sensors table)."""
        names, order = self.ranked()
        return [str(s) for s in names[order[:n]]]

    def data(self, axis: Axis, after: Mapping[str, int] | None = None) -> _Data:
        """What the charts draw on ``axis``; with ``after`` (shown sensors' names: a window
        end, ms), the values of those sensors' windows after it too (``_Data.recent``), taken
        in the same pass over the predictions (for drift, ``_DriftRanges``)."""
        names, order = self.ranked()
        shown = min(len(order), max(HEATMAP_SENSORS, TIMELINES))
        recent = _Recent([str(s) for s in names[order[:shown]]], after) if after else None
        size = shown * axis.columns
        cells = np.zeros((3, size))  # windows, flagged, sum of values per (sensor, column)

        def add(rows: np.ndarray, end: np.ndarray, value: np.ndarray, label: np.ndarray) -> None:
            col = axis.column(end)
            keep = (col >= 0) & (col < axis.columns) & (rows >= 0)
            cell = rows[keep] * axis.columns + col[keep]
            cells[0] += np.bincount(cell, minlength=size)
            cells[1] += np.bincount(cell, weights=label[keep], minlength=size)
            cells[2] += np.bincount(cell, weights=value[keep].astype(float), minlength=size)
            if recent is not None:
                recent.add(rows[keep], end[keep], value[keep])

        # Per (sensor, column): the share of windows flagged and the mean of the window means
        # (one window per column unless the range is bucketed: then exactly that window's).
        if self.parts is not None:
            row_of = np.full(len(names), -1, dtype=np.int64)
            row_of[order[:shown]] = np.arange(shown)
            for sensor, end, value, label in self.parts:
                add(row_of[sensor], end, value, label)
        else:
            top = [str(s) for s in names[order[:shown]]]
            row = {name: i for i, name in enumerate(top)}
            wanted = pa.array(top, pa.string())

            def again(preds: pa.Table) -> None:
                keys = sensor_keys(preds["Device"], preds["Tag"])
                mine = preds.filter(pc.is_in(keys, value_set=wanted))
                if mine.num_rows:
                    add(*_numbers(mine, lambda found: [row[k] for k in found]))

            self.again(again)
        ends, flagged_at, scored_at = self.end_counts()
        col = axis.column(ends)
        inside = (col >= 0) & (col < axis.columns)
        flagged = np.bincount(col[inside], weights=flagged_at[inside], minlength=axis.columns)
        scored = np.bincount(col[inside], weights=scored_at[inside], minlength=axis.columns)
        with np.errstate(invalid="ignore", divide="ignore"):
            flags = (cells[1] / cells[0]).reshape(shown, axis.columns)
            values = (cells[2] / cells[0]).reshape(shown, axis.columns)
            share = np.where(scored > 0, flagged / scored * 100, np.nan)
        return _Data([str(s) for s in names[order]], flags, values, share,
                     self.anomalies[order], self.windows[order],
                     recent.values() if recent is not None else {})


class _Recent:
    """A few shown sensors' window values after an end of their own (their training range's:
    drift compares only what came after), gathered while the charts' cells are: the report's
    predictions carry each window's value, so drift reads no recent window of its own."""

    def __init__(self, shown: list[str], after: Mapping[str, int]) -> None:
        self.names = shown  # by row of the charts
        # A row without an end keeps nothing: no window ends after the largest int64.
        self.after = np.array([after.get(name, np.iinfo(np.int64).max) for name in shown],
                              dtype=np.int64)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, rows: np.ndarray, end: np.ndarray, value: np.ndarray) -> None:
        """Predictions of shown rows (``rows``: their row of the charts)."""
        take = end > self.after[rows]
        if take.any():
            self.parts.append((rows[take].astype(np.int16), value[take]))

    def values(self) -> dict[str, np.ndarray]:
        if not self.parts:
            return {}
        rows = np.concatenate([r for r, _ in self.parts])
        values = np.concatenate([v for _, v in self.parts])
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=len(self.names))
        split = np.split(values[order], np.cumsum(counts)[:-1])
        return {self.names[r]: split[r] for r in np.flatnonzero(counts)}


def _numbers(preds: pa.Table, number_of: Callable[[list[str]], list[int]]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A table of predictions as arrays: (sensor, window end ms, value, label). Sensors are
    numbered by ``number_of`` (their Device/Tag names, each distinct one once)."""
    keys = sensor_keys(preds["Device"], preds["Tag"])
    distinct = pc.unique(keys)
    local = pc.index_in(keys, value_set=distinct).to_numpy(zero_copy_only=False)
    known = np.asarray(number_of(distinct.to_pylist()), dtype=np.int64)
    sensor = known[local].astype(np.int32)
    timestamps = pc.unique(preds["TS"])
    ends = _ends_ms(timestamps)
    end = ends[pc.index_in(preds["TS"], value_set=timestamps).to_numpy(zero_copy_only=False)]
    label = pc.fill_null(preds["Prediction"], 0).to_numpy().astype(np.int8)
    value = preds["Val"].to_numpy().astype(np.float32)
    return sensor, end, value, label


@dataclass(frozen=True)
class _Data:
    sensors: list[str]  # all sensors, most anomalies first
    flags: np.ndarray  # shown sensors x columns: 1 anomaly, 0 normal, NaN no prediction
    values: np.ndarray  # shown sensors x columns: window means
    share: np.ndarray  # columns: % of the scored sensors flagged, NaN where none scored
    anomalies: np.ndarray  # all sensors, in ``sensors`` order: windows flagged
    windows: np.ndarray  # all sensors, in ``sensors`` order: windows scored
    # Sensors asked for drift (``_Fold.data``'s ``after``): values of their windows after it.
    recent: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, preds: pa.Table, axis: Axis) -> _Data:
        fold = _Fold()
        fold(preds)
        return fold.data(axis)


def _truth_grid(truth: pa.Table, sensors: Sequence[str], axis: Axis) -> np.ndarray:
    """Shown sensors x columns: 1 where an anomaly was injected."""
    grid = np.zeros((len(sensors), axis.columns))
    keys = sensor_keys(truth["Device"], truth["Tag"]).to_pylist()
    ends = truth["End"].to_numpy()
    anomaly = truth["Anomaly"].to_numpy().astype(bool)
    col = axis.column(ends)
    row_of = {s: i for i, s in enumerate(sensors)}
    rows = np.array([row_of.get(k, -1) for k in keys])
    keep = anomaly & (rows >= 0) & (col >= 0) & (col < axis.columns)
    grid[rows[keep], col[keep]] = 1
    return grid


# --- what the page's charts show ------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """The range's predictions as the charts show them: the axis, the shown sensors' figures,
    the hours to shade as without predictions, and the injected anomalies of the timelines'
    sensors (when known)."""

    text: str  # the range, as the page names it
    axis: Axis
    data: _Data
    empty_hours: list[Hour]
    timelines: int  # the sensors drawn as lines, the first of ``data.sensors``
    truth: np.ndarray | None  # timelines x columns: 1 where an anomaly was injected

    @classmethod
    def of(cls, span: _Span, fold: _Fold, truth: pa.Table | None,
           after: Mapping[str, int] | None = None) -> _View:
        """``span`` has hours and ``fold`` predictions; ``after`` as ``_Fold.data`` takes it."""
        axis = Axis.fitting(span.first.start_ms, span.last.end_ms, fold.step_ms())
        data = fold.data(axis, after)
        # Bucketed (a long range): empty buckets are gaps already; shading hours would be noise.
        empty_hours = [] if axis.bucketed else [
            Hour(span.first.index + int(i)) for i in np.flatnonzero(span.predictions_per_hour() == 0)]
        n = min(TIMELINES, len(data.sensors))
        grid = _truth_grid(truth, data.sensors[:n], axis) if truth is not None else None
        return cls(span.text, axis, data, empty_hours, n, grid)

    @property
    def heatmap(self) -> int:
        """The sensors of the heatmap, the first of ``data.sensors``."""
        return len(self.data.sensors[:HEATMAP_SENSORS])


# --- drift of the sensors table's sensors ---------------------------------------------------


@dataclass(frozen=True)
class _DriftRanges:
    """The training ranges of the sensors table's sensors (``model.drift.training_ranges``),
    read before the predictions are placed on the axis, so that their values after each range
    are gathered in that same pass (``_Fold.data``'s ``after``)."""

    ranges: dict[Sensor, dict[str, str] | None]
    names: dict[str, str]  # each sensor of the table: why it has no drift ("" when it may)
    problem: str = ""  # why no sensor has drift (a damaged manifest): the page says it

    @classmethod
    def of(cls, store: Store, names: Sequence[str]) -> _DriftRanges:
        parsed: dict[str, Sensor] = {}
        why = {}
        for name in names:
            try:
                parsed[name] = Sensor.parse(name)
            except InvalidIdError:
                why[name] = "not a sensor id a model can have"
        try:
            ranges = training_ranges(store, parsed.values())
        except ModelError as exc:
            # The report is still worth having; ``fleetscore verify`` names the damage.
            return cls({}, {name: "" for name in names}, f"a model manifest is damaged ({exc})")
        for name, sensor in parsed.items():
            why[name] = "" if ranges[sensor] else NO_RANGE
        return cls(ranges, {name: why[name] for name in names})

    def after(self) -> dict[str, int]:
        """Each sensor with a range: the end (ms) of its training range's last window."""
        return {str(s): Hour.parse(span["to"]).end_ms for s, span in self.ranges.items() if span}

    def column(self, store: Store, recent: Mapping[str, np.ndarray]) -> _DriftColumn:
        """Each table sensor's drift, its recent values those ``recent`` gathered; the training
        windows are read only for sensors with a range and recent values (none: no read)."""
        found = {d.sensor: d for d in drift_of(
            store, {Sensor.parse(n): v for n, v in recent.items()}, self.ranges)}
        why = {}
        for name, reason in self.names.items():
            d = found.get(name)
            if self.problem:
                why[name] = self.problem
            elif d is None or d.statistic is None:
                why[name] = reason or _no_statistic(d)
        return _DriftColumn(found, why)


NO_RANGE = ("no training range is recorded for its model (an imported model, one trained "
            "before fleetscore recorded ranges, or no model any more)")


def _no_statistic(d: Drift | None) -> str:
    if d is None or d.trained_on is None:
        return NO_RANGE
    if not d.recent_windows:
        return f"no predictions in these hours after its training range (to {d.trained_on[1]})"
    return (f"its training windows ({d.trained_on[0]} .. {d.trained_on[1]}) are no longer in "
            "the store")


@dataclass(frozen=True)
class _DriftColumn:
    """The sensors table's drift: each sensor's ``Drift`` (two-sample Kolmogorov-Smirnov of
    its windows in the report's hours after its training range against its training windows),
    and, for those shown as "-", why."""

    drifts: dict[str, Drift]
    reasons: dict[str, str]
