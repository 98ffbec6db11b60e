"""Training at fleet size: groups of sensors (bounded memory), on every core, same models."""

from __future__ import annotations

from fleetscore.hours import Hour
from fleetscore.models import list_models, read_manifest
from fleetscore.training import groups, train
from fleetscore.sensors import Sensor
from collections import Counter


def test_groups_hold_at_most_the_budget_in_device_order():
    points = Counter({Sensor("b", "1"): 40, Sensor("a", "2"): 30, Sensor("a", "1"): 30,
                      Sensor("c", "1"): 500})
    assert [[str(s) for s in g] for g in groups(points, budget=70)] == \
        [["a/1", "a/2"], ["b/1"], ["c/1"]]


def test_parallel_and_grouped_training_give_the_same_models(local_store, fleet_csv, tmp_path):
    """Sequential in one group, or in a pool with one sensor a group: the same model bytes
    (each read only its own sensors' points), and progress reaches the total."""
    import shutil

    from fleetscore.ingest import ingest_file
    from fleetscore.stores import LocalStore

    ingest_file(local_store, fleet_csv)
    other = LocalStore(shutil.copytree(local_store.root, tmp_path / "other"))
    until = Hour.parse("2024-03-01T00")
    one = train(local_store, until=until, workers=1)
    seen = []
    many = train(other, until=until, workers=2, budget=1, progress=lambda d, t: seen.append((d, t)))
    assert len(one.trained) == len(many.trained) == 3
    import numpy as np

    from fleetscore.models import load_model

    grid = np.linspace(0, 40, 200).reshape(-1, 1)
    assert list_models(local_store) == list_models(other)
    for sensor in list_models(local_store):
        a, b = load_model(local_store, sensor), load_model(other, sensor)
        assert np.array_equal(a.decision_function(grid), b.decision_function(grid))
        assert read_manifest(local_store, sensor).trained_on == read_manifest(other, sensor).trained_on
    assert seen[-1] == (3, 3)


def test_sensors_with_too_few_points_are_skipped_and_named(local_store, tmp_path):
    from fleetscore.ingest import ingest_file
    from tests.conftest import minute_readings, write_readings

    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 30) + \
        minute_readings("2", "1", "2024-03-01 00:00:00", 3)
    ingest_file(local_store, write_readings(tmp_path / "r.csv", sorted(rows)))
    result = train(local_store, workers=2)
    assert [m.device for m in result.trained] == ["1"]
    assert result.skipped == (("2/1", "only 3 points (at least 10)"),)
