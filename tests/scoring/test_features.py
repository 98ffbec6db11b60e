"""Models with derived features scored as they were trained: the champion and the challenger,
the hour's first point differenced against the hour before's last, whatever reads them."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.data.predictions import SHADOW_SCHEMA, decode
from fleetscore.model.bank import load_bank, rebuild_bank
from fleetscore.model.challengers import load_challengers, rebuild_challengers
from fleetscore.model.registry import load_detector, read_manifest
from fleetscore.model.training import read_group, train, training_hours
from fleetscore.model.versions import read_history, set_champion
from fleetscore.scoring.score import score_unit

FIRST = Hour.parse("2024-03-01T00")
SCORED = Hour.parse("2024-03-01T02")
FEATURES = ("diff", "hour")


def _history(store, sensors):
    hours = training_hours(store)
    with_data = {h: set(sensors) for h in hours}
    return read_group(store, hours, sensors, with_data)


def _expected(detector, series, hour: Hour) -> np.ndarray:
    """The model's flags on the hour's rows of the matrix of the sensor's whole history."""
    ends, values = series
    rows = (ends - 1) // 3_600_000 == hour.index
    x = np.column_stack([values, *(
        np.where(np.diff(ends, prepend=ends[0] - 3_600_001) <= 3_600_000,
                 np.diff(values, prepend=values[0]), 0.0) if f == "diff"
        else ((ends - 1) // 3_600_000 % 24).astype(float) for f in detector.features)])
    return (detector.estimator.predict(x[rows]) == -1).astype(np.int8)


def _rows(table, sensor):
    return table.filter(pc.and_(pc.equal(table["Device"], sensor.device),
                                pc.equal(table["Tag"], sensor.tag)))


def test_a_featured_champion_scores_an_hour_as_on_its_whole_history(local_store, fleet_csv):
    ingest_file(local_store, fleet_csv)
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T01"), nu=0.3, features=FEATURES)
    rebuild_bank(local_store)
    sensors = sorted(_sensors(local_store))
    assert all(read_manifest(local_store, s).features == FEATURES for s in sensors)
    assert len(load_bank(local_store, [(s.device, s.tag) for s in sensors])) == 0  # not compiled
    result = score_unit(local_store, SCORED, sensors, unit_id="u")
    assert result.scored == len(sensors) and not result.failures
    table = decode(local_store.get(result.predictions), result.predictions)
    history = _history(local_store, sensors)
    flagged = 0
    for sensor in sensors:
        expected = _expected(load_detector(local_store, sensor), history[sensor], SCORED)
        assert _rows(table, sensor)["Prediction"].to_numpy().tolist() == expected.tolist()
        flagged += int(expected.sum())
    assert flagged > 0  # the comparison saw flags, not only zeros


def test_a_featured_challenger_shadow_scores_as_trained_and_promotes_with_its_features(
        local_store, fleet_csv):
    ingest_file(local_store, fleet_csv)
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T01"))
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T01"), nu=0.3, features=FEATURES,
          role="challenger")
    rebuild_bank(local_store)
    rebuild_challengers(local_store)
    sensors = sorted(_sensors(local_store))
    challengers = load_challengers(local_store, [(s.device, s.tag) for s in sensors])
    assert {p.features for p in challengers.pointers} == {FEATURES}
    result = score_unit(local_store, SCORED, sensors, unit_id="u")
    assert result.shadow is not None and not result.shadow.failed and not result.shadow.error
    assert result.shadow.scored == len(sensors)
    shadow = decode(local_store.get(result.shadow.path), "shadow", SHADOW_SCHEMA)
    history = _history(local_store, sensors)
    for sensor in sensors:
        challenger = read_history(local_store, sensor).challenger
        set_champion(local_store, sensor, challenger.number, by="test")
        detector = load_detector(local_store, sensor)  # the champion view, now
        assert detector.features == FEATURES
        expected = _expected(detector, history[sensor], SCORED)
        assert _rows(shadow, sensor)["Prediction"].to_numpy().tolist() == expected.tolist()


def _sensors(store):
    from fleetscore.model.registry import list_models

    return list_models(store)


def test_the_hours_first_point_is_differenced_against_the_hour_befores_last(local_store,
                                                                          tmp_path):
    """The hour before ends on a spike: the next hour's first window is ordinary in value but
    a fall of 20 in diff, which only the previous hour's last point can show."""
    from tests.conftest import minute_readings, write_readings

    rows = minute_readings("s", "1", "2024-03-01 00:00:00", 180, seed=3, per_minute=1)
    spike = 119  # the last minute of 01:00
    rows[spike] = (*rows[spike][:3], 30.0)
    ingest_file(local_store, write_readings(tmp_path / "spike.csv", rows))
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T01"), features=("diff",))
    [sensor] = _sensors(local_store)
    result = score_unit(local_store, SCORED, [sensor], unit_id="u")
    table = decode(local_store.get(result.predictions), result.predictions)
    got = _rows(table, sensor)["Prediction"].to_numpy()
    expected = _expected(load_detector(local_store, sensor), _history(local_store, [sensor])[sensor],
                         SCORED)
    assert got[0] == 1 and got.tolist() == expected.tolist()


@pytest.mark.reliability("R86")
def test_an_unreadable_hour_before_fails_only_the_featured_sensors(local_store, fleet_csv):
    """The hour before is damaged: the sensor whose model looks back at it fails alone, named
    with why; the unit's other sensors are scored."""
    from fleetscore.data.windows import windows_folder

    ingest_file(local_store, fleet_csv)
    before = Hour.parse("2024-03-01T01")
    train(local_store, estimator="ocsvm", until=before)
    sensors = sorted(_sensors(local_store))
    train(local_store, estimator="ocsvm", until=before, features=("diff",), sensors={sensors[0]})
    rebuild_bank(local_store)
    for path in local_store.list(windows_folder(before)):
        local_store.put(path, b"not parquet", overwrite=True)
    result = score_unit(local_store, SCORED, sensors, unit_id="u")
    [failure] = result.failures
    assert failure.sensor == str(sensors[0]) and "hour before cannot be read" in failure.message
    assert result.scored == len(sensors) - 1


def test_a_manifest_naming_features_its_model_never_saw_fails_that_sensor_alone(local_store,
                                                                                 fleet_csv):
    """A champion manifest edited (or damaged) to name a feature: its sensor fails alone,
    named; the others are scored."""
    import json

    from fleetscore.model.registry import manifest_path

    ingest_file(local_store, fleet_csv)
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T01"))
    sensors = sorted(_sensors(local_store))
    for features in (["diff"], ["speed"], 5):
        path = manifest_path(sensors[0])
        body = json.loads(local_store.get(path))
        local_store.put(path, json.dumps({**body, "features": features}).encode(), overwrite=True)
        result = score_unit(local_store, SCORED, sensors, unit_id="u", use_bank=False)
        [failure] = result.failures
        assert failure.sensor == str(sensors[0]) and result.scored == len(sensors) - 1
        assert str(sensors[0]) in failure.message or path in failure.message
