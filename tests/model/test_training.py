"""Training at fleet size: groups of sensors (bounded memory), on every core, same models."""

from __future__ import annotations

import json
from collections import Counter

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.model.registry import list_models, read_manifest
from fleetscore.model.training import groups, train


def test_groups_hold_at_most_the_budget_in_device_order():
    points = Counter({Sensor("b", "1"): 40, Sensor("a", "2"): 30, Sensor("a", "1"): 30,
                      Sensor("c", "1"): 500})
    assert [[str(s) for s in g] for g in groups(points, budget=70)] == \
        [["a/1", "a/2"], ["b/1"], ["c/1"]]


def test_parallel_and_grouped_training_give_the_same_models(local_store, fleet_csv, tmp_path):
    """Sequential in one group, or in a pool with one sensor a group: the same model bytes
    (each read only its own sensors' points), and progress reaches the total."""
    import shutil

    from fleetscore.data.ingest import ingest_file
    from fleetscore.storage import LocalStore

    ingest_file(local_store, fleet_csv)
    other = LocalStore(shutil.copytree(local_store.root, tmp_path / "other"))
    until = Hour.parse("2024-03-01T00")
    one = train(local_store, until=until, workers=1)
    seen = []
    many = train(other, until=until, workers=2, budget=1, progress=lambda d, t: seen.append((d, t)))
    assert len(one.trained) == len(many.trained) == 3
    import numpy as np

    from fleetscore.model.registry import load_model

    grid = np.linspace(0, 40, 200).reshape(-1, 1)
    assert list_models(local_store) == list_models(other)
    for sensor in list_models(local_store):
        a, b = load_model(local_store, sensor), load_model(other, sensor)
        assert np.array_equal(a.decision_function(grid), b.decision_function(grid))
        assert read_manifest(local_store, sensor).trained_on == read_manifest(other, sensor).trained_on
    assert seen[-1] == (3, 3)


def test_sensors_with_too_few_points_are_skipped_and_named(local_store, tmp_path):
    from fleetscore.data.ingest import ingest_file
    from tests.conftest import minute_readings, write_readings

    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 30) + \
        minute_readings("2", "1", "2024-03-01 00:00:00", 3)
    ingest_file(local_store, write_readings(tmp_path / "r.csv", sorted(rows)))
    result = train(local_store, workers=2)
    assert [m.device for m in result.trained] == ["1"]
    assert result.skipped == (("2/1", "only 3 points (at least 10)"),)


def _per_hour_read_group(store, hours, sensors, with_data):
    """What read_group returned when it read hour by hour (the reference)."""
    import numpy as np

    from fleetscore.data.windows import by_sensor, read_points

    series = {}
    for hour in hours:
        present = with_data[hour] & set(sensors)
        if present:
            for sensor, points in by_sensor(read_points(store, hour, present)).items():
                series.setdefault(sensor, []).append((points.ends_ms, points.values))
    return {s: tuple(np.concatenate(x) for x in zip(*v, strict=True)) for s, v in series.items()}


def test_training_reads_by_day_with_the_values_of_an_hour_by_hour_read(local_store, tmp_path,
                                                                      monkeypatch):
    """Day parts, hour files, a late file merging into windows, a window file with a sensor no
    arrival record names for its hour (left out, as an hour-by-hour read left it out): the
    same values per sensor, in the same order; each day part read once per group."""
    from collections import Counter as Count

    import numpy as np
    import pyarrow as pa

    import fleetscore.data.ingest
    import fleetscore.model.training as training
    from fleetscore.data.arrivals import read_arrivals
    from fleetscore.data.ingest import ingest_file
    from fleetscore.data.windows import PART_SCHEMA, encode_part, part_path
    from tests.conftest import minute_readings, write_readings

    monkeypatch.setattr(fleetscore.data.ingest, "SPARSE_HOUR_WINDOWS", 30)
    rows = []
    for day in range(1, 4):
        for hour in (0, 7, 23):
            start = f"2024-03-{day:02d} {hour:02d}:00:00"
            rows += minute_readings("a", "1", start, 20, seed=day, per_minute=1)
            rows += minute_readings("b", "2", start, 40 if hour == 7 else 5, seed=hour, per_minute=1)
    ingest_file(local_store, write_readings(tmp_path / "a.csv", sorted(rows)))
    late = [(r[0].replace(":05.000", ":35.000"), r[1], r[2], r[3] + 1) for r in rows[::3]]
    ingest_file(local_store, write_readings(tmp_path / "b.csv", sorted(late)))
    orphan = Hour.parse("2024-03-02T07")
    end = pa.array([orphan.start_ms + 60_000], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    local_store.put(part_path(orphan, "orphan"), encode_part(pa.table(
        [pa.array(["z"]), pa.array(["9"]), end, pa.array([5.0]), pa.array([1], pa.int64())],
        schema=PART_SCHEMA)))
    local_store.put(part_path(orphan, "other"), encode_part(pa.table(
        [pa.array(["a"]), pa.array(["1"]), end, pa.array([99.0]), pa.array([4], pa.int64())],
        schema=PART_SCHEMA)))  # merges into a/1's window: no record names "other" either
    hours = training.training_hours(local_store)
    with_data = {h: set(read_arrivals(local_store, h)) for h in hours}
    sensors = [Sensor("a", "1"), Sensor("b", "2"), Sensor("z", "9")]
    expected = _per_hour_read_group(local_store, hours, sensors, with_data)
    monkeypatch.setattr(training, "DAYS_PER_READ", 2)
    counts = Count()

    class Counting:
        def __init__(self, inner):
            self.inner, self.url = inner, inner.url

        def get(self, path):
            counts[path] += 1
            return self.inner.get(path)

        def open(self, path):
            counts[path] += 1
            return self.inner.open(path)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    got = training.read_group(Counting(local_store), hours, sensors, with_data)
    assert set(got) == set(expected) == {Sensor("a", "1"), Sensor("b", "2")}
    for sensor in expected:
        assert np.array_equal(got[sensor][0], expected[sensor][0])
        assert np.array_equal(got[sensor][1], expected[sensor][1])
    day_parts = [p for p in local_store.list("windows") if "/day/" in p]
    assert len(day_parts) == 6 and all(counts[p] == 1 for p in day_parts)


def test_day_parts_train_the_same_models_as_hour_files(tmp_path, monkeypatch):
    import numpy as np

    import fleetscore.data.ingest
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.registry import load_model
    from fleetscore.storage import LocalStore
    from tests.conftest import minute_readings, write_readings

    rows = []
    for hour in range(0, 48, 5):
        start = f"2024-03-{1 + hour // 24:02d} {hour % 24:02d}:00:00"
        rows += minute_readings("a", "1", start, 4, seed=hour, per_minute=2)
        rows += minute_readings("b", "1", start, 3, seed=hour + 1, per_minute=1)
    path = write_readings(tmp_path / "r.csv", sorted(rows))
    stores = {}
    for name, limit in (("days", 10**6), ("hours", 0)):
        monkeypatch.setattr(fleetscore.data.ingest, "SPARSE_HOUR_WINDOWS", limit)
        stores[name] = LocalStore(tmp_path / name)
        ingest_file(stores[name], path)
    assert not any("/day/" in p for p in stores["hours"].list("windows"))
    results = {name: train(store) for name, store in stores.items()}
    assert results["days"].hours == results["hours"].hours
    assert list_models(stores["days"]) == list_models(stores["hours"]) == \
        {Sensor("a", "1"), Sensor("b", "1")}
    grid = np.linspace(0, 20, 100).reshape(-1, 1)
    for sensor in list_models(stores["days"]):
        a, b = load_model(stores["days"], sensor), load_model(stores["hours"], sensor)
        assert np.array_equal(a.decision_function(grid), b.decision_function(grid))


def _shard_arrays(store) -> dict:
    import io

    import numpy as np

    from fleetscore.model.bank import INDEX_PATH

    out = {}
    for shard in json.loads(store.get(INDEX_PATH))["shards"]:
        with np.load(io.BytesIO(store.get(shard["path"])), allow_pickle=False) as z:
            out[shard["path"]] = {name: z[name] for name in z.files}
    return out


def _counting_loads(monkeypatch) -> list[str]:
    from fleetscore.model import bank

    loaded: list[str] = []
    real = bank.loads_model

    def counting(data, name):
        loaded.append(name)
        return real(data, name)

    monkeypatch.setattr(bank, "loads_model", counting)
    return loaded


def test_the_rebuild_after_training_takes_the_workers_verdicts(local_store, fleet_csv, tmp_path,
                                                                monkeypatch):
    """IsolationForests compiled where they were fitted: the rebuild loads no model file
    back, takes each verdict once, and builds the same shards as compiling the files."""
    import shutil

    import numpy as np

    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.bank import FRESH_FOLDER, rebuild_bank
    from fleetscore.storage import LocalStore

    ingest_file(local_store, fleet_csv)
    train(local_store, until=Hour.parse("2024-03-01T00"), workers=2)  # the default: iforest
    assert len(list(local_store.list(FRESH_FOLDER))) == 3
    cold = LocalStore(shutil.copytree(local_store.root, tmp_path / "cold"))
    for path in list(cold.list(FRESH_FOLDER)):
        cold.delete(path)
    loaded = _counting_loads(monkeypatch)
    stats = rebuild_bank(local_store)
    assert (stats.compiled, loaded) == (3, [])
    assert list(local_store.list(FRESH_FOLDER)) == []  # each taken once
    rebuild_bank(cold)
    assert len(loaded) == 3  # without them, every file is loaded back
    fast, slow = _shard_arrays(local_store), _shard_arrays(cold)
    assert fast.keys() == slow.keys()
    for path in fast:
        assert fast[path].keys() == slow[path].keys()
        for name in fast[path]:
            assert np.array_equal(fast[path][name], slow[path][name]), (path, name)


def test_a_fresh_verdict_of_other_bytes_or_features_is_not_taken(local_store, fleet_csv,
                                                                monkeypatch):
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.bank import FRESH_FOLDER, Verdict, rebuild_bank, save_fresh

    ingest_file(local_store, fleet_csv)
    train(local_store, until=Hour.parse("2024-03-01T00"))
    one, two = sorted(list_models(local_store))[:2]
    # A verdict that would leave the model to scikit-learn, kept for other bytes (a model
    # fitted since) and for the right bytes but other features.
    save_fresh(local_store, one, "0" * 64, (), Verdict(None, "made up"))
    save_fresh(local_store, two, read_manifest(local_store, two).sha256, ("diff",),
               Verdict(None, "made up"))
    loaded = _counting_loads(monkeypatch)
    stats = rebuild_bank(local_store)
    assert stats.compiled == 3 and "made up" not in dict(stats.left)
    assert sorted(loaded) == [f"sensor {one}", f"sensor {two}"]
    assert len(list(local_store.list(FRESH_FOLDER))) == 2  # not taken: kept until refitted


def test_challengers_are_not_trained_for_sensors_without_a_champion(local_store, fleet_csv):
    """A sensor whose data arrived after the last training has no champion: a challenger of
    its would stop compare, promote and refit (nothing to compare it with)."""
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.compare import compare, with_challengers
    from fleetscore.model.training import NO_CHAMPION

    ingest_file(local_store, fleet_csv)
    until = Hour.parse("2024-03-01T00")
    newcomer = Sensor("dev_a", "t.x")
    train(local_store, estimator="ocsvm", until=until,
          sensors={Sensor("1", "1"), Sensor("1", "2")})
    result = train(local_store, estimator="ocsvm", until=until, role="challenger")
    assert sorted(f"{m.device}/{m.tag}" for m in result.trained) == ["1/1", "1/2"]
    assert result.skipped == ((str(newcomer), NO_CHAMPION),)
    assert newcomer not in list_models(local_store)
    rows = compare(local_store, with_challengers(local_store), [until])
    assert [r.sensor for r in rows] == ["1/1", "1/2"]


def test_a_damaged_fresh_verdict_is_passed_over(local_store, fleet_csv, monkeypatch):
    """A fresh verdict that is garbage, cut short or gone: the rebuild loads the model file
    and compiles it, as without one."""
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.bank import fresh_path, rebuild_bank

    ingest_file(local_store, fleet_csv)
    train(local_store, until=Hour.parse("2024-03-01T00"))
    one, two, three = sorted(list_models(local_store))
    local_store.put(fresh_path(one), b"garbage")
    local_store.put(fresh_path(two), local_store.get(fresh_path(two))[:100])
    local_store.delete(fresh_path(three))
    loaded = _counting_loads(monkeypatch)
    assert rebuild_bank(local_store).compiled == 3
    assert sorted(loaded) == [f"sensor {s}" for s in (one, two, three)]
