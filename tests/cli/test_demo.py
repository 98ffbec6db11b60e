import json
import re

import numpy as np
import pyarrow as pa

from fleetscore.cli.demo import run_demo
from fleetscore.core.hours import hour_range
from fleetscore.data.readings import parse_ts
from fleetscore.data.synthetic import evaluate, fleet_sensors, make_fleet
from fleetscore.data.windows import by_sensor, read_points
from fleetscore.runs.lifecycle import read_predictions
from fleetscore.storage import LocalStore
from tests.cli.conftest import fleetscore, one_line_usage_error


def test_fleet_has_labels_only_after_training_hours():
    fleet = make_fleet(sensors=10, hours=3, seed=1)
    labels = fleet.labels.to_pydict()
    train_end = (fleet.first + fleet.train_hours).start_ms
    flagged = [e for e, a in zip(labels["End"], labels["Anomaly"], strict=True) if a]
    assert flagged and min(flagged) > train_end
    assert set(fleet.readings["Device"].to_pylist()) == {"D000", "D001"}


def test_demo_end_to_end_writes_everything_and_finds_the_anomalies(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", sensors=10, hours=3, seed=0, workers=2, say=lines.append)
    assert result.exit_code == 0
    store = tmp_path / "demo" / "store"
    assert list((store / "predictions").rglob("*.csv"))
    manifests = sorted((store / "runs").glob("*.json"))
    assert [json.loads(m.read_text())["status"] for m in manifests] == ["succeeded", "succeeded"]
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000
    assert any("precision" in line for line in lines)
    # A working pipeline finds the injected anomalies well above chance. With one hour of
    # training, the default IsolationForest finds 56 of 125 and 56 of its 70 flags are real.
    assert result.evaluation.recall > 0.4 and result.evaluation.precision > 0.6


def test_evaluate_counts_true_positives():
    import pyarrow as pa

    preds = pa.table({"TS": ["2026-01-05 00:01:00", "2026-01-05 00:02:00"], "Device": ["a", "a"],
                      "Tag": ["t", "t"], "Prediction": [1, 1]})
    labels = pa.table({"Device": ["a", "a"], "Tag": ["t", "t"],
                       "End": pa.array([1767571260000, 1767571320000], pa.int64()), "Anomaly": [1, 0]})
    ev = evaluate(preds, labels)
    assert (ev.windows, ev.true_anomalies, ev.flagged, ev.true_positives) == (2, 1, 2, 1)
    assert ev.precision == 0.5 and ev.recall == 1.0


def test_labels_csv_is_written_like_the_other_csvs(tmp_path):
    run_demo(tmp_path / "d", sensors=3, hours=2, seed=0, workers=1, say=lambda _: None)
    lines = (tmp_path / "d" / "labels.csv").read_text().splitlines()
    assert lines[0] == "TS,Device,Tag,Anomaly,Kind"
    assert lines[1].startswith("2026-01-05 00:01:00,D000,temp,")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:00,D\d{3},\w+,[01],\w*", x) for x in lines[1:])


def _by_kind(fleet, predictions: pa.Table) -> dict[str, object]:
    """The predictions measured against the labels on each kind of sensor."""
    import pyarrow.compute as pc

    from fleetscore.data.synthetic import fleet_sensors

    def ids(t: pa.Table):
        return pc.binary_join_element_wise(t["Device"], t["Tag"], "/")

    out = {}
    for kind in set(fleet.kinds):
        names = pa.array([f"{d}/{t}" for (d, t), k in
                          zip(fleet_sensors(len(fleet.kinds)), fleet.kinds, strict=True) if k == kind])
        out[kind] = evaluate(predictions.filter(pc.is_in(ids(predictions), names)),
                             fleet.labels.filter(pc.is_in(ids(fleet.labels), names)))
    return out


def test_the_default_demo_flags_nothing_in_the_middle_of_a_normal_range(tmp_path):
    """On the demo's own plots no point of a level sensor between its training quartiles is
    red unless an anomaly was injected there (D004/vibration at 23.5 was, with nu=0.01 and
    gamma=0.1).

    The demo's fleet has idle and daily sensors too (issue 24). The OneClassSVM pipeline flagged
    904 of the idle sensors' 960 windows (precision 0.29 overall); the default IsolationForest
    flags 7 of them, and 1,110 windows in all: precision 0.48, recall 0.91 at seed 0. Level
    sensors: precision 0.81, recall 0.93. What it still gets wrong, pinned so a better detector
    shows: the daily sensors (trained on two hours of a daily cycle, about half their windows
    flagged) and the idle sensors' rare excursions (1 of 18 found)."""
    lines = []
    result = run_demo(tmp_path / "d", workers=2, say=lines.append)
    assert any(re.search(r"precision \d\.\d\d, recall \d\.\d\d", x) for x in lines)
    assert result.evaluation.recall > 0.85 and 0.4 < result.evaluation.precision < 0.6
    fleet = make_fleet(hard=True)
    train_end = (fleet.first + fleet.train_hours).start_ms
    store = tmp_path / "d" / "store"
    preds = pa.concat_tables([read_predictions(LocalStore(store), h) for h in
                              hour_range(fleet.first + fleet.train_hours, fleet.first + 5)])
    kinds = _by_kind(fleet, preds)
    assert kinds["level"].recall > 0.9 and kinds["level"].precision > 0.7
    # Idle sensors (exactly 0 most of the time) are no longer flagged on most of their
    # windows, but their excursions are mostly missed; daily sensors still fool the default.
    assert kinds["idle"].flagged < kinds["idle"].windows / 20
    assert kinds["idle"].recall < 0.5 and kinds["daily"].precision < 0.5
    level = {f"{d}/{t}" for (d, t), k in zip(fleet_sensors(40), fleet.kinds, strict=True)
             if k == "level"}
    truth = {(d, t, e): a for d, t, e, a in zip(*(fleet.labels[c].to_pylist() for c in
                                                  ("Device", "Tag", "End", "Anomaly")), strict=True)}
    training = {}
    for hour in hour_range(fleet.first, fleet.first + (fleet.train_hours - 1)):
        for sensor, points in by_sensor(read_points(LocalStore(store), hour)).items():
            training.setdefault(str(sensor), []).extend(points.values)
    mid_range = []
    for ts, d, t, val, p in zip(*(preds[c].to_pylist() for c in ("TS", "Device", "Tag", "Val",
                                                                  "Prediction")), strict=True):
        end = parse_ts(ts)
        assert end > train_end
        low, high = np.percentile(training[f"{d}/{t}"], [25, 75])
        if p == 1 and not truth[(d, t, end)] and low <= val <= high and f"{d}/{t}" in level:
            mid_range.append((ts, d, t, val))
    assert mid_range == []


def test_demo_writes_labels_as_windows_for_the_backtest(tmp_path):
    """labels-windows.csv holds each stretch of consecutive anomalous windows of a sensor as
    one window of time, (Start, End] covering exactly those windows of labels.csv."""
    from fleetscore.scoring.backtest import read_labels

    run_demo(tmp_path / "d", sensors=10, hours=3, seed=0, workers=1, say=lambda _: None)
    lines = (tmp_path / "d" / "labels-windows.csv").read_text().splitlines()
    assert lines[0] == "Device,Tag,Start,End"
    assert all(re.fullmatch(r"D\d{3},\w+,\d{4}-\d\d-\d\d \d\d:\d\d:00,\d{4}-\d\d-\d\d "
                            r"\d\d:\d\d:00", x) for x in lines[1:])
    windows = read_labels(tmp_path / "d" / "labels-windows.csv")
    anomalous = set()
    for row in (tmp_path / "d" / "labels.csv").read_text().splitlines()[1:]:
        ts, device, tag, anomaly, _ = row.split(",")
        if anomaly == "1":
            anomalous.add((f"{device}/{tag}", parse_ts(ts)))
    covered = {(str(s), end) for s, labs in windows.items() for lab in labs
               for end in range(lab.start_ms + 60_000, lab.end_ms + 1, 60_000)}
    assert covered == anomalous
    assert len(lines) - 1 < len(anomalous)  # stretches were merged


def test_demo_dir_an_existing_file_is_a_usage_error(tmp_path):
    (tmp_path / "README.md").write_text("x")
    line = one_line_usage_error(fleetscore("demo", "--dir", "README.md", cwd=tmp_path))
    assert "README.md" in line and "not a directory" in line
    assert (tmp_path / "README.md").read_text() == "x"

