"""The whole run as users run it: the benchmark of record for a run's speed.

For each fleet size it makes a store the way a user does (``fleetscore ingest`` of a readings
CSV, then ``fleetscore train`` on the first hour), scores the second hour once, then times
forced reruns (``fleetscore run --window H --force``) as whole processes from outside: the
interpreter's start, the imports, planning, the workers, writing and closing the hour. The
figure of record is the marginal cost of a sensor between two sizes (the fixed costs of a
process cancel), against scikit-learn's ``predict`` in a loop with every model in memory.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from fleetscore.core.hours import Hour

FIRST = Hour.parse("2026-01-05T00")  # trained on
SCORED = Hour.parse("2026-01-05T01")  # scored and rescored
LOOP_SAMPLE = 1000


@dataclass(frozen=True)
class SizeTiming:
    sensors: int
    runs_s: tuple[float, ...]  # each forced rerun, whole process

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


@dataclass(frozen=True)
class UsersResult:
    fmt: str
    workers: int | None
    sizes: tuple[SizeTiming, ...]
    memory_loop_us: float

    @property
    def marginal_us(self) -> float:
        """Microseconds a sensor between the smallest and the largest fleet."""
        small, large = self.sizes[0], self.sizes[-1]
        return (large.median_s - small.median_s) / (large.sensors - small.sensors) * 1e6

    @property
    def vs_memory_loop(self) -> float | None:
        """None where the sizes are too close for the noise to leave a marginal cost."""
        return self.memory_loop_us / self.marginal_us if self.marginal_us > 0 else None

    def to_json(self) -> dict:
        body = asdict(self)
        for size, timing in zip(body["sizes"], self.sizes, strict=True):
            size["median_s"] = timing.median_s
        body["marginal_us"] = self.marginal_us
        body["vs_memory_loop"] = self.vs_memory_loop
        return body


def write_readings(path: Path, sensors: int, seed: int = 0) -> None:
    """Two hours of one reading a minute per sensor (the windows a run scores are the same as
    at any rate): a level, noise and a few spikes each."""
    rng = np.random.default_rng(seed)
    minutes = np.arange(120)
    level = rng.uniform(10, 120, sensors)
    values = level[:, None] + rng.normal(0, 1, (sensors, len(minutes))) * (level[:, None] * 0.02)
    spikes = rng.random(values.shape) < 0.003
    values[spikes] += level[np.nonzero(spikes)[0]] * 0.3
    ts = (FIRST.start_ms + minutes * 60_000 + 30_000).astype("datetime64[ms]")
    ids = np.arange(sensors)
    table = pa.table({
        "TS": pa.array(np.tile(ts, sensors)).cast(pa.timestamp("ms")),
        "Device": pa.array(np.repeat([f"D{i // 5:05d}" for i in ids], len(minutes))),
        "Tag": pa.array(np.repeat([f"t{i % 5}" for i in ids], len(minutes))),
        "Value": pa.array(np.round(values, 3).reshape(-1)),
    })
    pcsv.write_csv(table, path, pcsv.WriteOptions(quoting_style="none"))


def fleetscore(*args: str) -> float:
    """Seconds of one ``fleetscore`` command, as a whole process; it must succeed."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"fleetscore {' '.join(args)} exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    return seconds


def time_size(root: Path, sensors: int, *, repeats: int, workers: int | None, fmt: str
              ) -> SizeTiming:
    store = root / f"store-{sensors}"
    readings = root / f"readings-{sensors}.csv"
    write_readings(readings, sensors)
    fleetscore("ingest", str(readings), "--store", str(store))
    readings.unlink()
    # The OneClassSVM pipeline, as this benchmark of record has always measured (its
    # in-memory loop is the reference's predict; docs/benchmarks.md compares IsolationForest
    # runs with it separately).
    fleetscore("train", "--store", str(store), "--until", str(FIRST), "--estimator", "ocsvm")
    run = ["run", "--window", str(SCORED), "--store", str(store), "--format", fmt]
    if workers:
        run += ["--workers", str(workers)]
    fleetscore(*run)
    return SizeTiming(sensors, tuple(fleetscore(*run, "--force") for _ in range(repeats)))


def memory_loop_us(store_dir: Path, sample: int) -> float:
    """scikit-learn's ``predict`` a sensor, models already loaded (``bench.time_memory_loop``)."""
    from benchmarks.bench import time_memory_loop
    from fleetscore.core.sensors import Sensor
    from fleetscore.storage import LocalStore

    sensors = [Sensor(f"D{i // 5:05d}", f"t{i % 5}") for i in range(sample)]
    return time_memory_loop(LocalStore(store_dir, create=False), sensors, SCORED)


def run_users_bench(sizes: tuple[int, ...], *, repeats: int = 3, workers: int | None = None,
                    fmt: str = "csv", directory: Path | None = None) -> UsersResult:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        root = Path(tmp)
        timings = tuple(time_size(root, n, repeats=repeats, workers=workers, fmt=fmt)
                        for n in sorted(sizes))
        largest = timings[-1].sensors
        loop = statistics.median(
            memory_loop_us(root / f"store-{largest}", min(LOOP_SAMPLE, largest))
            for _ in range(repeats))
    return UsersResult(fmt, workers, timings, round(loop, 1))
