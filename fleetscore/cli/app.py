"""The ``fleetscore`` command. Thin: parse, build the store and backend, call the core, print.

This module holds the typer app, its help settings and the entry point (``main``, which turns
errors into exit codes); the commands live in a module per group (``cli.data``,
``cli.models``, ``cli.run``, ``cli.report``, ``cli.demo``, ``cli.perf``, ``cli.batch``) and
are registered here, in the order ``fleetscore -h`` lists them.

Exit codes: 0 done; 2 bad usage or unusable input, nothing done; 3 partial (some rows, files
or sensors failed; the rest is written and the failures are named); 1 an internal error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from fleetscore.cli import (
    alerts,
    backtest,
    batch,
    data,
    demo,
    lifecycle,
    models,
    perf,
    report,
    run,
)
from fleetscore.cli.common import err, out
from fleetscore.errors import FleetscoreError


def _flags_untyped(params: list) -> list:
    """Typer labels every option in help with its type, flags included ("--all <bool>"). A flag
    takes no value, so it gets an empty metavar, which typer shows in place of the type."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose help shows its flags without a type."""

    def get_params(self, ctx: Any) -> list:
        # The help option is made here too, on first use: it is labelled with the others.
        return _flags_untyped(super().get_params(ctx))


class Group(TyperGroup):
    """A group (the app, models, batch) whose help shows its flags without a type."""

    def get_params(self, ctx: Any) -> list:
        return _flags_untyped(super().get_params(ctx))


# -h as well as --help, on every command. Markdown mode joins a docstring's wrapped lines
# into paragraphs, so help rewraps to the terminal instead of breaking where the source did.
_HELP: dict[str, Any] = {"cls": Group, "context_settings": {"help_option_names": ["-h", "--help"]},
                         "rich_markup_mode": "markdown"}

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, **_HELP,
    help="Score many per-sensor anomaly-detection models every hour, on one machine or on Azure.",
)
models_app = typer.Typer(no_args_is_help=True, help="Per-sensor models: import, list, their "
                         "versions, compare, promote, roll back.", **_HELP)
app.add_typer(models_app, name="models")
batch_app = typer.Typer(no_args_is_help=True, help="Azure Batch: cost and latency on paper.", **_HELP)
app.add_typer(batch_app, name="batch")
alerts_app = typer.Typer(no_args_is_help=True, help="Alert rules, the alerts they raised, "
                         "their delivery.", **_HELP)
app.add_typer(alerts_app, name="alerts")


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


def version() -> None:
    """Print the version."""
    from fleetscore import __version__

    out.print(__version__)


def _register(target: typer.Typer, command: Callable[..., None], name: str | None = None) -> None:
    target.command(name, cls=Command)(command)


# In the order `fleetscore -h` lists them (after these, the groups: models, batch).
_register(app, data.ingest)
_register(app, models.train)
_register(app, lifecycle.refit)
_register(app, run.plan)
_register(app, run.run)
_register(app, run.runs_list, "runs")
_register(app, report.report)
_register(app, backtest.backtest)
_register(app, demo.demo)
_register(app, data.replay)
_register(app, perf.bench)
_register(app, report.verify)
_register(app, version)
_register(models_app, models.models_import, "import")
_register(models_app, models.models_bank, "bank")
_register(models_app, models.models_list, "list")
_register(models_app, lifecycle.models_history, "history")
_register(models_app, lifecycle.models_compare, "compare")
_register(models_app, lifecycle.models_promote, "promote")
_register(models_app, lifecycle.models_rollback, "rollback")
_register(models_app, lifecycle.models_migrate, "migrate")
_register(models_app, lifecycle.models_drift, "drift")
_register(batch_app, batch.batch_estimate, "estimate")
_register(alerts_app, alerts.alerts_apply, "apply")
_register(alerts_app, alerts.alerts_list, "list")
_register(alerts_app, alerts.alerts_deliver, "deliver")
_register(alerts_app, alerts.alerts_test, "test")


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
