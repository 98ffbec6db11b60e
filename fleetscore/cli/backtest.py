"""``fleetscore backtest LABELS.csv``: the default model (or another estimator, --estimator)
fitted on the early part of each sensor's history and scored forward, in memory,
against labelled windows and beside random flags at the same rate (the chance line)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from fleetscore.cli.common import StoreOpt, err, estimator_options, load_settings, open_store, out
from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.core.hours import Hour
from fleetscore.core.text import count
from fleetscore.errors import UsageError
from fleetscore.model.estimators import DEFAULT as DEFAULT_ESTIMATOR

if TYPE_CHECKING:
    from pathlib import Path

    from fleetscore.scoring.backtest import Backtest, Figures

NO_DATA_EXIT = 6  # README: nothing to score


def backtest(
    labels: Annotated[str, typer.Argument(metavar="LABELS.csv",
                                          help="Labelled windows: Device,Tag,Start,End (UTC).")],
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour of the history "
                                              "(default: the first with data).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour of the history.")] = None,
    train_fraction: Annotated[float, typer.Option(
        metavar="F", help="Share of each sensor's hours with data trained on; the rest is "
        "scored.")] = 0.15,
    estimator: Annotated[str, typer.Option(
        metavar="ocsvm|iforest", help="The estimator fitted per sensor, as `train --estimator`."
        )] = DEFAULT_ESTIMATOR,
    nu: Annotated[float | None, typer.Option(help="OneClassSVM nu, as `train --nu` (default "
                                             f"{DEFAULT_NU:g}).")] = None,
    gamma: Annotated[float | None, typer.Option(help="OneClassSVM RBF gamma, as `train "
                                                f"--gamma` (default {DEFAULT_GAMMA:g}).")] = None,
    features: Annotated[str | None, typer.Option(
        metavar="diff,hour", help="Derived features the model sees besides the value, as "
        "`train --features` (default: none).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train on the first hours of each sensor's history, score the rest, and measure the flags
    against your labelled windows, beside random flags at the same rate. Nothing in the store
    changes: models are fitted in memory."""
    from pathlib import Path

    from fleetscore.model import features as derived
    from fleetscore.scoring.backtest import read_labels, run_backtest

    make_model, described = _model(estimator, nu, gamma)
    names = derived.parse(features)
    if not 0 < train_fraction < 1:
        raise UsageError(f"--train-fraction {train_fraction:g}: expected a share between 0 and 1")
    first = Hour.parse(from_) if from_ is not None else None
    last = Hour.parse(to) if to is not None else None
    if first is not None and last is not None and last < first:
        raise UsageError(f"the range {first} .. {last} is reversed")
    settings = load_settings()
    parsed = read_labels(Path(labels))
    st = open_store(store, settings)
    try:
        result = run_backtest(st, parsed, first=first, last=last, train_fraction=train_fraction,
                              make_model=make_model, interval_s=settings.interval_s,
                              features=names, estimator=described)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), indent=1) + "\n")
    else:
        _print(result, Path(labels))
        if result.sensors:
            out.print(f"model: {result.estimator}, on {derived.label(result.features)}")
    if not result.sensors:
        if not as_json:
            err.print("nothing to score: no sensor has data in more than one hour of the range")
        raise typer.Exit(NO_DATA_EXIT)


def _model(estimator: str, nu: float | None, gamma: float | None
           ) -> tuple[Callable[[], Any], str]:
    """The factory of unfitted estimators the backtest fits (what `train --estimator` fits,
    from model.estimators) and how the output names it; usage errors as train's."""
    from fleetscore.model import estimators

    nu, gamma = estimator_options(estimator, nu, gamma)  # train's checks, train's errors
    if estimator != "ocsvm":
        return (lambda: estimators.make(estimator)), estimator
    return (lambda: estimators.make("ocsvm", nu=nu, gamma=gamma)), \
        f"StandardScaler + OneClassSVM, nu={nu:g}, gamma={gamma:g}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _row(name: str, f: Figures) -> list[str]:
    return [name, f"{f.points:,}", _share(f.flagged_share), f"{_num(f.windows_hit)} / {f.windows:,}",
            _share(f.inside_share), _num(f.false_per_day), _num(f.lead_minutes),
            _share(f.lead_fraction)]


def _print(result: Backtest, labels: Path) -> None:
    if not result.sensors:
        return
    table = Table("sensor", "points", "flagged", "windows hit", "flags in labels",
                  "false / day", "first flag (min)", "(of window)")
    for s in result.sensors:
        table.add_row(*_row(s.sensor, s.model))
        table.add_row(*_row("  chance", s.chance), style="dim")
    table.add_section()
    table.add_row(*_row("overall", result.model), style="bold")
    table.add_row(*_row("  chance", result.chance), style="dim")
    out.print(table)
    worst = result.worst
    if worst is not None:
        out.print(f"worst sensor: {worst.sensor}, {worst.model.flagged_share:.1%} of its points "
                  f"flagged")
    hours = f" over {result.hours[0]} .. {result.hours[1]}" if result.hours else ""
    out.print(f"{count(len(result.sensors), 'sensor')}{hours}, trained on the first "
              f"{result.train_fraction:.0%} of each sensor's hours with data; chance: random "
              f"flags at each sensor's rate (exact expectations)")
    if result.skipped:
        out.print(f"{count(len(result.skipped), 'sensor')} skipped: " + "; ".join(
            f"{s} ({r})" for s, r in result.skipped[:5]) + (" ..." if len(result.skipped) > 5
                                                             else ""))
    if result.labels_unscored:
        out.print(f"{count(result.labels_unscored, 'labelled window')} of {labels} had no scored "
                  "point (no data, or inside the training hours)")
