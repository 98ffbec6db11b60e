"""``fleetscore report``: one self-contained HTML file with pictures (matplotlib, inline PNG)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .hours import Hour, hour_range
from .predictions import read_predictions
from .runs import list_manifests
from .stores import Store

HEATMAP_SENSORS = 60
TIMELINES = 6


def write_report(store: Store, output: Path, *, first: Hour | None = None,
                 last: Hour | None = None) -> str:
    manifests = list_manifests(store)
    run_hours = [Hour.parse(m["window"]) for m in manifests]
    first = first or (min(run_hours) if run_hours else None)
    last = last or (max(run_hours) if run_hours else None)
    if first is None or last is None:
        hours: list[Hour] = []
    else:
        hours = hour_range(first, last)
    manifests = [m for m in manifests if Hour.parse(m["window"]) in set(hours)]
    tables = [t for t in (read_predictions(store, h) for h in hours) if t.num_rows]
    preds = pa.concat_tables(tables) if tables else None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(store.url, hours, manifests, preds), encoding="utf-8")
    n = preds.num_rows if preds is not None else 0
    return f"{len(hours)} hours, {len(manifests)} runs, {n:,} predictions"


def render(store_url: str, hours: Sequence[Hour], manifests: list[dict],
           preds: pa.Table | None) -> str:
    sections = []
    if preds is not None and preds.num_rows:
        sensors, times, grid, values = _grid(preds)
        sections.append(_section("Anomalies by sensor and time",
                                 _img(_heatmap(sensors, times, grid)),
                                 f"{len(sensors)} sensors; the {min(len(sensors), HEATMAP_SENSORS)} "
                                 "with the most anomalies are shown. Red: anomaly, grey: normal, "
                                 "white: no point."))
        sections.append(_section("Most anomalous sensors", _img(_timelines(sensors, times, grid, values)),
                                 "Window means over time, anomalies marked in red."))
        sections.append(_section("Share of the fleet flagged per minute",
                                 _img(_fleet_share(times, grid)), ""))
    else:
        sections.append(_section("Predictions", "<p>No predictions in this range.</p>", ""))
    sections.append(_section("Runs", _runs_table(manifests), ""))
    failures = [(m["window"], f) for m in manifests for f in m.get("failures", [])]
    if failures:
        rows = "".join(
            f"<tr><td>{html.escape(w)}</td><td>{html.escape(f['sensor'])}</td>"
            f"<td>{html.escape(f['kind'])}</td><td>{html.escape(f['message'])}</td></tr>"
            for w, f in failures[:200])
        sections.append(_section("Failed sensors", f"<table><tr><th>window</th><th>sensor</th>"
                                 f"<th>kind</th><th>message</th></tr>{rows}</table>", ""))
    span = f"{hours[0]} .. {hours[-1]}" if hours else "no runs"
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fleetscore report {html.escape(span)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.succeeded {{ color: #1a7f37; }} .partial {{ color: #b58100; }} .failed {{ color: #c62828; }}
img {{ max-width: 100%; }} .note {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>fleetscore report</h1>
<p>Store <code>{html.escape(store_url)}</code>, hours {html.escape(span)}. Created {created} by
fleetscore {__version__}.</p>
{''.join(sections)}
</body></html>
"""


def _section(title: str, body: str, note: str) -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>{note_html}{body}"


def _runs_table(manifests: list[dict]) -> str:
    if not manifests:
        return "<p>No runs.</p>"
    head = ("<tr><th>window</th><th>status</th><th>planned</th><th>scored</th><th>failed</th>"
            "<th>no data</th><th>no model</th><th>anomalies</th><th>seconds</th></tr>")
    rows = []
    for m in manifests:
        s = m["sensors"]
        status = html.escape(m["status"])
        rows.append(
            f"<tr><td>{html.escape(m['window'])}</td><td class='{status}'>{status}</td>"
            f"<td>{s['planned']}</td><td>{s['scored']}</td><td>{s['failed']}</td>"
            f"<td>{s['no_data']}</td><td>{s['no_model']}</td><td>{m['anomalies']}</td>"
            f"<td>{m['duration_s']:.2f}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _grid(preds: pa.Table):
    """Sensors x times matrices of predictions (NaN where no point) and values."""
    keys = pc.binary_join_element_wise(preds["Device"], preds["Tag"], "/").to_numpy(zero_copy_only=False)
    ts = preds["TS"].to_numpy(zero_copy_only=False)
    sensors, s_idx = np.unique(keys, return_inverse=True)
    times, t_idx = np.unique(ts, return_inverse=True)
    grid = np.full((len(sensors), len(times)), np.nan)
    values = np.full_like(grid, np.nan)
    grid[s_idx, t_idx] = preds["Prediction"].to_numpy().astype(float)
    values[s_idx, t_idx] = preds["Val"].to_numpy()
    order = np.argsort(-np.nansum(grid, axis=1), kind="stable")
    return sensors[order], times, grid[order], values[order]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _img(fig_and_plt) -> str:
    plt, fig = fig_and_plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="chart" src="data:image/png;base64,{data}">'


def _time_ticks(ax, times: np.ndarray, axis: str = "x") -> None:
    step = max(1, len(times) // 8)
    positions = np.arange(0, len(times), step)
    labels = [str(t)[5:16] for t in times[positions]]
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)


def _heatmap(sensors, times, grid):
    from matplotlib.colors import ListedColormap

    shown = grid[:HEATMAP_SENSORS]
    plt, fig = _figure(11, max(2.5, 0.18 * len(shown) + 1.2))
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(shown), aspect="auto", interpolation="nearest",
              cmap=ListedColormap(["#d9d9d9", "#d62728"]), vmin=0, vmax=1)
    ax.set_yticks(range(len(shown)), sensors[:HEATMAP_SENSORS], fontsize=7)
    _time_ticks(ax, times)
    ax.set_ylabel("sensor (Device/Tag)")
    return plt, fig


def _timelines(sensors, times, grid, values):
    n = min(TIMELINES, len(sensors))
    plt, fig = _figure(11, 1.7 * n + 0.5)
    x = np.arange(len(times))
    for i in range(n):
        ax = fig.add_subplot(n, 1, i + 1)
        ax.plot(x, values[i], color="#1f77b4", linewidth=0.9)
        flagged = grid[i] == 1
        ax.scatter(x[flagged], values[i][flagged], color="#d62728", s=12, zorder=3)
        ax.set_ylabel(sensors[i], fontsize=8)
        ax.tick_params(labelsize=7)
        if i == n - 1:
            _time_ticks(ax, times)
        else:
            ax.set_xticks([])
    return plt, fig


def _fleet_share(times, grid):
    plt, fig = _figure(11, 2.2)
    ax = fig.add_subplot()
    with np.errstate(invalid="ignore"):
        share = np.nanmean(grid, axis=0) * 100
    ax.plot(np.arange(len(times)), share, color="#d62728", linewidth=0.9)
    ax.set_ylabel("% flagged")
    _time_ticks(ax, times)
    return plt, fig
