"""``fleetscore backtest``: a detector measured against labelled windows, beside chance.

For each sensor, a model (``make_model()``, the default model unless told otherwise) is fitted
on the first ``train_fraction`` of the sensor's hours with data and scores every later point,
on the value and the derived ``features`` (``model.features``: the training part's matrix and
the scored part's, whose first ``diff`` looks back at the last trained point, are the whole
series' matrix cut in two, as training and hourly scoring build it), in memory: the store's
models and predictions are never read or written. What is measured, per sensor and overall:

- labelled windows hit (at least one flag inside), of the labelled windows with scored points;
- the share of points flagged, and the worst sensor's share;
- the share of flags inside labels (any label of the sensor), and false flags per sensor-day
  (a sensor-day is 1,440 scored points of 1-minute windows: days of data, not of calendar);
- how early in a window the first flag came (minutes after its Start, and as a fraction of the
  window's length), averaged over the windows hit.

**The chance line** is the same figures for a detector that flags, on each sensor, as many
points as the model did, placed uniformly at random among the sensor's scored points. Every
chance figure is an exact expectation, computed analytically (no simulation): a window of m
of a sensor's n points gets no flag of its k with probability C(n-m, k) / C(n, k), flags fall
inside labels in proportion to the labelled points, and the first flag's position follows
from the same ratios. Overall chance means are ratios of expected sums (expected lead summed
over windows, over expected windows hit). The flagged shares are the model's by construction.

**One record.** ``Backtest.to_json()`` is what ``backtest --json`` prints and what
``Backtest.from_json()`` (the report's ``--backtest``) reads back: every field of the result
(each Figures' raw counts and sums), and beside them the derived shares, means and the worst
sensor, for readers of the JSON; ``from_json`` reads only the former and recomputes the rest.

A point is inside a label ``Start,End`` when its window's end is in ``(Start, End]``: the
convention of windows themselves (each ``(end - 60 s, end]``), so a label drawn from a window's
start to its end holds exactly that window.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.core.hours import MS_PER_HOUR, Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import hours_with_arrivals, read_arrivals_many
from fleetscore.data.readings import parse_ts
from fleetscore.data.windows import by_day, by_sensor, read_points_many
from fleetscore.errors import InputError
from fleetscore.model import features as derived
from fleetscore.model.estimators import make_default
from fleetscore.model.training import GROUP_POINTS, MIN_POINTS, groups
from fleetscore.storage import Store

DEFAULT_TRAIN_FRACTION = 0.15  # the honest live setting: fit early, score forward
LABELS_HEADER = ("Device", "Tag", "Start", "End")
DAYS_PER_READ = 32
MakeModel = Callable[[], Any]
DEFAULT_ESTIMATOR = f"StandardScaler + OneClassSVM, nu={DEFAULT_NU:g}, gamma={DEFAULT_GAMMA:g}"
CHANCE_METHOD = "exact expectation (analytical), same flag count per sensor"


# --- labels ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Label:
    start_ms: int
    end_ms: int


def read_labels(path: Path) -> dict[Sensor, tuple[Label, ...]]:
    """``Device,Tag,Start,End`` (UTC timestamps); a bad row is one InputError naming the file
    and its line (the header is line 1), as the readings reader names its rows."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory, expected a labels CSV file") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    if not rows or tuple(c.strip() for c in rows[0]) != LABELS_HEADER:
        raise InputError(f"{path}: line 1: expected the header {','.join(LABELS_HEADER)}")
    out: dict[Sensor, list[Label]] = defaultdict(list)
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # a blank line (a trailing one, often) holds no label
        sensor, label = _parse_label(path, line, row)
        out[sensor].append(label)
    return {s: tuple(sorted(v, key=lambda x: (x.start_ms, x.end_ms))) for s, v in out.items()}


def _parse_label(path: Path, line: int, row: list[str]) -> tuple[Sensor, Label]:
    where = f"{path}: line {line}"
    if len(row) != len(LABELS_HEADER):
        raise InputError(f"{where}: expected 4 fields (Device,Tag,Start,End), got {len(row)}")
    try:
        sensor = Sensor(row[0].strip(), row[1].strip())
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from exc
    start, end = parse_ts(row[2]), parse_ts(row[3])
    if start is None or end is None:
        bad = row[2] if start is None else row[3]
        raise InputError(f"{where}: {bad.strip()!r} is not a timestamp")
    if end <= start:
        raise InputError(f"{where}: End {row[3].strip()} is not after Start {row[2].strip()}")
    return sensor, Label(start, end)


# --- figures: pure functions of ends, flags and labels ---------------------------------------

@dataclass(frozen=True)
class Figures:
    """What a detector did on some points; for chance, every count is an expectation."""

    points: int
    flagged: float
    windows: int
    windows_hit: float
    points_in_labels: int
    flags_in_labels: float
    sensor_days: float
    lead_minutes_sum: float  # over the windows hit (for chance: its expectation)
    lead_fraction_sum: float

    @property
    def flagged_share(self) -> float:
        return self.flagged / self.points if self.points else 0.0

    @property
    def inside_share(self) -> float | None:
        return self.flags_in_labels / self.flagged if self.flagged else None

    @property
    def false_per_day(self) -> float | None:
        return (self.flagged - self.flags_in_labels) / self.sensor_days if self.sensor_days else None

    @property
    def lead_minutes(self) -> float | None:
        return self.lead_minutes_sum / self.windows_hit if self.windows_hit else None

    @property
    def lead_fraction(self) -> float | None:
        return self.lead_fraction_sum / self.windows_hit if self.windows_hit else None

    def __add__(self, other: Figures) -> Figures:
        return Figures(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_json(self) -> dict[str, Any]:
        """Every field (``from_json`` reads them), then the derived figures for readers."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "flagged_share": self.flagged_share, "inside_share": self.inside_share,
                "false_flags_per_sensor_day": self.false_per_day,
                "lead_minutes": self.lead_minutes, "lead_fraction": self.lead_fraction}

    @classmethod
    def from_json(cls, data: Any, where: str = "figures") -> Figures:
        record = _object(data, where)
        return cls(*(_number(record, f.name, where) for f in fields(cls)))


ZERO = Figures(0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)


def _in_labels(ends: np.ndarray, labels: Sequence[Label]) -> list[tuple[Label, np.ndarray]]:
    """Each label with a scored point inside, and the mask of the points whose window end is
    in (Start, End]; a label with none is outside the backtest and not counted."""
    masks = [(lab, (ends > lab.start_ms) & (ends <= lab.end_ms)) for lab in labels]
    return [(lab, m) for lab, m in masks if m.any()]


def _union(ends: np.ndarray, scored: list[tuple[Label, np.ndarray]]) -> np.ndarray:
    """Points inside any label (labels may overlap: a point counts once)."""
    return np.logical_or.reduce([m for _, m in scored]) if scored else np.zeros(len(ends), bool)


def detector_figures(ends: np.ndarray, flags: np.ndarray, labels: Sequence[Label],
                     interval_s: int = 60) -> Figures:
    """The model's figures on a sensor's scored points (``ends`` ascending, ``flags`` bool);
    labels without a scored point inside are not counted."""
    scored = _in_labels(ends, labels)
    inside = _union(ends, scored)
    hit, minutes, fraction = 0, 0.0, 0.0
    for lab, mask in scored:
        first = np.flatnonzero(mask & flags)
        if len(first):
            hit += 1
            lead = int(ends[first[0]]) - lab.start_ms
            minutes += lead / 60_000
            fraction += lead / (lab.end_ms - lab.start_ms)
    return Figures(len(ends), int(flags.sum()), len(scored), hit, int(inside.sum()),
                   int((flags & inside).sum()), len(ends) * interval_s / 86_400, minutes, fraction)


def chance_figures(ends: np.ndarray, flagged: int, labels: Sequence[Label],
                   interval_s: int = 60) -> Figures:
    """Exact expectations for ``flagged`` flags placed uniformly at random among the points
    (see the module's docstring)."""
    n = len(ends)
    scored = _in_labels(ends, labels)
    inside = int(_union(ends, scored).sum())
    hit, minutes, fraction = 0.0, 0.0, 0.0
    for lab, mask in scored:
        at = ends[mask]
        # none[j]: probability that none of the window's first j points is flagged,
        # C(n-j, k) / C(n, k) = prod_{i<j} (n-k-i)/(n-i).
        j = np.arange(len(at))
        none = np.concatenate([[1.0], np.cumprod(np.clip(n - flagged - j, 0, None) / (n - j))])
        first = none[:-1] - none[1:]  # probability that point j is the first flagged
        hit += 1.0 - none[-1]
        lead = (at - lab.start_ms).astype(float)
        minutes += float(first @ lead) / 60_000
        fraction += float(first @ lead) / (lab.end_ms - lab.start_ms)
    in_labels = flagged * inside / n if n else 0.0
    return Figures(n, flagged, len(scored), hit, inside, in_labels, n * interval_s / 86_400,
                   minutes, fraction)


def split_hours(ends: np.ndarray, train_fraction: float) -> int:
    """How many of the points (in time order) are for training: those of the first
    ``ceil(train_fraction x hours with data)`` hours, at least one hour, and one hour fewer
    than the sensor has, so something is scored (0 when it has a single hour)."""
    hours = np.unique((ends - 1) // MS_PER_HOUR)
    if len(hours) < 2:
        return 0
    take = min(max(1, math.ceil(train_fraction * len(hours))), len(hours) - 1)
    return int(np.searchsorted(ends, (hours[take] * MS_PER_HOUR) + 1))


# --- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SensorResult:
    sensor: str
    trained_points: int
    scored_from: str  # the first hour scored
    model: Figures
    chance: Figures

    def to_json(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "trained_points": self.trained_points,
                "scored_from": self.scored_from, "model": self.model.to_json(),
                "chance": self.chance.to_json()}

    @classmethod
    def from_json(cls, data: Any, where: str = "sensor") -> SensorResult:
        record = _object(data, where)
        return cls(_text(record, "sensor", where), int(_number(record, "trained_points", where)),
                   _text(record, "scored_from", where),
                   Figures.from_json(record.get("model"), f"{where}.model"),
                   Figures.from_json(record.get("chance"), f"{where}.chance"))


@dataclass(frozen=True)
class Backtest:
    train_fraction: float
    hours: tuple[str, str] | None  # the range read, None when nothing had data
    sensors: tuple[SensorResult, ...]
    skipped: tuple[tuple[str, str], ...]  # (sensor, reason)
    labels_unscored: int  # labelled windows with no scored point (no data, or in training)
    features: tuple[str, ...] = ()  # derived features the models saw besides the value
    estimator: str = DEFAULT_ESTIMATOR  # the model fitted per sensor, as the output names it

    @property
    def model(self) -> Figures:
        return sum((s.model for s in self.sensors), ZERO)

    @property
    def chance(self) -> Figures:
        return sum((s.chance for s in self.sensors), ZERO)

    @property
    def worst(self) -> SensorResult | None:
        """The sensor flagging the largest share of its points (chance flags it as often)."""
        return max(self.sensors, key=lambda s: s.model.flagged_share, default=None)

    def to_json(self) -> dict[str, Any]:
        worst = self.worst
        return {"estimator": self.estimator, "features": list(self.features),
                "inputs": derived.label(self.features), "train_fraction": self.train_fraction,
                "hours": list(self.hours) if self.hours else None,
                "chance_method": CHANCE_METHOD,
                "overall": {"model": self.model.to_json(), "chance": self.chance.to_json(),
                            "worst_sensor": worst.sensor if worst else None,
                            "worst_share": worst.model.flagged_share if worst else None},
                "sensors": [s.to_json() for s in self.sensors],
                "skipped": [{"sensor": s, "reason": r} for s, r in self.skipped],
                "labels_unscored": self.labels_unscored}

    @classmethod
    def from_json(cls, data: Any) -> Backtest:
        """The result ``to_json`` wrote; anything else is an InputError saying which field
        (``overall`` is derived: recomputed, not read)."""
        record = _object(data, "the record")
        hours = record.get("hours")
        if hours is not None and not (isinstance(hours, list) and len(hours) == 2
                                      and all(isinstance(h, str) for h in hours)):
            raise InputError("hours: expected null or [first hour, last hour]")
        names = _list(record, "features", "the record")
        if not all(isinstance(n, str) and n in derived.NAMES for n in names):
            raise InputError(f"features: expected some of {', '.join(derived.NAMES)}")
        skipped = [_object(x, f"skipped[{i}]")
                   for i, x in enumerate(_list(record, "skipped", "the record"))]
        return cls(_number(record, "train_fraction", "the record"),
                   (hours[0], hours[1]) if hours else None,
                   tuple(SensorResult.from_json(x, f"sensors[{i}]")
                         for i, x in enumerate(_list(record, "sensors", "the record"))),
                   tuple((_text(x, "sensor", f"skipped[{i}]"), _text(x, "reason", f"skipped[{i}]"))
                         for i, x in enumerate(skipped)),
                   int(_number(record, "labels_unscored", "the record")), tuple(names),
                   _text(record, "estimator", "the record"))


def read_backtest(path: Path) -> Backtest:
    """A file ``backtest --json`` wrote; anything else is one InputError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory, expected a backtest JSON file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc}); expected what `fleetscore backtest "
                         "--json` prints") from exc
    try:
        return Backtest.from_json(data)
    except InputError as exc:
        raise InputError(f"{path}: not a backtest result: {exc}") from exc


def _object(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    return data


def _list(record: dict[str, Any], key: str, where: str) -> list[Any]:
    value = record.get(key)
    if not isinstance(value, list):
        raise InputError(f"{where}: {key!r}: expected a list")
    return value


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise InputError(f"{where}: {key!r}: expected a string")
    return value


def _number(record: dict[str, Any], key: str, where: str) -> Any:
    """An int stays an int (counts), a float a float (expectations)."""
    value = record.get(key)
    # bool is an int to Python, never a count or a share here.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: {key!r}: expected a finite number")
    return value


# --- the backtest: reads the store's windows, fits in memory ---------------------------------

def backtest_sensor(sensor: Sensor, ends: np.ndarray, values: np.ndarray,
                    labels: Sequence[Label], *, train_fraction: float, make_model: MakeModel,
                    interval_s: int = 60, features: Sequence[str] = ()) -> SensorResult | str:
    """One sensor's backtest, or why it has none."""
    cut = split_hours(ends, train_fraction)
    if cut == 0:
        return "data in a single hour (nothing left to score after training)"
    if cut < MIN_POINTS:
        return f"only {cut} points in its training hours (at least {MIN_POINTS})"
    model = make_model().fit(derived.matrix(features, ends[:cut], values[:cut]))
    # The last trained point is the scored part's previous one, as the hour before is for a
    # run: the first scored point's diff is what it is in the whole series.
    before = (int(ends[cut - 1]), float(values[cut - 1]))
    scored_x = derived.matrix(features, ends[cut:], values[cut:], previous=before)
    flags = np.asarray(model.predict(scored_x)) == -1
    scored = ends[cut:]
    result = detector_figures(scored, flags, labels, interval_s)
    return SensorResult(str(sensor), cut, str(Hour.of_label_ms(int(scored[0]))), result,
                        chance_figures(scored, int(flags.sum()), labels, interval_s))


def run_backtest(store: Store, labels: dict[Sensor, tuple[Label, ...]], *,
                 first: Hour | None = None, last: Hour | None = None,
                 train_fraction: float = DEFAULT_TRAIN_FRACTION,
                 make_model: MakeModel = make_default, interval_s: int = 60,
                 sensors: Iterable[Sensor] | None = None, features: Sequence[str] = (),
                 estimator: str = DEFAULT_ESTIMATOR) -> Backtest:
    """Every sensor with data in the hours (or only ``sensors``), read a group at a time,
    fitted and scored in memory: nothing is written to the store. ``estimator`` names what
    ``make_model`` makes, for the record."""
    hours = [h for h in hours_with_arrivals(store)
             if (first is None or h >= first) and (last is None or h <= last)]
    arrivals = read_arrivals_many(store, hours)
    points: Counter[Sensor] = Counter()
    for counts in arrivals.values():
        points.update(counts)
    wanted = set(sensors) if sensors is not None else None  # read once: it may be an iterator
    if wanted is not None:
        points = Counter({s: n for s, n in points.items() if s in wanted})
    results: list[SensorResult] = []
    skipped: list[tuple[str, str]] = []
    for group in groups(points, GROUP_POINTS):
        data = _read_series(store, [h for h in hours if set(arrivals[h]) & set(group)], group)
        for sensor in group:
            ends, values = data.get(sensor, (np.empty(0, np.int64), np.empty(0)))
            done = backtest_sensor(sensor, ends, values, labels.get(sensor, ()),
                                   train_fraction=train_fraction, make_model=make_model,
                                   interval_s=interval_s, features=features)
            if isinstance(done, str):
                skipped.append((str(sensor), done))
            else:
                results.append(done)
    counted = sum(r.model.windows for r in results)
    unscored = sum(len(v) for s, v in labels.items() if wanted is None or s in wanted) - counted
    span = (str(hours[0]), str(hours[-1])) if hours else None
    return Backtest(train_fraction, span, tuple(results), tuple(skipped), unscored,
                    tuple(features), estimator)


def _read_series(store: Store, hours: list[Hour], group: Sequence[Sensor]
                 ) -> dict[Sensor, tuple[np.ndarray, np.ndarray]]:
    """Each sensor's window ends and values over the hours, in time order, read a few days
    at a time as training reads them (``read_points_many``: a day listed once)."""
    wanted = set(group)
    ends: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    values: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    days = list(by_day(sorted(hours)).values())
    for at in range(0, len(days), DAYS_PER_READ):
        chunk = [h for day in days[at:at + DAYS_PER_READ] for h in day]
        for table in read_points_many(store, chunk, wanted).values():
            for sensor, pts in by_sensor(table).items():
                ends[sensor].append(pts.ends_ms)
                values[sensor].append(pts.values)
    return {s: (np.concatenate(ends[s]), np.concatenate(values[s])) for s in ends}
