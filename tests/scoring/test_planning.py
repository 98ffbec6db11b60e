import math

import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import UsageError
from fleetscore.model.registry import manifest_path, model_path
from fleetscore.scoring.planning import auto_unit_size, load_unit, make_plan, save_plan

H1 = Hour.parse("2024-03-01T01")


def test_plan_names_sensors_without_data_or_model(trained_store, tmp_path):
    # Drop one model; add a model-only sensor by copying a manifest.
    trained_store.delete(manifest_path(Sensor("1", "2")))
    trained_store.put(model_path(Sensor("9", "9")), trained_store.get(model_path(Sensor("1", "1"))))
    trained_store.put(manifest_path(Sensor("9", "9")), trained_store.get(manifest_path(Sensor("1", "1"))))
    plan = make_plan(trained_store, H1)
    assert [list(map(str, u.sensors)) for u in plan.units] == [["1/1"], ["dev_a/t.x"]]
    assert list(map(str, plan.no_model)) == ["1/2"]
    assert list(map(str, plan.no_data)) == ["9/9"]


def test_unit_size_groups_sensors_and_plan_roundtrips(trained_store):
    plan = make_plan(trained_store, H1, unit_size=2)
    assert [len(u.sensors) for u in plan.units] == [2, 1]
    assert [u.id for u in plan.units] == ["u000000", "u000001"]
    save_plan(trained_store, plan, "r1")
    assert load_unit(trained_store, H1, "r1", "u000001") == plan.units[1]
    with pytest.raises(UsageError):
        make_plan(trained_store, H1, unit_size=0)


def test_automatic_unit_size_bounds_the_number_of_units():
    assert auto_unit_size(10) == auto_unit_size(200, parallel=8) == 1  # small fleet: per sensor
    assert auto_unit_size(1000, parallel=2) == 125  # a few units per worker
    assert auto_unit_size(100_000, parallel=2) == 12_500
    assert auto_unit_size(1_000_000, parallel=10_000) == 1000  # never more than 1000 units
    # Batch tasks carry at least two minutes of work at the fast path's speed.
    from fleetscore.scoring.planning import SECONDS_PER_SENSOR
    assert auto_unit_size(10_000_000, parallel=40, min_task_seconds=120) == \
        math.ceil(120 / SECONDS_PER_SENSOR)
    assert auto_unit_size(300, parallel=40, min_task_seconds=120) == 300
