"""``fleetscore train``: fit a model per sensor (``estimators``: ocsvm, iforest) on its stored points.

Sensors are trained in groups: a group's points are read across the training hours (window
files are sorted by Device, so a group reads only its own row groups), fitted on every core,
saved, and dropped before the next group is read. Memory follows one group's points, not the
fleet's; the arrival records say how many points each sensor has, so groups are sized by
points before anything is read.

Reads go by day (``read_points_many`` / ``read_arrivals_many``): a day's folder is listed
once and its day parts read once for all its hours, ``DAYS_PER_READ`` days at a time, so a
history of sparse hours costs per day with data, not per hour, and memory still follows the
group.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.core.hours import MS_PER_HOUR, Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import hours_with_arrivals, read_arrivals_many
from fleetscore.data.windows import by_day, by_sensor, read_points_many
from fleetscore.model import estimators
from fleetscore.model.bank import save_fresh, verdict_of
from fleetscore.model.features import matrix
from fleetscore.model.registry import ModelManifest, list_models
from fleetscore.model.versions import ModelsLock, manifest_of, save_estimator
from fleetscore.settings import Settings
from fleetscore.storage import Store
from fleetscore.storage.workers import init_worker, worker_store

MIN_POINTS = 10
GROUP_POINTS = 2_000_000  # points held at once (16 MB of values, plus their windows' rows)
DAYS_PER_READ = 32  # days of a group's points read at once (then kept as arrays only)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainResult:
    trained: tuple[ModelManifest, ...]
    skipped: tuple[tuple[str, str], ...]  # (sensor, reason)
    hours: tuple[Hour, ...]


def reference_model(nu: float = DEFAULT_NU, gamma: float = DEFAULT_GAMMA):
    """The reference architecture's model: Pipeline(StandardScaler, OneClassSVM)."""
    return estimators.make("ocsvm", nu=nu, gamma=gamma)


@dataclass(frozen=True)
class Spec:
    """What each sensor is fitted with: ``estimators.make(name, **params)`` on the value and
    ``features``; ``source``: how its versions name the training."""

    name: str
    params: dict[str, float]
    source: str
    features: tuple[str, ...] = ()


def _spec(estimator: str, nu: float | None, gamma: float | None,
          features: tuple[str, ...]) -> Spec:
    """nu and gamma are the ocsvm's (their defaults filled in); given to another estimator,
    they are a ValueError rather than silently dropped."""
    if estimator == "ocsvm":
        nu = DEFAULT_NU if nu is None else nu
        gamma = DEFAULT_GAMMA if gamma is None else gamma
        source = f"train:nu={nu},gamma={gamma}"
        params = {"nu": nu, "gamma": gamma}
    else:
        estimators.make(estimator)  # an unknown name fails here, before any data is read
        if nu is not None or gamma is not None:
            raise ValueError(f"nu and gamma are the ocsvm's; {estimator} takes neither")
        source, params = f"train:{estimator}", {}
    if features:
        source += f",features={'+'.join(features)}"
    return Spec(estimator, params, source, features)


def training_hours(store: Store, *, until: Hour | None = None,
                   since: Hour | None = None) -> tuple[Hour, ...]:
    return tuple(h for h in hours_with_arrivals(store)
                 if (until is None or h <= until) and (since is None or h >= since))


def groups(points: Counter[Sensor], budget: int = GROUP_POINTS) -> list[list[Sensor]]:
    """Consecutive sensors (in Device order, so each group reads few row groups) whose points
    add up to at most ``budget`` (a sensor with more points is a group of its own)."""
    out: list[list[Sensor]] = []
    current: list[Sensor] = []
    held = 0
    for sensor in sorted(points, key=lambda s: (s.device, s.tag)):
        if current and held + points[sensor] > budget:
            out.append(current)
            current, held = [], 0
        current.append(sensor)
        held += points[sensor]
    if current:
        out.append(current)
    return out


def read_group(store: Store, hours: Sequence[Hour], sensors: Sequence[Sensor],
               with_data: dict[Hour, set[Sensor]]
               ) -> dict[Sensor, tuple[np.ndarray, np.ndarray]]:
    """The group's points over the hours (only the hours where one of them has data, and of
    each hour only the sensors its arrival records name), read a few days at a time: each
    sensor's window ends and values in hour order, then window order, as the hours' tables
    hold them."""
    wanted = set(sensors)
    needed = [h for h in hours if with_data[h] & wanted]
    ends: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    values: dict[Sensor, list[np.ndarray]] = defaultdict(list)
    days = list(by_day(needed).values())
    for first in range(0, len(days), DAYS_PER_READ):
        chunk = sorted(h for day in days[first:first + DAYS_PER_READ] for h in day)
        tables = read_points_many(store, chunk, wanted)
        table = pa.concat_tables([tables.pop(h) for h in chunk])
        if table.num_rows == 0:
            continue
        # Rows of sensors the hour's records do not name are left out (as if each hour were
        # read for its own sensors); then one stable sort puts each sensor's rows together,
        # still in hour and window order.
        named = pa.array([f"{h.index}/{s.device}/{s.tag}" for h in chunk
                          for s in with_data[h] & wanted])
        hours_of = pc.cast(pa.array((table["End"].to_numpy() - 1) // MS_PER_HOUR), pa.string())
        keep = pc.is_in(pc.binary_join_element_wise(hours_of, table["Device"], table["Tag"], "/"),
                        value_set=named)
        if not pc.all(keep).as_py():
            table = table.filter(keep)
        table = table.sort_by([("Device", "ascending"), ("Tag", "ascending")])
        for sensor, points in by_sensor(table).items():
            ends[sensor].append(points.ends_ms)
            values[sensor].append(points.values)
    return {s: (np.concatenate(ends[s]), np.concatenate(v)) for s, v in values.items()}


# --- fitting, in this process or in a pool of workers ---------------------------------------

def _fit_and_save(store: Store, sensor: Sensor, series: tuple[np.ndarray, np.ndarray],
                  spec: Spec, trained_on: tuple[Hour, Hour], role: str) -> ModelManifest:
    ends, values = series
    model = estimators.make(spec.name, **spec.params).fit(
        matrix(spec.features, ends, values))
    # The parent holds the models lock for the whole training (ModelsLock in train).
    version = save_estimator(store, sensor, model, source=spec.source, features=spec.features,
                             trained_on=trained_on, role=role, by="train", under_lock=True)
    verdict = verdict_of(model, spec.features)
    # Compiled here, in the worker that holds the model, for the bank rebuilt after the
    # training: loading it back costs that rebuild more than fitting did. A compiled
    # OneClassSVM loads and compiles again faster than a fresh verdict is read and deleted.
    if verdict.compiled is None:
        save_fresh(store, sensor, version.sha256, spec.features, verdict)
    return manifest_of(sensor, version)


def _fit_in_worker(args) -> ModelManifest:
    return _fit_and_save(worker_store(), *args)


def train(
    store: Store, *, until: Hour | None = None, since: Hour | None = None,
    nu: float | None = None, gamma: float | None = None, sensors: set[Sensor] | None = None,
    workers: int | None = 1, progress: Progress | None = None, budget: int = GROUP_POINTS,
    role: str = "champion", lock: ModelsLock | None = None, estimator: str = estimators.DEFAULT,
    features: tuple[str, ...] = (),
) -> TrainResult:
    """Train every sensor with data in the hours (or only ``sensors``), each model a new
    version in ``role``: champion (it scores from now on) or challenger (it waits to be
    compared and promoted). ``workers`` > 1 fits in that many processes (None: one per
    core); each worker opens the store itself. ``lock``: the models lock the caller already
    holds (a refit holds one across processes); it is renewed before each group, so a lock
    taken over meanwhile stops the training before it writes again. ``estimator``: a name of
    ``estimators.NAMES`` (``nu`` and ``gamma`` are the ocsvm's); ``features``: derived
    features it sees besides the value (``model.features``), stored with each version."""
    spec = _spec(estimator, nu, gamma, features)
    hours = training_hours(store, until=until, since=since)
    arrivals = read_arrivals_many(store, hours)
    with_data = {h: set(a) for h, a in arrivals.items()}
    points: Counter[Sensor] = Counter()
    for counts in arrivals.values():
        points.update(counts)
    if sensors is not None:
        points = Counter({s: n for s, n in points.items() if s in sensors})
    unchallenged = _without_champion(store, points) if role == "challenger" else []
    for sensor in unchallenged:
        del points[sensor]
    workers = workers or os.cpu_count() or 1
    # One lock on model roles for the whole training: the caller's, or one taken here.
    with nullcontext(lock) if lock is not None else ModelsLock(store) as held:
        trained, skipped = _fit_groups(store, hours, with_data, points, workers, held,
                                       (spec, role, budget), progress)
    if progress:
        progress(len(points), len(points))
    skipped += [(str(s), NO_CHAMPION) for s in unchallenged]
    return TrainResult(tuple(trained), tuple(sorted(skipped)), hours)


NO_CHAMPION = "no champion to challenge (train it as a champion first)"


def _without_champion(store: Store, points: Counter[Sensor]) -> list[Sensor]:
    """Sensors with data but no model: a challenger of theirs could never be compared."""
    champions = list_models(store)
    return sorted(s for s in points if s not in champions)


def _fit_groups(store: Store, hours: tuple[Hour, ...], with_data: dict[Hour, set[Sensor]],
                points: Counter[Sensor], workers: int, lock: ModelsLock,
                options: tuple[Spec, str, int],
                progress: Progress | None
                ) -> tuple[list[ModelManifest], list[tuple[str, str]]]:
    """Fit and save every group's sensors, here or on a pool, renewing the lock a group."""
    spec, role, budget = options
    pool = None
    if workers > 1 and len(points) > 1:
        # Import what fitting needs before the pool forks: each worker then starts with
        # scikit-learn and skops loaded, instead of importing them itself (a second each).
        import sklearn.ensemble  # noqa: F401
        import sklearn.svm  # noqa: F401
        import skops.io  # noqa: F401

        pool = ProcessPoolExecutor(workers, initializer=init_worker,
                                   initargs=(store.url, Settings.from_env()))
    trained: list[ModelManifest] = []
    skipped: list[tuple[str, str]] = []
    done = 0
    try:
        for group in groups(points, budget):
            lock.renew()
            data = read_group(store, hours, group, with_data)
            jobs = []
            for sensor in group:
                series = data.get(sensor, (np.empty(0, np.int64), np.empty(0)))
                if len(series[1]) < MIN_POINTS:
                    skipped.append((str(sensor),
                                    f"only {len(series[1])} points (at least {MIN_POINTS})"))
                    continue
                jobs.append((sensor, series, spec, (hours[0], hours[-1]), role))
            if pool is None:
                results = (_fit_and_save(store, *job) for job in jobs)
            else:
                results = pool.map(_fit_in_worker, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            for manifest in results:
                trained.append(manifest)
                done += 1
                if progress and (done % 100 == 0 or done == len(points)):
                    progress(done, len(points))
            done += len(group) - len(jobs)
    finally:
        if pool is not None:
            pool.shutdown()
    return trained, skipped
