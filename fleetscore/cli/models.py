"""``fleetscore train`` and ``fleetscore models import|bank|list``: the per-sensor models, and
the bank compiled from them that the fast scoring path reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fleetscore.cli.common import (
    ProgressBar,
    StoreOpt,
    challenger_bank_line,
    discard_if_empty,
    err,
    estimator_options,
    load_settings,
    new_local_store_dir,
    open_store,
    out,
    plural,
    rebuild_bank_line,
)
from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.core.text import count
from fleetscore.errors import InputError, UsageError
from fleetscore.model.estimators import DEFAULT as DEFAULT_ESTIMATOR


def train(
    store: StoreOpt = None,
    until: Annotated[str | None, typer.Option(help="Last hour of training data (default: all).")] = None,
    since: Annotated[str | None, typer.Option(help="First hour of training data.")] = None,
    days: Annotated[int | None, typer.Option(
        help="Train on the last N days of data (up to --until, or the last hour with data); "
        "instead of --since.")] = None,
    estimator: Annotated[str, typer.Option(
        help="The model per sensor: ocsvm (Pipeline(StandardScaler, OneClassSVM)) or iforest "
        "(IsolationForest(contamination=0.01)).")] = DEFAULT_ESTIMATOR,
    nu: Annotated[float | None, typer.Option(
        help="OneClassSVM nu: upper bound on the outlier share (default chosen on the demo fleet: "
        f"docs/benchmarks.md; {DEFAULT_NU:g}). ocsvm only.", show_default=False)] = None,
    gamma: Annotated[float | None, typer.Option(
        help=f"OneClassSVM RBF gamma ({DEFAULT_GAMMA:g}). ocsvm only.", show_default=False)] = None,
    features: Annotated[str, typer.Option(
        metavar="diff,hour", help="Derived features the model sees besides the value: diff "
        "(change since the previous window), hour (hour of day, UTC). Stored with each "
        "version; scoring computes them the same way.")] = "",
    workers: Annotated[int | None, typer.Option(help="Processes fitting models (default: cores).")] = None,
    challenger: Annotated[bool, typer.Option(
        "--challenger", help="New versions as challengers: the champions keep scoring until "
        "`models promote`.")] = False,
    drifted: Annotated[bool, typer.Option(
        "--drifted", help="Only the sensors `models drift` flags over the last 24 hours with "
        "data.")] = False,
) -> None:
    """Fit a model per sensor (--estimator: iforest, the default, or ocsvm) on its stored
    points, on every core, a group of sensors at a time (memory follows the group, not the
    fleet). Each model is a new version of its sensor: the champion, or with --challenger a
    challenger."""
    from fleetscore.model.features import parse
    from fleetscore.model.training import train as train_models

    derived = parse(features)
    if workers is not None and workers < 1:
        raise UsageError(f"invalid --workers {workers}: expected 1 or more")
    nu, gamma = estimator_options(estimator, nu, gamma)
    if days is not None and (days < 1 or since is not None):
        raise UsageError("--days takes a number of days, 1 or more, and replaces --since")
    settings = load_settings()
    st = open_store(store, settings)
    try:
        chosen = _drifted(st) if drifted else None
        last = Hour.parse(until) if until else None
        first = Hour.parse(since) if since else _days_before(st, last, days)
        with ProgressBar("training") as progress:
            result = train_models(st, until=last, sensors=chosen, since=first,
                                  **({"nu": nu, "gamma": gamma} if estimator == "ocsvm" else {}),
                                  workers=workers or settings.workers, progress=progress,
                                  role="challenger" if challenger else "champion",
                                  estimator=estimator, features=derived)
        if not result.hours:
            raise UsageError("no data to train on: ingest readings first (or widen --since/--until)")
        if not result.trained:
            raise InputError(_trained_nothing(result.skipped, result.hours))
        if challenger:  # the champions' bank is unchanged; the challengers' is rebuilt
            bank = (f"champions unchanged; {challenger_bank_line(st)}; compare with "
                    "`fleetscore models compare`")
        else:
            with ProgressBar("compiling the model bank"):
                bank = rebuild_bank_line(st)
    finally:
        st.close()
    what = "challenger" if challenger else "model"
    out.print(f"trained {count(len(result.trained), what)} on {result.hours[0]} .. "
              f"{result.hours[-1]} ({_chosen(estimator, nu, gamma, derived)}); {bank}")
    for sensor, reason in result.skipped:
        err.print(f"  skipped {sensor}: {reason}")


def _chosen(estimator: str, nu: float, gamma: float, derived: tuple[str, ...]) -> str:
    from fleetscore.model.features import label

    chosen = f"nu={nu:g}, gamma={gamma:g}" if estimator == "ocsvm" else estimator
    return f"{chosen}, features {label(derived)}" if derived else chosen


def _days_before(st, until: Hour | None, days: int | None) -> Hour | None:
    """The first hour of the last ``days`` days ending at ``until`` (default: the last hour
    with data); None without --days."""
    from fleetscore.data.arrivals import hours_with_arrivals

    if days is None:
        return None
    last = until
    if last is None:
        hours = hours_with_arrivals(st)
        if not hours:
            return None  # nothing to train on: train says so
        last = hours[-1]
    return last - (days * 24 - 1)


def _drifted(st) -> set:
    """The sensors drifted over the last 24 hours with data; a usage error when none is."""
    from fleetscore.data.arrivals import hours_with_arrivals
    from fleetscore.model.drift import drift

    found = {Sensor.parse(d.sensor) for d in drift(st, hours_with_arrivals(st)[-24:])
             if d.drifted}
    if not found:
        raise UsageError("--drifted: no sensor has drifted over the last 24 hours with data "
                         "(fleetscore models drift shows each one)")
    return found


def _trained_nothing(skipped, hours) -> str:
    """Why no model was fitted, in one line: the sensors' points against the minimum."""
    from fleetscore.model.training import MIN_POINTS

    shown = "; ".join(f"{sensor}: {reason}" for sensor, reason in skipped[:5])
    more = f" (and {len(skipped) - 5:,} more)" if len(skipped) > 5 else ""
    return (f"trained no model: no sensor has at least {MIN_POINTS} points in {hours[0]} .. "
            f"{hours[-1]} ({shown}{more}); ingest more readings or widen --since/--until")


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
    from fleetscore.model.imports import import_models

    if not directory.exists():
        raise UsageError(f"{directory}: no such folder or file")
    named = Sensor.parse(sensor) if sensor is not None else None
    if named is not None and not directory.is_file():
        raise UsageError("--sensor names the sensor of one model file: give a file, not a folder")
    settings = load_settings()
    new_dir = new_local_store_dir(store or settings.store)
    st = open_store(store, settings, create=True)
    result = None
    try:
        result = import_models(st, directory, trust_pickle=trust_pickle,
                               known=lambda: _known_sensors(st), sensor=named)
        if not (result.imported or result.refused or result.failed):
            raise UsageError(f"{directory}: no model files (*.skops, or *.pkl/*.pickle/*.joblib "
                             "with --trust-pickle)")
        bank = rebuild_bank_line(st) if result.imported else "model bank unchanged"
    finally:
        if not (result and result.imported):
            discard_if_empty(new_dir, st)
        st.close()
    out.print(f"imported {count(len(result.imported), 'model')} from {directory}; {bank}")
    for problem in (*result.refused, *result.failed):
        err.print(f"  skipped {problem.file}: {problem.reason}")
    if result.refused or result.failed:
        raise typer.Exit(3 if result.imported else 2)


def _known_sensors(st) -> set:
    """Every sensor with an arrival record: the import's check of a model file's sensor."""
    from fleetscore.data.arrivals import hours_with_arrivals, read_arrivals_many

    sensors: set = set()
    for counts in read_arrivals_many(st, hours_with_arrivals(st)).values():
        sensors.update(counts)
    return sensors


def models_bank(store: StoreOpt = None) -> None:
    """Compile the models into the bank the fast scoring path reads (train and import do it)."""
    settings = load_settings()
    st = open_store(store, settings)
    try:
        out.print(rebuild_bank_line(st))
    finally:
        st.close()


def models_list(
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
) -> None:
    """List the store's models and their manifests."""
    from dataclasses import asdict

    from fleetscore.model.features import described
    from fleetscore.model.registry import list_models, read_manifest

    settings = load_settings()
    st = open_store(store, settings)
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
        table.add_row(str(sensor), str(m.version), described(m.estimator, m.features),
                      m.sklearn_version, trained, m.source)
    out.print(table)
    out.print(f"{len(manifests):,} {plural(len(manifests), 'model')}")
