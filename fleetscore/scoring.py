"""``score_unit``: the one function that scores. Every entry point calls it.

A unit is a group of sensors scored together for one hour. It reads only its own sensors'
points and models, writes one predictions file, and reports every sensor's fate: scored, no
data, or failed with the error's kind and message. One broken sensor fails alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import FleetscoreError, ScoringError, first_line
from .hours import Hour
from .models import load_model
from .bank import decisions_with_magnitude, load_bank, near_boundary
from .predictions import encode, format_of, predictions_path, predictions_table_many
from .sensors import Sensor
from .stores import Store
from .windows import SensorPoints, by_sensor, read_points


@dataclass(frozen=True)
class SensorFailure:
    sensor: str
    kind: str
    message: str


@dataclass(frozen=True)
class UnitResult:
    unit_id: str
    window: str
    sensors: int
    scored: int
    points: int
    anomalies: int
    failures: tuple[SensorFailure, ...] = ()
    no_data: tuple[str, ...] = ()
    predictions: str | None = None
    predictions_sha256: str | None = None
    duration_s: float = 0.0
    anomalies_by_sensor: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the unit as a whole could not run (its sensor list unusable)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        if not self.failures:
            return "succeeded"
        return "partial" if self.scored else "failed"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        return out

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> UnitResult:
        body = {k: v for k, v in body.items() if k != "status"}
        body["failures"] = tuple(SensorFailure(**f) for f in body.get("failures", ()))
        body["no_data"] = tuple(body.get("no_data", ()))
        return cls(**body)

    @classmethod
    def all_failed(cls, window: str, unit_id: str, sensors: Iterable[Sensor], kind: str,
                   message: str) -> UnitResult:
        """The whole unit could not run (worker crash, unreadable data): each sensor says why."""
        sensors = list(sensors)
        return cls(unit_id=unit_id, window=window, sensors=len(sensors), scored=0, points=0,
                   anomalies=0,
                   failures=tuple(SensorFailure(str(s), kind, message) for s in sensors))


def adhoc_unit_id(sensors: Iterable[Sensor]) -> str:
    digest = hashlib.sha256("\n".join(str(s) for s in sorted(sensors)).encode()).hexdigest()
    return f"adhoc-{digest[:12]}"


def predict_labels(model: Any, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """scikit-learn's outlier convention (+1 inlier, -1 outlier) -> Prediction 1 = anomaly."""
    features = values.reshape(-1, 1)
    raw = np.asarray(model.predict(features))
    if raw.shape != (len(values),) or not np.isin(raw, (-1, 1)).all():
        raise ScoringError(
            "predict() must return +1 (normal) or -1 (anomaly) per point, got "
            f"{np.unique(raw)[:5].tolist()} with shape {raw.shape}")
    labels = (raw == -1).astype(np.int8)
    decision = getattr(model, "decision_function", None)
    scores = np.asarray(decision(features), dtype=np.float64).reshape(-1) if callable(decision) else None
    return labels, scores


def score_unit(
    store: Store, hour: Hour, sensors: Iterable[Sensor], *, unit_id: str | None = None,
    use_bank: bool = True, out: str | None = None,
) -> UnitResult:
    """Score the sensors of one unit for one hour and write their predictions to ``out``
    (a run's staging path; default: the hour's predictions folder, for direct use).

    Sensors whose model is in the bank are scored together, vectorized; the others (no bank
    yet, an estimator the bank cannot compile) one by one with scikit-learn."""
    started = time.perf_counter()
    sensors = sorted(set(sensors), key=_key)  # tuple keys: C comparisons, not dataclass ones
    unit_id = unit_id or adhoc_unit_id(sensors)
    points = by_sensor(read_points(store, hour, sensors))
    present = [s for s in sensors if s in points and len(points[s].values)]
    bank = load_bank(store, present) if use_bank else {}
    result, table = score_points(store, hour, sensors, points, unit_id=unit_id, bank=bank)
    path = out or predictions_path(hour, unit_id)
    if result.scored:
        data = encode([table], format_of(path))
        store.put(path, data)
        result = replace(result, predictions=path,
                         predictions_sha256=hashlib.sha256(data).hexdigest())
    else:
        # A retried unit that now scores nothing must not leave its last attempt's file behind.
        store.delete(path)
    return replace(result, duration_s=round(time.perf_counter() - started, 6))


def score_points(
    store: Store, hour: Hour, sensors: Sequence[Sensor], points: Mapping[Sensor, SensorPoints],
    *, unit_id: str, bank: Mapping[Sensor, Any], models: dict[Sensor, Any] | None = None,
) -> tuple[UnitResult, pa.Table]:
    """The scoring itself, on points already read: the unit's result (with no predictions
    file yet) and its predictions table. ``sensors`` sorted; ``models``: scikit-learn models
    already loaded (a backfill scores a sensor in many hours and loads its model once)."""
    (result,), table, _ = score_many(store, [Group(hour, unit_id, sensors, points)], bank=bank,
                                     models=models)
    return result, table


@dataclass(frozen=True)
class Group:
    """A unit's sensors in one hour, with their points: what ``score_many`` scores."""

    hour: Hour
    unit_id: str
    sensors: Sequence[Sensor]  # sorted
    points: Mapping[Sensor, SensorPoints]


def score_many(
    store: Store, groups: Sequence[Group], *, bank: Mapping[Sensor, Any],
    models: dict[Sensor, Any] | None = None,
) -> tuple[list[UnitResult], pa.Table, list[int]]:
    """Score many groups (a backfill's hours) in one pass: one vectorized computation for
    every banked (hour, sensor), one predictions table. Returns each group's result, the
    table (the groups' rows, in order) and each group's number of rows in it."""
    started = time.perf_counter()
    models = {} if models is None else models
    scored: list[dict[Sensor, tuple[np.ndarray, np.ndarray | None]]] = [{} for _ in groups]
    failures: list[list[SensorFailure]] = [[] for _ in groups]

    def model_of(sensor: Sensor) -> Any:
        if sensor not in models:
            models[sensor] = load_model(store, sensor)
        return models[sensor]

    def attempt(index: int, sensor: Sensor, work) -> None:
        try:
            scored[index][sensor] = work()
        except FleetscoreError as exc:
            failures[index].append(SensorFailure(str(sensor), exc.kind, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a model's own bug must not sink the unit
            failures[index].append(SensorFailure(str(sensor), type(exc).__name__,
                                                 f"sensor {sensor}: {first_line(exc)}"))

    present = [[s for s in g.sensors if s in g.points and len(g.points[s].values)]
               for g in groups]
    fast = [(i, s) for i, sensors in enumerate(present) for s in sensors if s in bank]
    computed = decisions_with_magnitude([bank[s] for _, s in fast],
                                        [groups[i].points[s].values for i, s in fast])
    for (i, sensor), (dec, magnitude) in zip(fast, computed, strict=True):
        attempt(i, sensor, lambda p=groups[i].points[sensor], d=dec, m=magnitude:
                _settle_boundary(model_of, p, d, m))
    for i, sensors in enumerate(present):
        for sensor in sensors:
            if sensor not in bank:
                attempt(i, sensor, lambda p=groups[i].points[sensor]: _score_plain(model_of, p))

    rows, counts, results = [], [], []
    share = round((time.perf_counter() - started) / max(1, len(groups)), 6)
    for i, g in enumerate(groups):
        done = [s for s in g.sensors if s in scored[i]]
        rows += [(s.device, s.tag, g.points[s].ends_ms, g.points[s].values, *scored[i][s])
                 for s in done]
        counts.append(sum(len(g.points[s].values) for s in done))
        anomalies = {str(s): int(np.count_nonzero(scored[i][s][0])) for s in done}
        results.append(UnitResult(
            unit_id=g.unit_id, window=str(g.hour), sensors=len(g.sensors), scored=len(done),
            points=counts[-1], anomalies=sum(anomalies.values()),
            failures=tuple(sorted(failures[i], key=lambda f: f.sensor)),
            no_data=tuple(str(s) for s in g.sensors
                          if s not in g.points or not len(g.points[s].values)),
            duration_s=share,
            anomalies_by_sensor={k: v for k, v in anomalies.items() if v},
        ))
    return results, predictions_table_many(rows), counts


def _key(sensor: Sensor) -> tuple[str, str]:
    return sensor.device, sensor.tag


def _settle_boundary(model_of, points: SensorPoints, decision: np.ndarray,
                     magnitude: np.ndarray):
    """libsvm's rule (+1 only above 0); points too close to 0 to trust two float computations
    to agree are decided by scikit-learn itself."""
    labels = (decision <= 0).astype(np.int8)
    edge = near_boundary(decision, magnitude)
    if edge.any():
        exact_labels, exact_scores = predict_labels(model_of(points.sensor),
                                                    points.values[edge])
        labels[edge] = exact_labels
        decision = decision.copy()
        if exact_scores is not None:
            decision[edge] = exact_scores
    return labels, decision


def _score_plain(model_of, points: SensorPoints):
    model = model_of(points.sensor)
    try:
        return predict_labels(model, points.values)
    except ScoringError as exc:
        raise ScoringError(f"sensor {points.sensor}: {exc}") from exc
