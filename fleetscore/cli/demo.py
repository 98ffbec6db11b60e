"""``fleetscore demo``: a synthetic fleet with known anomalies, scored end to end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetscore.cli.common import ProgressBar, out
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.text import count
from fleetscore.errors import UsageError

# Arrow and the synthetic fleet are imported where the demo uses them, not here: every
# command's start imports this module to register `demo`, and they take longer to load than
# the rest of the command line.
if TYPE_CHECKING:
    from fleetscore.data.synthetic import Evaluation, Fleet

TRAIN_CHUNKS = 20  # training is reported in this many steps


@dataclass(frozen=True)
class DemoResult:
    directory: Path
    evaluation: Evaluation
    exit_code: int


Progress = Callable[[str], contextlib.AbstractContextManager]


def _no_progress(label: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext(None)


def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put everything.")] = Path("demo-output"),
    sensors: Annotated[int, typer.Option(help="Sensors in the synthetic fleet.")] = 40,
    hours: Annotated[int, typer.Option(help="Hours of readings.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores).")] = None,
) -> None:
    """Generate a synthetic fleet, ingest, train, score, report, and measure against the truth."""
    _check_output_dir(directory, "--dir")
    result = run_demo(directory, sensors=sensors, hours=hours, seed=seed, workers=workers,
                      say=out.print, progress=ProgressBar)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _check_output_dir(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a directory")
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is not a directory")


def run_demo(directory: Path, *, sensors: int = 40, hours: int = 6, seed: int = 0,
             workers: int | None = None, say: Callable[[str], None] = print,
             progress: Progress = _no_progress) -> DemoResult:
    """The whole pipeline; ``progress(label)`` gives a context whose value, when not None, is
    called with (done, total) as a stage advances (the CLI's progress bar)."""
    from fleetscore.storage import LocalStore

    if sensors < 1 or hours < 2:
        raise UsageError("the demo needs at least 1 sensor and 2 hours (training, then scoring)")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir {directory}: exists and is not a directory")
    started = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    fleet, readings_path = _write_fleet(directory, sensors, hours, seed, say=say,
                                        progress=progress)
    store_dir = directory / "store"
    store = LocalStore(store_dir)
    last_train = _ingest_and_train(store, readings_path, fleet, sensors, say=say,
                                   progress=progress)
    scored_hours = hour_range(last_train + 1, fleet.first + (fleet.hours - 1))
    summaries = _score(store, store_dir, scored_hours, workers, say=say, progress=progress)
    ev = _report_and_evaluate(store, directory, fleet, scored_hours, say=say, progress=progress)
    say(f"done in {time.perf_counter() - started:.1f} s")
    return DemoResult(directory, ev, max((s.exit_code for s in summaries), default=0))


def _write_fleet(directory: Path, sensors: int, hours: int, seed: int, *,
                 say: Callable[[str], None], progress: Progress) -> tuple[Fleet, Path]:
    """The synthetic fleet, its readings and its labels (the injected anomalies) as CSV: per
    window (labels.csv) and as windows of time (labels-windows.csv, `fleetscore backtest`'s
    input)."""
    from fleetscore.data.synthetic import (
        make_fleet,
        write_label_windows_csv,
        write_labels_csv,
        write_readings_csv,
    )

    with progress(f"generating {count(sensors, 'sensor')}"):
        # The hard fleet: idle and daily sensors beside the level ones, so the demo shows
        # where the default model is fooled, as a real fleet did (issue 24).
        fleet = make_fleet(sensors, hours, seed, hard=True)
        readings_path = directory / "readings.csv"
        write_readings_csv(fleet.readings, readings_path)
        write_labels_csv(fleet.labels, directory / "labels.csv")
        write_label_windows_csv(fleet.labels, directory / "labels-windows.csv")
    say(f"fleet: {count(sensors, 'sensor')}, {count(hours, 'hour')}, "
        f"{count(fleet.readings.num_rows, 'reading')} -> {readings_path}")
    return fleet, readings_path


def _ingest_and_train(store, readings_path: Path, fleet: Fleet, sensors: int, *,
                      say: Callable[[str], None], progress: Progress) -> Hour:
    """Ingest the readings, train on the fleet's first hours; the last hour trained on."""
    from fleetscore.data.ingest import ingest_file
    from fleetscore.data.synthetic import INTERVAL_S, fleet_sensors
    from fleetscore.model.bank import rebuild_bank
    from fleetscore.model.estimators import make_default
    from fleetscore.model.registry import describe

    with progress("ingesting"):
        ing = ingest_file(store, readings_path, interval_s=INTERVAL_S)
    say(f"ingest: {count(ing.windows, 'one-minute window')} in {count(len(ing.hours), 'hour')} "
        f"({ing.seconds:.2f} s)")
    last_train = fleet.first + (fleet.train_hours - 1)
    with progress("training") as advance:
        trained = _train_in_chunks(store, fleet_sensors(sensors), last_train, advance)
        rebuild_bank(store)
    say(f"train: {count(trained, 'model')} on {fleet.first} .. {last_train} "
        f"({describe(make_default())})")
    return last_train


def _score(store, store_dir: Path, hours: list[Hour], workers: int | None, *,
           say: Callable[[str], None], progress: Progress) -> list:
    """Each hour as its own run on a local process pool; the runs' summaries."""
    from fleetscore.compute.local import LocalBackend
    from fleetscore.runs.engine import ENGINE
    from fleetscore.runs.lifecycle import run_hour
    from fleetscore.settings import Settings

    backend = LocalBackend(str(store_dir), Settings.from_env(), workers, engine=ENGINE)
    summaries = []
    try:
        for hour in hours:
            with progress(f"scoring {hour}") as advance:
                summaries.append(run_hour(store, hour, backend, progress=advance))
    finally:
        backend.close()
    for s in summaries:
        say(f"run {s.window}: {s.status}, {s.scored:,} scored, {s.failed:,} failed, "
            f"{count(s.anomalies, 'anomaly')} ({s.duration_s:.2f} s)")
    return summaries


def _report_and_evaluate(store, directory: Path, fleet: Fleet, scored_hours: list[Hour], *,
                         say: Callable[[str], None], progress: Progress) -> Evaluation:
    """The HTML report, and the predictions measured against the injected anomalies."""
    import pyarrow as pa

    from fleetscore.data.synthetic import evaluate
    from fleetscore.report.html import write_report
    from fleetscore.runs.lifecycle import read_predictions

    report_path = directory / "report.html"
    with progress("writing the report"):
        write_report(store, report_path, truth=fleet.labels)
    predictions = pa.concat_tables([read_predictions(store, h) for h in scored_hours])
    ev = evaluate(predictions, fleet.labels)
    store_dir = directory / "store"
    say(f"predictions: {store_dir / 'predictions'}")
    say(f"run manifests: {store_dir / 'runs'}")
    say(f"report: {report_path}")
    say(f"labels (the injected anomalies): {directory / 'labels.csv'}, as windows for "
        f"`fleetscore backtest`: {directory / 'labels-windows.csv'}")
    say(f"against the injected anomalies: precision {ev.precision:.2f}, recall {ev.recall:.2f} "
        f"({ev.true_positives:,} of {count(ev.true_anomalies, 'anomalous window')} found, "
        f"{ev.flagged:,} flagged, {count(ev.windows, 'window')})")
    return ev


def _train_in_chunks(store, sensors: list[tuple[str, str]], until: Hour,
                     advance: Callable[[int, int], None] | None) -> int:
    """Train in a few chunks of sensors so a progress bar can move (``train`` reports only
    at its end); each chunk rereads the training hours, a small cost next to fitting."""
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.training import train

    everyone = [Sensor(d, t) for d, t in sensors]
    size = max(1, -(-len(everyone) // TRAIN_CHUNKS))
    trained = 0
    for start in range(0, len(everyone), size):
        chunk = set(everyone[start:start + size])
        trained += len(train(store, until=until, sensors=chunk).trained)
        if advance:
            advance(min(start + size, len(everyone)), len(everyone))
    return trained
