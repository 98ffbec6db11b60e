"""The ``fleetscore`` command. Thin: parse, build the store and backend, call the core, print.

Exit codes: 0 done; 2 bad usage or unusable input, nothing done; 3 partial (some rows, files
or sensors failed; the rest is written and the failures are named); 1 an internal error.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleetscore.contracts import RunManifest
from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.text import count
from fleetscore.errors import AlreadyRunning, FleetscoreError, InputError, UsageError
from fleetscore.settings import Settings

# -h as well as --help, on every command. Markdown mode joins a docstring's wrapped lines
# into paragraphs, so help rewraps to the terminal instead of breaking where the source did.
_HELP = {"context_settings": {"help_option_names": ["-h", "--help"]}, "rich_markup_mode": "markdown"}


def _show_flags_as_flags() -> None:
    """Typer labels every option with its type, flags included ("--all <bool>"); a flag takes
    no value, so its help shows none."""
    from typer.core import TyperOption

    typed = TyperOption.display_type_rich
    if getattr(typed, "_flags_as_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else typed(self, ctx)

    display_type_rich._flags_as_flags = True
    TyperOption.display_type_rich = display_type_rich


_show_flags_as_flags()

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, **_HELP,
    help="Score many per-sensor anomaly-detection models every hour, on one machine or on Azure.",
)
models_app = typer.Typer(no_args_is_help=True, help="Import and list per-sensor models.", **_HELP)
app.add_typer(models_app, name="models")
batch_app = typer.Typer(no_args_is_help=True, help="Azure Batch: cost and latency on paper.", **_HELP)
app.add_typer(batch_app, name="batch")


def _print_version(value: bool) -> None:
    if value:
        from fleetscore import __version__

        out.print(f"fleetscore {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option(
        "--version", "-V", help="Print the version and exit.", is_eager=True,
        callback=_print_version)] = False,
) -> None:
    """Score many per-sensor anomaly-detection models every hour, on one machine or on Azure."""

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


def _store(spec: str | None, settings: Settings, *, create: bool = False):
    """The store; only commands that bring data in (ingest, models import, demo) create one,
    so a mistyped --store is refused instead of read as an empty store."""
    from fleetscore.storage import open_store

    return open_store(spec or settings.store, settings, create=create)


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
    from fleetscore.data.ingest import ingest_file

    settings = _settings()
    new_dir = _new_local_store_dir(store or settings.store)
    st = _store(store, settings, create=True)
    partial = False
    try:
        for i, path in enumerate(readings):
            label = f"ingesting {path.name}" + (f" ({i + 1} of {len(readings)})" if len(readings) > 1 else "")
            with _progress(label) as progress:
                result = ingest_file(st, path, interval_s=interval, progress=progress)
            out.print(
                f"{path}: {count(result.rows, 'row')} -> {count(result.windows, 'window')} of "
                f"{count(result.sensors, 'sensor')} in {count(len(result.hours), 'hour')} "
                f"({result.parts_written:,} new, {result.parts_existing:,} already ingested, "
                f"{count(result.duplicates, 'reading')} already stored skipped) in "
                f"{result.seconds:.2f} s"
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
        _discard_if_empty(new_dir, st)  # only bookkeeping there: a failed first ingest
        st.close()
    if partial:
        raise typer.Exit(3)


# --- models ---------------------------------------------------------------------------------


@app.command()
def train(
    store: StoreOpt = None,
    until: Annotated[str | None, typer.Option(help="Last hour of training data (default: all).")] = None,
    since: Annotated[str | None, typer.Option(help="First hour of training data.")] = None,
    nu: Annotated[float, typer.Option(
        help="OneClassSVM nu: upper bound on the outlier share (default chosen on the demo fleet: "
        "docs/benchmarks.md).")] = DEFAULT_NU,
    gamma: Annotated[float, typer.Option(help="OneClassSVM RBF gamma.")] = DEFAULT_GAMMA,
    workers: Annotated[int | None, typer.Option(help="Processes fitting models (default: cores).")] = None,
) -> None:
    """Fit Pipeline(StandardScaler, OneClassSVM) per sensor on its stored points, on every core,
    a group of sensors at a time (memory follows the group, not the fleet)."""
    from fleetscore.model.training import train as train_models

    if workers is not None and workers < 1:
        raise UsageError(f"invalid --workers {workers}: expected 1 or more")
    if not 0 < nu <= 1:
        raise UsageError(f"invalid --nu {nu}: expected 0 < nu <= 1")
    if gamma <= 0:
        raise UsageError(f"invalid --gamma {gamma}: expected > 0")
    settings = _settings()
    st = _store(store, settings)
    try:
        with _progress("training") as progress:
            result = train_models(st, until=Hour.parse(until) if until else None,
                                  since=Hour.parse(since) if since else None, nu=nu, gamma=gamma,
                                  workers=workers or settings.workers, progress=progress)
        if not result.hours:
            raise UsageError("no data to train on: ingest readings first (or widen --since/--until)")
        if not result.trained:
            raise InputError(_trained_nothing(result.skipped, result.hours))
        with _progress("compiling the model bank"):
            bank = _rebuild_bank(st)
    finally:
        st.close()
    out.print(f"trained {count(len(result.trained), 'model')} on {result.hours[0]} .. "
              f"{result.hours[-1]} (nu={nu:g}, gamma={gamma:g}); {bank}")
    for sensor, reason in result.skipped:
        err.print(f"  skipped {sensor}: {reason}")


def _trained_nothing(skipped, hours) -> str:
    """Why no model was fitted, in one line: the sensors' points against the minimum."""
    from fleetscore.model.training import MIN_POINTS

    shown = "; ".join(f"{sensor}: {reason}" for sensor, reason in skipped[:5])
    more = f" (and {len(skipped) - 5:,} more)" if len(skipped) > 5 else ""
    return (f"trained no model: no sensor has at least {MIN_POINTS} points in {hours[0]} .. "
            f"{hours[-1]} ({shown}{more}); ingest more readings or widen --since/--until")


@models_app.command("import")
def models_import(
    directory: Annotated[Path, typer.Argument(
        metavar="PATH", help="A folder of model files named `{Device}_{Tag}.skops` or "
        "`model_{Device}_{Tag}.skops` (the reference's naming), or one such file.")],
    store: StoreOpt = None,
    sensor: Annotated[str | None, typer.Option(
        metavar="DEVICE/TAG", help="The sensor of a single model file, for a name that does not "
        "say it unambiguously (ids may contain `_`).")] = None,
    trust_pickle: Annotated[bool, typer.Option(
        "--trust-pickle", help="Also load .pkl/.pickle/.joblib files. Only for files you trust: "
        "unpickling runs code.")] = False,
) -> None:
    """Import one scikit-learn model per sensor (skops; pickles only with --trust-pickle)."""
    from fleetscore.core.sensors import Sensor
    from fleetscore.data.arrivals import hours_with_arrivals, read_arrivals_many
    from fleetscore.model.registry import import_models

    if not directory.exists():
        raise UsageError(f"{directory}: no such folder or file")
    named = Sensor.parse(sensor) if sensor is not None else None
    if named is not None and not directory.is_file():
        raise UsageError("--sensor names the sensor of one model file: give a file, not a folder")
    settings = _settings()
    new_dir = _new_local_store_dir(store or settings.store)
    st = _store(store, settings, create=True)
    result = None
    try:
        def known() -> set:
            sensors = set()
            for counts in read_arrivals_many(st, hours_with_arrivals(st)).values():
                sensors.update(counts)
            return sensors

        result = import_models(st, directory, trust_pickle=trust_pickle, known=known, sensor=named)
        if not (result.imported or result.refused or result.failed):
            raise UsageError(f"{directory}: no model files (*.skops, or *.pkl/*.pickle/*.joblib "
                             "with --trust-pickle)")
        bank = _rebuild_bank(st) if result.imported else "model bank unchanged"
    finally:
        if not (result and result.imported):
            _discard_if_empty(new_dir, st)
        st.close()
    out.print(f"imported {count(len(result.imported), 'model')} from {directory}; {bank}")
    for problem in (*result.refused, *result.failed):
        err.print(f"  skipped {problem.file}: {problem.reason}")
    if result.refused or result.failed:
        raise typer.Exit(3 if result.imported else 2)


def _new_local_store_dir(spec: str) -> Path | None:
    """A directory store this command is about to create (None for one that exists or a blob
    store): a failed import removes it again rather than leave an empty store behind."""
    if "://" in spec:
        return None
    path = Path(spec)
    return None if path.exists() else path


def _discard_if_empty(new_dir: Path | None, st) -> None:
    """After a command that created the store failed: remove it if it holds nothing yet."""
    if new_dir is not None:
        _remove_empty_tree(new_dir)
    else:
        st.remove_if_empty()  # a blob container this command created, still empty


def _remove_empty_tree(path: Path) -> None:
    # Bottom-up, and only directories without a file: never deletes anything written but the
    # store's own bookkeeping (the marker that makes a directory a store, its lock file), when
    # they are the only files there.
    from fleetscore.storage.local import BOOKKEEPING

    if not path.is_dir():
        return
    files = [p for p in path.rglob("*") if not p.is_dir()]
    if files and {p.relative_to(path).as_posix() for p in files} <= BOOKKEEPING:
        for file in files:
            file.unlink()
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _rebuild_bank(st) -> str:
    from fleetscore.model.bank import rebuild_bank

    stats = rebuild_bank(st)
    line = (f"model bank: {stats.compiled} of {stats.sensors} models compiled "
            f"({stats.shards_written} shards written, {stats.shards_kept} kept)")
    # Models the bank does not reproduce exactly are scored by scikit-learn: say how many, why.
    left = "; ".join(f"{count} {reason}" for reason, count in stats.left)
    return f"{line}; left to scikit-learn: {left}" if left else line


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
def models_list(
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
) -> None:
    """List the store's models and their manifests."""
    from dataclasses import asdict

    from fleetscore.model.registry import list_models, read_manifest

    settings = _settings()
    st = _store(store, settings)
    try:
        manifests = [(sensor, read_manifest(st, sensor)) for sensor in sorted(list_models(st))]
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps({"models": [{"sensor": str(sensor), **asdict(m)}
                                                for sensor, m in manifests]}, indent=1) + "\n")
        return
    table = Table("sensor", "version", "estimator", "scikit-learn", "trained on", "source")
    for sensor, m in manifests:
        trained = f"{m.trained_on['from']} .. {m.trained_on['to']}" if m.trained_on else ""
        table.add_row(str(sensor), str(m.version), m.estimator, m.sklearn_version, trained,
                      m.source)
    out.print(table)
    out.print(f"{len(manifests):,} {_plural(len(manifests), 'model')}")


# --- plan and run ---------------------------------------------------------------------------


@app.command()
def plan(
    store: StoreOpt = None,
    window: WindowOpt = None,
    unit_size: Annotated[int | None, typer.Option(help="Sensors per unit (default: automatic).")] = None,
    save: Annotated[bool, typer.Option(
        "--save", help="Store the plan under a new run id, for `python -m scoring_container "
        "--run ID`.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Plan an hour: which sensors are scored, in which units, and who is left out.

    A dry run: nothing is stored unless --save, which stores the plan under a new run id so
    that `python -m scoring_container --run ID --unit U` can score a unit into that run's
    staging (runs/HOUR/ID/). Staged predictions become the hour's predictions only when a run
    finalizes (`fleetscore run`, or the Functions app)."""
    from datetime import UTC, datetime

    from fleetscore.runs.lifecycle import new_run_id
    from fleetscore.scoring.planning import make_plan, save_plan

    hour = _hour(window, "--window")
    settings = _settings()
    st = _store(store, settings)
    run_id = None
    try:
        p = make_plan(st, hour, unit_size=unit_size)
        if save:
            run_id = new_run_id(datetime.now(UTC))
            save_plan(st, p, run_id)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps({**p.to_json(), "run_id": run_id}, indent=1) + "\n")
        return
    saved = f"saved as run {run_id}" if run_id else "not saved: --save stores it"
    out.print(f"plan for {hour}: {p.sensors:,} {_plural(p.sensors, 'sensor')} in "
              f"{len(p.units):,} {_plural(len(p.units), 'unit')} of up to {p.unit_size:,} ({saved})")
    for unit in p.units[:20]:
        out.print(f"  {unit.id}: {', '.join(map(str, unit.sensors[:8]))}"
                  + (" ..." if len(unit.sensors) > 8 else ""))
    if len(p.units) > 20:
        out.print(f"  ... and {len(p.units) - 20:,} more units")
    if p.no_data:
        out.print(f"left out, no data: {', '.join(map(str, p.no_data[:20]))}"
                  + (f" ... ({len(p.no_data):,})" if len(p.no_data) > 20 else ""))
    if p.no_model:
        out.print(f"left out, no model: {', '.join(map(str, p.no_model[:20]))}"
                  + (f" ... ({len(p.no_model):,})" if len(p.no_model) > 20 else ""))


def _scored_with_current_models(manifest: RunManifest | None, newest_model: str | None) -> bool:
    if manifest is None or manifest.status != "succeeded":
        return False
    # Began after the newest model was saved: it scored with it.
    return newest_model is None or manifest.started_at > newest_model


def _say_interrupted(st, hours: list[Hour], *, since) -> None:
    """What an interrupted run finished (a manifest written since it began) and what not."""
    from fleetscore.runs.lifecycle import readable_manifest

    began = since.isoformat(timespec="microseconds")
    finished = [h for h in hours
                if (m := readable_manifest(st, h)) is not None and m.started_at >= began]
    rest = [h for h in hours if h not in set(finished)]
    names = ", ".join(str(h) for h in rest[:5]) + (" ..." if len(rest) > 5 else "")
    err.print(f"interrupted: {len(finished):,} of {count(len(hours), 'hour')} finished; "
              f"not finished: {names or 'none'} (their earlier predictions are unchanged; run "
              "the range again to finish them, it skips what succeeded)", markup=False)


def _drop_empty_hours(st, hours: list[Hour], *, now) -> list[Hour]:
    """A range's hours that have data, or an earlier run to replace. Hours with neither are
    never run (no manifest is written for them), and the user is told before anything runs;
    a range with no data at all is nothing to score (exit 6)."""
    from fleetscore.data.arrivals import hours_with_arrivals
    from fleetscore.runs.lifecycle import manifest_paths

    with_data = set(hours_with_arrivals(st))
    with_manifest = {p[len("runs/"): -len(".json")] for p in manifest_paths(st)}
    empty = [h for h in hours if h not in with_data and str(h) not in with_manifest]
    if not empty:
        return hours
    span = (f"the store's data spans {min(with_data)} .. {max(with_data)}" if with_data
            else "the store has no data")
    if len(empty) == len(hours):
        err.print(f"nothing to score: no hour of {hours[0]} .. {hours[-1]} has data ({span})",
                  markup=False)
        raise typer.Exit(6)
    err.print(f"skipped {len(empty):,} {_plural(len(empty), 'hour')} with no data and no earlier "
              f"run ({span}); no manifest is written for them", markup=False)
    return [h for h in hours if h not in set(empty)]


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


@app.command()
def run(
    store: StoreOpt = None,
    window: WindowOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour of a range.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour of a range (inclusive).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every hour that has data.")] = False,
    sensors: Annotated[list[str] | None, typer.Option(
        "--sensors", metavar="DEVICE/TAG",
        help="Rerun only these sensors (DEVICE/TAG; repeat the option); the "
        "hour's other predictions stay.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Rerun hours whose last run succeeded.")] = False,
    missing: Annotated[bool, typer.Option(
        "--missing", help="Only hours of the range with no successful run (what a range does "
        "unless --force).")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores).")] = None,
    unit_size: Annotated[int | None, typer.Option(help="Sensors per unit (default: automatic).")] = None,
    backend: Annotated[str | None, typer.Option(help="local (process pool), sequential or batch.")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="csv|parquet", help="Predictions files: csv (the reference's "
        "format, default) or parquet (same columns).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Score one hour, a range of hours, or every hour with data.

    A range skips hours whose last run succeeded, so an interrupted backfill resumes where it
    stopped; --force reruns them. One hour that already succeeded is refused without --force,
    as the HTTP API does. Hours that have not ended are refused."""
    from datetime import UTC, datetime

    from fleetscore.compute import load_backend
    from fleetscore.core.sensors import Sensor
    from fleetscore.runs.engine import ENGINE

    _check_run_options(window, from_, to, all_, workers=workers, force=force, missing=missing)
    picked = sorted({Sensor.parse(s) for s in sensors}) if sensors else None
    settings = _settings()
    now = datetime.now(UTC)
    st = _store(store, settings)
    try:
        hours = _chosen_hours(st, window, from_, to, all_, now=now)
        done = _done_hours(st, hours, window=window, force=force)
        todo = [h for h in hours if h not in done]
        if from_:  # --all chose hours with data already
            todo = _drop_empty_hours(st, todo, now=now)
        be = load_backend(backend or settings.backend, st, store_spec=store or settings.store,
                          settings=settings, workers=workers or settings.workers, engine=ENGINE)
        options = dict(sensors=picked, unit_size=unit_size, deadline=settings.deadline,
                       ttl=settings.lock_ttl, fmt=fmt or settings.predictions_format)
        try:
            summaries, not_run = _score_hours(st, be, hours if window else todo,
                                              single=bool(window), options=options)
        except KeyboardInterrupt:
            be.close()
            _say_interrupted(st, hours if window else todo, since=now)
            raise
        finally:
            be.close()
    finally:
        st.close()
    worst = _report_runs(summaries, not_run, done, as_json=as_json)
    if worst:
        raise typer.Exit(worst)


def _check_run_options(window, from_, to, all_, *, workers, force, missing) -> None:
    chosen = sum(x is not None and x is not False for x in (window, from_ or to, all_ or None))
    if chosen != 1:
        raise UsageError("choose one of --window HOUR, --from HOUR --to HOUR, or --all")
    if workers is not None and workers < 1:
        raise UsageError(f"invalid --workers {workers}: expected 1 or more")
    if missing and force:
        raise UsageError("--missing and --force contradict each other")
    if missing and window:
        raise UsageError("--missing goes with a range (--from/--to or --all)")


def _chosen_hours(st, window, from_, to, all_, *, now) -> list[Hour]:
    """The hours the options name, every one of them ended."""
    from fleetscore.data.arrivals import hours_with_arrivals
    from fleetscore.runs.lifecycle import check_ended

    if window:
        hours = [Hour.parse(window)]
        check_ended(hours[0], now)
    elif all_:
        hours = [h for h in hours_with_arrivals(st) if h.end_ms <= now.timestamp() * 1000]
        if not hours:
            raise UsageError(f"the store {st.url} has no data: run `fleetscore ingest` first")
    else:
        if not (from_ and to):
            raise UsageError("--from and --to go together")
        hours = hour_range(Hour.parse(from_), Hour.parse(to))
        check_ended(hours[-1], now)
    return hours


def _done_hours(st, hours: list[Hour], *, window, force) -> set[Hour]:
    """Hours whose last run succeeded with the current models (it began after the newest model
    was saved): a range skips them, so a backfill resumes and a retrain reruns everything."""
    from fleetscore.model.registry import newest_model_time
    from fleetscore.runs.lifecycle import readable_manifest

    newest = None if (force or window) else newest_model_time(st)
    done = set() if force else {
        h for h in hours if _scored_with_current_models(readable_manifest(st, h), newest)}
    if window and done:
        raise UsageError(f"{window} has already been scored (succeeded): pass --force to "
                         "rerun it")
    if done:
        err.print(f"skipped {len(done):,} {_plural(len(done), 'hour')} whose last run "
                  "succeeded with the current models (--force reruns them)")
    return done


def _score_hours(st, be, hours: list[Hour], *, single: bool, options: dict):
    """(summaries, hours not run): one hour as its own run, or a range in spans."""
    from fleetscore.runs.lifecycle import run_hour
    from fleetscore.runs.ranges import run_range

    if single:
        with _progress(f"scoring {hours[0]}") as progress:
            return [run_hour(st, hours[0], be, progress=progress, **options)], ()
    if not hours:
        return [], ()
    with _progress(f"scoring {len(hours):,} {_plural(len(hours), 'hour')}") as progress:
        ranged = run_range(st, hours, be, progress=progress, **options)
    return list(ranged.summaries), ranged.not_run


def _report_runs(summaries, not_run, done, *, as_json: bool) -> int:
    """Print what the runs did; the command's exit code (docs/reliability.md)."""
    if as_json:
        sys.stdout.write(json.dumps({
            "runs": [s.to_json() for s in summaries], "skipped": sorted(str(h) for h in done),
            "not_run": [{"window": h, "kind": k, "error": m} for h, k, m in not_run]},
            indent=1) + "\n")
    elif summaries:
        _print_runs(summaries)
    codes = {s.exit_code for s in summaries}
    worst = 3 if 3 in codes else (6 if 6 in codes else 0)
    if worst == 3 and not as_json:
        _say_failures([f for s in summaries for f in s.failures])
    if worst == 6 and not as_json:
        _say_no_data(summaries)
    if not_run:
        if not as_json:
            err.print(f"{len(not_run):,} {_plural(len(not_run), 'hour')} not run: "
                      f"{not_run[0][2]}{' ...' if len(not_run) > 1 else ''}")
        worst = AlreadyRunning.exit_code
    return worst


def _say_failures(failed: list[dict]) -> None:
    names = ", ".join(sorted({f["sensor"] for f in failed})[:10])
    err.print(f"{len(failed):,} sensor {_plural(len(failed), 'failure')} ({names}"
              f"{' ...' if len(failed) > 10 else ''}); the others are written. Details in "
              "the run manifests.", markup=False)
    if failed:
        first = failed[0]
        err.print(f"first: {first['sensor']}: {first['kind']}: {first['message']}",
                  markup=False, soft_wrap=True)


def _say_no_data(summaries) -> None:
    empty = [s.window for s in summaries if s.status == "no_data"]
    modelless = max((s.no_model for s in summaries if s.status == "no_data"), default=0)
    why = (f" ({modelless:,} {_plural(modelless, 'sensor')} with data but no model: "
           "`fleetscore train` or `fleetscore models import` first)" if modelless else "")
    err.print(f"nothing to score in {len(empty):,} {_plural(len(empty), 'hour')} "
              f"({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}): no sensor has "
              f"both data and a model there{why}")


def _count_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{int(task.completed):,}/{int(task.total):,}", style="progress.download")

    return Count()


class _progress:
    """A rich progress bar on a terminal; silent otherwise (logs and CI stay clean).

    Until the work reports a total the bar pulses and shows the time elapsed, never "0/?"."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar = None

    def __enter__(self):
        if not err.is_terminal:
            return None
        from rich.progress import BarColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             _count_column(), TimeElapsedColumn(), console=err, transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=None)

        def update(done: int, total: int) -> None:
            self._bar.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


ROWS_SHOWN = 50  # a backfill's summary: the first rows, then totals


def _print_runs(summaries) -> None:
    table = Table("window", "status", "planned", "scored", "failed", "no data", "no model",
                  "anomalies", "seconds", show_footer=len(summaries) > 1)
    for s in summaries[:ROWS_SHOWN]:
        table.add_row(s.window, _status_cell(s.status), f"{s.planned:,}", f"{s.scored:,}",
                      f"{s.failed:,}", f"{s.no_data:,}", f"{s.no_model:,}", f"{s.anomalies:,}",
                      f"{s.duration_s:.2f}")
    if len(summaries) > ROWS_SHOWN:
        table.add_row(f"... {len(summaries) - ROWS_SHOWN:,} more", "", "", "", "", "", "", "", "")
    if len(summaries) > 1:
        counts = {}
        for s in summaries:
            counts[s.status] = counts.get(s.status, 0) + 1
        columns = table.columns
        columns[0].footer = f"{len(summaries):,} hours"
        columns[1].footer = ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()))
        for col, field in zip(columns[2:8], ("planned", "scored", "failed", "no_data",
                                              "no_model", "anomalies"), strict=True):
            col.footer = f"{sum(getattr(s, field) for s in summaries):,}"
        columns[8].footer = f"{sum(s.duration_s for s in summaries):.2f}"
    out.print(table)
    shown = 0
    for s in summaries:
        for f in s.failures[:10]:
            if shown == 20:
                break
            err.print(f"  {s.window} {f['sensor']}: {f['kind']}: {f['message']}")
            shown += 1
        for sensor in s.kept_from_earlier_run[:10]:
            err.print(f"  {s.window} {sensor}: kept its predictions from an earlier run")


def _status_cell(status: str) -> str:
    color = {"succeeded": "green", "partial": "yellow", "no_data": "blue",
             "never_run": "dim"}.get(status, "red")
    return f"[{color}]{status}[/]"


@app.command("runs")
def runs_list(
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour (default: the first "
                                              "hour with data or a run).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour (default: the last hour with "
                                           "data or a run).")] = None,
    status: Annotated[str | None, typer.Option(
        help="Only hours with this status: succeeded, partial, failed, no_data, never_run, "
        "damaged.")] = None,
    limit: Annotated[int, typer.Option(help="Lines shown at most (totals follow).")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print every hour as JSON.")] = False,
) -> None:
    """The hours of a range and how their runs went, including hours never run."""
    from fleetscore.runs.table import STATUSES, hour_rows

    if status is not None and status not in STATUSES:
        raise UsageError(f"invalid --status {status!r}: expected one of {', '.join(STATUSES)}")
    settings = _settings()
    st = _store(store, settings)
    try:
        rows = hour_rows(st, first=Hour.parse(from_) if from_ else None,
                         last=Hour.parse(to) if to else None)
    finally:
        st.close()
    if status is not None:
        rows = [r for r in rows if r.status == status]
    if as_json:
        sys.stdout.write(json.dumps({"hours": [r.to_json() for r in rows]}, indent=1) + "\n")
        if any(r.status == "damaged" for r in rows):
            raise typer.Exit(3)
        return
    table = Table("window", "status", "scored", "failed", "anomalies", "finished", "run id")
    for r in rows[:limit]:
        table.add_row(r.window, _status_cell(r.status), _count(r.scored), _count(r.failed),
                      _count(r.anomalies), r.finished or "",
                      r.run_id or "")
    out.print(table)
    counts = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    more = f" ({len(rows) - limit:,} not shown: --limit, --status or --json)" if len(rows) > limit else ""
    out.print(f"{len(rows):,} {_plural(len(rows), 'hour')}: "
              + (", ".join(f"{n:,} {k}" for k, n in sorted(counts.items())) or "none") + more)
    damaged = [r.window for r in rows if r.status == "damaged"]
    for window in damaged[:10]:
        err.print(f"runs/{window}.json is damaged: `fleetscore run --window {window} --force` "
                  "rewrites it (`fleetscore verify` names every damaged object)", markup=False)
    if damaged:
        raise typer.Exit(3)


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


# --- report and demo ------------------------------------------------------------------------


@app.command()
def report(
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour (default: first run).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour (default: last run).")] = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
) -> None:
    """Write a self-contained HTML report: anomaly heatmap, timelines, runs."""
    _check_output_file(output, "--out")
    from fleetscore.report.html import write_report

    first, last = (Hour.parse(from_) if from_ else None), (Hour.parse(to) if to else None)
    settings = _settings()
    st = _store(store, settings)
    try:
        info = write_report(st, output, first=first, last=last)
    except OSError as exc:
        # Checked above, but the disk can still refuse (full, read-only, permissions).
        raise UsageError(f"--out {output}: cannot write: {exc.strerror or exc}") from exc
    finally:
        st.close()
    out.print(f"report: {output} ({info})")


def _check_output_file(path: Path, option: str) -> None:
    """A file to write must be a file in an existing folder: a typo in the folder is refused
    rather than created, and a folder is never replaced."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name such as "
                         f"{path / 'report.html'}")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(f"{option} {path}: the folder {parent} {what}")


def _check_output_dir(path: Path, option: str) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a directory")
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is not a directory")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to put everything.")] = Path("demo-output"),
    sensors: Annotated[int, typer.Option(help="Sensors in the synthetic fleet.")] = 40,
    hours: Annotated[int, typer.Option(help="Hours of readings.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores).")] = None,
) -> None:
    """Generate a synthetic fleet, ingest, train, score, report, and measure against the truth."""
    from fleetscore.cli.demo import run_demo

    _check_output_dir(directory, "--dir")
    result = run_demo(directory, sensors=sensors, hours=hours, seed=seed, workers=workers,
                      say=out.print, progress=_progress)
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
    speed: Annotated[str | None, typer.Option(
        help="Time speed-up: 60x, 1x, or max (default 60x; 1x with --shift-to-now).")] = None,
    batch_size: Annotated[int, typer.Option(help="Events per batch at most.")] = 500,
    shift_to_now: Annotated[bool, typer.Option(
        "--shift-to-now", help="Re-time the file so its first reading is now (one offset for all) "
        "and send in real time: rehearses the live path; Stream Analytics drops late readings.")] = False,
) -> None:
    """Send readings to Event Hubs, paced by their timestamps (partition key = Device)."""
    from fleetscore.data.replay import make_producer, parse_speed
    from fleetscore.data.replay import replay as send

    if (namespace is None) == (connection_string_env is None):
        raise UsageError("give either --namespace or --connection-string-env")
    connection = None
    if connection_string_env:
        connection = os.environ.get(connection_string_env)
        if not connection:
            raise UsageError(f"the environment variable {connection_string_env} is not set")
    pace = parse_speed(speed or ("1x" if shift_to_now else "60x"))
    if shift_to_now and pace != 1.0:
        raise UsageError("--shift-to-now sends readings at their shifted times: use --speed 1x "
                         "(Stream Analytics drops events more than 5 minutes early)")
    if batch_size < 1:
        raise UsageError("--batch-size must be 1 or more")
    from fleetscore.data.readings import check_header

    check_header(readings)
    producer = make_producer(hub, namespace=namespace, connection_string=connection)
    try:
        with _progress(f"replaying {readings.name}") as progress:
            summary = send(readings, producer, speed=pace, batch_size=batch_size,
                           shift_to_now=shift_to_now,
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
) -> None:
    """Time the fast path and the plain per-sensor loop: stages, whole unit, whole run."""
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

    connection = _settings().storage_connection_string if blob else None
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


@app.command()
def verify(
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check every object of the store for damage and against its recorded hash; name each."""
    from fleetscore.runs.verify import verify as verify_store

    settings = _settings()
    st = _store(store, settings)
    try:
        checked, problems = verify_store(st)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps({"checked": checked, "problems": [
            {"path": p.path, "reason": p.reason} for p in problems]}, indent=1) + "\n")
    else:
        for problem in problems:
            err.print(f"{problem.path}: {problem.reason}", markup=False)
        out.print(f"verified {checked:,} {_plural(checked, 'file')}: {len(problems):,} "
                  f"{_plural(len(problems), 'problem')}")
    if problems:
        raise typer.Exit(3)


@batch_app.command("estimate")
def batch_estimate(
    sensors: Annotated[int, typer.Option(help="Sensors scored every hour.")],
    vm_size: Annotated[str, typer.Option(help="Batch node VM size.")] = "Standard_D2s_v5",
    cores: Annotated[int | None, typer.Option(
        help="Cores of a node (default: the VM size's; required for a size not in the table).")] = None,
    price_per_hour: Annotated[float | None, typer.Option(
        help="Your price for one node hour in USD (default: the VM size's list price; required "
        "for a size not in the table).")] = None,
    per_sensor_ms: Annotated[float, typer.Option(
        help="Core milliseconds per sensor (fleetscore bench measures it).")] = 3.5,
    deadline: Annotated[float, typer.Option(help="Minutes within which the hour must be scored.")] = 15.0,
    spot: Annotated[bool, typer.Option("--spot", help="Spot (low-priority) nodes.")] = False,
) -> None:
    """Nodes, latency and cost of an hourly run: scale from zero versus a warm pool."""
    from fleetscore.compute.estimate import estimate

    e = estimate(sensors, vm_size=vm_size, per_sensor_ms=per_sensor_ms, deadline_min=deadline,
                 price_per_hour=price_per_hour, cores=cores, spot=spot)
    for line in _estimate_lines(e, spot):
        out.print(line)


def _estimate_lines(e, spot: bool) -> list[str]:
    from fleetscore.core.text import count, duration

    return [
        f"{count(e.sensors, 'sensor')} an hour on {e.vm_size} ({count(e.cores, 'core')}, "
        f"${e.price_per_hour:.4f}/node-hour{' spot' if spot else ''}), "
        f"{e.per_sensor_ms:g} core-ms per sensor, within {e.deadline_min:g} min",
        f"  work: {e.scoring_core_s:,.1f} core-seconds of scoring in {count(e.tasks, 'task')} of "
        f"up to {count(e.unit_size, 'sensor')}, each {duration(e.task_s)} with its container start",
        f"  from zero: first node after ~{e.ready_after_min:g} min, {count(e.nodes_from_zero, 'node')}, "
        f"done in {duration(e.work_min * 60)} (of the {e.work_window_min:g} min left before the "
        f"deadline), ${e.cost_per_run_from_zero:.4f} a run, "
        f"${e.cost_per_run_from_zero * 24 * 30:,.2f} a month",
        f"  warm pool: {count(e.nodes_warm, 'node')} always on, ${e.cost_per_hour_warm:.4f} an hour, "
        f"${e.cost_per_hour_warm * 24 * 30:,.2f} a month",
        f"  cheaper: {e.cheaper}; ${e.cost_per_sensor_month * 1000:.4f} per 1,000 sensors a month",
    ]


@app.command()
def version() -> None:
    """Print the version."""
    from fleetscore import __version__

    out.print(__version__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line on stderr, never a traceback."""
    from fleetscore.storage.workers import tune_gc

    tune_gc()
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
