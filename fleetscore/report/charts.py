"""The report's charts: matplotlib figures on the report's time axis (``data.Axis``), each
handed back as PNG bytes. Ticks fall on whole hours, about eight to a chart; beyond eight
weeks, on matplotlib's calendar ticks.

matplotlib is the ``report`` extra: it is imported inside the functions that draw, never when
this module is, so the package imports without it and a report says which extra it needs
(``_need_matplotlib``).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np

from fleetscore.errors import UsageError
from fleetscore.report.data import Axis, _Data

HOUR_MS = 3_600_000
# Hour tick spacings, so a chart carries about eight labels whatever the range.
TICK_HOURS = (1, 2, 3, 4, 6, 12, 24, 48, 96, 168)
FLAGGED, TRUTH, LINE, EMPTY = "#d62728", "#ff9f1a", "#1f77b4", "#ececec"


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


def _png(plt, fig) -> bytes:
    """The figure as PNG, and closed (pyplot keeps every open figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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


def _heatmap(data: _Data, axis: Axis, n: int) -> bytes:
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
    return _png(plt, fig)


def _timelines(data: _Data, axis: Axis, n: int, truth: np.ndarray | None,
               empty_hours) -> bytes:
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
    return _png(plt, fig)


def _fleet_share(share: np.ndarray, axis: Axis, empty_hours) -> bytes:
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
    return _png(plt, fig)


def _utc(ms: int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)
