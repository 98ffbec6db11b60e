"""The report bench: ``python -m benchmarks.bench_report --sensors N [--hours H] [--dir D]``.

Builds a store of N sensors with H hours (default 24) of scored predictions, as real runs
leave them: each hour's one-minute windows are written as one window part and its arrival
record (``bench.write_hour_of_points``, as ingest would), the models and bank as
``bench.build_fleet`` lays them out, and then every hour is run through
``ranges.run_range`` on a ``LocalBackend`` (manifests, visible predictions CSVs, a few
boundary sensors failing with ModelNotFound, as in ``fleetscore bench``). A few sensors
(one in 500) are made noisier than the rest, so the report has clear top sensors.

It then times ``report.write_report`` over the whole range (median of ``--repeats``, 3 by
default) and prints, as JSON: the seconds of each repeat and their median, the HTML's size,
the predictions read, the store's predictions bytes, the peak RSS of this process (which
includes building the store: see ``build_peak_rss_mb``, taken before the first report) and
the time the build and the runs took.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

NOISY_EVERY = 500  # one sensor in this many has many more points far off


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def build(store, sensors: int, hours: int, *, seed: int = 0, sample: int = 64,
          workers: int | None = None) -> dict:
    """Write the fleet and run its hours; returns what the runs left (counts, seconds)."""
    from fleetscore.compute.local import LocalBackend
    from fleetscore.core.hours import Hour
    from fleetscore.runs.engine import ENGINE
    from fleetscore.runs.ranges import run_range
    from fleetscore.settings import Settings

    from .bench import BENCH_HOUR, build_fleet, write_hour_of_points

    t0 = time.perf_counter()
    # build_fleet writes BENCH_HOUR's points, the models and the bank; the later hours'
    # points follow the same sensors' levels and spreads (its first two draws of ``seed``).
    fleet = build_fleet(store, sensors, sample=min(sample, sensors), seed=seed)
    rng = np.random.default_rng(seed)
    levels = rng.uniform(10, 120, sensors)
    spreads = levels * rng.uniform(0.01, 0.04, sensors)
    noisy = np.arange(sensors) % NOISY_EVERY == 7
    chosen = [Hour(BENCH_HOUR.index + i) for i in range(hours)]
    for hour in chosen[1:]:
        values = levels[:, None] + spreads[:, None] * rng.normal(0, 1, (sensors, 60))
        off = rng.random((sensors, 60)) < np.where(noisy, 0.25, 0.01)[:, None]
        values[off] += 8 * spreads.repeat(60).reshape(sensors, 60)[off]
        write_hour_of_points(store, hour, fleet, values)
    t1 = time.perf_counter()
    backend = LocalBackend(store.url, Settings(), workers, engine=ENGINE)
    try:
        result = run_range(store, chosen, backend)
    finally:
        backend.close()
    t2 = time.perf_counter()
    summaries = result.summaries
    assert len(summaries) == hours and not result.not_run, result
    return {"build_s": round(t1 - t0, 2), "run_s": round(t2 - t1, 2),
            "scored": sum(s.scored for s in summaries),
            "failed": sum(s.failed for s in summaries),
            "anomalies": sum(s.anomalies or 0 for s in summaries)}


def time_report(store, output: Path, repeats: int) -> tuple[list[float], str]:
    from fleetscore.report.html import write_report

    seconds, said = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        said = write_report(store, output)
        seconds.append(round(time.perf_counter() - t0, 2))
    return seconds, said


def run(sensors: int, hours: int = 24, *, directory: Path | None = None, repeats: int = 3,
        workers: int | None = None, seed: int = 0, reuse: bool = False) -> dict:
    from fleetscore.storage import LocalStore

    def measure(root: Path) -> dict:
        store = LocalStore(root / "store")
        built = ({"reused": True} if reuse else
                 build(store, sensors, hours, seed=seed, workers=workers))
        build_peak = _peak_mb()
        output = root / "report.html"
        seconds, said = time_report(store, output, repeats)
        predictions_bytes = sum(p.stat().st_size for p in (root / "store" / "predictions")
                                .rglob("*") if p.is_file())
        return {"sensors": sensors, "hours": hours, **built, "report": said,
                "report_s": seconds, "report_median_s": statistics.median(seconds),
                "html_bytes": output.stat().st_size, "predictions_bytes": predictions_bytes,
                "build_peak_rss_mb": build_peak, "peak_rss_mb": _peak_mb(),
                "workers_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}

    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        return measure(directory)
    with tempfile.TemporaryDirectory() as tmp:
        return measure(Path(tmp))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=10_000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--dir", type=Path, default=None, help="keep the store and report here")
    parser.add_argument("--reuse", action="store_true",
                        help="time the report of the store an earlier run left in --dir")
    args = parser.parse_args(argv)
    if args.reuse and args.dir is None:
        parser.error("--reuse needs --dir")
    print(json.dumps(run(args.sensors, args.hours, directory=args.dir, repeats=args.repeats,
                         workers=args.workers, reuse=args.reuse), indent=1))


if __name__ == "__main__":
    main()
