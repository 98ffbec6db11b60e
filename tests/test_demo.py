import json

from fleetscore.demo import evaluate, make_fleet, run_demo


def test_fleet_has_labels_only_after_training_hours():
    fleet = make_fleet(sensors=10, hours=3, seed=1)
    labels = fleet.labels.to_pydict()
    train_end = (fleet.first + fleet.train_hours).start_ms
    flagged = [e for e, a in zip(labels["End"], labels["Anomaly"]) if a]
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
    # The injected anomalies are large: a working pipeline finds most of them.
    assert result.evaluation.recall > 0.8 and result.evaluation.precision > 0.4


def test_evaluate_counts_true_positives():
    import pyarrow as pa

    preds = pa.table({"TS": ["2026-01-05 00:01:00", "2026-01-05 00:02:00"], "Device": ["a", "a"],
                      "Tag": ["t", "t"], "Prediction": [1, 1]})
    labels = pa.table({"Device": ["a", "a"], "Tag": ["t", "t"],
                       "End": pa.array([1767571260000, 1767571320000], pa.int64()), "Anomaly": [1, 0]})
    ev = evaluate(preds, labels)
    assert (ev.windows, ev.true_anomalies, ev.flagged, ev.true_positives) == (2, 1, 2, 1)
    assert ev.precision == 0.5 and ev.recall == 1.0
