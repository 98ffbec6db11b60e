"""``fleetscore train``: fit the default model per sensor on its stored points."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .arrivals import hours_with_arrivals
from .defaults import DEFAULT_GAMMA, DEFAULT_NU
from .hours import Hour
from .models import ModelManifest, save_model
from .sensors import Sensor
from .stores import Store
from .windows import by_sensor, read_points

MIN_POINTS = 10


@dataclass(frozen=True)
class TrainResult:
    trained: tuple[ModelManifest, ...]
    skipped: tuple[tuple[str, str], ...]  # (sensor, reason)
    hours: tuple[Hour, ...]


def default_model(nu: float = DEFAULT_NU, gamma: float = DEFAULT_GAMMA):
    """The reference architecture's model: Pipeline(StandardScaler, OneClassSVM)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    return Pipeline([("scaler", StandardScaler()), ("ocsvm", OneClassSVM(nu=nu, gamma=gamma))])


def training_points(
    store: Store, *, until: Hour | None = None, since: Hour | None = None
) -> tuple[dict[Sensor, np.ndarray], tuple[Hour, ...]]:
    hours = tuple(h for h in hours_with_arrivals(store)
                  if (until is None or h <= until) and (since is None or h >= since))
    values: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    for hour in hours:
        for sensor, points in by_sensor(read_points(store, hour)).items():
            values[sensor].append(points.values)
    return {s: np.concatenate(v) for s, v in values.items()}, hours


def train(
    store: Store, *, until: Hour | None = None, since: Hour | None = None,
    nu: float = DEFAULT_NU, gamma: float = DEFAULT_GAMMA, sensors: set[Sensor] | None = None,
) -> TrainResult:
    data, hours = training_points(store, until=until, since=since)
    trained: list[ModelManifest] = []
    skipped: list[tuple[str, str]] = []
    for sensor in sorted(data):
        if sensors is not None and sensor not in sensors:
            continue
        values = data[sensor]
        if len(values) < MIN_POINTS:
            skipped.append((str(sensor), f"only {len(values)} points (at least {MIN_POINTS})"))
            continue
        model = default_model(nu, gamma).fit(values.reshape(-1, 1))
        trained.append(save_model(store, sensor, model, source=f"train:nu={nu},gamma={gamma}",
                                  trained_on=(hours[0], hours[-1])))
    return TrainResult(tuple(trained), tuple(skipped), hours)
