"""Drift: how far a sensor's recent window values have moved from the data its champion was
trained on, by the two-sample Kolmogorov-Smirnov statistic (the largest gap between the two
empirical distribution functions, 0 to 1; ``scipy.stats.ks_2samp``).

KS is chosen over PSI because it needs no binning (sensors' ranges differ by orders of
magnitude) and is defined for the few dozen windows of an hour or a day; a level shift of a
few noise widths moves it close to 1, noise alone keeps it small. A sensor is drifted when the
statistic passes ``threshold`` and the test's p-value is below ``alpha`` (so a handful of
recent windows is never called drift on the statistic alone).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensors import Sensor
from fleetscore.data.windows import by_sensor, read_points_many
from fleetscore.model.registry import ModelManifest, list_models, manifest_path, read_manifest
from fleetscore.storage import Store
from fleetscore.storage.base import get_many

THRESHOLD = 0.5
ALPHA = 0.01


@dataclass(frozen=True)
class Drift:
    sensor: str
    trained_on: tuple[str, str] | None
    trained_windows: int
    recent_windows: int
    statistic: float | None  # None: no training range recorded, or no windows on a side
    p_value: float | None
    drifted: bool

    def to_json(self) -> dict:
        return {"sensor": self.sensor, "trained_on": list(self.trained_on or ()),
                "trained_windows": self.trained_windows, "recent_windows": self.recent_windows,
                "ks_statistic": self.statistic, "p_value": self.p_value, "drifted": self.drifted}


def drift(store: Store, recent: Sequence[Hour], *, sensors: Iterable[Sensor] | None = None,
          threshold: float = THRESHOLD, alpha: float = ALPHA) -> list[Drift]:
    """Each sensor's champion's training windows against its windows in ``recent`` (those
    after its training range)."""
    chosen = sorted(set(sensors) if sensors is not None else list_models(store))
    ranges = {s: read_manifest(store, s).trained_on for s in chosen}
    trained = _values(store, _training_hours(ranges))
    # Recent windows are those after the training range: data a model was fitted on is not
    # evidence of how far the sensor has moved since.
    after: dict[Hour, set[Sensor]] = {
        h: {s for s in chosen if not ranges[s] or h > Hour.parse(ranges[s]["to"])}
        for h in recent}
    now = _values(store, {h: ss for h, ss in after.items() if ss})
    return [_one(s, ranges[s], trained.get(s), now.get(s), threshold, alpha) for s in chosen]


def training_ranges(store: Store, sensors: Iterable[Sensor]) -> dict[Sensor, dict[str, str] | None]:
    """Each sensor's champion's training range (``{"from": H, "to": H}``, as its manifest
    records it): None where none is recorded (an imported model, or one trained before ranges
    were recorded) or the sensor has no model any more. The manifests are read together
    (``get_many``: in parallel on a blob store); a damaged one raises ModelError."""
    chosen = sorted(set(sensors))
    paths = [manifest_path(s) for s in chosen]
    datas = get_many(store, paths, missing_ok=True)
    return {s: None if data is None else ModelManifest.from_json(data, path).trained_on
            for s, path, data in zip(chosen, paths, datas, strict=True)}


def drift_of(store: Store, recent: Mapping[Sensor, np.ndarray],
             ranges: Mapping[Sensor, dict[str, str] | None], *, threshold: float = THRESHOLD,
             alpha: float = ALPHA) -> list[Drift]:
    """``drift`` of recent window values the caller has read already (the report has them in
    its predictions): for each sensor of ``ranges`` (``training_ranges``), its ``recent``
    values, of windows after its training range only (the caller drops the others, as
    ``drift`` does), against its training windows. Those are read here, and only for the
    sensors with both a range and recent values: a sensor without either reads nothing (its
    ``trained_windows`` is then 0)."""
    chosen = sorted(ranges)
    wanted = _training_hours({s: ranges[s] for s in chosen if len(recent.get(s, ()))})
    trained = _values(store, wanted) if wanted else {}
    return [_one(s, ranges[s], trained.get(s), recent.get(s), threshold, alpha) for s in chosen]


def _training_hours(ranges: Mapping[Sensor, dict[str, str] | None]) -> dict[Hour, set[Sensor]]:
    """The hours of each sensor's training range, with the sensors trained on each."""
    wanted: dict[Hour, set[Sensor]] = defaultdict(set)
    for s, span in ranges.items():
        if span:
            for h in hour_range(Hour.parse(span["from"]), Hour.parse(span["to"])):
                wanted[h].add(s)
    return wanted


def _values(store: Store, wanted: dict[Hour, set[Sensor]]) -> dict[Sensor, np.ndarray]:
    everyone = set().union(*wanted.values()) if wanted else set()
    tables = read_points_many(store, sorted(wanted), everyone)
    out: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    for hour, table in tables.items():
        for sensor, points in by_sensor(table).items():
            if sensor in wanted[hour]:
                out[sensor].append(points.values)
    return {s: np.concatenate(v) for s, v in out.items()}


def _one(sensor: Sensor, span, trained: np.ndarray | None, recent: np.ndarray | None,
         threshold: float, alpha: float) -> Drift:
    from scipy.stats import ks_2samp

    a = trained if trained is not None else np.zeros(0)
    b = recent if recent is not None else np.zeros(0)
    if not span or not len(a) or not len(b):
        return Drift(str(sensor), (span["from"], span["to"]) if span else None, len(a), len(b),
                     None, None, False)
    test = ks_2samp(a, b)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    return Drift(str(sensor), (span["from"], span["to"]), len(a), len(b), statistic, p_value,
                 statistic > threshold and p_value < alpha)
