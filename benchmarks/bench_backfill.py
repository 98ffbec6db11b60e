"""The backfill bench: years of a small fleet's history, ingested, trained, scored and reported.

``python -m benchmarks.bench_backfill [--hours 13000] [--dir D]`` writes a synthetic history of
the shape users backfill after a model change (7 sensors sampled every 5 minutes, spread over
about 4 years with gaps: each hour with data has one sensor's run of readings) and times each
stage as the CLI runs it, in this process: ingest, train, ``run --all``, report. It prints the
times, the store's file count and size against the CSV's, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

SENSORS = [(f"D{d:02d}", tag) for d, tag in
           [(1, "temp"), (1, "vibration"), (2, "temp"), (2, "pressure"), (3, "temp"),
            (3, "flow"), (4, "vibration")]]
SAMPLE_S = 300
START = datetime(2021, 1, 1, tzinfo=UTC)


def make_history(path: Path, *, hours: int = 13_000, span_hours: int = 4 * 8760,
                 seed: int = 0) -> int:
    """Write the readings CSV; returns the number of readings."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(span_hours, size=min(hours, span_hours), replace=False))
    levels = rng.uniform(5, 50, len(SENSORS))
    rows = 0
    with open(path, "w") as out:
        out.write("TS,Device,Tag,Value\n")
        for h in chosen:
            s = int(rng.integers(len(SENSORS)))
            device, tag = SENSORS[s]
            n = int(rng.integers(1, 11))
            first = int(rng.integers(0, 12 - min(n, 11)))
            base = START + timedelta(hours=int(h))
            values = levels[s] + rng.normal(0, 1, n)
            if rng.random() < 0.05:
                values = values * 0  # long runs of exact zeros: points on the model's edge
            for i in range(n):
                ts = base + timedelta(seconds=(first + i) * SAMPLE_S + 7)
                out.write(f"{ts:%Y-%m-%d %H:%M:%S}.000,{device},{tag},{values[i]:.3f}\n")
                rows += 1
    return rows


@dataclass(frozen=True)
class BackfillResult:
    readings: int
    hours: int
    csv_bytes: int
    ingest_s: float
    train_s: float
    run_s: float
    report_s: float
    total_s: float
    store_files: int
    store_bytes: int
    store_vs_csv: float
    runs: dict

    def to_json(self) -> dict:
        return asdict(self)


def _tree(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def run_backfill_bench(directory: Path, *, hours: int = 13_000, workers: int | None = None,
                       seed: int = 0) -> BackfillResult:
    from fleetscore.compute.local import LocalBackend
    from fleetscore.data.arrivals import hours_with_arrivals
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.bank import rebuild_bank
    from fleetscore.model.training import train
    from fleetscore.report.html import write_report
    from fleetscore.runs.engine import ENGINE
    from fleetscore.runs.ranges import run_range
    from fleetscore.settings import Settings
    from fleetscore.storage import LocalStore

    csv_path = directory / "history.csv"
    readings = make_history(csv_path, hours=hours, seed=seed)
    store = LocalStore(directory / "store")
    t0 = time.perf_counter()
    ingest_file(store, csv_path)
    t1 = time.perf_counter()
    train(store)
    rebuild_bank(store)
    t2 = time.perf_counter()
    backend = LocalBackend(store.url, Settings(), workers, engine=ENGINE)
    try:
        summaries = run_range(store, hours_with_arrivals(store), backend).summaries
    finally:
        backend.close()
    t3 = time.perf_counter()
    write_report(store, directory / "report.html")
    t4 = time.perf_counter()
    files, size = _tree(directory / "store")
    statuses: dict[str, int] = {}
    for s in summaries:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    csv_bytes = csv_path.stat().st_size
    return BackfillResult(
        readings=readings, hours=len(summaries), csv_bytes=csv_bytes,
        ingest_s=round(t1 - t0, 2), train_s=round(t2 - t1, 2), run_s=round(t3 - t2, 2),
        report_s=round(t4 - t3, 2), total_s=round(t4 - t0, 2), store_files=files,
        store_bytes=size, store_vs_csv=round(size / csv_bytes, 1), runs=statuses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_backfill",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=int, default=13_000, help="hours with data")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None, help="keep the store here")
    args = parser.parse_args(argv)
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        result = run_backfill_bench(args.dir, hours=args.hours, workers=args.workers)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_backfill_bench(Path(tmp), hours=args.hours, workers=args.workers)
    print(json.dumps(result.to_json(), indent=1))


if __name__ == "__main__":
    main()
