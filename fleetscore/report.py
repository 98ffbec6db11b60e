"""``fleetscore report``: one self-contained HTML file with pictures (matplotlib, inline PNG).

The charts share a true time axis: one column per window of the report's range, so an hour
without predictions is an empty stretch (and a break in every line), never squeezed out.
Ticks fall on whole hours. The page has no script and no external resource, and reads from a
400 px phone (charts scroll sideways inside their frame) to a wide screen.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .hours import Hour, hour_range
from .predictions import read_predictions
from .arrivals import hours_with_arrivals
from .runs import list_manifests
from .stores import Store
from .text import count

HEATMAP_SENSORS = 60
TIMELINES = 6
HOUR_MS = 3_600_000
DEFAULT_STEP_MS = 60_000
# Hour tick spacings, so a chart carries about eight labels whatever the range.
TICK_HOURS = (1, 2, 3, 4, 6, 12, 24, 48, 96, 168)
FLAGGED, TRUTH, LINE, EMPTY = "#d62728", "#ff9f1a", "#1f77b4", "#ececec"


@dataclass(frozen=True)
class Axis:
    """The report's time axis: windows labelled by their end, every ``step_ms`` in the range."""

    start_ms: int  # the first hour's start
    end_ms: int  # the last hour's end
    step_ms: int

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
    manifests = list_manifests(store)
    # Default range: the hours that have data (a run of an empty hour, by mistake or far in
    # the past, must not stretch every report to years of nothing).
    known = hours_with_arrivals(store) or [
        Hour.parse(m["window"]) for m in manifests if m.get("status") != "no_data"]
    first = first or (min(known) if known else None)
    last = last or (max(known) if known else None)
    hours = hour_range(first, last) if first is not None and last is not None else []
    in_range = set(hours)
    manifests = [m for m in manifests if Hour.parse(m["window"]) in in_range]
    tables = {h: read_predictions(store, h) for h in hours}
    present = [t for t in tables.values() if t.num_rows]
    preds = pa.concat_tables(present) if present else None
    rows = {str(h): t.num_rows for h, t in tables.items()}
    output.write_text(render(store.url, hours, manifests, preds, rows=rows, truth=truth),
                      encoding="utf-8")
    n = preds.num_rows if preds is not None else 0
    return f"{count(len(hours), 'hour')}, {count(len(manifests), 'run')}, {count(n, 'prediction')}"


def render(store_url: str, hours: Sequence[Hour], manifests: list[dict], preds: pa.Table | None,
           *, rows: dict[str, int] | None = None, truth: pa.Table | None = None) -> str:
    sections = []
    span = f"{hours[0]} .. {hours[-1]}" if hours else "no runs"
    if preds is not None and preds.num_rows and hours:
        axis = Axis(hours[0].start_ms, hours[-1].start_ms + HOUR_MS, _step_ms(preds))
        data = _Data.of(preds, axis)
        empty_hours = [h for h in hours if not (rows or {}).get(str(h), 1)]
        shown = data.sensors[:HEATMAP_SENSORS]
        sections.append(_section(
            "Anomalies by sensor and time",
            _img(_heatmap(data, axis, len(shown)),
                 f"Heatmap of anomalies over {span}: one row for each of the {len(shown)} sensors "
                 "with the most anomalies, one column a window; red cells are windows flagged "
                 "anomalous, grey cells normal, white cells windows without a prediction."),
            f"{count(len(data.sensors), 'sensor')}; the {len(shown)} with the most anomalies are "
            "shown, most first. Red: anomaly, grey: normal, white: no prediction."))
        n = min(TIMELINES, len(data.sensors))
        names = ", ".join(data.sensors[:n])
        truth_grid = _truth_grid(truth, data.sensors[:n], axis) if truth is not None else None
        sections.append(_section(
            "Most anomalous sensors",
            _img(_timelines(data, axis, n, truth_grid, empty_hours),
                 f"Line charts of the window means of the {n} sensors with the most anomalies "
                 f"({names}) over {span}; red dots are windows the model flagged anomalous"
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
            "Share of the fleet flagged per window",
            _img(_fleet_share(share, axis, empty_hours),
                 f"Line chart of the percentage of scored sensors flagged anomalous in each window "
                 f"over {span}.{peak_text}"),
            f"Percentage of the sensors scored in a window that were flagged.{peak_text}"))
    else:
        sections.append(_section("Predictions", "<p>No predictions in this range.</p>", ""))
    sections.append(_section("Runs", _runs_table(hours, manifests, rows), _runs_summary(hours, manifests)))
    failures = [(m["window"], f) for m in manifests for f in m.get("failures", [])]
    if failures:
        body = "".join(
            f"<tr><td>{html.escape(w)}</td><td>{html.escape(f['sensor'])}</td>"
            f"<td>{html.escape(f['kind'])}</td><td class='message'>{html.escape(f['message'])}</td></tr>"
            for w, f in failures[:200])
        sections.append(_section("Failed sensors", f"<div class='scroll'><table><tr><th>hour</th>"
                                 f"<th>sensor</th><th>kind</th><th>message</th></tr>{body}</table>"
                                 "</div>", ""))
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fleetscore report {html.escape(span)}</title>
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
<p>Store <code>{html.escape(store_url)}</code>, hours {html.escape(span)} (UTC). Created {created}
by fleetscore {__version__}.</p>
{''.join(sections)}
</body></html>
"""


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


def _runs_table(hours: Sequence[Hour], manifests: list[dict], rows: dict[str, int] | None) -> str:
    if not hours:
        return "<p>No runs.</p>"
    head = ("<tr><th>hour</th><th>status</th><th>planned</th><th>scored</th><th>failed</th>"
            "<th>no data</th><th>no model</th><th>anomalies</th><th>predictions</th>"
            "<th>seconds</th></tr>")
    body = []
    for hour, status, cells in hour_rows(hours, manifests, rows):
        css = "not-run" if status == NOT_RUN else status
        body.append(f"<tr data-hour='{html.escape(hour)}'><td>{html.escape(hour)}</td>"
                    f"<td class='{html.escape(css)}'>{html.escape(status.replace('_', ' '))}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<div class='scroll'><table class='runs'>{head}{''.join(body)}</table></div>"


def _runs_summary(hours: Sequence[Hour], manifests: list[dict]) -> str:
    if not hours:
        return ""
    statuses: dict[str, int] = {}
    for _, status, _ in hour_rows(hours, manifests):
        statuses[status.replace("_", " ")] = statuses.get(status.replace("_", " "), 0) + 1
    parts = ", ".join(f"{n:,} {s}" for s, n in sorted(statuses.items(), key=lambda kv: -kv[1]))
    return f"Every hour of the range, run or not: {count(len(hours), 'hour')} ({parts})."


# --- data on the time axis ------------------------------------------------------------------


def _ends_ms(ts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    parsed = pc.strptime(ts, format="%Y-%m-%d %H:%M:%S", unit="ms")
    return pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)


def _step_ms(preds: pa.Table) -> int:
    """The window length: the smallest gap between window labels (60 s unless ingested
    with another --interval)."""
    ends = np.unique(_ends_ms(pc.unique(preds["TS"])))
    gaps = np.diff(ends)
    gaps = gaps[gaps > 0]
    return int(gaps.min()) if len(gaps) else DEFAULT_STEP_MS


@dataclass(frozen=True)
class _Data:
    sensors: list[str]  # all sensors, most anomalies first
    flags: np.ndarray  # shown sensors x columns: 1 anomaly, 0 normal, NaN no prediction
    values: np.ndarray  # shown sensors x columns: window means
    share: np.ndarray  # columns: % of the scored sensors flagged, NaN where none scored

    @classmethod
    def of(cls, preds: pa.Table, axis: Axis) -> _Data:
        keys = pc.binary_join_element_wise(preds["Device"], preds["Tag"], "/")
        per_sensor = pa.table({"k": keys, "p": preds["Prediction"]}).group_by("k").aggregate(
            [("p", "sum")])
        names = np.array(per_sensor["k"].to_pylist(), dtype=object)
        order = np.lexsort((names, -per_sensor["p_sum"].to_numpy()))  # ties by name
        sensors = [str(s) for s in names[order]]
        shown = sensors[:max(HEATMAP_SENSORS, TIMELINES)]
        col = axis.column(_ends_ms(preds["TS"]))
        inside = (col >= 0) & (col < axis.columns)
        flags = np.full((len(shown), axis.columns), np.nan)
        values = np.full_like(flags, np.nan)
        row_of = {s: i for i, s in enumerate(shown)}
        rows = np.array([row_of.get(k, -1) for k in keys.to_pylist()])
        keep = inside & (rows >= 0)
        flags[rows[keep], col[keep]] = preds["Prediction"].to_numpy()[keep].astype(float)
        values[rows[keep], col[keep]] = preds["Val"].to_numpy()[keep]
        flagged = np.bincount(col[inside], weights=preds["Prediction"].to_numpy()[inside].astype(float),
                              minlength=axis.columns)
        scored = np.bincount(col[inside], minlength=axis.columns).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(scored > 0, flagged / scored * 100, np.nan)
        return cls(sensors, flags, values, share)


def _truth_grid(truth: pa.Table, sensors: Sequence[str], axis: Axis) -> np.ndarray:
    """Shown sensors x columns: 1 where an anomaly was injected."""
    grid = np.zeros((len(sensors), axis.columns))
    keys = pc.binary_join_element_wise(truth["Device"], truth["Tag"], "/").to_pylist()
    ends = truth["End"].to_numpy()
    anomaly = truth["Anomaly"].to_numpy().astype(bool)
    col = axis.column(ends)
    row_of = {s: i for i, s in enumerate(sensors)}
    rows = np.array([row_of.get(k, -1) for k in keys])
    keep = anomaly & (rows >= 0) & (col >= 0) & (col < axis.columns)
    grid[rows[keep], col[keep]] = 1
    return grid


# --- charts ---------------------------------------------------------------------------------


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


def tick_hours(span_hours: float) -> int:
    """Hours between ticks: the smallest spacing that keeps about eight labels."""
    return next((k for k in TICK_HOURS if span_hours / k <= 8), TICK_HOURS[-1])


def _time_axis(ax, axis: Axis, *, labels: bool = True) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(_utc(axis.start_ms), _utc(axis.end_ms))
    span = (axis.end_ms - axis.start_ms) / HOUR_MS
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


def _shade_hours(ax, hours_ms: Sequence[int], label: str | None) -> None:
    for i, start in enumerate(hours_ms):
        ax.axvspan(_utc(start), _utc(start + HOUR_MS), color=EMPTY, zorder=0,
                   label=label if i == 0 else None)


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (first, last + 1) column pairs."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _heatmap(data: _Data, axis: Axis, n: int):
    import matplotlib.dates as mdates
    from matplotlib.colors import ListedColormap

    plt, fig = _figure(10, max(2.6, 0.2 * n + 1.3))
    ax = fig.add_subplot()
    left, right = mdates.date2num(_utc(axis.start_ms)), mdates.date2num(_utc(axis.end_ms))
    ax.imshow(np.ma.masked_invalid(data.flags[:n]), aspect="auto", interpolation="nearest",
              cmap=ListedColormap(["#bdbdbd", FLAGGED]), vmin=0, vmax=1,
              extent=(left, right, n - 0.5, -0.5))
    ax.set_yticks(range(n), data.sensors[:n], fontsize=8)
    _time_axis(ax, axis)
    ax.set_ylabel("sensor (Device/Tag)")
    return plt, fig


def _timelines(data: _Data, axis: Axis, n: int, truth: np.ndarray | None, empty_hours):
    plt, fig = _figure(10, 1.6 * n + 0.9)
    ends = np.array([_utc(e) for e in axis.ends()])
    starts = np.array([_utc(e - axis.step_ms) for e in axis.ends()])
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for i, ax in enumerate(axes):
        _shade_hours(ax, [h.start_ms for h in empty_hours], "no predictions")
        if truth is not None:
            for a, b in _spans(truth[i]):
                ax.axvspan(starts[a], ends[b - 1], color=TRUTH, alpha=0.35, linewidth=0, zorder=1,
                           label="injected anomaly (truth)" if (a, b) == _spans(truth[i])[0] else None)
        ax.plot(ends, data.values[i], color=LINE, linewidth=0.9, zorder=2, label="window mean")
        flagged = data.flags[i] == 1
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
    ends = np.array([_utc(e) for e in axis.ends()])
    ax.plot(ends, share, color=FLAGGED, linewidth=0.9)
    ax.set_ylabel("% flagged")
    ax.set_ylim(bottom=0)
    _time_axis(ax, axis)
    if empty_hours:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    return plt, fig
