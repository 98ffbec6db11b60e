"""The backtest table behind the default detector (issue 24): every estimator and feature set,
on the demo fleet and on the reference data.

    .venv/bin/python docs/detector_table.py [--sensors 40] [--hours 6] [--seed 0]
        [--refdata ../shared/refdata/sensor_data.csv] [--train-fraction 0.15]

Each data set is built as a user builds it, in a temporary directory: the demo with
`fleetscore demo` (its `labels-windows.csv` are the labels), the reference data with
`fleetscore ingest` (it has no labels: an empty labels file, so only the flagged shares say
anything). Then `fleetscore backtest LABELS --estimator E --features F --json` for each
estimator and feature set, read back with ``Backtest.from_json``, one markdown table a data set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.model.features import label  # noqa: E402
from fleetscore.scoring.backtest import LABELS_HEADER, Backtest  # noqa: E402

ESTIMATORS = ("ocsvm", "iforest")
FEATURE_SETS: tuple[tuple[str, ...], ...] = ((), ("diff",), ("hour",), ("diff", "hour"))
REFDATA = Path(__file__).resolve().parents[2] / "shared" / "refdata" / "sensor_data.csv"


def fleetscore(*args: str, cwd: Path) -> str:
    """The command as a user runs it; its stdout, or the script stops with its stderr."""
    proc = subprocess.run([sys.executable, "-m", "fleetscore", *args], cwd=cwd, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"fleetscore {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def demo_set(base: Path, sensors: int, hours: int, seed: int) -> tuple[Path, Path]:
    """(store, labels) of a demo fleet made by `fleetscore demo`."""
    fleetscore("demo", "--dir", "demo", "--sensors", str(sensors), "--hours", str(hours),
               "--seed", str(seed), cwd=base)
    return base / "demo" / "store", base / "demo" / "labels-windows.csv"


def refdata_set(base: Path, readings: Path) -> tuple[Path, Path]:
    """(store, labels) of the reference data ingested by `fleetscore ingest`; no labels."""
    fleetscore("ingest", str(readings), "--store", "ref-store", cwd=base)
    labels = base / "ref-labels.csv"
    labels.write_text(",".join(LABELS_HEADER) + "\n")
    return base / "ref-store", labels


def backtest(base: Path, store: Path, labels: Path, estimator: str,
             features: tuple[str, ...], train_fraction: float) -> Backtest:
    args = ["backtest", str(labels), "--store", str(store), "--estimator", estimator,
            "--train-fraction", str(train_fraction), "--json"]
    if features:
        args += ["--features", ",".join(features)]
    return Backtest.from_json(json.loads(fleetscore(*args, cwd=base)))


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def row(estimator: str, features: tuple[str, ...], bt: Backtest) -> str:
    m, c, worst = bt.model, bt.chance, bt.worst
    worst_text = f"{worst.model.flagged_share:.1%} ({worst.sensor})" if worst else "-"
    false = "-" if m.false_per_day is None else f"{m.false_per_day:,.1f}"
    return (f"| {estimator} | {label(features)} | {m.flagged:,} of {m.points:,} "
            f"({m.flagged_share:.1%}) | {worst_text} | {m.windows_hit:,} of {m.windows:,} "
            f"({c.windows_hit:,.1f}) | {_share(m.inside_share)} ({_share(c.inside_share)}) | "
            f"{false} |")


def table(title: str, base: Path, store: Path, labels: Path, train_fraction: float) -> None:
    print(f"### {title}\n")
    print("| estimator | features | points flagged | worst sensor's share | windows hit "
          "(chance) | flags inside labels (chance) | false flags / sensor-day |")
    print("|---|---|---|---|---|---|---|")
    named = {}
    for estimator in ESTIMATORS:
        for features in FEATURE_SETS:
            bt = backtest(base, store, labels, estimator, features, train_fraction)
            named[estimator] = bt.estimator
            print(row(estimator, features, bt), flush=True)
    first = bt.hours[0] if bt.hours else "-"
    last = bt.hours[1] if bt.hours else "-"
    print(f"\n{len(bt.sensors)} sensors, hours {first} .. {last}, each trained on the first "
          f"{train_fraction:.0%} of its hours with data and scored on the rest; "
          + "; ".join(f"{k}: {v}" for k, v in named.items() if v != k) + ".\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=40)
    parser.add_argument("--hours", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refdata", type=Path, default=REFDATA)
    parser.add_argument("--train-fraction", type=float, default=0.15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="detector-table-") as tmp:
        base = Path(tmp)
        store, labels = demo_set(base, args.sensors, args.hours, args.seed)
        table(f"Demo fleet ({args.sensors} sensors, {args.hours} hours, seed {args.seed}; "
              "labels: its injected anomalies as windows)", base, store, labels,
              args.train_fraction)
        if not args.refdata.is_file():
            sys.exit(f"{args.refdata}: no such file (--refdata names the reference data)")
        store, labels = refdata_set(base, args.refdata.resolve())
        table("Reference data (sensor_data.csv; no labels: only the flagged shares count)",
              base, store, labels, args.train_fraction)


if __name__ == "__main__":
    main()
