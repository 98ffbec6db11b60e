from datetime import UTC, datetime

import numpy as np
import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.predictions import COLUMNS
from fleetscore.data.windows import by_sensor, read_points
from fleetscore.model.registry import load_model, manifest_path, model_path
from fleetscore.runs.lifecycle import read_predictions
from fleetscore.scoring.score import predict_labels, score_unit

H1 = Hour.parse("2024-03-01T01")
SENSORS = [Sensor("1", "1"), Sensor("1", "2"), Sensor("dev_a", "t.x")]


def test_predictions_equal_scikit_learn_for_every_point(trained_store):
    result = score_unit(trained_store, H1, SENSORS, unit_id="u1")
    assert result.status == "succeeded" and result.scored == 3 and result.points == 180
    header = trained_store.get(result.predictions).decode().splitlines()[0]
    assert header.split(",")[:5] == ["TS", "Device", "Tag", "Val", "Prediction"]
    assert tuple(header.split(",")) == COLUMNS
    preds = read_predictions(trained_store, H1)
    points = by_sensor(read_points(trained_store, H1))
    for sensor in SENSORS:
        model = load_model(trained_store, sensor)
        p = points[sensor]
        mine = preds.filter(np.array([(d, t) == (sensor.device, sensor.tag) for d, t in
                                      zip(preds["Device"].to_pylist(), preds["Tag"].to_pylist(),
                                          strict=True)]))
        assert mine["Val"].to_pylist() == p.values.tolist()
        expected = (model.predict(p.values.reshape(-1, 1)) == -1).astype(int)
        assert mine["Prediction"].to_pylist() == expected.tolist()
        assert np.allclose(mine["Score"].to_numpy(), model.decision_function(p.values.reshape(-1, 1)))
    assert result.anomalies == int(preds["Prediction"].to_numpy().sum())


@pytest.mark.reliability("R9")
def test_a_broken_model_fails_alone(trained_store):
    trained_store.put(model_path(Sensor("1", "2")), b"garbage")
    trained_store.delete(model_path(Sensor("dev_a", "t.x")))
    result = score_unit(trained_store, H1, SENSORS, unit_id="u1")
    assert result.status == "partial" and result.scored == 1
    failures = {f.sensor: (f.kind, f.message) for f in result.failures}
    assert failures["1/2"][0] == "ModelError" and "1/2" in failures["1/2"][1]
    assert failures["dev_a/t.x"][0] == "ModelNotFound"
    devices = set(read_predictions(trained_store, H1)["Tag"].to_pylist())
    assert devices == {"1"}


def test_a_unit_scores_only_its_own_sensors(trained_store):
    result = score_unit(trained_store, H1, [Sensor("1", "2")])
    assert result.unit_id.startswith("adhoc-")
    preds = read_predictions(trained_store, H1)
    assert set(zip(preds["Device"].to_pylist(), preds["Tag"].to_pylist(), strict=True)) == {("1", "2")}


@pytest.mark.reliability("R23")
def test_rerun_replaces_the_file_instead_of_duplicating(trained_store):
    first = score_unit(trained_store, H1, SENSORS, unit_id="u1")
    data = trained_store.get(first.predictions)
    score_unit(trained_store, H1, SENSORS, unit_id="u1")
    assert trained_store.get(first.predictions) == data
    assert read_predictions(trained_store, H1).num_rows == 180


def test_sensor_without_points_is_no_data_not_failure(trained_store):
    result = score_unit(trained_store, Hour.parse("2024-03-01T05"), SENSORS, unit_id="u1")
    assert result.no_data == ("1/1", "1/2", "dev_a/t.x") and not result.failures
    assert result.predictions is None


class _Flipped:
    def predict(self, x):
        return np.where(x[:, 0] > 0, 1, -1)


class _Bad:
    def predict(self, x):
        return np.zeros(len(x))


def test_any_estimator_with_predict_follows_the_outlier_convention():
    labels, scores = predict_labels(_Flipped(), np.array([-1.0, 2.0]))
    assert labels.tolist() == [1, 0] and scores is None
    import pytest

    from fleetscore.errors import ScoringError
    with pytest.raises(ScoringError, match=r"\+1 \(normal\) or -1"):
        predict_labels(_Bad(), np.array([1.0]))


def test_manifest_missing_means_no_model(trained_store):
    trained_store.delete(manifest_path(Sensor("1", "1")))
    result = score_unit(trained_store, H1, [Sensor("1", "1")], unit_id="u1")
    assert result.failures[0].kind == "ModelNotFound"


def test_a_unit_that_scores_nothing_leaves_no_file_of_an_earlier_attempt(trained_store):
    from fleetscore.core.hours import Hour
    from fleetscore.core.sensors import Sensor
    from fleetscore.scoring.score import score_unit

    hour, out = Hour.parse("2024-03-01T01"), "runs/2024-03-01T01/r1/predictions/u1.csv"
    first = score_unit(trained_store, hour, [Sensor("1", "1")], unit_id="u1", out=out)
    assert first.scored == 1 and trained_store.exists(out)
    for path in trained_store.list(f"windows/{hour.path}"):
        trained_store.delete(path)  # the points are gone: the retried attempt scores nothing
    again = score_unit(trained_store, hour, [Sensor("1", "1")], unit_id="u1", out=out)
    assert again.scored == 0 and again.predictions is None and not trained_store.exists(out)


def test_a_units_top_sensors_are_the_most_anomalous_then_by_name():
    """Units keep their TOP_ANOMALOUS sensors only; the run's top is the top of those tops,
    which is the top of every sensor (each sensor is in one unit), ties broken by name."""
    import pyarrow as pa

    from fleetscore.runs.lifecycle import build_manifest
    from fleetscore.scoring.score import TOP_ANOMALOUS, UnitResult, _top, top_counts

    rng = np.random.default_rng(4)
    counts = {f"d{i % 97}/t{i}": int(n) for i, n in enumerate(rng.integers(1, 4, 2000))}
    names = sorted(counts)
    units = [names[i::7] for i in range(7)]
    results = []
    for i, unit in enumerate(units):
        top = _top(pa.array(unit, pa.string()), np.array([counts[k] for k in unit]))
        assert list(top.items()) == top_counts((k, counts[k]) for k in unit)
        assert len(top) == TOP_ANOMALOUS
        results.append(UnitResult(f"u{i}", "2024-01-01T00", len(unit), len(unit), 0,
                                  sum(top.values()), top_anomalous=top))
    small = names[:30]  # a backfill's hour: the same answer the short way
    assert list(_top(pa.array(small, pa.string()), np.array([counts[k] for k in small])).items()) \
        == top_counts((k, counts[k]) for k in small)
    plan = type("P", (), {"window": "2024-01-01T00", "restricted": False, "unit_size": 1,
                          "units": (), "sensors": 2000, "no_data": (), "no_model": ()})()
    manifest = build_manifest(plan, results, run_id="r", files=[], kept=[],
                              started=datetime(2024, 1, 1, tzinfo=UTC),
                              finished=datetime(2024, 1, 1, tzinfo=UTC), backend="x")
    assert [tuple(t) for t in manifest.top_anomalous] == top_counts(counts.items())
    assert UnitResult.from_json(results[0].to_json()) == results[0]
