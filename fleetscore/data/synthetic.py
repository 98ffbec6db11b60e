"""A synthetic fleet with known anomalies: readings, their per-window labels, and how
predictions measure against them (``fleetscore demo`` and the tests use it).

Each sensor has its own level, noise and daily-cycle amplitude, a slow drift, and readings
every ~10 s with jitter and dropouts. In the scored hours, anomalies are injected with
ground-truth labels per window: spikes (a few minutes far above normal), level shifts (a
quarter hour offset) and stuck values (the sensor reports its rail, 0, for a while).

``hard=True`` (the demo's fleet) adds sensors like those of a real fleet that fooled the
default model: one in ten *idle* (exactly 0 most of the time, more than half the windows, with
rare normal excursions to its working level; anomalies are spikes far above that level) and one
in ten on a *daily* cycle (24-hour period, a few noise widths deep, so hours trained on early
in the day do not cover the afternoon). Without it every sensor is a level sensor, drawn
exactly as before, so fleets that tests build with a seed stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from fleetscore.core.hours import Hour
from fleetscore.data.windows import window_end_ms

DEMO_START = datetime(2026, 1, 5, tzinfo=UTC)
TAGS = ("temp", "pressure", "vibration", "flow", "current")
READING_EVERY_S = 10
INTERVAL_S = 60
IDLE, DAILY, LEVEL = "idle", "daily", "level"


@dataclass(frozen=True)
class Fleet:
    readings: pa.Table  # TS (timestamp ms), Device, Tag, Value
    labels: pa.Table  # Device, Tag, End (ms), Anomaly (0/1), Kind
    first: Hour
    hours: int
    train_hours: int
    kinds: tuple[str, ...] = ()  # each sensor's kind (LEVEL, IDLE, DAILY), in fleet order


def fleet_sensors(n: int) -> list[tuple[str, str]]:
    return [(f"D{i // len(TAGS):03d}", TAGS[i % len(TAGS)]) for i in range(n)]


def sensor_kind(i: int, hard: bool) -> str:
    """The i-th sensor's kind: in a hard fleet, the 4th of every ten idle, the 8th daily."""
    if hard and i % 10 == 3:
        return IDLE
    if hard and i % 10 == 7:
        return DAILY
    return LEVEL


def make_fleet(sensors: int = 40, hours: int = 6, seed: int = 0, *, hard: bool = False) -> Fleet:
    """``sensors`` sensors over ``hours`` hours from ``DEMO_START``, the same for the same
    seed; the first third of the hours (at least one) are for training and have no anomaly.
    ``hard``: with idle and daily sensors (the module's docstring)."""
    rng = np.random.default_rng(seed)
    first = Hour.from_datetime(DEMO_START)
    train_hours = max(1, hours // 3)
    start_ms = first.start_ms
    span_ms = hours * 3_600_000
    score_from_ms = start_ms + train_hours * 3_600_000
    # The sensors draw from one generator in turn: another order of sensors, or of the draws
    # within one, changes every fleet a seed gives.
    kinds = tuple(sensor_kind(i, hard) for i in range(sensors))
    made = [_make_sensor(rng, device, tag, start_ms, span_ms, score_from_ms) if kind == LEVEL
            else _make_hard_sensor(rng, device, tag, kind, (start_ms, span_ms, score_from_ms))
            for (device, tag), kind in zip(fleet_sensors(sensors), kinds, strict=True)]
    return Fleet(_readings_table(made), _labels_table(made), first, hours, train_hours, kinds)


@dataclass(frozen=True)
class _Sensor:
    device: str
    tag: str
    ts: np.ndarray  # reading times, ms
    value: np.ndarray  # rounded to 3 decimals, as written
    ends: list[int]  # its windows' ends, ms
    kinds: list[str]  # each window's anomaly kind, "" when normal


def _make_sensor(rng: np.random.Generator, device: str, tag: str, start_ms: int, span_ms: int,
                 score_from_ms: int) -> _Sensor:
    """A sensor's readings, with anomalies injected after ``score_from_ms``, and its windows'
    labels."""
    level = rng.uniform(10, 120)
    noise = level * rng.uniform(0.01, 0.04)
    cycle = noise * rng.uniform(0.5, 1.5)
    period_ms = rng.uniform(0.4, 0.9) * 3_600_000
    drift = noise * rng.uniform(-0.3, 0.3) / span_ms
    ts = _reading_times(rng, start_ms, span_ms)
    t = ts - start_ms
    value = level + drift * t + cycle * np.sin(2 * np.pi * t / period_ms) \
        + rng.normal(0, noise, len(ts))
    kinds = _inject_anomalies(rng, ts, value, noise, score_from_ms, start_ms + span_ms)
    ends, window_kinds = _window_labels(ts, kinds)
    return _Sensor(device, tag, ts, np.round(value, 3), ends, window_kinds)


def _make_hard_sensor(rng: np.random.Generator, device: str, tag: str, kind: str,
                      span: tuple[int, int, int]) -> _Sensor:
    """An idle or a daily sensor (the module's docstring), anomalies injected as for the
    others; an idle sensor gets only spikes (a stuck 0 or a short shift is what it does)."""
    start_ms, span_ms, score_from_ms = span
    ts = _reading_times(rng, start_ms, span_ms)
    t = ts - start_ms
    level = rng.uniform(10, 120)
    noise = level * rng.uniform(0.01, 0.04)
    if kind == IDLE:
        # Excursions begin about once an hour and last 2 to 8 minutes: the sensor is at its
        # working level some 8% of the time, exactly 0 otherwise.
        on = np.zeros(len(ts), bool)
        for begin in rng.uniform(0, span_ms, max(1, round(span_ms / 3_600_000))):
            on |= (t > begin) & (t <= begin + rng.uniform(2, 8) * 60_000)
        value = np.where(on, level + rng.normal(0, noise, len(ts)), 0.0)
        kinds = _inject_anomalies(rng, ts, value, level * 0.3, score_from_ms,
                                  start_ms + span_ms, ("spike",))
    else:
        phase = rng.uniform(0, 2 * np.pi)
        depth = noise * rng.uniform(4, 8)
        value = level + depth * np.sin(2 * np.pi * t / 86_400_000 + phase) \
            + rng.normal(0, noise, len(ts))
        kinds = _inject_anomalies(rng, ts, value, noise, score_from_ms, start_ms + span_ms)
    ends, window_kinds = _window_labels(ts, kinds)
    return _Sensor(device, tag, ts, np.round(value, 3), ends, window_kinds)


def _reading_times(rng: np.random.Generator, start_ms: int, span_ms: int) -> np.ndarray:
    """Every ``READING_EVERY_S`` with up to 2 s of jitter, about 2% dropped, inside the span."""
    steps = np.arange(1, span_ms // (READING_EVERY_S * 1000))
    ts = start_ms + steps * READING_EVERY_S * 1000 + rng.integers(-2000, 2000, len(steps))
    return ts[(ts > start_ms) & (ts <= start_ms + span_ms) & (rng.random(len(steps)) > 0.02)]


def _inject_anomalies(rng: np.random.Generator, ts: np.ndarray, value: np.ndarray, noise: float,
                      from_ms: int, end_ms: int,
                      only: tuple[str, ...] = ("spike", "shift", "stuck")) -> np.ndarray:
    """Spikes, shifts and stuck stretches (those in ``only``) written into ``value``, each
    beginning between ``from_ms`` and ``end_ms``; returns each reading's kind ("" when
    normal)."""
    kinds = np.full(len(ts), "", dtype=object)
    # The counts are drawn for every kind whether used or not; a level sensor uses all three,
    # so its draws are those it always had.
    for kind, length_min, times in (("spike", (2, 4), rng.integers(1, 3)),
                                    ("shift", (10, 20), int(rng.random() < 0.4)),
                                    ("stuck", (10, 20), int(rng.random() < 0.2))):
        if kind not in only:
            continue
        for _ in range(times):
            length = int(rng.integers(*length_min)) * 60_000
            begin = int(rng.integers(from_ms, end_ms - length))
            mask = (ts > begin) & (ts <= begin + length)
            if kind == "spike":
                value[mask] += noise * rng.uniform(8, 12) * rng.choice([-1, 1])
            elif kind == "shift":
                value[mask] += noise * rng.uniform(6, 9) * rng.choice([-1, 1])
            else:
                value[mask] = 0.0
            kinds[mask] = kind
    return kinds


def _window_labels(ts: np.ndarray, kinds: np.ndarray) -> tuple[list[int], list[str]]:
    """Ground truth per window: a window is anomalous when any of its readings is, of the
    kind of the first such reading."""
    ends = window_end_ms(ts, INTERVAL_S)
    flagged = np.unique(ends[kinds != ""])
    out_ends, out_kinds = [], []
    for end in np.unique(ends):
        out_ends.append(int(end))
        in_window = kinds[ends == end]
        out_kinds.append(next((k for k in in_window if k), "") if end in flagged else "")
    return out_ends, out_kinds


def _readings_table(made: list[_Sensor]) -> pa.Table:
    """Every sensor's readings in time order (a stable sort: ties in the fleet's order)."""
    order_ts = np.concatenate([m.ts for m in made])
    order = np.argsort(order_ts, kind="stable")
    return pa.table({
        "TS": pa.array(order_ts[order], pa.timestamp("ms")),
        "Device": pa.array(np.concatenate([np.full(len(m.ts), m.device, dtype=object)
                                           for m in made])[order], pa.string()),
        "Tag": pa.array(np.concatenate([np.full(len(m.ts), m.tag, dtype=object)
                                        for m in made])[order], pa.string()),
        "Value": pa.array(np.concatenate([m.value for m in made])[order], pa.float64()),
    })


def _labels_table(made: list[_Sensor]) -> pa.Table:
    kinds = np.array([k for m in made for k in m.kinds], dtype=object)
    return pa.table({
        "Device": pa.array([m.device for m in made for _ in m.ends], pa.string()),
        "Tag": pa.array([m.tag for m in made for _ in m.ends], pa.string()),
        "End": pa.array([e for m in made for e in m.ends], pa.int64()),
        "Anomaly": pa.array((kinds != "").astype(np.int8)),
        "Kind": pa.array(kinds.tolist(), pa.string()),
    })


def write_readings_csv(readings: pa.Table, path: Path) -> None:
    ts = pc.strftime(readings["TS"], format="%Y-%m-%d %H:%M:%S")
    _write_plain_csv(pa.table({"TS": ts, "Device": readings["Device"], "Tag": readings["Tag"],
                               "Value": readings["Value"]}), path)


def write_labels_csv(labels: pa.Table, path: Path) -> None:
    """``TS,Device,Tag,Anomaly,Kind``: TS is the window's end, as in the predictions, so the
    two files join on (TS, Device, Tag)."""
    # Window ends are whole seconds; formatted at "s", TS has no ".000", as in the predictions.
    seconds = pc.divide(labels["End"], 1000)
    ts = pc.strftime(pc.cast(seconds, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")
    _write_plain_csv(pa.table({"TS": ts, "Device": labels["Device"], "Tag": labels["Tag"],
                               "Anomaly": labels["Anomaly"], "Kind": labels["Kind"]}), path)


def label_windows(labels: pa.Table, interval_s: int = INTERVAL_S) -> pa.Table:
    """The labels as windows, ``fleetscore backtest``'s input: a sensor's consecutive
    anomalous windows merged into one ``Device, Tag, Start, End`` (ms), Start the first
    window's start (its end - ``interval_s``) and End the last one's end, so the backtest's
    ``(Start, End]`` holds exactly those windows."""
    step = interval_s * 1000
    anomalous = labels.filter(pc.equal(labels["Anomaly"], 1))
    anomalous = anomalous.sort_by([("Device", "ascending"), ("Tag", "ascending"),
                                   ("End", "ascending")])
    devices = anomalous["Device"].to_pylist()
    tags = anomalous["Tag"].to_pylist()
    ends = anomalous["End"].to_numpy()
    out: dict[str, list[object]] = {"Device": [], "Tag": [], "Start": [], "End": []}
    for i, end in enumerate(ends):
        same = i > 0 and (devices[i], tags[i]) == (devices[i - 1], tags[i - 1])
        if same and end - ends[i - 1] == step:
            out["End"][-1] = int(end)  # the next window of the same stretch
            continue
        for key, value in zip(out, (devices[i], tags[i], int(end) - step, int(end)), strict=True):
            out[key].append(value)
    return pa.table({"Device": pa.array(out["Device"], pa.string()),
                     "Tag": pa.array(out["Tag"], pa.string()),
                     "Start": pa.array(out["Start"], pa.int64()),
                     "End": pa.array(out["End"], pa.int64())})


def write_label_windows_csv(labels: pa.Table, path: Path) -> None:
    """``Device,Tag,Start,End`` (UTC, whole seconds): ``label_windows`` of the labels."""
    windows = label_windows(labels)

    def text(column: str) -> pa.Array:
        seconds = pc.divide(windows[column], 1000)
        return pc.strftime(pc.cast(seconds, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S")

    _write_plain_csv(pa.table({"Device": windows["Device"], "Tag": windows["Tag"],
                               "Start": text("Start"), "End": text("End")}), path)


def _write_plain_csv(table: pa.Table, path: Path) -> None:
    # Ids and kinds never need quoting: plain CSV with an unquoted header, like the others.
    with open(path, "wb") as handle:
        handle.write((",".join(table.column_names) + "\n").encode())
        pcsv.write_csv(table, handle, write_options=pcsv.WriteOptions(include_header=False,
                                                                      quoting_style="none"))


@dataclass(frozen=True)
class Evaluation:
    windows: int
    true_anomalies: int
    flagged: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.true_anomalies if self.true_anomalies else 0.0


def evaluate(predictions: pa.Table, labels: pa.Table) -> Evaluation:
    """Compare predictions (TS text, Device, Tag, Prediction) with the injected labels."""
    ends = pc.cast(pc.strptime(predictions["TS"], format="%Y-%m-%d %H:%M:%S", unit="ms"), pa.int64())
    pred = pa.table({"Device": predictions["Device"], "Tag": predictions["Tag"], "End": ends,
                     "Prediction": predictions["Prediction"]})
    joined = pred.join(labels, ["Device", "Tag", "End"], join_type="inner")
    p = joined["Prediction"].to_numpy().astype(bool)
    truth = joined["Anomaly"].to_numpy().astype(bool)
    return Evaluation(len(p), int(truth.sum()), int(p.sum()), int((p & truth).sum()))


