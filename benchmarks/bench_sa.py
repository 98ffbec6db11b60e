"""``fleetscore bench --stream-analytics``: the cloud read path, measured.

The Stream Analytics job writes its windows as Parquet files under ``windows/YYYY/MM/DD/HH/``,
a new file every minute or every 10,000 rows (stream_analytics/README.md), with the query's
columns (``Device, Tag, WindowEnd, Value, Count, WindowHour``) in the order windows are
emitted: by time, sensors unsorted. This bench writes one such hour for a synthetic fleet into
a store (a temporary directory, and Blob storage when a connection string is given, such as
Azurite's), installs cheap models straight into the bank (as ``fleetscore bench`` does), then
scores the hour at several unit counts (1, 10, 100 units) through a counting store wrapper and
reports, per unit, the bytes and requests the window read path asked of the store and the time
per sensor of the whole hour.

With ``compact`` (the default) the hour is compacted first, as ``runs.begin`` does
(fleetscore/data/compaction.py), and the compaction's own time is reported beside; without it the
units read the raw files, as every run did before compaction existed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import record_arrivals
from fleetscore.data.windows import windows_folder
from fleetscore.model.bank import Compiled, compile_model
from fleetscore.storage import LocalStore, Store
from fleetscore.storage.counting import CountingStore

SA_HOUR = Hour.parse("2026-01-05T01")
ROWS_PER_FILE = 10_000  # the job's Blob output: a file per 10,000 rows or per minute
WINDOW_AREAS = ("windows", "compacted")
# The query's output columns, as the job writes them to Parquet.
SA_SCHEMA = pa.schema([
    ("Device", pa.string()), ("Tag", pa.string()), ("WindowEnd", pa.timestamp("us", tz="UTC")),
    ("Value", pa.float64()), ("Count", pa.int64()), ("WindowHour", pa.string()),
])


def sa_sensors(n: int) -> list[Sensor]:
    return [Sensor(f"d{i // 8:06d}", f"t{i % 8}") for i in range(n)]


def sa_file_name(rng: np.random.Generator, index: int) -> str:
    """Names as the job's Blob output gives them: a partition number, a GUID, a counter."""
    return f"0_{uuid.UUID(bytes=rng.bytes(16)).hex}_{index + 1}.parquet"


def sa_hour_tables(sensors: list[Sensor], hour: Hour, *, seed: int = 0,
                   rows_per_file: int = ROWS_PER_FILE, minutes: int = 60
                   ) -> list[pa.Table]:
    """The job's output files of one hour: each minute's windows in emission order (sensors
    unsorted), cut every ``rows_per_file`` rows and at every minute."""
    rng = np.random.default_rng(seed)
    n = len(sensors)
    levels = rng.uniform(10, 120, n)
    spreads = levels * rng.uniform(0.01, 0.04, n)
    devices = np.array([s.device for s in sensors], dtype=object)
    tags = np.array([s.tag for s in sensors], dtype=object)
    label = f"{hour.start:%Y/%m/%d/%H}"
    tables = []
    for minute in range(1, minutes + 1):
        order = rng.permutation(n)
        values = levels[order] + spreads[order] * rng.normal(0, 1, n)
        values[rng.random(n) < 0.02] += 8 * spreads[order][0]
        end = (hour.start_ms + 60_000 * minute) * 1000
        for lo in range(0, n, rows_per_file):
            pick = order[lo : lo + rows_per_file]
            k = len(pick)
            tables.append(pa.table([
                pa.array(devices[pick], pa.string()), pa.array(tags[pick], pa.string()),
                pa.array(np.full(k, end), pa.timestamp("us", tz="UTC")),
                pa.array(values[lo : lo + k], pa.float64()),
                pa.array(rng.integers(1, 7, k), pa.int64()),
                pa.array([label] * k, pa.string()),
            ], schema=SA_SCHEMA))
    return tables


def encode_sa_file(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")  # one row group per file
    return sink.getvalue().to_pybytes()


def write_sa_hour(store: Store, sensors: list[Sensor], hour: Hour = SA_HOUR, *, seed: int = 0,
                  rows_per_file: int = ROWS_PER_FILE, minutes: int = 60) -> list[str]:
    """Write the hour's files and the arrival records the cloud's Event Hub function would
    write (one per file); return the files' paths."""
    rng = np.random.default_rng(seed + 1)
    paths = []
    for i, table in enumerate(sa_hour_tables(sensors, hour, seed=seed,
                                             rows_per_file=rows_per_file, minutes=minutes)):
        path = f"{windows_folder(hour)}/{sa_file_name(rng, i)}"
        store.put(path, encode_sa_file(table))
        counts = Counter(Sensor.unchecked(d, t) for d, t in zip(
            table["Device"].to_pylist(), table["Tag"].to_pylist(), strict=True))
        record_arrivals(store, hour, f"sa-{i:05d}", counts, source="bench-sa")
        paths.append(path)
    return paths


def install_models(store: Store, sensors: list[Sensor], *, seed: int = 0,
                   base_models: int = 16) -> None:
    """One skops model (for the manifest template), a manifest per sensor, and the bank: every
    sensor scored by the fast path, as in ``fleetscore bench``."""
    from fleetscore.model.registry import ModelManifest, manifest_path, save_model
    from fleetscore.model.training import reference_model

    from .bench import read_manifest_template, write_bank

    rng = np.random.default_rng(seed + 2)
    bases = [reference_model(nu=0.05).fit(rng.normal(0, 1, (360, 1))) for _ in range(base_models)]
    compiled = [compile_model(b) for b in bases]
    save_model(store, sensors[0], bases[0], source="bench-sa")
    template = read_manifest_template(store, sensors[0])
    sha = template["sha256"]
    for sensor in sensors[1:]:
        store.put(manifest_path(sensor), ModelManifest(**{**template, "device": sensor.device,
                                                          "tag": sensor.tag}).to_json())
    # Levels as in sa_hour_tables (same seed), so points sit around each model's centre.
    levels_rng = np.random.default_rng(seed)
    levels = levels_rng.uniform(10, 120, len(sensors))
    spreads = levels * levels_rng.uniform(0.01, 0.04, len(sensors))
    entries = []
    for i, sensor in enumerate(sensors):
        b = compiled[i % base_models]
        entries.append((sensor, sha, Compiled(b.kernel, float(levels[i]), float(spreads[i]),
                                              b.gamma, b.coef0, b.degree, b.intercept, b.support,
                                              b.dual)))
    write_bank(store, entries, "sa")


@dataclass(frozen=True)
class UnitsFigures:
    units: int
    unit_size: int
    window_bytes_per_unit: float  # median over the units
    window_bytes_per_unit_max: int
    window_requests_per_unit: float
    window_requests_per_unit_max: int
    files_opened_per_unit: float
    other_requests_per_unit: float  # bank, manifests, the predictions write
    hour_reads: float  # window bytes read by all units / the hour's window bytes
    us_per_sensor: float  # all units' time / sensors (median over repeats)
    us_per_sensor_runs: tuple[float, ...] = ()
    read_us_per_sensor: float = 0.0  # the window read alone (read_points), all units / sensors


@dataclass(frozen=True)
class StoreFigures:
    store: str
    sensors: int
    files: int
    hour_bytes: int
    compacted: bool
    compaction_s: float | None
    compacted_bytes: int
    rows: tuple[UnitsFigures, ...] = field(default_factory=tuple)


def measure_units(store: Store, sensors: list[Sensor], n_units: int, *, repeats: int,
                  hour: Hour = SA_HOUR, hour_bytes: int) -> UnitsFigures:
    from fleetscore.data.windows import read_points
    from fleetscore.scoring.planning import make_plan
    from fleetscore.scoring.score import score_unit

    size = math.ceil(len(sensors) / n_units)
    plan = make_plan(store, hour, unit_size=size)
    counting = CountingStore(store)
    per_unit = []
    times, reads = [], []
    for r in range(repeats):
        t_all = t_read = 0.0
        for unit in plan.units:
            t0 = time.perf_counter()
            read_points(store, hour, unit.sensors)
            t_read += time.perf_counter() - t0
            counting.reset()
            t0 = time.perf_counter()
            result = score_unit(counting, hour, unit.sensors, unit_id=unit.id,
                                out=f"bench/sa/{unit.id}.csv")
            t_all += time.perf_counter() - t0
            if r == 0:
                assert result.scored + len(result.failures) == len(unit.sensors), result
                c = counting.counts
                per_unit.append((c.total_bytes(*WINDOW_AREAS), c.total_requests(*WINDOW_AREAS),
                                 sum(n for p, n in c.opened.items()
                                     if p.split("/", 1)[0] in WINDOW_AREAS),
                                 c.total_requests() - c.total_requests(*WINDOW_AREAS)))
        times.append(t_all / len(sensors) * 1e6)
        reads.append(t_read / len(sensors) * 1e6)
    for unit in plan.units:
        store.delete(f"bench/sa/{unit.id}.csv")
    wb = [u[0] for u in per_unit]
    wr = [u[1] for u in per_unit]
    return UnitsFigures(
        units=len(plan.units), unit_size=size,
        window_bytes_per_unit=statistics.median(wb), window_bytes_per_unit_max=max(wb),
        window_requests_per_unit=statistics.median(wr), window_requests_per_unit_max=max(wr),
        files_opened_per_unit=statistics.median(u[2] for u in per_unit),
        other_requests_per_unit=statistics.median(u[3] for u in per_unit),
        hour_reads=round(sum(wb) / hour_bytes, 2), us_per_sensor=statistics.median(times),
        us_per_sensor_runs=tuple(round(t, 1) for t in times),
        read_us_per_sensor=statistics.median(reads))


def bench_store(store: Store, name: str, n: int, *, units=(1, 10, 100), repeats: int = 3,
                compact: bool = True, seed: int = 0, rows_per_file: int = ROWS_PER_FILE,
                hour: Hour = SA_HOUR) -> StoreFigures:
    sensors = sa_sensors(n)
    paths = write_sa_hour(store, sensors, hour, seed=seed, rows_per_file=rows_per_file)
    hour_bytes = sum(len(store.get(p)) for p in paths)
    install_models(store, sensors, seed=seed)
    compaction_s, compacted_bytes = None, 0
    if compact:
        from fleetscore.data.compaction import compact_hour

        t0 = time.perf_counter()
        done = compact_hour(store, hour)
        compaction_s = time.perf_counter() - t0
        compacted_bytes = sum(f["size"] for f in done["files"]) if done else 0
    rows = tuple(measure_units(store, sensors, k, repeats=repeats, hour=hour,
                               hour_bytes=hour_bytes) for k in units)
    return StoreFigures(name, n, len(paths), hour_bytes, compact, compaction_s, compacted_bytes,
                        rows)


def run_sa_bench(sensors: int = 10_000, *, units=(1, 10, 100), repeats: int = 3,
                 compact: bool = True, connection_string: str | None = None,
                 directory: Path | None = None, seed: int = 0,
                 rows_per_file: int = ROWS_PER_FILE) -> list[StoreFigures]:
    out = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = LocalStore(Path(tmp) / "store")
        out.append(bench_store(store, "local", sensors, units=units, repeats=repeats,
                               compact=compact, seed=seed, rows_per_file=rows_per_file))
    if connection_string:
        from fleetscore.storage.blob import BlobStore

        container = f"bench-sa-{uuid.uuid4().hex[:12]}"
        blob = BlobStore(container, connection_string=connection_string)
        try:
            out.append(bench_store(blob, "blob", sensors, units=units, repeats=repeats,
                                   compact=compact, seed=seed, rows_per_file=rows_per_file))
        finally:
            try:
                blob._client.delete_container()
            finally:
                blob.close()
    return out


def figures_json(figures: list[StoreFigures]) -> list[dict]:
    return [asdict(f) for f in figures]
