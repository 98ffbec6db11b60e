"""A synthetic fleet with known anomalies: readings, their per-window labels, and how
predictions measure against them (``fleetscore demo`` and the tests use it).

Each sensor has its own level, noise and daily-cycle amplitude, a slow drift, and readings
every ~10 s with jitter and dropouts. In the scored hours, anomalies are injected with
ground-truth labels per window: spikes (a few minutes far above normal), level shifts (a
quarter hour offset) and stuck values (the sensor reports its rail, 0, for a while).
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


@dataclass(frozen=True)
class Fleet:
    readings: pa.Table  # TS (timestamp ms), Device, Tag, Value
    labels: pa.Table  # Device, Tag, End (ms), Anomaly (0/1), Kind
    first: Hour
    hours: int
    train_hours: int


def fleet_sensors(n: int) -> list[tuple[str, str]]:
    return [(f"D{i // len(TAGS):03d}", TAGS[i % len(TAGS)]) for i in range(n)]


def make_fleet(sensors: int = 40, hours: int = 6, seed: int = 0) -> Fleet:
    rng = np.random.default_rng(seed)
    first = Hour.from_datetime(DEMO_START)
    train_hours = max(1, hours // 3)
    start_ms = first.start_ms
    span_ms = hours * 3_600_000
    ts_all, dev_all, tag_all, val_all = [], [], [], []
    lab_dev, lab_tag, lab_end, lab_kind = [], [], [], []
    score_from_ms = start_ms + train_hours * 3_600_000
    for device, tag in fleet_sensors(sensors):
        level = rng.uniform(10, 120)
        noise = level * rng.uniform(0.01, 0.04)
        cycle = noise * rng.uniform(0.5, 1.5)
        period_ms = rng.uniform(0.4, 0.9) * 3_600_000
        drift = noise * rng.uniform(-0.3, 0.3) / span_ms
        steps = np.arange(1, span_ms // (READING_EVERY_S * 1000))
        ts = start_ms + steps * READING_EVERY_S * 1000 + rng.integers(-2000, 2000, len(steps))
        ts = ts[(ts > start_ms) & (ts <= start_ms + span_ms) & (rng.random(len(steps)) > 0.02)]
        t = ts - start_ms
        value = level + drift * t + cycle * np.sin(2 * np.pi * t / period_ms) \
            + rng.normal(0, noise, len(ts))
        kinds = np.full(len(ts), "", dtype=object)
        for kind, length_min, times in (("spike", (2, 4), rng.integers(1, 3)),
                                        ("shift", (10, 20), int(rng.random() < 0.4)),
                                        ("stuck", (10, 20), int(rng.random() < 0.2))):
            for _ in range(times):
                length = int(rng.integers(*length_min)) * 60_000
                begin = int(rng.integers(score_from_ms, start_ms + span_ms - length))
                mask = (ts > begin) & (ts <= begin + length)
                if kind == "spike":
                    value[mask] += noise * rng.uniform(8, 12) * rng.choice([-1, 1])
                elif kind == "shift":
                    value[mask] += noise * rng.uniform(6, 9) * rng.choice([-1, 1])
                else:
                    value[mask] = 0.0
                kinds[mask] = kind
        ts_all.append(ts)
        dev_all.append(np.full(len(ts), device, dtype=object))
        tag_all.append(np.full(len(ts), tag, dtype=object))
        val_all.append(np.round(value, 3))
        # Ground truth per window: a window is anomalous when any of its readings is.
        ends = window_end_ms(ts, INTERVAL_S)
        flagged = np.unique(ends[kinds != ""])
        for end in np.unique(ends):
            lab_dev.append(device)
            lab_tag.append(tag)
            lab_end.append(int(end))
            in_window = kinds[ends == end]
            lab_kind.append(next((k for k in in_window if k), "") if end in flagged else "")
    order_ts = np.concatenate(ts_all)
    order = np.argsort(order_ts, kind="stable")
    readings = pa.table({
        "TS": pa.array(order_ts[order], pa.timestamp("ms")),
        "Device": pa.array(np.concatenate(dev_all)[order], pa.string()),
        "Tag": pa.array(np.concatenate(tag_all)[order], pa.string()),
        "Value": pa.array(np.concatenate(val_all)[order], pa.float64()),
    })
    kinds_arr = np.array(lab_kind, dtype=object)
    labels = pa.table({
        "Device": pa.array(lab_dev, pa.string()), "Tag": pa.array(lab_tag, pa.string()),
        "End": pa.array(lab_end, pa.int64()), "Anomaly": pa.array((kinds_arr != "").astype(np.int8)),
        "Kind": pa.array(kinds_arr.tolist(), pa.string()),
    })
    return Fleet(readings, labels, first, hours, train_hours)


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


