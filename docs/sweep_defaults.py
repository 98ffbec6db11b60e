"""The sweep behind the default OneClassSVM parameters (docs/benchmarks.md, "Model defaults").

    .venv/bin/python docs/sweep_defaults.py [--seeds 0 1 2] [--sensors 40] [--hours 6]

For each (nu, gamma) it fits the default model, Pipeline(StandardScaler, OneClassSVM), on the
demo fleet's training hours and scores the other hours exactly as `fleetscore run` does
(labels are scikit-learn's ``predict``, nothing else), then counts against the injected
anomalies: precision, recall, and "mid-range flags": windows flagged although nothing was
injected and their value lies between the 25th and 75th percentiles of the sensor's own
training windows, the middle of its normal range, where no operator would call a point
anomalous.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.data.synthetic import INTERVAL_S, make_fleet  # noqa: E402
from fleetscore.data.windows import window_end_ms  # noqa: E402
from fleetscore.model.training import reference_model  # noqa: E402

NUS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
GAMMAS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Score:
    nu: float
    gamma: float
    flagged: int
    true_positives: int
    anomalies: int
    mid_range: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.anomalies if self.anomalies else 0.0


def windows(seed: int, sensors: int, hours: int):
    """Per sensor: (training values, scored values, scored truth), windows as ingest makes them."""
    fleet = make_fleet(sensors, hours, seed)
    r = fleet.readings
    ends = window_end_ms(pc.cast(r["TS"], pa.int64()).to_numpy(), INTERVAL_S)
    means = pa.table({"Device": r["Device"], "Tag": r["Tag"], "End": ends, "Value": r["Value"]}) \
        .group_by(["Device", "Tag", "End"]).aggregate([("Value", "mean")])
    table = means.join(fleet.labels, ["Device", "Tag", "End"]).sort_by(
        [("Device", "ascending"), ("Tag", "ascending"), ("End", "ascending")])
    split = (fleet.first + fleet.train_hours).start_ms
    cols = {k: table[k].to_numpy(zero_copy_only=False) for k in ("Device", "Tag", "End", "Value_mean",
                                                                   "Anomaly")}
    key = np.char.add(cols["Device"].astype(str), "/" + cols["Tag"].astype(str))
    out = []
    for sensor in np.unique(key):
        mine = key == sensor
        train = mine & (cols["End"] <= split)
        scored = mine & (cols["End"] > split)
        out.append((cols["Value_mean"][train], cols["Value_mean"][scored],
                    cols["Anomaly"][scored].astype(bool)))
    return out


def score(data, nu: float, gamma: float) -> Score:
    flagged = tp = anomalies = mid = 0
    for train, values, truth in data:
        model = reference_model(nu, gamma).fit(train.reshape(-1, 1))
        labels = model.predict(values.reshape(-1, 1)) == -1
        low, high = np.percentile(train, [25, 75])
        flagged += int(labels.sum())
        tp += int((labels & truth).sum())
        anomalies += int(truth.sum())
        mid += int((labels & ~truth & (values >= low) & (values <= high)).sum())
    return Score(nu, gamma, flagged, tp, anomalies, mid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sensors", type=int, default=40)
    parser.add_argument("--hours", type=int, default=6)
    args = parser.parse_args()
    data = [w for seed in args.seeds for w in windows(seed, args.sensors, args.hours)]
    print(f"{len(data)} sensors ({args.sensors} x seeds {args.seeds}), {args.hours} hours\n")
    print("| nu | gamma | precision | recall | flagged | mid-range flags |")
    print("|---|---|---|---|---|---|")
    for nu in NUS:
        for gamma in GAMMAS:
            s = score(data, nu, gamma)
            print(f"| {nu:g} | {gamma:g} | {s.precision:.2f} | {s.recall:.2f} | {s.flagged:,} | "
                  f"{s.mid_range:,} |")


if __name__ == "__main__":
    main()
