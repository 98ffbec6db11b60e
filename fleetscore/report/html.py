"""``fleetscore report``: one self-contained HTML file with pictures (matplotlib, inline PNG).

The charts share a true time axis: one column per window of the report's range, so an hour
without predictions is an empty stretch (and a break in every line), never squeezed out.
Ticks fall on whole hours. The page has no script and no external resource, and reads from a
400 px phone (charts scroll sideways inside their frame) to a wide screen.

A long range (a backfill over years) is drawn in buckets instead of windows: hours, days or
weeks, whichever keeps the axis under ``MAX_COLUMNS`` columns. A bucket's heatmap cell is the
share of its windows flagged, its line point the mean of its window means; the runs table
then has one row per day. The report stays a few hundred kilobytes and renders in seconds.

A fleet's range is read the same way whatever its size: the predictions files are parsed in
batches and folded into arrays as they come (a number a sensor, 17 bytes a prediction, up to
``KEPT_BYTES``; a larger range is read a second time for the shown sensors' rows instead, so
memory follows the fleet, not the range), and the page shows the sensors with the most
anomalies (``TOP_SENSORS`` in a table with the fleet's totals, ``HEATMAP_SENSORS`` in the
heatmap, ``TIMELINES`` as lines), never a row or a line a sensor.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from fleetscore import __version__
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensor_codes import sensor_keys
from fleetscore.core.text import count
from fleetscore.data.arrivals import hours_with_arrivals
from fleetscore.data.predictions import COLUMNS, SCHEMA, decode, format_of, predictions_folder
from fleetscore.errors import InputError, UsageError
from fleetscore.runs.table import between, no_runs, read_runs
from fleetscore.storage import Store
from fleetscore.storage.base import READERS, get_many

HEATMAP_SENSORS = 60
TIMELINES = 6
TOP_SENSORS = 20  # rows of the top sensors' table, whatever the fleet's size
FAILURES_SHOWN = 200  # rows of the failed sensors' table; the rest are counted
BATCH_BYTES = 64 << 20  # predictions files read, then parsed and folded, together
# Predictions kept for the charts (17 bytes each: 24 hours of 10,000 sensors); a larger range
# is read twice instead (``_Fold``).
KEPT_BYTES = 256 << 20
SEPARATE_BYTES = 4 << 20  # a CSV this large is parsed on its own (small ones are joined)
HOUR_MS = 3_600_000
DEFAULT_STEP_MS = 60_000
# Hour tick spacings, so a chart carries about eight labels whatever the range.
TICK_HOURS = (1, 2, 3, 4, 6, 12, 24, 48, 96, 168)
MAX_COLUMNS = 2000
BUCKETS_MS = (300_000, 900_000, 3_600_000, 6 * 3_600_000, 86_400_000, 7 * 86_400_000)
DAILY_TABLE_HOURS = 14 * 24  # longer ranges: the runs table has a row per day
FLAGGED, TRUTH, LINE, EMPTY = "#d62728", "#ff9f1a", "#1f77b4", "#ececec"


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


def write_report(store: Store, output: Path, *, first: Hour | None = None,
                 last: Hour | None = None, truth: pa.Table | None = None) -> str:
    """Write the report; ``truth`` (Device, Tag, End ms, Anomaly) is drawn beside the
    predictions when known (the demo's injected anomalies)."""
    _need_matplotlib()
    every_run = None
    if first is None or last is None:
        # Default range: the hours that have data (a run of an empty hour, by mistake or far
        # in the past, must not stretch every report to years of nothing).
        known = hours_with_arrivals(store)
        bounds = (known[0], known[-1]) if known else None
        if bounds is None:
            every_run = read_runs(store)
            ran = every_run.filter(pc.fill_null(pc.not_equal(every_run["status"], "no_data"),
                                                True))
            hours = ran["hour"].to_numpy()
            bounds = (Hour(int(hours.min())), Hour(int(hours.max()))) if len(hours) else None
        if bounds is not None:
            first, last = first or bounds[0], last or bounds[1]
    if first is not None and last is not None:
        if last < first:
            hour_range(first, last)  # raises: the range is reversed
        runs = (between(every_run, first, last) if every_run is not None
                else read_runs(store, first=first, last=last))
        span = _Span(first, last, runs)
    else:
        span = _Span.empty()
    # Only hours that were run can have predictions: read those, from their manifests' files.
    runs = span.runs
    fold = _Fold(again=lambda add: _fold_predictions(store, runs, add))
    span = span.with_rows(_fold_predictions(store, runs, fold))
    output.write_text(render(store.url, span, fold, truth=truth), encoding="utf-8")
    n = fold.rows
    return (f"{count(span.hours, 'hour')}, {count(span.runs.num_rows, 'run')}, "
            f"{count(n, 'prediction')}")


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

    def manifests(self) -> list[dict]:
        """The runs as manifest-shaped dicts (for the hourly table: a short range)."""
        out = []
        for r in self.runs.drop_columns(["failures", "predictions"]).to_pylist():
            m = {k: v for k, v in r.items() if v is not None and k not in _SENSOR_COUNTS}
            m["sensors"] = {k: r[k] for k in _SENSOR_COUNTS if r[k] is not None}
            out.append(m)
        return out


_SENSOR_COUNTS = ("planned", "scored", "failed", "no_data", "no_model")


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


def render(store_url: str, span: _Span, preds: pa.Table | _Fold | None, *,
           truth: pa.Table | None = None) -> str:
    """The page: ``preds`` a table of predictions, or already folded (``_Fold``)."""
    sections = []
    text = span.text
    per_hour = span.predictions_per_hour()
    fold = preds
    if isinstance(preds, pa.Table):
        fold = _Fold()
        fold(preds)
    if fold is not None and fold.rows and span.hours:
        axis = Axis.fitting(span.first.start_ms, span.last.end_ms, fold.step_ms())
        data = fold.data(axis)
        sections.append(_section("Sensors", _top_table(data), _totals(data)))
        # Bucketed (a long range): empty buckets are gaps already; shading hours would be noise.
        column = _bucket_name(axis.step_ms) if axis.bucketed else "window"
        empty_hours = [] if axis.bucketed else [
            Hour(span.first.index + int(i)) for i in np.flatnonzero(per_hour == 0)]
        shown = data.sensors[:HEATMAP_SENSORS]
        sections.append(_section(
            "Anomalies by sensor and time",
            _img(_heatmap(data, axis, len(shown)),
                 f"Heatmap of anomalies over {text}: one row for each of the {len(shown)} sensors "
                 f"with the most anomalies, one column a {column}; " + (
                     "the redder a cell, the larger the share of its windows flagged anomalous, "
                     "white cells have no prediction." if axis.bucketed else
                     "red cells are windows flagged anomalous, grey cells normal, white cells "
                     "windows without a prediction.")),
            f"{count(len(data.sensors), 'sensor')}; the {len(shown)} with the most anomalies are "
            "shown, most first. Red: anomaly, grey: normal, white: no prediction."))
        n = min(TIMELINES, len(data.sensors))
        names = ", ".join(data.sensors[:n])
        truth_grid = _truth_grid(truth, data.sensors[:n], axis) if truth is not None else None
        sections.append(_section(
            "Most anomalous sensors",
            _img(_timelines(data, axis, n, truth_grid, empty_hours),
                 f"Line charts of the window means of the {n} sensors with the most anomalies "
                 f"({names}) over {text}; red dots are windows the model flagged anomalous"
                 + ("; orange bands are the anomalies injected into the data" if truth_grid is not None
                    else "")
                 + "; breaks in a line are windows without a prediction."),
            "Window means over time; red dots: flagged by the model"
            + ("; orange bands: injected anomalies (ground truth)" if truth_grid is not None else "")
            + ("; grey: hours without predictions" if empty_hours else "") + "."))
        share = data.share
        peak = int(np.nanargmax(share)) if np.isfinite(share).any() else None
        peak_text = (f" The peak is {share[peak]:.0f}% at "
                     f"{_utc(axis.ends()[peak]):%Y-%m-%d %H:%M} UTC." if peak is not None else "")
        sections.append(_section(
            "Share of the fleet flagged per " + (_bucket_name(axis.step_ms) if axis.bucketed
                                                 else "window"),
            _img(_fleet_share(share, axis, empty_hours),
                 f"Line chart of the percentage of scored sensors flagged anomalous in each window "
                 f"over {text}.{peak_text}"),
            f"Percentage of the sensors scored in a window that were flagged.{peak_text}"))
    else:
        sections.append(_section("Predictions", "<p>No predictions in this range.</p>", ""))
    sections.append(_section("Runs", _runs_table(span), _runs_summary(span)))
    failures = _failures(span.runs, FAILURES_SHOWN)
    if failures:
        body = "".join(
            f"<tr><td>{html.escape(w)}</td><td>{html.escape(f['sensor'] or '')}</td>"
            f"<td>{html.escape(f['kind'] or '')}</td>"
            f"<td class='message'>{html.escape(f['message'] or '')}</td></tr>"
            for w, f in failures)
        total = int(pc.sum(pc.list_value_length(span.runs["failures"])).as_py() or 0)
        shown = (f"; the first {len(failures):,}, in hour order, are listed."
                 if total > len(failures) else ".")
        note = f"{count(total, 'failed sensor')} over the range, one row a sensor and hour{shown}"
        sections.append(_section("Failed sensors", f"<div class='scroll'><table><tr><th>hour</th>"
                                 f"<th>sensor</th><th>kind</th><th>message</th></tr>{body}</table>"
                                 "</div>", note))
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fleetscore report {html.escape(text)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; padding: 0.5em 1em 2em;
       max-width: 1100px; color: #222; line-height: 1.4; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; margin-top: 1.6em; }}
code {{ overflow-wrap: anywhere; }}
.scroll {{ overflow-x: auto; max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }}
td:first-child, th:first-child {{ text-align: left; }}
td.message {{ white-space: normal; min-width: 14em; text-align: left; }}
.succeeded {{ color: #1a7f37; }} .partial {{ color: #9a6700; }} .failed {{ color: #c62828; }}
.not-run, .no_data {{ color: #666; font-style: italic; }}
.chart img {{ display: block; width: 100%; min-width: 600px; height: auto; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>fleetscore report</h1>
<p>Store <code>{html.escape(store_url)}</code>, hours {html.escape(text)} (UTC). Created {created}
by fleetscore {__version__}.</p>
{''.join(sections)}
</body></html>
"""


def _totals(data: _Data) -> str:
    scored = int(data.windows.sum())
    flagged = int(data.anomalies.sum())
    with_any = int((data.anomalies > 0).sum())
    return (f"{count(len(data.sensors), 'sensor')} scored, {count(scored, 'window')}, "
            f"{count(flagged, 'anomaly')} ({_percent(flagged, scored)}); "
            f"{with_any:,} of the sensors had at least one anomaly. The "
            f"{min(TOP_SENSORS, len(data.sensors))} with the most anomalies:")


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _top_table(data: _Data) -> str:
    """The sensors with the most anomalies (``TOP_SENSORS`` rows, whatever the fleet)."""
    body = "".join(
        f"<tr data-sensor='{html.escape(name, quote=True)}'><td>{i + 1}</td>"
        f"<td>{html.escape(name)}</td><td>{int(a):,}</td><td>{int(w):,}</td>"
        f"<td>{_percent(int(a), int(w))}</td></tr>"
        for i, (name, a, w) in enumerate(zip(data.sensors[:TOP_SENSORS],
                                             data.anomalies[:TOP_SENSORS].tolist(),
                                             data.windows[:TOP_SENSORS].tolist(), strict=True)))
    return ("<div class='scroll'><table class='top'><tr><th>#</th><th>sensor</th>"
            f"<th>anomalies</th><th>windows</th><th>flagged</th></tr>{body}</table></div>")


def _section(title: str, body: str, note: str) -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>{note_html}{body}"


def _utc(ms: int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


# --- the runs table -------------------------------------------------------------------------

NOT_RUN = "not run"


def hour_rows(hours: Sequence[Hour], manifests: list[dict],
              rows: dict[str, int] | None = None) -> list[tuple[str, str, list[str]]]:
    """(hour, status, cells) for every hour of the range, run or not."""
    by_window = {m["window"]: m for m in manifests}
    out = []
    for hour in hours:
        m = by_window.get(str(hour))
        predictions = (rows or {}).get(str(hour))
        shown = "" if predictions is None else f"{predictions:,}"
        if m is None:
            out.append((str(hour), NOT_RUN, ["", "", "", "", "", "", shown, ""]))
            continue
        s = m.get("sensors", {})
        cells = [_n(s.get(k)) for k in ("planned", "scored", "failed", "no_data", "no_model")]
        seconds = m.get("duration_s")
        out.append((str(hour), str(m.get("status", "?")),
                    [*cells, _n(m.get("anomalies")), shown,
                     "" if seconds is None else f"{seconds:,.2f}"]))
    return out


def _n(value) -> str:
    return "" if value is None else f"{value:,}"


def _runs_table(span: _Span) -> str:
    if not span.hours:
        return "<p>No runs.</p>"
    if span.hours > DAILY_TABLE_HOURS:
        return _daily_table(span)
    head = ("<tr><th>hour</th><th>status</th><th>planned</th><th>scored</th><th>failed</th>"
            "<th>no data</th><th>no model</th><th>anomalies</th><th>predictions</th>"
            "<th>seconds</th></tr>")
    hours = span.hour_list()
    rows = {str(h): int(n) for h, n in zip(hours, span.predictions_per_hour(), strict=True)}
    body = []
    for hour, status, cells in hour_rows(hours, span.manifests(), rows):
        css = "not-run" if status == NOT_RUN else status
        body.append(f"<tr data-hour='{html.escape(hour)}'><td>{html.escape(hour)}</td>"
                    f"<td class='{html.escape(css)}'>{html.escape(status.replace('_', ' '))}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<div class='scroll'><table class='runs'>{head}{''.join(body)}</table></div>"


DAILY_STATUSES = ("succeeded", "partial", "failed", "no_data", NOT_RUN)


def _daily_table(span: _Span) -> str:
    """A long range: one row per UTC day that has runs or data (days with neither are
    counted in the summary line, not listed)."""
    first_day = span.first.index // 24
    days = span.last.index // 24 - first_day + 1
    day_of_hour = (np.arange(span.first.index, span.last.index + 1) // 24) - first_day
    day_of_run = span.runs["hour"].to_numpy() // 24 - first_day
    hours = np.bincount(day_of_hour, minlength=days)
    ran = np.bincount(day_of_run, minlength=days)
    status = _statuses(span.runs)
    counts = {s: np.bincount(day_of_run[status == s], minlength=days)
              for s in DAILY_STATUSES if s != NOT_RUN}
    counts[NOT_RUN] = hours - ran
    with_rows = np.bincount(day_of_hour, weights=span.predictions_per_hour() > 0,
                            minlength=days)
    scored = np.bincount(day_of_run, weights=_filled(span.runs["scored"]), minlength=days)
    anomalies = np.bincount(day_of_run, weights=_filled(span.runs["anomalies"]), minlength=days)
    shown = np.flatnonzero((ran > 0) | (with_rows > 0))  # days with neither: nothing to show
    names = np.datetime_as_string((shown + first_day).astype("datetime64[D]"))
    head = ("<tr><th>day</th>" + "".join(f"<th>{html.escape(s.replace('_', ' '))}</th>"
                                         for s in DAILY_STATUSES)
            + "<th>scored</th><th>anomalies</th></tr>")
    body = []
    for day, d in zip(names.tolist(), shown.tolist(), strict=True):
        body.append(f"<tr data-day='{day}'><td>{day}</td>"
                    + "".join(f"<td>{counts[s][d] or ''}</td>" for s in DAILY_STATUSES)
                    + f"<td>{int(scored[d]):,}</td><td>{int(anomalies[d]):,}</td></tr>")
    return (f"<p class='note'>{count(span.hours, 'hour')}: one row per day with runs "
            f"(hourly rows for ranges of {DAILY_TABLE_HOURS // 24} days or less).</p>"
            f"<div class='scroll'><table class='runs daily'>{head}{''.join(body)}</table></div>")


def _statuses(runs: pa.Table) -> np.ndarray:
    """Each run's status as the tables show it ('?' where its manifest has none)."""
    return np.asarray(pc.fill_null(runs["status"], "?").to_pylist(), dtype=object)


def _filled(column: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(column, 0).to_numpy().astype(float)


def _runs_summary(span: _Span) -> str:
    if not span.hours:
        return ""
    # Statuses by count, most first; ties in the order the hours first show them.
    status = _statuses(span.runs)
    offsets = span.offsets()
    firsts: dict[str, tuple[int, int]] = {}  # status: (hours, first hour offset)
    for s in dict.fromkeys(status.tolist()):
        where = status == s
        firsts[s.replace("_", " ")] = (int(where.sum()), int(offsets[where].min()))
    not_run = span.hours - len(status)
    if not_run:
        ran = np.zeros(span.hours, dtype=bool)
        ran[offsets] = True
        firsts[NOT_RUN] = (not_run, int(np.argmin(ran)))
    merged: dict[str, tuple[int, int]] = {}
    for s, (n, at) in firsts.items():  # "no_data" and "no data" read the same
        m = merged.get(s, (0, at))
        merged[s] = (m[0] + n, min(m[1], at))
    parts = ", ".join(f"{n:,} {s}" for s, (n, _) in
                      sorted(merged.items(), key=lambda kv: (-kv[1][0], kv[1][1])))
    return f"Every hour of the range, run or not: {count(span.hours, 'hour')} ({parts})."


def _failures(runs: pa.Table, most: int) -> list[tuple[str, dict]]:
    """The first ``most`` failed sensors of the runs, in hour order, with their hour."""
    listed = runs["failures"]
    owner = pc.list_parent_indices(listed).to_numpy()[:most]
    failures = pc.list_flatten(listed).combine_chunks()[:most].to_pylist()
    windows = runs["window"].to_pylist() if len(failures) else []
    return [(windows[i], f) for i, f in zip(owner.tolist(), failures, strict=True)]


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

    def data(self, axis: Axis) -> _Data:
        names = np.array(list(self.ids), dtype=object)
        order = np.lexsort((names, -self.anomalies))  # most anomalies first, ties by name
        shown = min(len(order), max(HEATMAP_SENSORS, TIMELINES))
        size = shown * axis.columns
        cells = np.zeros((3, size))  # windows, flagged, sum of values per (sensor, column)

        def add(rows: np.ndarray, end: np.ndarray, value: np.ndarray, label: np.ndarray) -> None:
            col = axis.column(end)
            keep = (col >= 0) & (col < axis.columns) & (rows >= 0)
            cell = rows[keep] * axis.columns + col[keep]
            cells[0] += np.bincount(cell, minlength=size)
            cells[1] += np.bincount(cell, weights=label[keep], minlength=size)
            cells[2] += np.bincount(cell, weights=value[keep].astype(float), minlength=size)

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
                     self.anomalies[order], self.windows[order])


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


# --- charts ---------------------------------------------------------------------------------


def _need_matplotlib() -> None:
    """The charts are matplotlib's, the ``report`` extra: without it a report is refused
    before anything is read or written (exit 2), in one line that names the extra."""
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:
        raise UsageError("fleetscore report needs the report extra (matplotlib): "
                         "pip install 'fleetscore[report]'")


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _img(fig_and_plt, alt: str) -> str:
    plt, fig = fig_and_plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure class="chart"><div class="scroll"><img alt="{html.escape(alt, quote=True)}" '
            f'src="data:image/png;base64,{data}"></div></figure>')


def _bucket_name(step_ms: int) -> str:
    names = {300_000: "5 minutes", 900_000: "15 minutes", 3_600_000: "hour",
             6 * 3_600_000: "6 hours", 86_400_000: "day", 7 * 86_400_000: "week"}
    return names.get(step_ms, f"{step_ms // 60_000} minutes")


def tick_hours(span_hours: float) -> int:
    """Hours between ticks: the smallest spacing that keeps about eight labels."""
    return next((k for k in TICK_HOURS if span_hours / k <= 8), TICK_HOURS[-1])


def _time_axis(ax, axis: Axis, *, labels: bool = True) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(_utc(axis.start_ms), _utc(axis.end_ms))
    span = (axis.end_ms - axis.start_ms) / HOUR_MS
    if span > TICK_HOURS[-1] * 8:  # beyond eight weeks: matplotlib's calendar ticks
        locator = _calendar_locator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
        ax.grid(axis="x", color="#ddd", linewidth=0.6)
        if labels:
            ax.tick_params(axis="x", labelsize=9)
            ax.set_xlabel(f"UTC; one column a {_bucket_name(axis.step_ms)}")
        else:
            ax.tick_params(axis="x", labelbottom=False)
        return
    ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, min(tick_hours(span), 24)))
                               if tick_hours(span) <= 24 else
                               mdates.DayLocator(interval=tick_hours(span) // 24))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if span <= 24 else "%m-%d %H:%M",
                                                      tz=UTC))
    ax.grid(axis="x", color="#ddd", linewidth=0.6)
    if labels:
        ax.tick_params(axis="x", labelsize=9)
        day = _utc(axis.start_ms).strftime("%Y-%m-%d")
        ax.set_xlabel(f"window end (UTC), {day}" if span <= 24 else "window end (UTC)")
    else:
        ax.tick_params(axis="x", labelbottom=False)


def _calendar_locator():
    return _calendar_locator_class()(tz=UTC, maxticks=9)


@functools.cache
def _calendar_locator_class():
    """matplotlib's AutoDateLocator, its ticks worked out once per view: a report's charts
    share one time axis, and every layout and drawing pass of each of their axes asks again
    (a walk over the calendar each time)."""
    import matplotlib.dates as mdates

    class CalendarLocator(mdates.AutoDateLocator):
        def __call__(self):
            key = tuple(self.viewlim_to_dt())
            if key not in _TICKS:
                if len(_TICKS) > 64:
                    _TICKS.clear()
                _TICKS[key] = super().__call__()
            return np.array(_TICKS[key], copy=True)

    return CalendarLocator


_TICKS: dict[tuple, np.ndarray] = {}


def _datetimes(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, dtype="datetime64[ms]")


def _shade_hours(ax, hours_ms: Sequence[int], label: str | None) -> None:
    """Grey spans over hours without predictions, consecutive hours merged into one span."""
    if not hours_ms:
        return
    starts = np.sort(np.asarray(hours_ms, dtype=np.int64))
    breaks = np.flatnonzero(np.diff(starts) != HOUR_MS) + 1
    for i, run in enumerate(np.split(starts, breaks)):
        ax.axvspan(_utc(run[0]), _utc(run[-1] + HOUR_MS), color=EMPTY, zorder=0,
                   label=label if i == 0 else None)


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (first, last + 1) column pairs."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _heatmap(data: _Data, axis: Axis, n: int):
    import matplotlib.dates as mdates
    from matplotlib.colors import LinearSegmentedColormap, ListedColormap

    plt, fig = _figure(10, max(2.6, 0.2 * n + 1.3))
    ax = fig.add_subplot()
    left, right = mdates.date2num(_utc(axis.start_ms)), mdates.date2num(_utc(axis.end_ms))
    cmap = (LinearSegmentedColormap.from_list("flagged", ["#bdbdbd", FLAGGED]) if axis.bucketed
            else ListedColormap(["#bdbdbd", FLAGGED]))
    ax.imshow(np.ma.masked_invalid(data.flags[:n]), aspect="auto", interpolation="nearest",
              cmap=cmap, vmin=0, vmax=1, extent=(left, right, n - 0.5, -0.5))
    ax.set_yticks(range(n), data.sensors[:n], fontsize=8)
    _time_axis(ax, axis)
    ax.set_ylabel("sensor (Device/Tag)")
    return plt, fig


def _timelines(data: _Data, axis: Axis, n: int, truth: np.ndarray | None, empty_hours):
    plt, fig = _figure(10, 1.6 * n + 0.9)
    ends = _datetimes(axis.ends())
    starts = _datetimes(axis.ends() - axis.step_ms)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        _shade_hours(ax, [h.start_ms for h in empty_hours], "no predictions")
        if truth is not None:
            for a, b in _spans(truth[i]):
                ax.axvspan(starts[a], ends[b - 1], color=TRUTH, alpha=0.35, linewidth=0, zorder=1,
                           label="injected anomaly (truth)" if (a, b) == _spans(truth[i])[0] else None)
        ax.plot(ends, data.values[i], color=LINE, linewidth=0.9, zorder=2, label="window mean")
        flagged = data.flags[i] > 0
        ax.scatter(ends[flagged], data.values[i][flagged], color=FLAGGED, s=12, zorder=3,
                   label="flagged by the model")
        ax.set_title(data.sensors[i], loc="left", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        _time_axis(ax, axis, labels=i == n - 1)
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="upper right", ncols=len(handles), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.6 * n + 0.9)))
    return plt, fig


def _fleet_share(share: np.ndarray, axis: Axis, empty_hours):
    plt, fig = _figure(10, 2.4)
    ax = fig.add_subplot()
    _shade_hours(ax, [h.start_ms for h in empty_hours], "no predictions")
    ends = _datetimes(axis.ends())
    ax.plot(ends, share, color=FLAGGED, linewidth=0.9)
    ax.set_ylabel("% flagged")
    ax.set_ylim(bottom=0)
    _time_axis(ax, axis)
    if empty_hours:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    return plt, fig
