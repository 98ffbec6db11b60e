"""``fleetscore report``: one self-contained HTML file with pictures (matplotlib, inline PNG).

The charts share a true time axis: one column per window of the report's range, so an hour
without predictions is an empty stretch (and a break in every line), never squeezed out.
Ticks fall on whole hours. The page has no script and no external resource, and reads from a
400 px phone (charts scroll sideways inside their frame) to a wide screen.

A long range (a backfill over years) is drawn in buckets instead of windows (``data.Axis``);
the runs table then has one row per day. The report stays a few hundred kilobytes and renders
in seconds.

What the page shows is read in ``data`` and drawn in ``charts``; this module lays out the
page: the sensors with the most anomalies (``TOP_SENSORS`` in a table with the fleet's
totals, the charts' few), every hour of the range in the runs table, and the failed sensors
(``FAILURES_SHOWN``, the rest counted), never a row a sensor of the fleet. The table's sensors,
and only they, get their drift (``model.drift``, ``data._DriftRanges``).

Given a backtest (``fleetscore backtest --json``, read by ``scoring.backtest.read_backtest``),
the page ends with it: the model beside chance overall, the worst sensor, what was fitted on
what, and the sensors worst first (``BACKTEST_SHOWN``, the rest counted).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore import __version__
from fleetscore.alerts.records import AlertRecord, all_records
from fleetscore.core.hours import Hour
from fleetscore.core.text import count
from fleetscore.model.drift import ALPHA, THRESHOLD, Drift
from fleetscore.model.features import label
from fleetscore.report.charts import (
    _bucket_name,
    _fleet_share,
    _heatmap,
    _need_matplotlib,
    _timelines,
    _utc,
)
from fleetscore.report.data import (
    Axis,
    _Data,
    _DriftColumn,
    _DriftRanges,
    _Fold,
    _read_range,
    _Span,
    _View,
)
from fleetscore.scoring.backtest import Backtest, Figures
from fleetscore.storage import Store

TOP_SENSORS = 20  # rows of the top sensors' table, whatever the fleet's size
FAILURES_SHOWN = 200  # rows of the failed sensors' table; the rest are counted
ALERTS_SHOWN = 200  # rows of the alerts' table; the rest are counted
BACKTEST_SHOWN = 200  # rows of the backtest's sensors table, worst first; the rest are counted
DAILY_TABLE_HOURS = 14 * 24  # longer ranges: the runs table has a row per day


def write_report(store: Store, output: Path, *, first: Hour | None = None,
                 last: Hour | None = None, truth: pa.Table | None = None,
                 backtest: Backtest | None = None) -> str:
    """Write the report; ``truth`` (Device, Tag, End ms, Anomaly) is drawn beside the
    predictions when known (the demo's injected anomalies), ``backtest`` shown at the end."""
    _need_matplotlib()
    span, fold = _read_range(store, first, last)
    alerts = _alerts_in(store, span)
    view, drift = _view_and_drift(store, span, fold, truth)
    output.write_text(render(store.url, span, view, drift=drift, alerts=alerts,
                             backtest=backtest), encoding="utf-8")
    shown = f", a backtest of {count(len(backtest.sensors), 'sensor')}" if backtest else ""
    return (f"{count(span.hours, 'hour')}, {count(span.runs.num_rows, 'run')}, "
            f"{count(fold.rows, 'prediction')}{shown}")


def _view_and_drift(store: Store, span: _Span, fold: _Fold, truth: pa.Table | None
                    ) -> tuple[_View | None, _DriftColumn | None]:
    """What the charts show, and the drift of the sensors table's sensors (None without
    predictions)."""
    if not (fold.rows and span.hours):
        return None, None
    # The table's sensors' training ranges first: their values after them are then gathered
    # in the pass that places the predictions on the axis, so drift reads no recent window.
    ranges = _DriftRanges.of(store, fold.top(TOP_SENSORS))
    view = _View.of(span, fold, truth, ranges.after())
    return view, ranges.column(store, view.data.recent)


def render(store_url: str, span: _Span, view: _View | None, *,
           drift: _DriftColumn | None = None, alerts: Sequence[AlertRecord] = (),
           backtest: Backtest | None = None) -> str:
    """The page: ``view`` the range's predictions as the charts show them (None: there are
    none), ``drift`` that of the sensors table's sensors."""
    if view is not None:
        sections = _chart_sections(view, drift, span.noisy())
    else:
        sections = [_section("Predictions", "<p>No predictions in this range.</p>", "")]
    sections.append(_section("Runs", _runs_table(span), _runs_summary(span)))
    if alerts:
        sections.append(_alerts_section(alerts))
    failures = _failures_section(span.runs)
    if failures:
        sections.append(failures)
    if backtest is not None:
        sections.append(_backtest_section(backtest))
    return _page(store_url, span.text, sections)


def _chart_sections(view: _View, drift: _DriftColumn | None,
                    noisy: Mapping[str, int] | None = None) -> list[str]:
    return [_section("Sensors", _top_table(view.data, drift, noisy), _totals(view.data)),
            _heatmap_section(view), _timelines_section(view), _share_section(view)]


def _heatmap_section(view: _View) -> str:
    data, n = view.data, view.heatmap
    alt = (f"Heatmap of anomalies over {view.text}: one row for each of the {n} sensors with "
           f"the most anomalies, one column a {_column_name(view.axis)}; " + (
               "the redder a cell, the larger the share of its windows flagged anomalous, "
               "white cells have no prediction." if view.axis.bucketed else
               "red cells are windows flagged anomalous, grey cells normal, white cells "
               "windows without a prediction."))
    return _section(
        "Anomalies by sensor and time", _img(_heatmap(data, view.axis, n), alt),
        f"{count(len(data.sensors), 'sensor')}; the {n} with the most anomalies are "
        "shown, most first. Red: anomaly, grey: normal, white: no prediction.")


def _timelines_section(view: _View) -> str:
    n, truth = view.timelines, view.truth
    names = ", ".join(view.data.sensors[:n])
    alt = (f"Line charts of the window means of the {n} sensors with the most anomalies "
           f"({names}) over {view.text}; red dots are windows the model flagged anomalous"
           + ("; orange bands are the anomalies injected into the data" if truth is not None
              else "")
           + "; breaks in a line are windows without a prediction.")
    return _section(
        "Most anomalous sensors",
        _img(_timelines(view.data, view.axis, n, truth, view.empty_hours), alt),
        "Window means over time; red dots: flagged by the model"
        + ("; orange bands: injected anomalies (ground truth)" if truth is not None else "")
        + ("; grey: hours without predictions" if view.empty_hours else "") + ".")


def _share_section(view: _View) -> str:
    share, axis = view.data.share, view.axis
    peak = int(np.nanargmax(share)) if np.isfinite(share).any() else None
    peak_text = (f" The peak is {share[peak]:.0f}% at "
                 f"{_utc(axis.ends()[peak]):%Y-%m-%d %H:%M} UTC." if peak is not None else "")
    return _section(
        f"Share of the fleet flagged per {_column_name(axis)}",
        _img(_fleet_share(share, axis, view.empty_hours),
             f"Line chart of the percentage of scored sensors flagged anomalous in each window "
             f"over {view.text}.{peak_text}"),
        f"Percentage of the sensors scored in a window that were flagged.{peak_text}")


def _column_name(axis: Axis) -> str:
    return _bucket_name(axis.step_ms) if axis.bucketed else "window"


def _alerts_in(store: Store, span: _Span) -> list[AlertRecord]:
    """The alerts raised for the report's hours, in the order they began."""
    if span.first is None or span.last is None:
        return []
    first, last = str(span.first), str(span.last)
    return sorted((r for r in all_records(store) if first <= r.hour <= last),
                  key=lambda r: (r.first_window, r.rule, r.group))


def _alerts_section(alerts: Sequence[AlertRecord]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r.hour)}</td><td>{html.escape(r.rule)}</td>"
        f"<td>{html.escape(r.severity)}</td>"
        f"<td>{html.escape(r.device + (' (' + ', '.join(r.tags) + ')' if r.tags else '') or r.group)}</td>"
        f"<td>{html.escape(r.first_window)} .. {html.escape(r.last_window)}</td>"
        f"<td>{r.windows or ''}</td><td>{html.escape(r.state)}</td>"
        f"<td class='message'>{html.escape(r.detail)}</td></tr>" for r in alerts[:ALERTS_SHOWN])
    more = f"; the first {ALERTS_SHOWN:,} are listed." if len(alerts) > ALERTS_SHOWN else "."
    note = (f"{count(len(alerts), 'alert')} raised for these hours by the rules of "
            f"fleetscore alerts apply{more}")
    return _section("Alerts", "<div class='scroll'><table><tr><th>hour</th><th>rule</th>"
                    "<th>severity</th><th>where</th><th>windows</th><th>anomalous</th>"
                    f"<th>state</th><th>detail</th></tr>{rows}</table></div>", note)


def _failures_section(runs: pa.Table) -> str | None:
    """The failed sensors (``FAILURES_SHOWN`` rows, the rest counted); None without any."""
    failures = _failures(runs, FAILURES_SHOWN)
    if not failures:
        return None
    body = "".join(
        f"<tr><td>{html.escape(w)}</td><td>{html.escape(f['sensor'] or '')}</td>"
        f"<td>{html.escape(f['kind'] or '')}</td>"
        f"<td class='message'>{html.escape(f['message'] or '')}</td></tr>"
        for w, f in failures)
    total = int(pc.sum(pc.list_value_length(runs["failures"])).as_py() or 0)
    shown = (f"; the first {len(failures):,}, in hour order, are listed."
             if total > len(failures) else ".")
    note = f"{count(total, 'failed sensor')} over the range, one row a sensor and hour{shown}"
    return _section("Failed sensors", f"<div class='scroll'><table><tr><th>hour</th>"
                    f"<th>sensor</th><th>kind</th><th>message</th></tr>{body}</table>"
                    "</div>", note)


# --- the backtest ---------------------------------------------------------------------------


def _backtest_section(bt: Backtest) -> str:
    """The model beside chance overall, the worst sensor, and the sensors worst first."""
    hours = f" over {bt.hours[0]} .. {bt.hours[1]}" if bt.hours else ""
    note = (f"{bt.estimator}, fitted on {label(bt.features)} of each sensor's first "
            f"{bt.train_fraction:.0%} of hours with data and scored on the rest{hours}, "
            f"{count(len(bt.sensors), 'sensor')}. Chance: random flags at each sensor's rate "
            "(exact expectations): windows hit alone does not separate detectors; the share "
            "flagged, the worst sensor, the flags inside labels and the false flags do.")
    worst = bt.worst
    lines = [f"Worst sensor: {worst.sensor}, {worst.model.flagged_share:.1%} of its points "
             "flagged." if worst else "No sensor was scored."]
    if bt.skipped:
        lines.append(f"{count(len(bt.skipped), 'sensor')} skipped (too little history).")
    if bt.labels_unscored:
        lines.append(f"{count(bt.labels_unscored, 'labelled window')} had no scored point "
                     "(no data, or inside the training hours).")
    head = _backtest_head("")
    overall = (f"<div class='scroll'><table class='backtest overall'>{head}"
               f"{_backtest_row('model', bt.model)}"
               f"{_backtest_row('chance', bt.chance, css='chance')}</table></div>")
    extra = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return _section("Backtest", overall + extra + _backtest_sensors(bt), note)


def _backtest_sensors(bt: Backtest) -> str:
    """The sensors flagging the largest share of their points first, each beside chance."""
    ranked = sorted(bt.sensors, key=lambda s: (-s.model.flagged_share, s.sensor))
    rows = "".join(
        _backtest_row(s.sensor, s.model, sensor=s.sensor)
        + _backtest_row("chance", s.chance, css="chance") for s in ranked[:BACKTEST_SHOWN])
    more = (f"; the {BACKTEST_SHOWN:,} flagging the most are listed"
            if len(ranked) > BACKTEST_SHOWN else "")
    note = (f"{count(len(ranked), 'sensor')}, the largest share of points flagged first{more}; "
            "under each, chance at its rate.")
    return (f'<p class="note">{html.escape(note)}</p><div class="scroll"><table '
            f"class='backtest sensors'>{_backtest_head('sensor')}{rows}</table></div>")


def _backtest_head(first: str) -> str:
    return (f"<tr><th>{first}</th><th>points</th><th>flagged</th><th>windows hit</th>"
            "<th>flags in labels</th><th>false flags / sensor-day</th>"
            "<th>first flag (min)</th><th>(of window)</th></tr>")


def _backtest_row(name: str, f: Figures, *, css: str = "", sensor: str | None = None) -> str:
    attrs = (f" class='{css}'" if css else "") + (
        f" data-sensor='{html.escape(sensor, quote=True)}'" if sensor is not None else "")
    cells = [f"{f.points:,}", _share(f.flagged_share), f"{_count(f.windows_hit)} of {f.windows:,}",
             _share(f.inside_share), _number(f.false_per_day), _number(f.lead_minutes),
             _share(f.lead_fraction)]
    return (f"<tr{attrs}><td>{html.escape(name)}</td>"
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _count(x: float) -> str:
    """A count, or an expectation (chance's) with a decimal."""
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}"


def _page(store_url: str, text: str, sections: Sequence[str]) -> str:
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
td.drifted {{ color: #c62828; }}
tr.chance td {{ color: #666; }}
span.noisy {{ color: #e65100; font-size: 0.85em; border: 1px solid #e65100; padding: 0 3px; }}
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


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return (f'<figure class="chart"><div class="scroll"><img alt="{html.escape(alt, quote=True)}" '
            f'src="data:image/png;base64,{data}"></div></figure>')


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


def _top_table(data: _Data, drift: _DriftColumn | None = None,
               noisy: Mapping[str, int] | None = None) -> str:
    """The sensors with the most anomalies (``TOP_SENSORS`` rows, whatever the fleet), each
    with its drift, the noisy ones marked, and a footnote on the drift column."""
    drift = drift or _DriftColumn({}, {})
    noisy = noisy or {}
    body = "".join(
        f"<tr data-sensor='{html.escape(name, quote=True)}'><td>{i + 1}</td>"
        f"<td>{html.escape(name)}{_noisy_mark(noisy.get(name, 0))}</td>"
        f"<td>{int(a):,}</td><td>{int(w):,}</td>"
        f"<td>{_percent(int(a), int(w))}</td>{_drift_cell(name, drift)}</tr>"
        for i, (name, a, w) in enumerate(zip(data.sensors[:TOP_SENSORS],
                                             data.anomalies[:TOP_SENSORS].tolist(),
                                             data.windows[:TOP_SENSORS].tolist(), strict=True)))
    return ("<div class='scroll'><table class='top'><tr><th>#</th><th>sensor</th>"
            "<th>anomalies</th><th>windows</th><th>flagged</th><th>drift (KS)</th></tr>"
            f"{body}</table></div>{_drift_note(drift, min(TOP_SENSORS, len(data.sensors)))}")


def _noisy_mark(hours: int) -> str:
    """A sensor the runaway guard marked: its flags are its model's noise, not incidents."""
    if not hours:
        return ""
    return (f" <span class='noisy' title='marked noisy in {count(hours, 'hour')} of the range: "
            "its model flags too much of its data to be believed (one noisy_sensor alert, its "
            "anomaly alerts held back)'>noisy</span>")


def _drift_cell(name: str, drift: _DriftColumn) -> str:
    """The KS statistic, marked when drifted; "-" with the reason as a tooltip without one."""
    d = drift.drifts.get(name)
    if d is None or d.statistic is None:
        why = drift.reasons.get(name, "drift not computed")
        return f"<td class='drift none' title='{html.escape(why, quote=True)}'>-</td>"
    title = html.escape(_drift_title(d), quote=True)
    if d.drifted:
        return (f"<td class='drift drifted' title='{title}'><strong>{d.statistic:.2f} "
                "drifted</strong></td>")
    return f"<td class='drift' title='{title}'>{d.statistic:.2f}</td>"


def _drift_title(d: Drift) -> str:
    span = " .. ".join(d.trained_on or ())
    return (f"Kolmogorov-Smirnov {d.statistic:.3f}, p = {d.p_value:.2g}: {d.recent_windows:,} "
            f"windows of these hours against {d.trained_windows:,} of its training ({span})")


def _drift_note(drift: _DriftColumn, shown: int) -> str:
    """What the drift column measures, how many drifted, and why a "-" (the tooltips say it
    too, but a phone has no hover)."""
    drifted = sum(d.drifted for d in drift.drifts.values())
    text = (f"Drift (KS): the two-sample Kolmogorov-Smirnov statistic (0 to 1) of a sensor's "
            f"windows in these hours after its training range against its training windows, "
            f"as fleetscore models drift computes it; drifted above {THRESHOLD:g} with "
            f"p < {ALPHA:g}: {drifted} of these {shown}.")
    reasons: dict[str, int] = {}
    for why in drift.reasons.values():
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in reasons.items():
        text += f" - for {count(n, 'sensor')}: {why}."
    return f'<p class="note">{html.escape(text)}</p>'


def _section(title: str, body: str, note: str) -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>{note_html}{body}"


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

