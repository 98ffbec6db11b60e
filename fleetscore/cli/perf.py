"""``fleetscore bench``: the benches of a source checkout (benchmarks/, outside the wheel).

Not named after the command: the package holds no module named bench* (tests/test_packaging.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fleetscore.cli.common import load_settings, out
from fleetscore.errors import UsageError


def bench(
    sensors: Annotated[int, typer.Option(help="Sensors in the synthetic fleet.")] = 10_000,
    sample: Annotated[int, typer.Option(help="Sensors the plain path is timed on.")] = 1000,
    repeats: Annotated[int, typer.Option(help="Timed repeats (medians are reported).")] = 3,
    workers: Annotated[int | None, typer.Option(help="Worker processes for the whole run.")] = None,
    directory: Annotated[Path | None, typer.Option(
        "--dir", help="Where the bench's temporary store goes (default: the system's temporary "
        "folder); its file system shows in the figures.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    stream_analytics: Annotated[bool, typer.Option(
        "--stream-analytics", help="Instead: the cloud read path on Stream Analytics-shaped "
        "files, bytes and requests per unit at 1, 10 and 100 units (docs/benchmarks.md).")] = False,
    blob: Annotated[bool, typer.Option(
        "--blob", help="With --stream-analytics: also on Blob storage "
        "(FLEETSCORE_STORAGE_CONNECTION_STRING, e.g. Azurite's).")] = False,
    raw: Annotated[bool, typer.Option(
        "--raw", help="With --stream-analytics: do not compact the hour first.")] = False,
    as_users: Annotated[bool, typer.Option(
        "--as-users/--no-as-users", help="Also the benchmark of record: whole `fleetscore "
        "run` processes on stores made by ingest and train, a fifth of --sensors and all of "
        "them, the marginal cost of a sensor against the in-memory loop.")] = True,
) -> None:
    """Time the fast path and the plain per-sensor loop (stages, whole unit, whole run), and
    the whole run as users run it."""
    if sensors < 1 or sample < 1 or repeats < 1:
        raise UsageError("--sensors, --sample and --repeats must be 1 or more")
    run_bench = _benchmark("bench").run_bench
    if stream_analytics:
        _bench_sa(sensors, repeats=repeats, blob=blob, compact=not raw, as_json=as_json)
        return
    if directory is not None and not directory.is_dir():
        raise UsageError(f"--dir {directory} is not a folder")
    result = run_bench(sensors, sample=sample, repeats=repeats, workers=workers,
                       directory=directory)
    users = _benchmark("bench_users").run_users_bench(
        (max(1, sensors // 5), sensors), repeats=repeats, workers=workers,
        directory=directory) if as_users else None
    if as_json:
        body = result.to_json()
        if users is not None:
            body["as_users"] = users.to_json()
        sys.stdout.write(json.dumps(body, indent=1) + "\n")
        return
    _print_bench(result)
    if users is not None:
        _print_users(users)


def _print_users(users) -> None:
    table = Table("sensors", "whole run s (median)", "runs")
    for size in users.sizes:
        table.add_row(f"{size.sensors:,}", f"{size.median_s:.3f}",
                      " ".join(f"{t:.3f}" for t in size.runs_s))
    out.print(table)
    ratio = users.vs_memory_loop
    against = (f"{ratio:.1f}x scikit-learn's in-memory loop ({users.memory_loop_us:.0f} us)"
               if ratio is not None else "too close to the noise to compare: give more sensors")
    out.print(f"as users run it (ingest, train, forced reruns as whole processes, "
              f"{users.fmt.upper()}): {users.marginal_us:.1f} us a sensor between the two "
              f"fleets, {against}")


def _print_bench(result) -> None:
    table = Table("path", "sensors", "read s", "load models s", "score s", "write s", "unit s",
                  "us/sensor")
    for name, st in (("fast (bank)", result.fast), ("plain (per sensor)", result.plain)):
        table.add_row(name, f"{st.sensors:,}", f"{st.read_s:.3f}", f"{st.load_s:.3f}",
                      f"{st.score_s:.3f}", f"{st.write_s:.3f}", f"{st.unit_s:.3f}",
                      f"{st.per_sensor_us:.1f}")
    out.print(table)
    out.print(f"fast path: {result.ratio:.0f}x the plain loop per sensor; labels identical on the "
              f"sample: {result.labels_identical}")
    out.print(f"whole run ({result.run_workers} workers, CSV predictions, median of "
              f"{result.repeats}): {result.run_s:.2f} s, "
              f"{result.run_sensors_per_s:,.0f} sensors/s, "
              f"{result.to_json()['run_vs_plain_loop']:.0f}x the plain loop, "
              f"{result.to_json()['run_vs_memory_loop']:.1f}x scikit-learn's predict in a loop "
              f"with the models in memory ({result.memory_loop_us:.0f} us a sensor); peak memory: "
              f"{result.run_peak_rss_mb:,.0f} MB the run's process, "
              f"{result.run_worker_peak_rss_mb:,.0f} MB a worker")
    if result.run_parquet_s:
        out.print(f"whole run, Parquet predictions: {result.run_parquet_s:.2f} s, "
                  f"{result.to_json()['run_parquet_vs_memory_loop']:.1f}x the in-memory loop")


def _benchmark(name: str):
    """``benchmarks.<name>``: the benches live beside the package in a source checkout, outside
    the wheel. Found there (the checkout this fleetscore was installed from, editable) or
    wherever Python already finds them; otherwise a usage error (2) says where they run."""
    import importlib

    root = Path(__file__).resolve().parents[2]
    if (root / "benchmarks" / "bench.py").is_file() and str(root) not in sys.path:
        sys.path.append(str(root))  # after site-packages: the installed fleetscore stays first
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", f"benchmarks.{name}"):
            raise
    raise UsageError("fleetscore bench runs from a source checkout (its benchmarks/ are not "
                     "in the package): in a clone, make venv, then .venv/bin/fleetscore bench")


def _bench_sa(sensors: int, *, repeats: int, blob: bool, compact: bool, as_json: bool) -> None:
    bench_sa = _benchmark("bench_sa")
    figures_json, run_sa_bench = bench_sa.figures_json, bench_sa.run_sa_bench

    connection = load_settings().storage_connection_string if blob else None
    if blob and not connection:
        raise UsageError("--blob needs FLEETSCORE_STORAGE_CONNECTION_STRING")
    figures = run_sa_bench(sensors, repeats=repeats, compact=compact,
                           connection_string=connection)
    if as_json:
        sys.stdout.write(json.dumps(figures_json(figures), indent=1) + "\n")
        return
    for f in figures:
        compacted = (f"compacted in {f.compaction_s:.2f} s ({f.compacted_bytes:,} bytes)"
                     if f.compacted else "raw files (not compacted)")
        out.print(f"{f.store}: {f.sensors:,} sensors, {f.files} files, {f.hour_bytes:,} bytes; "
                  f"{compacted}")
        table = Table("units", "sensors/unit", "window bytes/unit", "window requests/unit",
                      "files opened/unit", "other requests/unit", "hour read x",
                      "read us/sensor", "unit us/sensor")
        for r in f.rows:
            table.add_row(f"{r.units:,}", f"{r.unit_size:,}", f"{r.window_bytes_per_unit:,.0f}",
                          f"{r.window_requests_per_unit:,.0f}", f"{r.files_opened_per_unit:,.0f}",
                          f"{r.other_requests_per_unit:,.0f}", f"{r.hour_reads:,.2f}",
                          f"{r.read_us_per_sensor:,.0f}", f"{r.us_per_sensor:,.0f}")
        out.print(table)
