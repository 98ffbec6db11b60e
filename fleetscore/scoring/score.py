"""``score_unit``: the one function that scores. Every entry point calls it.

A unit is a group of sensors scored together for one hour. It reads only its own sensors'
points and models, writes one predictions file, and reports every sensor's fate: scored, no
data, or failed with the error's kind and message. One broken sensor fails alone.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.contracts import Failure, ShadowResult
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, sorted_unique
from fleetscore.data.predictions import (
    encode,
    format_of,
    predictions_columns,
    predictions_path,
    shadow_path,
)
from fleetscore.data.windows import read_points, sensor_runs
from fleetscore.errors import FleetscoreError, ScoringError, first_line
from fleetscore.model.bank import Bank, decide, libsvm_decisions, load_bank, near_boundary
from fleetscore.model.challengers import Challengers, load_challengers, load_version
from fleetscore.model.features import Detector, Previous
from fleetscore.model.forest import settle_forests
from fleetscore.model.registry import load_detector
from fleetscore.storage import Store

LastPoints = Callable[[int, list[str]], dict[str, tuple[int, float]]]  # group, keys -> last


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
    # The unit's most anomalous sensors (at most TOP_ANOMALOUS, most anomalies first, then by
    # name) and their anomalies: enough for any run's top, whatever its units.
    top_anomalous: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the unit as a whole could not run (its sensor list unusable)
    # When the unit read its models: its visible rows were made by the champions current
    # then (``models history`` shows each sensor's).
    models_at: str = ""
    # Sensors that flagged at least FLAG_FLOOR of their points: [flagged, points] each. What
    # the noisy-sensor guard counts, without reading the hour's predictions back.
    flagged: dict[str, list[int]] = field(default_factory=dict)
    shadow: ShadowResult | None = None  # its challengers' shadow predictions, if it has any

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        if not self.failures:
            return "succeeded"
        return "partial" if self.scored else "failed"

    def to_json(self) -> dict[str, Any]:
        # Shallow, field by field: asdict would deep-copy every container of a big unit.
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["failures"] = [asdict(f) for f in self.failures]
        out["no_data"] = list(self.no_data)
        out["shadow"] = self.shadow.to_json() if self.shadow is not None else None
        out["status"] = self.status
        return out

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> UnitResult:
        body = {k: v for k, v in body.items() if k != "status"}
        body["failures"] = tuple(SensorFailure(**f) for f in body.get("failures", ()))
        body["no_data"] = tuple(body.get("no_data", ()))
        if body.get("shadow") is not None:
            body["shadow"] = ShadowResult.from_json(body["shadow"])
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
    """scikit-learn's outlier convention (+1 inlier, -1 outlier) -> Prediction 1 = anomaly.
    ``values``: one value per point, or the model's input matrix (a row per point)."""
    features = values if values.ndim == 2 else values.reshape(-1, 1)
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
    sensors = sorted_unique(sensors)
    unit_id = unit_id or adhoc_unit_id(sensors)
    points = read_points(store, hour, sensors)
    runs = sensor_runs(points)
    models_at = datetime.now(UTC).isoformat(timespec="microseconds")
    bank = load_bank(store, present_pairs(points, runs), ordered=True) if use_bank \
        else Bank.empty()
    # read_points returned only these sensors' rows: no membership to check.
    (result,), table, _ = score_many(
        store, [Group(hour, unit_id, sensors, points, exact=True, runs=runs)], bank=bank)
    path = out or predictions_path(hour, unit_id)
    result = replace(result, models_at=models_at, **_write(store, path, table, result.scored))
    # After the visible rows are written, from the same points: nothing the challengers do
    # can change them.
    shadow = shadow_unit(store, Group(hour, unit_id, sensors, points, runs=runs),
                         format_of(path))
    return replace(result, shadow=shadow, duration_s=round(time.perf_counter() - started, 6))


def _write(store: Store, path: str, table: pa.Table, rows: int) -> dict[str, Any]:
    """Write a unit's predictions file; the fields that name it in the unit's result."""
    if not rows:
        # A retried unit that now scores nothing must not leave its last attempt's file behind.
        store.delete(path)
        return {}
    data = encode([table], format_of(path))
    store.put(path, data)
    return {"predictions": path, "predictions_sha256": hashlib.sha256(data).hexdigest()}


def shadow_unit(store: Store, group: Group, fmt: str, challengers: Challengers | None = None
                ) -> ShadowResult | None:
    """Score the unit's challengers on its points into ``shadow/`` (None: it has none;
    ``challengers``: already loaded for these sensors, or more). A challenger that fails is
    named; a shadow pass that fails whole says why. Neither fails the unit."""
    path = shadow_path(group.hour, group.unit_id, fmt)
    try:
        if challengers is None:
            challengers = load_challengers(store, [(s.device, s.tag) for s in group.sensors])
        challengers = challengers.of(group.sensors)
        if not challengers:
            store.delete(path)  # a rerun after the challengers were promoted: no stale file
            return None
        (result,), table, _ = score_many(
            store, [replace(group, sensors=challengers.sensors, exact=False)],
            bank=challengers.bank, load=lambda s: load_version(store, challengers.pointer(s)))
        table = table.append_column("Version", pa.array(
            challengers.versions_of(pc.binary_join_element_wise(
                table["Device"], table["Tag"], "/")), pa.int64()))
        written = _write(store, path, table, result.scored)
        return ShadowResult(group.unit_id, written.get("predictions"),
                            written.get("predictions_sha256"), len(challengers.pointers),
                            result.scored, result.anomalies,
                            tuple(Failure(f.sensor, f.kind, f.message, group.unit_id)
                                  for f in result.failures))
    except Exception as exc:  # noqa: BLE001 - the shadow pass must never sink the unit
        return ShadowResult(group.unit_id, None, None, 0, 0, 0,
                            error=f"{type(exc).__name__}: {first_line(exc)}")


def present_pairs(points: pa.Table, runs: tuple | None = None) -> list[tuple[str, str]]:
    """(device, tag) of each sensor a sorted points table holds rows of (``runs``: its
    ``sensor_runs``, if already known)."""
    starts, _, _ = runs or sensor_runs(points)
    at = pa.array(starts)
    return list(zip(points["Device"].take(at).to_pylist(), points["Tag"].take(at).to_pylist(),
                    strict=True))


@dataclass(frozen=True)
class Group:
    """A unit's sensors in one hour, with their points: what ``score_many`` scores."""

    hour: Hour
    unit_id: str
    sensors: Sequence[Sensor]  # sorted
    points: pa.Table  # sorted by Device, Tag, End, as read_points returns it
    exact: bool = False  # the points hold rows of ``sensors`` only (read for them alone)
    runs: tuple | None = None  # sensor_runs(points), if already known


def score_many(
    store: Store, groups: Sequence[Group], *, bank: Bank,
    models: dict[Sensor, Any] | None = None, load: Callable[[Sensor], Any] | None = None,
) -> tuple[list[UnitResult], pa.Table, list[int]]:
    """Score many groups (a backfill's hours) in one pass: one vectorized computation for
    every banked (hour, sensor), one predictions table. Returns each group's result, the
    table (the groups' rows, in order) and each group's number of rows in it.

    Columnar throughout: a group's sensors are runs of rows of its points table; only a
    sensor that scikit-learn must score (not in the bank, or a point on the decision
    boundary) becomes a Python object. ``load``: a sensor's model for scikit-learn (default:
    its champion), cached in ``models``."""
    started = time.perf_counter()
    runs = _Runs.of(groups)
    hours = [g.hour for g in groups]
    decided = _decide(runs, bank, {} if models is None else models,
                      load or (lambda sensor: load_detector(store, sensor)),
                      lambda group, keys: _last_points(store, hours[group] - 1, keys))
    scored_runs = runs.member.copy()
    scored_runs[list(decided.failed)] = False
    keep = np.repeat(scored_runs, runs.lengths)
    table = _predictions(runs.tables, keep, decided.labels, decided.decision, decided.has_score,
                         runs.values)
    anomalies = (np.add.reduceat(decided.labels.astype(np.int64), runs.starts)
                 if len(runs.starts) else np.zeros(0, np.int64))
    share = round((time.perf_counter() - started) / max(1, len(groups)), 6)
    results = [_group_result(g, index, runs, scored_runs, anomalies, decided.failed, share)
               for index, g in enumerate(groups)]
    return results, table, [r.points for r in results]


@dataclass(frozen=True)
class _Runs:
    """Every group's rows one after the other, as runs of (group, sensor): run i is rows
    ``starts[i]:stops[i]`` of ``values``, sensor ``keys[i]`` (``Device/Tag``) of group
    ``group_of[i]``; ``member``: the sensor is one the group asked for."""

    tables: list[pa.Table]
    group_keys: list[pa.Array | None]  # each group's sensors as keys, where membership matters
    group_of: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    keys: pa.Array
    member: np.ndarray
    values: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.stops - self.starts

    @functools.cached_property
    def ends(self) -> np.ndarray:
        """Every row's window end (ms), as ``values`` holds the rows."""
        if not self.tables:
            return np.zeros(0, np.int64)
        return np.concatenate([t["End"].to_numpy() for t in self.tables]).astype(np.int64)

    @classmethod
    def of(cls, groups: Sequence[Group]) -> _Runs:
        tables = [g.points.select(["Device", "Tag", "End", "Value"]) for g in groups]
        group_keys: list[pa.Array | None] = [None if g.exact else _keys(g.sensors)
                                             for g in groups]
        parts, offset = [], 0
        for index, (g, table) in enumerate(zip(groups, tables, strict=True)):
            starts, stops, keys = g.runs or sensor_runs(table)
            member = np.ones(len(keys), dtype=bool) if g.exact else pc.is_in(
                keys, value_set=group_keys[index]).to_numpy(zero_copy_only=False)
            parts.append((np.full(len(keys), index), starts + offset, stops + offset, keys,
                          member))
            offset += table.num_rows
        values = (np.concatenate([t["Value"].to_numpy() for t in tables]) if tables
                  else np.zeros(0))
        if not parts:
            empty = np.zeros(0, np.int64)
            return cls(tables, group_keys, empty, empty, empty, pa.array([], pa.string()),
                       np.zeros(0, bool), values)
        return cls(tables, group_keys,
                   *(np.concatenate([p[k] for p in parts]).astype(np.int64) for k in (0, 1, 2)),
                   pa.concat_arrays([p[3] for p in parts]),
                   np.concatenate([p[4] for p in parts]).astype(bool), values)


@dataclass
class _Decided:
    labels: np.ndarray
    decision: np.ndarray
    has_score: np.ndarray
    failed: dict[int, SensorFailure]  # run -> why its sensor failed


def _decide(runs: _Runs, bank: Bank, models: dict[Sensor, Detector],
            load: Callable[[Sensor], Detector], last_points: LastPoints) -> _Decided:
    """Labels and scores of every row: the bank's for banked sensors, settled where a point
    is too near the boundary; scikit-learn's for the rest. A sensor that fails is named."""
    entries = np.where(runs.member, bank.index(runs.keys), -1)
    fast = np.flatnonzero(entries >= 0)
    decision, magnitude = decide(bank, entries[fast], runs.starts[fast], runs.stops[fast],
                                 runs.values)
    labels = (decision <= 0).astype(np.int8)  # libsvm: +1 only for a decision above 0
    trees, forest_edge = _decide_forests(runs, bank, entries, decision, labels)
    out = _Decided(labels, decision, np.ones(len(runs.values), dtype=bool), {})
    banked = len(fast) + int((trees >= 0).sum())
    names = runs.keys.to_pylist() if banked < len(runs.keys) else None

    def model_of(sensor: Sensor) -> Detector:
        if sensor not in models:
            models[sensor] = load(sensor)
        return models[sensor]

    def attempt(run: int, work: Callable[[Sensor, np.ndarray], tuple]) -> None:
        key = names[run] if names is not None else runs.keys[run].as_py()
        sensor = Sensor.unchecked(*key.split("/", 1))
        a, b = runs.starts[run], runs.stops[run]
        try:
            got_labels, got_scores = work(sensor, runs.values[a:b])
        except FleetscoreError as exc:
            out.failed[run] = SensorFailure(str(sensor), exc.kind, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a model's own bug must not sink the unit
            out.failed[run] = SensorFailure(str(sensor), type(exc).__name__,
                                            f"sensor {sensor}: {first_line(exc)}")
            return
        out.labels[a:b] = got_labels
        if got_scores is None:
            out.has_score[a:b] = False
        else:
            out.decision[a:b] = got_scores

    # Points too close to 0 to trust the fast computation's sign: libsvm's own order of
    # operations decides, and scikit-learn only where even that could round either way.
    edge = near_boundary(decision, magnitude) & np.repeat(entries >= 0, runs.lengths)
    if edge.any():
        for run in np.flatnonzero(np.add.reduceat(edge, runs.starts) > 0):
            a, b = runs.starts[run], runs.stops[run]
            attempt(run, lambda sensor, values, a=a, b=b, run=run: _settle_boundary(
                bank, int(entries[run]), lambda: model_of(sensor).estimator, values, decision[a:b],
                edge[a:b]))
    if forest_edge.any():  # a forest's points too near 0: scikit-learn itself decides them
        for run in np.flatnonzero(np.add.reduceat(forest_edge, runs.starts) > 0):
            a, b = runs.starts[run], runs.stops[run]
            attempt(run, lambda sensor, values, a=a, b=b: _settle_forest(
                lambda: model_of(sensor).estimator, values, decision[a:b], forest_edge[a:b]))
    plain = np.flatnonzero(runs.member & (entries < 0) & (trees < 0))
    previous = _previous_points(runs, plain, model_of, last_points)
    for run in plain:
        attempt(run, lambda sensor, values, run=run: _score_plain(
            model_of(sensor), sensor, values, runs.ends[runs.starts[run]:runs.stops[run]],
            previous.get(int(run))))
    return out


def _previous_points(runs: _Runs, plain: np.ndarray, model_of: Callable[[Sensor], Detector],
                     last_points: LastPoints) -> dict[int, Previous | Exception]:
    """Each plain run's sensor's last point of the hour before, for the runs whose model sees
    derived features (``model.features``): read once per hour for all of them. A model that
    cannot be loaded is left to the scoring attempt, which names it; an hour before that
    cannot be read fails its featured sensors alone (the error stands in for their point)."""
    featured: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for run in plain:
        key = runs.keys[run].as_py()
        try:
            if not model_of(Sensor.unchecked(*key.split("/", 1))).features:
                continue
        except Exception:  # noqa: BLE001 - the attempt loads it again and says why
            continue
        featured[int(runs.group_of[run])].append((int(run), key))
    out: dict[int, Previous | Exception] = {}
    for group, wanted in featured.items():
        try:
            found = last_points(group, [k for _, k in wanted])
        except Exception as exc:  # noqa: BLE001 - named per sensor by the scoring attempt
            out.update((run, exc) for run, _ in wanted)
            continue
        out.update((run, found.get(key)) for run, key in wanted)
    return out


def _last_points(store: Store, hour: Hour, keys: Sequence[str]) -> dict[str, tuple[int, float]]:
    """Each ``Device/Tag`` key's last window (end ms, value) in ``hour``, for those with one."""
    table = read_points(store, hour, [Sensor.unchecked(*k.split("/", 1)) for k in keys])
    _, stops, names = sensor_runs(table)
    ends, values = table["End"].to_numpy().astype(np.int64), table["Value"].to_numpy()
    return {name: (int(ends[b - 1]), float(values[b - 1]))
            for name, b in zip(names.to_pylist(), stops, strict=True)}


def _decide_forests(runs: _Runs, bank: Bank, entries: np.ndarray, decision: np.ndarray,
                    labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The banked forests' decisions and labels, written into ``decision`` and ``labels`` for
    the runs of sensors the bank holds a forest of (and no SVM). Returns each run's forest
    entry (-1: none) and the rows scikit-learn must decide."""
    trees = np.where(runs.member & (entries < 0), bank.forests.index(runs.keys), -1)
    at = np.flatnonzero(trees >= 0)
    if not len(at):
        return trees, np.zeros(len(runs.values), dtype=bool)
    rows = np.repeat(trees >= 0, runs.lengths)
    found, left = settle_forests(bank.forests, trees[at], runs.starts[at], runs.stops[at],
                                 runs.values)
    decision[rows] = found[rows]
    labels[rows] = found[rows] < 0  # IsolationForest.predict: -1 only for a decision below 0
    return trees, left & rows


def _settle_forest(model: Callable[[], Any], values: np.ndarray, decision: np.ndarray,
                   edge: np.ndarray):
    """A forest's run whose points near 0 (or not finite as float32) scikit-learn decides,
    loading the model only then; the others keep the compiled decisions."""
    decision = decision.copy()
    labels = (decision < 0).astype(np.int8)
    at = np.flatnonzero(edge)
    exact_labels, exact_scores = predict_labels(model(), values[at])
    labels[at] = exact_labels
    if exact_scores is not None:
        decision[at] = exact_scores
    return labels, decision


def _group_result(g: Group, index: int, runs: _Runs, scored_runs: np.ndarray,
                  anomalies: np.ndarray, failed: dict[int, SensorFailure],
                  share: float) -> UnitResult:
    """One group's result: its scored, failed and absent sensors (runs are in group order)."""
    first, last = np.searchsorted(runs.group_of, [index, index + 1])
    mine = np.arange(first, last)
    done = mine[scored_runs[mine]]
    hot = done[anomalies[done] > 0]
    present = mine[runs.member[mine]]
    if g.exact and len(present) == len(g.sensors):
        absent = np.zeros(len(g.sensors), dtype=bool)
    else:
        wanted = runs.group_keys[index]
        wanted = wanted if wanted is not None else _keys(g.sensors)
        absent = pc.invert(pc.is_in(wanted, value_set=runs.keys.take(
            pa.array(present, pa.int64())))).to_numpy(zero_copy_only=False)
    return UnitResult(
        unit_id=g.unit_id, window=str(g.hour), sensors=len(g.sensors), scored=len(done),
        points=int(runs.lengths[done].sum()), anomalies=int(anomalies[done].sum()),
        failures=tuple(sorted((failed[r] for r in mine if r in failed), key=lambda f: f.sensor)),
        no_data=tuple(str(g.sensors[i]) for i in np.flatnonzero(absent)),
        duration_s=share,
        top_anomalous=_top(runs.keys.take(pa.array(hot, pa.int64())), anomalies[hot]),
        flagged=_flagged(runs, hot, anomalies),
    )


FLAG_FLOOR = 0.05  # the lowest share a noisy-sensor threshold may be (alerts.rules checks)


def _flagged(runs: _Runs, hot: np.ndarray, anomalies: np.ndarray) -> dict[str, list[int]]:
    """[flagged, points] of the sensors among ``hot`` runs that flagged at least FLAG_FLOOR."""
    points = runs.lengths[hot]
    over = hot[anomalies[hot] >= FLAG_FLOOR * points]
    if not len(over):
        return {}
    return {k: [int(f), int(n)] for k, f, n in zip(
        runs.keys.take(pa.array(over, pa.int64())).to_pylist(), anomalies[over].tolist(),
        runs.lengths[over].tolist(), strict=True)}


TOP_ANOMALOUS = 20  # sensors per run named in its summary, for the monitoring queries


def top_counts(items: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The TOP_ANOMALOUS (sensor, anomalies) pairs with the most anomalies, then by name."""
    return heapq.nsmallest(TOP_ANOMALOUS, items, key=lambda kv: (-kv[1], kv[0]))


def _top(names: pa.Array, counts: np.ndarray) -> dict[str, int]:
    """``top_counts`` of a unit's sensors, sorted in C."""
    if len(counts) <= 4 * TOP_ANOMALOUS:  # a backfill's small hours: plain Python is quicker
        return dict(top_counts(zip(names.to_pylist(), counts.tolist(), strict=True)))
    order = pc.sort_indices(pa.table({"n": pa.array(-counts), "k": names}),
                            sort_keys=[("n", "ascending"), ("k", "ascending")])
    first = order.slice(0, TOP_ANOMALOUS)
    return dict(zip(names.take(first).to_pylist(), counts[first.to_numpy()].tolist(),
                    strict=True))


def _keys(sensors: Sequence[Sensor]) -> pa.Array:
    return pa.array(list(map(str, sensors)), pa.string())


def _predictions(tables: list[pa.Table], keep: np.ndarray, labels: np.ndarray,
                 decision: np.ndarray, has_score: np.ndarray, values: np.ndarray) -> pa.Table:
    if not tables or not keep.any():
        return predictions_columns(np.zeros(0, np.int64), pa.array([], pa.string()),
                                   pa.array([], pa.string()), np.zeros(0), np.zeros(0, np.int8),
                                   np.zeros(0), np.zeros(0, bool))
    rows = pa.concat_tables(tables)
    if not keep.all():
        mask = pa.array(keep)
        rows = rows.filter(mask)
        labels, decision, has_score, values = (a[keep] for a in (labels, decision, has_score,
                                                                 values))
    return predictions_columns(rows["End"].to_numpy(), rows["Device"], rows["Tag"], values,
                               labels, decision, has_score)


def _settle_boundary(bank: Bank, entry: int, model: Callable[[], Any], values: np.ndarray,
                     decision: np.ndarray, edge: np.ndarray):
    """libsvm's rule (+1 only above 0) on a run's points near 0: ``libsvm_decisions`` settles
    them without scikit-learn (whose import a scoring process otherwise never needs); the rare
    point it leaves is decided by scikit-learn itself, loading the model only then."""
    decision = decision.copy()
    at = np.flatnonzero(edge)
    exact, settled = libsvm_decisions(bank, entry, values[at])
    decision[at[settled]] = exact[settled]
    rest = at[~settled]
    labels = (decision <= 0).astype(np.int8)
    if len(rest):
        exact_labels, exact_scores = predict_labels(model(), values[rest])
        labels[rest] = exact_labels
        if exact_scores is not None:
            decision[rest] = exact_scores
    return labels, decision


def _score_plain(detector: Detector, sensor: Sensor, values: np.ndarray, ends: np.ndarray,
                 previous: Previous | Exception):
    if isinstance(previous, Exception):
        raise ScoringError(f"sensor {sensor}: its model sees derived features and the hour "
                           f"before cannot be read: {first_line(previous)}") from previous
    try:
        return predict_labels(detector.estimator, detector.inputs(ends, values, previous))
    except ScoringError as exc:
        raise ScoringError(f"sensor {sensor}: {exc}") from exc
