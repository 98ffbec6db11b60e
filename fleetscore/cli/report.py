"""``fleetscore report`` and ``fleetscore verify``: what the store holds, as a picture and as a
check of every object."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetscore.cli.common import StoreOpt, err, load_settings, open_store, out, plural
from fleetscore.core.hours import Hour
from fleetscore.errors import UsageError


def report(
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour (default: first run).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour (default: last run).")] = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path("report.html"),
    backtest: Annotated[Path | None, typer.Option(
        metavar="FILE.json", help="Show a backtest: what `fleetscore backtest --json` printed."
        )] = None,
) -> None:
    """Write a self-contained HTML report: anomaly heatmap, timelines, runs (and a backtest)."""
    _check_output_file(output, "--out")
    from fleetscore.report.html import write_report
    from fleetscore.scoring.backtest import read_backtest

    first, last = (Hour.parse(from_) if from_ else None), (Hour.parse(to) if to else None)
    # Read before the store: a wrong file is refused before any work.
    shown = read_backtest(backtest) if backtest is not None else None
    settings = load_settings()
    st = open_store(store, settings)
    try:
        info = write_report(st, output, first=first, last=last, backtest=shown)
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


def verify(
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check every object of the store for damage and against its recorded hash; name each."""
    from fleetscore.runs.verify import verify as verify_store

    settings = load_settings()
    st = open_store(store, settings)
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
        out.print(f"verified {checked:,} {plural(checked, 'file')}: {len(problems):,} "
                  f"{plural(len(problems), 'problem')}")
    if problems:
        raise typer.Exit(3)
