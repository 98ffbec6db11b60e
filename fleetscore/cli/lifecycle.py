"""``fleetscore models history|compare|promote|rollback|migrate``: a model's life after
``train``: every version kept, challengers compared with champions, promoted through gates,
rolled back."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fleetscore.cli.common import (
    StoreOpt,
    challenger_bank_line,
    load_settings,
    open_store,
    out,
    rebuild_bank_line,
)
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensors import Sensor
from fleetscore.core.text import count
from fleetscore.errors import Conflict, InputError, UsageError

if TYPE_CHECKING:
    from fleetscore.runs.refit import GroupResult, RefitManifest, RefitOptions
    from fleetscore.storage import Store

SensorsOpt = Annotated[list[str] | None, typer.Option(
    "--sensor", metavar="DEVICE/TAG", help="Only these sensors (repeat the option).")]
FromOpt = Annotated[str | None, typer.Option("--from", help="First hour compared (default: the "
                                             "last 24 hours with data).")]
ToOpt = Annotated[str | None, typer.Option("--to", help="Last hour compared.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def models_history(
    sensor: Annotated[str, typer.Argument(metavar="DEVICE/TAG", help="The sensor.")],
    store: StoreOpt = None, as_json: JsonOpt = False,
) -> None:
    """Every version of a sensor's model: number, sha256, created, trained-on range,
    estimator, role, and who or what set each role."""
    from dataclasses import asdict

    from fleetscore.model.features import described
    from fleetscore.model.versions import read_history

    st = open_store(store, load_settings())
    try:
        history = read_history(st, Sensor.parse(sensor))
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps(asdict(history), indent=1) + "\n")
        return
    table = Table("version", "role", "sha256", "created", "trained on", "estimator", "set by")
    set_by = {e.version: f"{e.by}, {e.at[:16]}" for e in history.events}
    for v in history.versions:
        trained = f"{v.trained_on['from']} .. {v.trained_on['to']}" if v.trained_on else ""
        table.add_row(str(v.number), v.role, v.sha256[:12], v.created[:16], trained,
                      described(v.estimator, v.features), set_by.get(v.number, ""))
    out.print(table)
    if not history.archived:
        out.print("saved before versions were kept: `fleetscore models migrate` archives it")


def models_compare(
    store: StoreOpt = None, from_: FromOpt = None, to: ToOpt = None, sensors: SensorsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """For each sensor with a challenger: the champion's and the challenger's anomaly rates
    over the hours, and how often they agree."""
    st = open_store(store, load_settings())
    try:
        comparisons, hours = _compare(st, from_, to, sensors)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps({"hours": [str(hours[0]), str(hours[-1])] if hours else [],
                                     "sensors": [c.to_json() for c in comparisons]},
                                    indent=1) + "\n")
        return
    _print_comparisons(comparisons, hours)


def _compare(st, from_, to, sensors):
    from fleetscore.model.compare import compare, with_challengers

    hours = _hours(st, from_, to)
    chosen = [Sensor.parse(s) for s in sensors] if sensors else None
    return compare(st, with_challengers(st, chosen), hours), hours


def _hours(st, from_: str | None, to: str | None) -> list[Hour]:
    if (from_ is None) != (to is None):
        raise UsageError("--from and --to go together")
    if from_ is not None and to is not None:
        first, last = Hour.parse(from_), Hour.parse(to)
        if last < first:
            raise UsageError(f"the range {first} .. {last} is reversed")
        return hour_range(first, last)
    from fleetscore.data.arrivals import hours_with_arrivals

    return hours_with_arrivals(st)[-24:]


def _print_comparisons(comparisons, hours) -> None:
    if not comparisons:
        out.print("no sensor has a challenger: `fleetscore train --challenger` makes them")
        return
    table = Table("sensor", "champion", "challenger", "windows", "champion flags",
                  "challenger flags", "agreement")
    for c in comparisons:
        table.add_row(c.sensor, f"v{c.champion}", f"v{c.challenger}", f"{c.windows:,}",
                      f"{c.champion_rate:.1%}", f"{c.challenger_rate:.1%}", f"{c.agreement:.1%}")
    out.print(table)
    if hours:
        out.print(f"{count(len(comparisons), 'sensor')} compared over {hours[0]} .. {hours[-1]}")


def models_promote(
    store: StoreOpt = None, sensors: SensorsOpt = None,
    max_anomaly_rate: Annotated[float | None, typer.Option(
        metavar="R", help="The challenger flags at most this share of windows (0..1).")] = None,
    min_agreement: Annotated[float | None, typer.Option(
        metavar="A", help="The challenger agrees with the champion at least this often (0..1).")] = None,
    from_: FromOpt = None, to: ToOpt = None, as_json: JsonOpt = False,
) -> None:
    """Challengers become champions where the gates pass (the bank follows); the rest stay
    challengers, and the output says why each did not pass (exit 3 when any did not)."""
    from fleetscore.model.compare import Gates
    from fleetscore.model.versions import ModelsLock, set_champion

    gates = Gates(_share(max_anomaly_rate, "--max-anomaly-rate"),
                  _share(min_agreement, "--min-agreement"))
    st = open_store(store, load_settings())
    try:
        comparisons, _ = _compare(st, from_, to, sensors)
        verdicts = [(c, gates.why_not(c)) for c in comparisons]
        promoted: list[Sensor] = []
        try:
            with ModelsLock(st) as lock:
                for c, why in verdicts:
                    if why is None:
                        lock.keep()
                        sensor = Sensor.parse(c.sensor)
                        set_champion(st, sensor, c.challenger, by="promote", under_lock=True)
                        promoted.append(sensor)
        finally:
            # Even part-way: the banks must follow what did change.
            bank = rebuild_bank_line(st) if promoted else ""
    finally:
        st.close()
    _print_verdicts(verdicts, bank, as_json)


def _share(value: float | None, option: str) -> float | None:
    if value is not None and not 0 <= value <= 1:
        raise UsageError(f"{option} {value}: a share between 0 and 1")
    return value


def _print_verdicts(verdicts, bank: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps([{**c.to_json(), "promoted": why is None, "why_not": why}
                                     for c, why in verdicts], indent=1) + "\n")
    else:
        if not verdicts:
            out.print("no sensor has a challenger: nothing to promote")
        for c, why in verdicts:
            out.print(f"{c.sensor}: v{c.challenger} " + ("promoted" if why is None else
                      f"stays challenger: {why}"), markup=False)
        if bank:
            out.print(bank)
    if any(why is not None for _, why in verdicts):
        raise typer.Exit(3)


def models_rollback(
    store: StoreOpt = None, sensors: SensorsOpt = None,
    to_version: Annotated[int | None, typer.Option(
        help="The version to make champion (default: the previous champion).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every sensor with versions.")] = False,
    to: Annotated[str | None, typer.Option(
        "--to", help="With --all: the champions as of this time (ISO, UTC).")] = None,
) -> None:
    """The previous (or the named) version is champion again, its exact bytes; the bank
    follows. With --all --to TIME, every sensor's champion as of then."""
    from fleetscore.model.versions import ModelsLock, histories, read_history

    if all_ == bool(sensors):
        raise UsageError("give --sensor DEVICE/TAG (repeatable) or --all")
    if all_ and (to is None or to_version is not None):
        raise UsageError("--all goes with --to TIME (and not --to-version)")
    st = open_store(store, load_settings())
    try:
        chosen = [read() for _, read in histories(st)] if all_ else \
            [read_history(st, Sensor.parse(s)) for s in sensors or []]
        moves = _rollback_targets(chosen, _when(to) if to else None, to_version)
        changed: list[Sensor] = []
        ended = False
        try:
            with ModelsLock(st) as lock:
                _roll_back(st, moves, changed, lock)
            ended = True
        finally:
            if ended or changed:  # even part-way: the bank must follow what did change
                out.print(rebuild_bank_line(st))
    finally:
        st.close()


def _rollback_targets(chosen, when, to_version) -> list:
    """(history, target) of every sensor to roll back, all found before any changes. With
    --to TIME, a sensor that had no champion then (it came later) keeps its own, and is named;
    a sensor named on the command line with nothing to roll back to stops the command."""
    moves = []
    for history in chosen:
        target = (history.champion_at(when) if when else
                  history.version(to_version) if to_version else history.previous_champion())
        if target is None and when is not None:
            out.print(f"{history.sensor}: had no champion at {when.isoformat()}; it keeps its own")
        elif target is None:
            raise UsageError(f"sensor {history.sensor} has no earlier champion to roll back to")
        else:
            moves.append((history, target))
    return moves


def _roll_back(st, moves, changed: list, lock) -> None:
    """Make each target champion under ``lock``, adding each sensor changed to ``changed``."""
    from fleetscore.model.versions import set_champion

    for history, target in moves:
        current = history.champion
        if current is not None and current.number == target.number:
            out.print(f"{history.sensor}: v{target.number} is already the champion")
            continue
        lock.keep()
        set_champion(st, history.sensor, target.number, by="rollback", under_lock=True)
        changed.append(history.sensor)
        out.print(f"{history.sensor}: v{target.number} is champion again "
                  f"(was v{current.number if current else '-'})")


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"--to {text!r}: an ISO time such as 2026-01-05T12:00") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def models_migrate(store: StoreOpt = None) -> None:
    """Archive every sensor's current model as its first version (once; a store from before
    versions keeps working without it, and is archived sensor by sensor as models change)."""
    from fleetscore.model.registry import list_models
    from fleetscore.model.versions import migrate

    st = open_store(store, load_settings())
    try:
        done = migrate(st, sorted(list_models(st)))
    finally:
        st.close()
    out.print(f"archived {count(done, 'model')}, each its sensor's first kept version"
              if done else "every model already has its versions")



def refit(
    store: StoreOpt = None,
    days: Annotated[int, typer.Option(help="Days of data the challengers are trained on.")] = 7,
    compare_hours: Annotated[int, typer.Option(
        help="The last hours with data, left out of training, the challengers are compared "
        "on.")] = 24,
    max_anomaly_rate: Annotated[float | None, typer.Option(
        metavar="R", help="Promote gate: the challenger flags at most this share.")] = None,
    min_agreement: Annotated[float | None, typer.Option(
        metavar="A", help="Promote gate: it agrees with the champion at least this often.")] = None,
    review: Annotated[bool, typer.Option(
        "--review", help="Train and compare, but leave the challengers for review.")] = False,
    estimator: Annotated[str | None, typer.Option(
        metavar="ocsvm|iforest", help="The challengers' estimator, as `train --estimator`.")] = None,
    features: Annotated[str, typer.Option(
        metavar="diff,hour", help="Derived features the challengers see, as `train --features`."
        )] = "",
    workers: Annotated[int | None, typer.Option(help="Processes fitting models.")] = None,
) -> None:
    """The scheduled job in one command: train challengers on the days before the last
    --compare-hours, compare them with the champions on those hours, promote those that pass
    the gates (or leave them all for review). Its manifest is refit/<refit id>.json."""
    from fleetscore.runs.refit import NOTHING_TRAINED, RefitOptions

    options = RefitOptions(days, compare_hours, _share(max_anomaly_rate, "--max-anomaly-rate"),
                           _share(min_agreement, "--min-agreement"), review,
                           **({"estimator": estimator} if estimator else {}), features=features)
    settings = load_settings()
    st = open_store(store, settings)
    try:
        manifest = _refit(st, options, workers or settings.workers)
    finally:
        st.close()
    if manifest.status == NOTHING_TRAINED:
        raise InputError(f"refit {manifest.reason} (widen --days)")
    _print_refit(manifest)


def _refit(st: Store, options: RefitOptions, workers: int | None) -> RefitManifest:
    """The refit policy of fleetscore.runs.refit, in this process: the models lock for the
    whole job (waiting up to 30 s for another command's), one group trained on this
    machine's workers, then finish; a refit that cannot start still leaves its manifest."""
    import uuid

    from fleetscore.model.versions import LOCK_TTL
    from fleetscore.runs import refit as policy

    now = datetime.now(UTC)
    refit_id = policy.new_refit_id(now, uuid.uuid4().hex)
    lock = policy.RefitLock(st, refit_id, ttl=LOCK_TTL, wait_s=30.0)

    def stopped(status: str, reason: str) -> None:
        policy.write_manifest(st, policy.early(
            refit_id, status, reason, started=now.isoformat(),
            finished=datetime.now(UTC).isoformat(), by="cli", options=options))

    if not lock.take():
        reason = f"the models lock is held by {policy.holder(st)}; try again when it ends"
        stopped(policy.LOCKED, reason)
        raise Conflict(f"refit: {reason}")
    try:
        try:
            found = policy.plan(st, refit_id, options, started=now, ttl=LOCK_TTL)
        except UsageError as exc:
            stopped(policy.NO_DATA, str(exc))
            raise
        results: dict[str, GroupResult | str] = {
            g: policy.train_group(st, refit_id, g, workers=workers)
            for g in found.groups}
        manifest = policy.finish(st, found, results, lock=lock, now=datetime.now(UTC),
                                 by="cli", rebuild=_rebuild_banks)
        policy.cleanup(st, refit_id)
    finally:
        lock.release()
    return manifest


def _print_refit(manifest: RefitManifest) -> None:
    from fleetscore.runs.refit import LEFT, REVIEW, manifest_path

    # A finished refit has both ranges (one that stopped early raised before printing).
    since, until = manifest.train_range or ("", "")
    out.print(f"trained {count(manifest.trained, 'challenger')} on {since} .. {until}")
    passed = manifest.promoted + sum(o.reason == REVIEW for o in manifest.sensors.values())
    first, last = manifest.compared or ("", "")
    out.print(f"compared on {first} .. {last}: {passed} of {manifest.trained} pass the gates"
              + (", left for review (fleetscore models promote)" if manifest.options.review
                 else ", promoted"))
    for sensor, o in manifest.sensors.items():
        if o.outcome == LEFT and o.reason != REVIEW:
            out.print(f"  {sensor}: v{o.version} stays challenger: {o.reason}", markup=False)
    if manifest.bank:
        out.print(manifest.bank)
    if manifest.reason:
        out.print(f"refit {manifest.status}: {manifest.reason}", markup=False)
    out.print(f"manifest: {manifest_path(manifest.refit_id)}", markup=False)


def models_drift(
    store: StoreOpt = None, from_: FromOpt = None, to: ToOpt = None, sensors: SensorsOpt = None,
    threshold: Annotated[float, typer.Option(
        help="Drifted above this Kolmogorov-Smirnov statistic (0..1).")] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """For each sensor, how far its recent window values have moved from its champion's
    training data (two-sample Kolmogorov-Smirnov); exit 3 when any sensor drifted."""
    from fleetscore.model.drift import drift

    st = open_store(store, load_settings())
    try:
        hours = _hours(st, from_, to)
        found = drift(st, hours, sensors=[Sensor.parse(s) for s in sensors] if sensors else None,
                      threshold=_share(threshold, "--threshold") or 0.0)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps({"hours": [str(hours[0]), str(hours[-1])] if hours else [],
                                     "sensors": [d.to_json() for d in found]}, indent=1) + "\n")
    else:
        table = Table("sensor", "trained on", "windows then", "windows now", "KS", "drifted")
        for d in found:
            table.add_row(d.sensor, " .. ".join(d.trained_on or ("", "")), f"{d.trained_windows:,}",
                          f"{d.recent_windows:,}",
                          "" if d.statistic is None else f"{d.statistic:.2f}",
                          "yes" if d.drifted else "")
        out.print(table)
        drifted = sum(d.drifted for d in found)
        out.print(f"{drifted} of {count(len(found), 'sensor')} drifted"
                  + (f" over {hours[0]} .. {hours[-1]}" if hours else ""))
    if any(d.drifted for d in found):
        raise typer.Exit(3)


def _rebuild_banks(st, champions: bool) -> str:
    """After a refit: both banks when champions changed, else the challengers' alone."""
    return rebuild_bank_line(st) if champions else challenger_bank_line(st)
