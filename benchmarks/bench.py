"""``fleetscore bench``: time the fast path against the plain per-sensor loop.

It builds a synthetic fleet straight into a store (one hour of 1-minute points per sensor and
one ``Pipeline(StandardScaler, OneClassSVM)`` per sensor), then times each stage of scoring a
unit (read points, load models, score, write predictions) and the whole unit, for the fast
path (the model bank, vectorized) and for the plain path (one skops load and one scikit-learn
``predict`` per sensor) on the same models and data, and a whole ``run`` of the hour through
the local process pool. The plain path is timed on a sample of the fleet: its cost per sensor
does not depend on the fleet's size.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import record_arrivals
from fleetscore.data.predictions import encode, predictions_path, predictions_table_many
from fleetscore.data.windows import PART_SCHEMA, by_sensor, encode_part, part_path, read_points
from fleetscore.model.bank import (
    INDEX_PATH,
    MODELS_PATH,
    SHARD_SENSORS,
    VERSIONS_PATH,
    Compiled,
    compile_model,
    encode_shard,
    load_bank,
    model_versions,
    models_list,
    versions_list,
)
from fleetscore.storage import LocalStore, Store

BENCH_HOUR = Hour.parse("2026-01-05T01")
BASE_MODELS = 64


@dataclass(frozen=True)
class Stages:
    sensors: int
    read_s: float
    load_s: float
    score_s: float
    write_s: float
    unit_s: float

    @property
    def per_sensor_us(self) -> float:
        return self.unit_s / self.sensors * 1e6


@dataclass(frozen=True)
class BenchResult:
    sensors: int
    points_per_sensor: int
    repeats: int
    fast: Stages
    plain: Stages
    run_s: float
    run_workers: int
    labels_identical: bool
    peak_rss_mb: float
    boundary_sensors: int = 0  # sensors with a point decided by scikit-learn (outside the sample)
    run_worker_peak_rss_mb: float = 0.0
    # scikit-learn's predict in a loop, models already in memory, one call a sensor: the
    # floor of any per-sensor scoring loop (median of the repeats, one core).
    memory_loop_us: float = 0.0
    run_parquet_s: float = 0.0  # the same whole run, predictions written as Parquet
    run_peak_rss_mb: float = 0.0  # the whole run's own process (its workers: above)

    @property
    def ratio(self) -> float:
        return self.plain.per_sensor_us / self.fast.per_sensor_us

    @property
    def run_sensors_per_s(self) -> float:
        return self.sensors / self.run_s

    def to_json(self) -> dict:
        body = asdict(self)
        body["fast"]["per_sensor_us"] = self.fast.per_sensor_us
        body["plain"]["per_sensor_us"] = self.plain.per_sensor_us
        body["ratio"] = self.ratio
        body["run_sensors_per_s"] = self.run_sensors_per_s
        body["run_vs_plain_loop"] = self.plain.per_sensor_us / (self.run_s / self.sensors * 1e6)
        body["run_vs_memory_loop"] = self.memory_loop_us / (self.run_s / self.sensors * 1e6)
        if self.run_parquet_s:
            body["run_parquet_vs_memory_loop"] = \
                self.memory_loop_us / (self.run_parquet_s / self.sensors * 1e6)
        return body


def _sensors(n: int) -> list[Sensor]:
    return [Sensor(f"b{i // 8:06d}", f"t{i % 8}") for i in range(n)]


def write_hour_of_points(store: Store, hour: Hour, sensors: list[Sensor], values: np.ndarray,
                         count: int = 6) -> None:
    """One hour of one-minute windows (``values``: sensors x 60) as one window part and its
    arrival record, as ingest would write them."""
    n = len(sensors)
    ends = hour.start_ms + 60_000 * np.arange(1, 61)
    table = pa.table(
        [pa.array(np.repeat([s.device for s in sensors], 60), pa.string()),
         pa.array(np.repeat([s.tag for s in sensors], 60), pa.string()),
         pa.array(np.tile(ends, n), pa.timestamp("ms", tz="UTC")),
         pa.array(values.ravel(), pa.float64()), pa.array(np.full(n * 60, count), pa.int64())],
        schema=PART_SCHEMA)
    store.put(part_path(hour, "bench"), encode_part(table))
    record_arrivals(store, hour, "bench", Counter({s: 60 for s in sensors}))


def build_fleet(store: Store, n: int, *, sample: int, seed: int = 0) -> list[Sensor]:
    """Points, arrivals and models for ``n`` sensors; skops models only for the sample."""
    from fleetscore.model.registry import save_model
    from fleetscore.model.training import reference_model

    rng = np.random.default_rng(seed)
    sensors = _sensors(n)
    levels = rng.uniform(10, 120, n)
    spreads = levels * rng.uniform(0.01, 0.04, n)
    # Points: 60 one-minute means per sensor, a few of them far off.
    values = levels[:, None] + spreads[:, None] * rng.normal(0, 1, (n, 60))
    values[rng.random((n, 60)) < 0.02] += 8 * spreads.repeat(60).reshape(n, 60)[0, 0]
    write_hour_of_points(store, BENCH_HOUR, sensors, values)
    # Models: base models fitted on standardized data; each sensor's own scaler (its level and
    # spread) makes it a distinct model, as training per sensor would.
    bases = [reference_model(nu=0.05).fit(rng.normal(0, 1, (360, 1))) for _ in range(BASE_MODELS)]
    compiled_bases = [compile_model(b) for b in bases]
    from fleetscore.model.registry import ModelManifest, manifest_path

    digests = {}
    for i in range(min(sample, n)):
        model = _with_scaler(bases[i % BASE_MODELS], levels[i], spreads[i])
        digests[sensors[i]] = save_model(store, sensors[i], model, source="bench").sha256
    # The rest of the fleet has manifests (so runs plan it) and lives in the bank only: writing
    # a skops file per sensor would take longer than everything measured here.
    template = read_manifest_template(store, sensors[0])
    for sensor in sensors[min(sample, n):]:
        store.put(manifest_path(sensor), ModelManifest(**{**template, "device": sensor.device,
                                                          "tag": sensor.tag}).to_json())
    entries = []
    for i, sensor in enumerate(sensors):
        base = compiled_bases[i % BASE_MODELS]
        # Bank entries name the model they were compiled from: the sample's own, else the
        # template manifest's (load_bank uses an entry only while its manifest agrees).
        sha = digests.get(sensor, template["sha256"])
        entries.append((sensor, sha, Compiled(base.kernel, float(levels[i]), float(spreads[i]),
                                                  base.gamma, base.coef0, base.degree,
                                                  base.intercept, base.support, base.dual)))
    write_bank(store, entries, "bench")
    return sensors


def write_bank(store: Store, entries: list, prefix: str) -> None:
    """A bench's bank, written directly: shards of (sensor, model sha256, Compiled) entries and
    the index, as rebuild_bank lays them out."""
    shards = []
    for start in range(0, len(entries), SHARD_SENSORS):
        group = entries[start : start + SHARD_SENSORS]
        path = f"bank/shard-{prefix}{start:09d}.npz"
        store.put(path, encode_shard(group))
        shards.append({"key": path, "path": path, "first": str(group[0][0]),
                       "last": str(group[-1][0]), "compiled": len(group)})
    # Sealed (bank.seal): the bench wrote every manifest and entry itself, nothing raced it.
    nonce = f"{prefix}-bench"
    # With the files' versions, as rebuild_bank records them: runs then check the registry
    # against them (bank.registry_damage), as they do on a store `train` made.
    sensors = [e[0] for e in entries]
    store.put(MODELS_PATH, models_list(nonce, sensors))
    store.put(VERSIONS_PATH, versions_list(nonce, sensors, model_versions(store) or {}))
    store.put(INDEX_PATH, json.dumps({"shards": shards, "rebuild": nonce, "sealed": True,
                                      "check": []}).encode())


def read_manifest_template(store: Store, sensor: Sensor) -> dict:
    from fleetscore.model.registry import read_manifest

    return asdict(read_manifest(store, sensor))


def _with_scaler(base, mean: float, scale: float):
    import copy

    model = copy.deepcopy(base)
    scaler = model.steps[0][1]
    scaler.mean_ = np.array([mean])
    scaler.scale_ = np.array([scale])
    scaler.var_ = np.array([scale**2])
    return model


def time_fast(store: Store, sensors: list[Sensor]) -> Stages:
    """The stages of ``score_unit``'s fast path, one by one, then the whole call."""
    from fleetscore.data.predictions import predictions_columns
    from fleetscore.data.windows import sensor_runs
    from fleetscore.model.bank import decide
    from fleetscore.scoring.score import present_pairs, score_unit

    t0 = time.perf_counter()
    points = read_points(store, BENCH_HOUR, sensors)
    runs = sensor_runs(points)  # as score_unit: right after the read
    t1 = time.perf_counter()
    bank = load_bank(store, present_pairs(points, runs), ordered=True)
    t2 = time.perf_counter()
    starts, stops, keys = runs
    entries = bank.index(keys)
    fast = entries >= 0
    values = points["Value"].to_numpy()
    decision, _ = decide(bank, entries[fast], starts[fast], stops[fast], values)
    labels = (decision <= 0).astype(np.int8)
    t3 = time.perf_counter()
    table = predictions_columns(points["End"].to_numpy(), points["Device"], points["Tag"], values,
                                labels, decision, np.isfinite(decision))
    store.put(predictions_path(BENCH_HOUR, "bench-stages"), encode([table]))
    t4 = time.perf_counter()
    score_unit(store, BENCH_HOUR, sensors, unit_id="bench-fast")
    t5 = time.perf_counter()
    return Stages(len(sensors), t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)


def time_plain(store: Store, sensors: list[Sensor]) -> Stages:
    from fleetscore.model.registry import load_model
    from fleetscore.scoring.score import predict_labels, score_unit

    t0 = time.perf_counter()
    points = by_sensor(read_points(store, BENCH_HOUR, sensors))
    t1 = time.perf_counter()
    models = {s: load_model(store, s) for s in sensors}
    t2 = time.perf_counter()
    scored = {s: predict_labels(models[s], points[s].values) for s in sensors}
    t3 = time.perf_counter()
    table = predictions_table_many([(s.device, s.tag, points[s].ends_ms, points[s].values,
                                     *scored[s]) for s in sensors])
    store.put(predictions_path(BENCH_HOUR, "bench-stages"), encode([table]))
    t4 = time.perf_counter()
    score_unit(store, BENCH_HOUR, sensors, unit_id="bench-plain", use_bank=False)
    t5 = time.perf_counter()
    return Stages(len(sensors), t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)


def time_memory_loop(store: Store, sensors: list[Sensor], hour: Hour = BENCH_HOUR) -> float:
    """Microseconds a sensor of ``model.predict(points)`` with every model already loaded: the
    floor of any per-sensor scoring loop (one core)."""
    from fleetscore.model.registry import load_model

    points = by_sensor(read_points(store, hour, sensors))
    models = {s: load_model(store, s) for s in sensors}
    t0 = time.perf_counter()
    for s in sensors:
        models[s].predict(points[s].values.reshape(-1, 1))
    return (time.perf_counter() - t0) / len(sensors) * 1e6


def _median_stages(runs: list[Stages]) -> Stages:
    return Stages(runs[0].sensors, *(statistics.median(getattr(r, f) for r in runs)
                                     for f in ("read_s", "load_s", "score_s", "write_s", "unit_s")))


def run_bench(sensors: int, *, sample: int = 1000, repeats: int = 3, workers: int | None = None,
              directory: Path | None = None, seed: int = 0) -> BenchResult:
    from fleetscore.compute.local import LocalBackend
    from fleetscore.runs.engine import ENGINE
    from fleetscore.runs.lifecycle import read_predictions
    from fleetscore.settings import Settings

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = LocalStore(Path(tmp) / "store")
        fleet = build_fleet(store, sensors, sample=sample, seed=seed)
        part = fleet[: min(sample, sensors)]
        fast = _median_stages([time_fast(store, fleet) for _ in range(repeats)])
        plain = _median_stages([time_plain(store, part) for _ in range(repeats)])
        memory_loop = statistics.median(time_memory_loop(store, part) for _ in range(repeats))
        # Same labels on the sample, either path.
        fast_rows = _labels(store, "bench-fast", part)
        plain_rows = _labels(store, "bench-plain", part)
        identical = fast_rows == plain_rows
        for unit in ("bench-fast", "bench-plain", "bench-stages"):
            store.delete(predictions_path(BENCH_HOUR, unit))
        # The whole runs, each in a fresh process (as `fleetscore run` after its imports), so
        # what this process did above (it scored the whole fleet as one unit) weighs nothing.
        runs_s, run_peak, workers_peak = {}, 0.0, 0.0
        for fmt in ("csv", "parquet"):
            timed = []
            for _ in range(repeats):
                fresh_hour(store)
                timed.append(run_in_child(store, workers, fmt))
            runs_s[fmt] = statistics.median(t for t, _, _ in timed)
            summary = timed[-1][1]
            run_peak = max([run_peak, *(p for _, _, (p, _) in timed)])
            workers_peak = max([workers_peak, *(w for _, _, (_, w) in timed)])
            # Sensors with a point on the decision boundary need their skops file, which only
            # the sample has (see build_fleet): outside it they fail, and are counted.
            assert summary.scored + summary.failed == sensors, summary
            assert all(f["kind"] == "ModelNotFound" for f in summary.failures), \
                summary.failures[:3]
            assert read_predictions(store, BENCH_HOUR).num_rows == summary.scored * 60
        run_s, run_parquet_s = runs_s["csv"], runs_s["parquet"]
        run_workers = workers or LocalBackend(store.url, Settings(), engine=ENGINE).workers
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(sensors, 60, repeats, fast, plain, run_s, run_workers, identical, peak,
                       summary.failed, workers_peak, round(memory_loop, 1), run_parquet_s,
                       run_peak)


def fresh_hour(store: LocalStore) -> None:
    """Forget the bench hour's earlier run (its manifest and predictions), and let the file
    system finish deleting them, so each timed run scores the hour afresh as the hourly run
    does: replacing an earlier run's files is a rerun's cost, and on a disk that discards
    freed blocks it lands, unpredictably, in whatever runs next."""
    from fleetscore.data.predictions import predictions_folder
    from fleetscore.runs.lifecycle import manifest_path

    for path in list(store.list(predictions_folder(BENCH_HOUR))):
        store.delete(path)
    store.delete(manifest_path(BENCH_HOUR))
    os.sync()


def run_in_child(store: LocalStore, workers: int | None, fmt: str):
    """Seconds of one whole run of the bench hour (``run_hour``, the local pool) in a fresh
    Python process, timed there from the run's start to its summary, and that summary."""
    from fleetscore.runs.lifecycle import RunSummary

    # The child finds this package where this process found it (appended to its path, so the
    # fleetscore it imports is the installed one, as here), whatever its working directory.
    code = ("import sys; sys.path.append(sys.argv.pop(1)); from benchmarks.bench import "
            "_child_run; _child_run(sys.argv[1:])")
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code, root, store.url, str(workers or 0), fmt],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the timed run failed: {done.stderr.strip()[-2000:]}")
    body = json.loads(done.stdout.strip().splitlines()[-1])
    return body["seconds"], RunSummary.from_json(body["summary"]), (body["peak_mb"],
                                                                    body["workers_peak_mb"])


def _child_run(argv: list[str]) -> None:
    from fleetscore.compute.local import LocalBackend
    from fleetscore.runs.engine import ENGINE
    from fleetscore.runs.lifecycle import run_hour
    from fleetscore.settings import Settings
    from fleetscore.storage.workers import tune_gc

    tune_gc()  # as the CLI does
    url, workers, fmt = argv
    store = LocalStore(url, create=False)
    backend = LocalBackend(store.url, Settings(), int(workers) or None, engine=ENGINE)
    try:
        started = time.perf_counter()
        summary = run_hour(store, BENCH_HOUR, backend, fmt=fmt)
        seconds = time.perf_counter() - started
    finally:
        backend.close()
    mb = 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({"seconds": seconds, "summary": summary.to_json(), "peak_mb": _own_peak_mb(),
                      "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                      / mb}))


def _own_peak_mb() -> float:
    """This process's peak resident memory since it started its program. ru_maxrss would
    count the copy of the parent it was forked from (the bench, gigabytes) before exec;
    Linux's VmHWM belongs to the program's own memory."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _labels(store: Store, unit: str, sensors: list[Sensor]) -> list[tuple]:
    from fleetscore.data.predictions import decode

    table = decode(store.get(predictions_path(BENCH_HOUR, unit)), unit)
    wanted = {(s.device, s.tag) for s in sensors}
    return sorted((d, t, ts, p) for d, t, ts, p in zip(
        table["Device"].to_pylist(), table["Tag"].to_pylist(), table["TS"].to_pylist(),
        table["Prediction"].to_pylist(), strict=True) if (d, t) in wanted)
