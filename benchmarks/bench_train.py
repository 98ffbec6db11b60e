"""The training bench: ``python -m benchmarks.bench_train --sensors N [--workers W]``.

Writes two hours of one-minute windows for N sensors (window parts and arrival records, as
ingest would), then times ``train`` over them and reports seconds, sensors per second and the
peak memory of this process and of its workers, as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

HOURS = ("2026-01-05T00", "2026-01-05T01")


def build(store, sensors: int, seed: int = 0) -> None:
    from fleetscore.core.hours import Hour
    from fleetscore.core.sensors import Sensor

    from .bench import write_hour_of_points

    rng = np.random.default_rng(seed)
    fleet = [Sensor(f"dev{i // 10:06d}", f"t{i % 10}") for i in range(sensors)]
    levels = rng.uniform(5, 50, sensors)
    for text in HOURS:
        write_hour_of_points(store, Hour.parse(text), fleet,
                             levels[:, None] + rng.normal(0, 1, (sensors, 60)), count=4)


def run(sensors: int, workers: int | None) -> dict:
    from fleetscore.model.training import train
    from fleetscore.storage import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        build(store, sensors)
        started = time.perf_counter()
        result = train(store, workers=workers, estimator="ocsvm")  # the section's figures
        seconds = time.perf_counter() - started
    return {"sensors": sensors, "workers": workers, "trained": len(result.trained),
            "seconds": round(seconds, 2), "sensors_per_s": round(sensors / seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "workers_peak_rss_mb": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__)
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.sensors, args.workers)))


if __name__ == "__main__":
    main()
