"""The ``fleetscore`` command. Thin: parse, build the store and backend, call the core, print.

Exit codes: 0 done; 2 bad usage or unusable input, nothing done; 3 partial (some rows, files
or sensors failed; the rest is written and the failures are named); 1 an internal error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import FleetscoreError, UsageError
from .hours import Hour, hour_range
from .settings import Settings

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Score many per-sensor anomaly-detection models every hour, on one machine or on Azure.",
)
models_app = typer.Typer(no_args_is_help=True, help="Import and list per-sensor models.")
app.add_typer(models_app, name="models")
batch_app = typer.Typer(no_args_is_help=True, help="Azure Batch: cost and latency on paper.")
app.add_typer(batch_app, name="batch")

def _console(**kw) -> Console:
    console = Console(highlight=False, soft_wrap=True, **kw)
    # Piped or captured output has no width: keep tables on one line per row for grep and logs.
    return console if console.is_terminal else Console(highlight=False, soft_wrap=True, width=200, **kw)


out = _console()
err = _console(stderr=True)

StoreOpt = Annotated[str | None, typer.Option(
    "--store", "-s", help="Store: a directory, or az://CONTAINER. Default: $FLEETSCORE_STORE "
    "or ./fleetscore-data.")]
WindowOpt = Annotated[str | None, typer.Option("--window", "-w", help="Hour YYYY-MM-DDTHH (UTC).")]


def _settings() -> Settings:
    return Settings.from_env()


def _store(spec: str | None, settings: Settings):
    from .stores import open_store

    return open_store(spec or settings.store, settings)


def _hour(text: str | None, option: str) -> Hour:
    if text is None:
        raise UsageError(f"missing {option} YYYY-MM-DDTHH")
    return Hour.parse(text)


# --- ingest ---------------------------------------------------------------------------------


@app.command()
def ingest(
    readings: Annotated[list[Path], typer.Argument(help="Readings CSV files: TS,Device,Tag,Value.")],
    store: StoreOpt = None,
    interval: Annotated[int, typer.Option(help="Window length in seconds.")] = 60,
) -> None:
    """Aggregate readings into windows and record their arrival (the local Stream Analytics)."""
    from .ingest import ingest_file

    settings = _settings()
    st = _store(store, settings)
    partial = False
    try:
        for path in readings:
            result = ingest_file(st, path, interval_s=interval)
            out.print(
                f"{path}: {result.rows:,} rows -> {result.windows:,} windows of {result.sensors:,} "
                f"sensors in {len(result.hours)} hours ({result.parts_written} new, "
                f"{result.parts_existing} already ingested) in {result.seconds:.2f} s"
            )
            if result.rejected:
                partial = True
                err.print(f"{path}: rejected {result.rejected:,} rows "
                          f"(kept in {st.url}/{result.rejects_path}):")
                for r in result.rejects_sample:
                    err.print(f"  line {r.line}: {r.reason}")
                if result.rejected > len(result.rejects_sample):
                    err.print(f"  ... and {result.rejected - len(result.rejects_sample):,} more")
    finally:
        st.close()
    if partial:
        raise typer.Exit(3)


# --- models ---------------------------------------------------------------------------------


@app.command()
def train(
    store: StoreOpt = None,
    until: Annotated[str | None, typer.Option(help="Last hour of training data (default: all).")] = None,
    since: Annotated[str | None, typer.Option(help="First hour of training data.")] = None,
    nu: Annotated[float, typer.Option(help="OneClassSVM nu: upper bound on the outlier share.")] = 0.1,
    gamma: Annotated[float, typer.Option(help="OneClassSVM RBF gamma.")] = 0.1,
) -> None:
    """Fit Pipeline(StandardScaler, OneClassSVM) per sensor on its stored points."""
    from .training import train as train_models

    if not 0 < nu <= 1:
        raise UsageError(f"invalid --nu {nu}: expected 0 < nu <= 1")
    if gamma <= 0:
        raise UsageError(f"invalid --gamma {gamma}: expected > 0")
    settings = _settings()
    st = _store(store, settings)
    try:
        result = train_models(st, until=Hour.parse(until) if until else None,
                              since=Hour.parse(since) if since else None, nu=nu, gamma=gamma)
        if not result.hours:
            raise UsageError("no data to train on: ingest readings first (or widen --since/--until)")
        bank = _rebuild_bank(st)
    finally:
        st.close()
    out.print(f"trained {len(result.trained)} models on {result.hours[0]} .. {result.hours[-1]}; "
              f"{bank}")
    for sensor, reason in result.skipped:
        err.print(f"  skipped {sensor}: {reason}")


@models_app.command("import")
def models_import(
    directory: Annotated[Path, typer.Argument(help="Folder of {Device}_{Tag}.skops files.")],
    store: StoreOpt = None,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Also load .pkl/.joblib files. Only for files you trust: "
        "unpickling runs code.")] = False,
) -> None:
    """Import one scikit-learn model per sensor (skops; pickles only with --trust-pickle)."""
    from .arrivals import hours_with_arrivals, read_arrivals
    from .models import import_models

    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    settings = _settings()
    st = _store(store, settings)
    try:
        def known() -> set:
            sensors = set()
            for hour in hours_with_arrivals(st):
                sensors.update(read_arrivals(st, hour))
            return sensors

        result = import_models(st, directory, trust_pickle=trust_pickle, known=known)
        if not (result.imported or result.refused or result.failed):
            raise UsageError(f"{directory}: no model files (*.skops, or *.pkl/*.pickle/*.joblib "
                             "with --trust-pickle)")
        bank = _rebuild_bank(st) if result.imported else "model bank unchanged"
    finally:
        st.close()
    out.print(f"imported {len(result.imported)} models from {directory}; {bank}")
    for problem in (*result.refused, *result.failed):
        err.print(f"  skipped {problem.file}: {problem.reason}")
    if result.refused or result.failed:
        raise typer.Exit(3 if result.imported else 2)


def _rebuild_bank(st) -> str:
    from .bank import rebuild_bank

    stats = rebuild_bank(st)
    return (f"model bank: {stats.compiled} of {stats.sensors} models compiled "
            f"({stats.shards_written} shards written, {stats.shards_kept} kept)")


@models_app.command("bank")
def models_bank(store: StoreOpt = None) -> None:
    """Compile the models into the bank the fast scoring path reads (train and import do it)."""
    settings = _settings()
    st = _store(store, settings)
    try:
        out.print(_rebuild_bank(st))
    finally:
        st.close()


@models_app.command("list")
def models_list(store: StoreOpt = None) -> None:
    """List the store's models and their manifests."""
    from .models import list_models, read_manifest

    settings = _settings()
    st = _store(store, settings)
    try:
        table = Table("sensor", "version", "estimator", "scikit-learn", "trained on", "source")
        for sensor in sorted(list_models(st)):
            m = read_manifest(st, sensor)
            trained = f"{m.trained_on['from']} .. {m.trained_on['to']}" if m.trained_on else ""
            table.add_row(str(sensor), str(m.version), m.estimator, m.sklearn_version, trained,
                          m.source)
    finally:
        st.close()
    out.print(table)


# --- plan and run ---------------------------------------------------------------------------


@app.command()
def plan(
    store: StoreOpt = None,
    window: WindowOpt = None,
    unit_size: Annotated[int | None, typer.Option(help="Sensors per unit (default: automatic).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Plan an hour: which sensors are scored, in which units, and who is left out.

    The plan is saved in the store (runs/HOUR/), where `python -m scoring_container` reads a
    unit's sensors."""
    from .planning import make_plan, save_plan

    hour = _hour(window, "--window")
    settings = _settings()
    st = _store(store, settings)
    try:
        p = make_plan(st, hour, unit_size=unit_size)
        saved = save_plan(st, p)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps(p.to_json(), indent=1) + "\n")
        err.print(f"plan saved to {saved}")
        return
    out.print(f"plan for {hour}: {p.sensors} sensors in {len(p.units)} units of up to "
              f"{p.unit_size} (saved to {saved})")
    for unit in p.units[:20]:
        out.print(f"  {unit.id}: {', '.join(map(str, unit.sensors[:8]))}"
                  + (" ..." if len(unit.sensors) > 8 else ""))
    if len(p.units) > 20:
        out.print(f"  ... and {len(p.units) - 20} more units")
    if p.no_data:
        out.print(f"left out, no data: {', '.join(map(str, p.no_data[:20]))}"
                  + (f" ... ({len(p.no_data)})" if len(p.no_data) > 20 else ""))
    if p.no_model:
        out.print(f"left out, no model: {', '.join(map(str, p.no_model[:20]))}"
                  + (f" ... ({len(p.no_model)})" if len(p.no_model) > 20 else ""))


@app.command()
def run(
    store: StoreOpt = None,
    window: WindowOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour of a range.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour of a range (inclusive).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every hour that has data.")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores).")] = None,
    unit_size: Annotated[int | None, typer.Option(help="Sensors per unit (default: automatic).")] = None,
    backend: Annotated[str | None, typer.Option(help="local (process pool) or sequential.")] = None,
) -> None:
    """Score one hour, a range of hours, or every hour with data."""
    from .arrivals import hours_with_arrivals
    from .backends import load_backend
    from .runs import run_window

    chosen = sum(x is not None and x is not False for x in (window, from_ or to, all_ or None))
    if chosen != 1:
        raise UsageError("choose one of --window HOUR, --from HOUR --to HOUR, or --all")
    if workers is not None and workers < 1:
        raise UsageError(f"invalid --workers {workers}: expected 1 or more")
    settings = _settings()
    st = _store(store, settings)
    try:
        if window:
            hours = [Hour.parse(window)]
        elif all_:
            hours = hours_with_arrivals(st)
            if not hours:
                raise UsageError(f"the store {st.url} has no data: run `fleetscore ingest` first")
        else:
            if not (from_ and to):
                raise UsageError("--from and --to go together")
            hours = hour_range(Hour.parse(from_), Hour.parse(to))
        be = load_backend(backend or settings.backend, st, store_spec=store or settings.store,
                          settings=settings, workers=workers or settings.workers)
        summaries = []
        try:
            for hour in hours:
                with _progress(f"scoring {hour}") as progress:
                    summaries.append(run_window(st, hour, be, unit_size=unit_size, progress=progress))
        finally:
            be.close()
    finally:
        st.close()
    _print_runs(summaries)
    worst = max(s.exit_code for s in summaries)
    if worst:
        failed = [f for s in summaries for f in s.failures]
        names = ", ".join(sorted({f["sensor"] for f in failed})[:10])
        err.print(f"{len(failed)} sensor failures ({names}{' ...' if len(failed) > 10 else ''}); "
                  "the others are written. Details in the run manifests.")
        raise typer.Exit(worst)


class _progress:
    """A rich progress bar on a terminal; silent otherwise (logs and CI stay clean)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar = None

    def __enter__(self):
        if not err.is_terminal:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=None)

        def update(done: int, total: int) -> None:
            self._bar.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def _print_runs(summaries) -> None:
    table = Table("window", "status", "planned", "scored", "failed", "no data", "no model",
                  "anomalies", "seconds")
    for s in summaries:
        color = {"succeeded": "green", "partial": "yellow"}.get(s.status, "red")
        table.add_row(s.window, f"[{color}]{s.status}[/]", str(s.planned), str(s.scored),
                      str(s.failed), str(s.no_data), str(s.no_model), str(s.anomalies),
                      f"{s.duration_s:.2f}")
    out.print(table)
    for s in summaries:
        for f in s.failures[:10]:
            err.print(f"  {s.window} {f['sensor']}: {f['kind']}: {f['message']}")


# --- report and demo ------------------------------------------------------------------------


@app.command()
def report(
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour (default: first run).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour (default: last run).")] = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """Write a self-contained HTML report: anomaly heatmap, timelines, runs."""
    from .report import write_report

    settings = _settings()
    st = _store(store, settings)
    try:
        info = write_report(st, output, first=Hour.parse(from_) if from_ else None,
                            last=Hour.parse(to) if to else None)
    finally:
        st.close()
    out.print(f"report: {output} ({info})")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put everything.")] = Path("demo-output"),
    sensors: Annotated[int, typer.Option(help="Sensors in the synthetic fleet.")] = 40,
    hours: Annotated[int, typer.Option(help="Hours of readings.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores).")] = None,
) -> None:
    """Generate a synthetic fleet, ingest, train, score, report, and measure against the truth."""
    from .demo import run_demo

    result = run_demo(directory, sensors=sensors, hours=hours, seed=seed, workers=workers,
                      say=out.print)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
def replay(
    readings: Annotated[Path, typer.Argument(help="Readings CSV: TS,Device,Tag,Value.")],
    hub: Annotated[str, typer.Option(help="Event hub to send to.")] = "readings",
    namespace: Annotated[str | None, typer.Option(
        help="NAMESPACE.servicebus.windows.net, with your Azure identity.")] = None,
    connection_string_env: Annotated[str | None, typer.Option(
        help="Name of an environment variable holding a connection string.")] = None,
    speed: Annotated[str, typer.Option(help="Time speed-up: 60x, 1x, or max.")] = "60x",
    batch_size: Annotated[int, typer.Option(help="Events per batch at most.")] = 500,
) -> None:
    """Send readings to Event Hubs, paced by their timestamps (partition key = Device)."""
    from .replay import make_producer, parse_speed
    from .replay import replay as send

    if (namespace is None) == (connection_string_env is None):
        raise UsageError("give either --namespace or --connection-string-env")
    connection = None
    if connection_string_env:
        connection = os.environ.get(connection_string_env)
        if not connection:
            raise UsageError(f"the environment variable {connection_string_env} is not set")
    pace = parse_speed(speed)
    if batch_size < 1:
        raise UsageError("--batch-size must be 1 or more")
    from .readings import check_header

    check_header(readings)
    producer = make_producer(hub, namespace=namespace, connection_string=connection)
    try:
        with _progress(f"replaying {readings.name}") as progress:
            summary = send(readings, producer, speed=pace, batch_size=batch_size,
                           progress=(lambda n: progress(n, 0)) if progress else None)
    finally:
        producer.close()
    out.print(f"sent {summary.sent:,} readings in {summary.batches:,} batches to {hub} in "
              f"{summary.seconds:.1f} s ({summary.first} .. {summary.last}); "
              f"{summary.rejected:,} rows rejected")
    if summary.rejected:
        raise typer.Exit(3)


@app.command()
def bench(
    sensors: Annotated[int, typer.Option(help="Sensors in the synthetic fleet.")] = 10_000,
    sample: Annotated[int, typer.Option(help="Sensors the plain path is timed on.")] = 1000,
    repeats: Annotated[int, typer.Option(help="Timed repeats (medians are reported).")] = 3,
    workers: Annotated[int | None, typer.Option(help="Worker processes for the whole run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Time the fast path and the plain per-sensor loop: stages, whole unit, whole run."""
    from .bench import run_bench

    if sensors < 1 or sample < 1 or repeats < 1:
        raise UsageError("--sensors, --sample and --repeats must be 1 or more")
    result = run_bench(sensors, sample=sample, repeats=repeats, workers=workers)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), indent=1) + "\n")
        return
    table = Table("path", "sensors", "read s", "load models s", "score s", "write s", "unit s",
                  "us/sensor")
    for name, st in (("fast (bank)", result.fast), ("plain (per sensor)", result.plain)):
        table.add_row(name, f"{st.sensors:,}", f"{st.read_s:.3f}", f"{st.load_s:.3f}",
                      f"{st.score_s:.3f}", f"{st.write_s:.3f}", f"{st.unit_s:.3f}",
                      f"{st.per_sensor_us:.1f}")
    out.print(table)
    out.print(f"fast path: {result.ratio:.0f}x the plain loop per sensor; labels identical on the "
              f"sample: {result.labels_identical}")
    out.print(f"whole run ({result.run_workers} workers): {result.run_s:.2f} s, "
              f"{result.run_sensors_per_s:,.0f} sensors/s, "
              f"{result.to_json()['run_vs_plain_loop']:.0f}x the plain loop; peak memory: "
              f"{result.run_worker_peak_rss_mb:,.0f} MB a worker, {result.peak_rss_mb:,.0f} MB this "
              "process (which also scored the whole fleet as one unit)")


@app.command()
def verify(store: StoreOpt = None) -> None:
    """Check models, window files and predictions against the hashes recorded when written."""
    from .verify import verify as verify_store

    settings = _settings()
    st = _store(store, settings)
    try:
        checked, problems = verify_store(st)
    finally:
        st.close()
    for problem in problems:
        err.print(f"{problem.path}: {problem.reason}", markup=False)
    out.print(f"verified {checked} files: {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(3)


@batch_app.command("estimate")
def batch_estimate(
    sensors: Annotated[int, typer.Option(help="Sensors scored every hour.")],
    vm_size: Annotated[str, typer.Option(help="Batch node VM size.")] = "Standard_D2s_v5",
    per_sensor_ms: Annotated[float, typer.Option(
        help="Core milliseconds per sensor (fleetscore bench measures it).")] = 3.5,
    deadline: Annotated[float, typer.Option(help="Minutes within which the hour must be scored.")] = 15.0,
    price_per_hour: Annotated[float | None, typer.Option(help="Your price for one node hour.")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Spot (low-priority) nodes.")] = False,
) -> None:
    """Nodes, latency and cost of an hourly run: scale from zero versus a warm pool."""
    from .estimate import estimate

    e = estimate(sensors, vm_size=vm_size, per_sensor_ms=per_sensor_ms, deadline_min=deadline,
                 price_per_hour=price_per_hour, spot=spot)
    out.print(f"{e.sensors:,} sensors an hour on {e.vm_size} ({e.cores} cores, "
              f"${e.price_per_hour:.4f}/node-hour{' spot' if spot else ''}), "
              f"{e.per_sensor_ms:g} core-ms per sensor, within {e.deadline_min:g} min")
    out.print(f"  tasks: {e.tasks:,} of about {e.unit_size:,} sensors (>= 2 min each)")
    out.print(f"  from zero: first node after ~{e.ready_after_min:g} min, {e.nodes_from_zero} "
              f"node(s) for {e.work_window_min:g} min of work, ${e.cost_per_run_from_zero:.4f} a run, "
              f"${e.cost_per_run_from_zero * 24 * 30:,.2f} a month")
    out.print(f"  warm pool: {e.nodes_warm} node(s) always on, ${e.cost_per_hour_warm:.4f} an hour, "
              f"${e.cost_per_hour_warm * 24 * 30:,.2f} a month")
    out.print(f"  cheaper: {e.cheaper}; ${e.cost_per_sensor_month * 1000:.4f} per 1,000 sensors a month")


@app.command()
def version() -> None:
    """Print the version."""
    from . import __version__

    out.print(__version__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line on stderr, never a traceback."""
    try:
        app(args=argv, prog_name="fleetscore", standalone_mode=True)
    except FleetscoreError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if os.environ.get("FLEETSCORE_DEBUG"):
            raise
        err.print(f"internal error: {type(exc).__name__}: {exc} "
                  "(set FLEETSCORE_DEBUG=1 for the traceback, and please report it)", markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
