"""Champion against challenger: both scored by scikit-learn on the same stored windows, and
the gates a challenger must pass to be promoted. Policy (``gate``) stands apart from the
reading and scoring (``compare``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.windows import by_sensor, read_points_many
from fleetscore.model.features import matrix
from fleetscore.model.registry import loads_model
from fleetscore.model.versions import History, Version, histories, version_bytes
from fleetscore.storage import Store


@dataclass(frozen=True)
class Comparison:
    sensor: str
    champion: int
    challenger: int
    windows: int  # scored by both
    champion_rate: float  # share of windows flagged anomalous
    challenger_rate: float
    agreement: float  # share of windows both label the same

    def to_json(self) -> dict:
        return {"sensor": self.sensor, "champion": self.champion, "challenger": self.challenger,
                "windows": self.windows, "champion_anomaly_rate": self.champion_rate,
                "challenger_anomaly_rate": self.challenger_rate, "agreement": self.agreement}


@dataclass(frozen=True)
class Gates:
    max_anomaly_rate: float | None = None  # the challenger flags at most this share
    min_agreement: float | None = None  # and agrees with the champion at least this often

    def why_not(self, c: Comparison) -> str | None:
        """None when the challenger passes, else why it does not."""
        if c.windows == 0:
            return "no windows in the range to compare on"
        if self.max_anomaly_rate is not None and c.challenger_rate > self.max_anomaly_rate:
            return (f"flags {c.challenger_rate:.1%} of windows, more than "
                    f"{self.max_anomaly_rate:.1%}")
        if self.min_agreement is not None and c.agreement < self.min_agreement:
            return f"agrees with the champion on {c.agreement:.1%}, below {self.min_agreement:.1%}"
        return None


def with_challengers(store: Store, sensors: Iterable[Sensor] | None = None) -> list[History]:
    wanted = None if sensors is None else set(sensors)
    found = []
    for _, read in histories(store):
        history = read()
        # A challenger of a sensor with no champion (trained before `train --challenger`
        # skipped those) has nothing to be compared with or promoted over.
        if history.challenger is not None and history.champion is not None \
                and (wanted is None or history.sensor in wanted):
            found.append(history)
    return sorted(found, key=lambda h: (h.device, h.tag))


def compare(store: Store, histories_: Sequence[History], hours: Sequence[Hour]
            ) -> list[Comparison]:
    """Each history's champion and challenger on the hours' windows."""
    if not histories_:
        return []
    tables = read_points_many(store, hours, [h.sensor for h in histories_])
    ends: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    values: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    for hour in sorted(hours):
        for sensor, points in by_sensor(tables[hour]).items():
            ends[sensor].append(points.ends_ms)
            values[sensor].append(points.values)
    return [_compare_one(store, h, *((np.concatenate(x[h.sensor]) for x in (ends, values))
                                     if values[h.sensor] else (np.zeros(0, np.int64), np.zeros(0))))
            for h in histories_]


def _compare_one(store: Store, history: History, ends: np.ndarray, values: np.ndarray
                 ) -> Comparison:
    champion, challenger = history.champion, history.challenger
    assert champion is not None and challenger is not None
    labels = [_labels(store, history.sensor, v, ends, values) for v in (champion, challenger)]
    n = len(values)
    rate = [float(x.mean()) if n else 0.0 for x in labels]
    agreement = float((labels[0] == labels[1]).mean()) if n else 0.0
    return Comparison(str(history.sensor), champion.number, challenger.number, n,
                      rate[0], rate[1], agreement)


def _labels(store: Store, sensor: Sensor, version: Version, ends: np.ndarray,
            values: np.ndarray) -> np.ndarray:
    """The version's flags on the points; its derived features computed as in training
    (the compared hours are one history: the first point has no previous one)."""
    if not len(values):
        return np.zeros(0, bool)
    model = loads_model(version_bytes(store, sensor, version), f"sensor {sensor}")
    return np.asarray(model.predict(matrix(version.features, ends, values))) == -1
