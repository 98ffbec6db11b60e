"""The model bank and the vectorized scoring path: labels identical to scikit-learn's."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.predictions import decode
from fleetscore.model.bank import (
    INDEX_PATH,
    Bank,
    compile_model,
    decisions_with_magnitude,
    encode_shard,
    libsvm_decisions,
    load_bank,
    near_boundary,
    rebuild_bank,
)
from fleetscore.model.registry import model_path, save_model
from fleetscore.scoring.score import score_unit

H1 = Hour.parse("2024-03-01T01")
SENSORS = [Sensor("1", "1"), Sensor("1", "2"), Sensor("dev_a", "t.x")]


def _written(store, result):
    """The predictions a unit wrote, read from the file its result names."""
    return decode(store.get(result.predictions), result.predictions).sort_by(
        [("Device", "ascending"), ("Tag", "ascending"), ("TS", "ascending")])


def _random_models(n: int, seed: int):
    rng = np.random.default_rng(seed)
    kernels = ["rbf", "rbf", "rbf", "linear", "poly", "sigmoid"]
    models, data = [], []
    for i in range(n):
        kernel = kernels[i % len(kernels)]
        level, spread = rng.uniform(-50, 150), rng.uniform(0.1, 20)
        train = rng.normal(level, spread, (int(rng.integers(20, 200)), 1))
        svm = OneClassSVM(kernel=kernel, nu=float(rng.uniform(0.01, 0.5)),
                          gamma=float(rng.choice([0.01, 0.1, 1.0, 5.0])), degree=int(rng.integers(2, 4)),
                          coef0=float(rng.uniform(-1, 1)))
        model = Pipeline([("scaler", StandardScaler()), ("ocsvm", svm)]) if i % 5 else svm
        models.append(model.fit(train))
        data.append(rng.normal(level, spread * 2, 60))
    return models, data


def _boundary_points(model, lo, hi, count=4):
    """Points where the decision function crosses 0, found by bisection."""
    xs = np.linspace(lo, hi, 400)
    dec = model.decision_function(xs.reshape(-1, 1))
    roots = []
    for i in np.flatnonzero(np.sign(dec[:-1]) != np.sign(dec[1:]))[:count]:
        a, b = xs[i], xs[i + 1]
        for _ in range(80):
            m = (a + b) / 2
            if np.sign(model.decision_function([[m]])[0]) == np.sign(model.decision_function([[a]])[0]):
                a = m
            else:
                b = m
        roots += [a, b, (a + b) / 2]
    return np.array(roots)


def test_bank_labels_equal_scikit_learn_on_thousands_of_random_models():
    models, data = _random_models(2000, seed=7)
    compiled = [compile_model(m) for m in models]
    assert all(c is not None for c in compiled)
    settled = 0
    for model, values, (dec, mag) in zip(models, data, decisions_with_magnitude(compiled, data),
                                         strict=True):
        expected = model.decision_function(values.reshape(-1, 1))
        assert np.allclose(dec, expected, rtol=1e-9, atol=1e-9 * mag.max())
        labels = np.where(dec > 0, 1, -1)
        edge = near_boundary(dec, mag)
        if (model.steps[-1][1] if hasattr(model, "steps") else model).kernel == "rbf":
            settled += int(edge.sum())
        assert (labels[~edge] == model.predict(values.reshape(-1, 1))[~edge]).all()
    # For the default kernel the slow path stays rare (saturated sigmoid or degenerate linear
    # models put whole series exactly on the boundary, and there scikit-learn decides).
    assert settled < 0.001 * sum(len(v) for v in data)


def test_bank_scoring_matches_scikit_learn_at_the_boundary(local_store, tmp_path):
    """Points placed on the decision boundary: the unit's labels are scikit-learn's own."""
    from fleetscore.data.ingest import ingest_file
    from tests.conftest import write_readings

    models, _ = _random_models(60, seed=11)
    rows, expected = [], {}
    for i, model in enumerate(models):
        sensor = Sensor(f"d{i:03d}", "t")
        save_model(local_store, sensor, model, source="test")
        svs = compile_model(model)
        lo = svs.mean + svs.scale * (svs.support.min() - 3)
        hi = svs.mean + svs.scale * (svs.support.max() + 3)
        points = _boundary_points(model, lo, hi)[:50]
        points = np.concatenate([points, np.linspace(lo, hi, 60 - len(points))])
        for minute, value in enumerate(points, 1):
            rows.append((f"2024-03-01 01:{minute - 1:02d}:30.000", sensor.device, sensor.tag,
                         repr(float(value))))
        expected[sensor] = (model, points)
    ingest_file(local_store, write_readings(tmp_path / "edge.csv", rows))
    rebuild_bank(local_store)
    assert len(load_bank(local_store, expected)) == 60
    result = score_unit(local_store, H1, expected, unit_id="edge")
    assert result.scored == 60 and not result.failures
    preds = _written(local_store, result)
    for sensor, (model, _points) in expected.items():
        mask = (np.array(preds["Device"].to_pylist()) == sensor.device)
        got = np.array(preds["Prediction"].to_pylist())[mask]
        vals = np.array(preds["Val"].to_pylist())[mask]
        assert (got == (model.predict(vals.reshape(-1, 1)) == -1)).all(), sensor


def test_libsvm_decisions_are_scikit_learns_bit_for_bit_and_settle_the_boundary():
    """The boundary's settler follows libsvm's order of operations: its decisions are
    scikit-learn's exactly, on random points and on points found by bisection to lie on the
    boundary, and a point it calls settled always has scikit-learn's label."""
    models, data = _random_models(120, seed=23)
    checked = near_total = 0
    for model, values in zip(models, data, strict=True):
        compiled = compile_model(model)
        if compiled.kernel != 0:  # only the RBF is replicated; others stay unsettled
            _, settled = libsvm_decisions(Bank.of([(Sensor("d", "t"), "", compiled)]), 0, values)
            assert not settled.any()
            continue
        bank = Bank.of([(Sensor("d", "t"), "", compiled)])
        lo = compiled.mean + compiled.scale * (compiled.support.min() - 3)
        hi = compiled.mean + compiled.scale * (compiled.support.max() + 3)
        roots = _boundary_points(model, lo, hi)
        # Around each root, points as near as the fast path cannot vouch for (and nearer).
        edge = np.concatenate([roots * (1 + f) for f in np.geomspace(1e-15, 1e-8, 8)]
                              + [roots * (1 - f) for f in np.geomspace(1e-15, 1e-8, 8)]
                              + [roots])
        points = np.concatenate([values, edge])
        decision, settled = libsvm_decisions(bank, 0, points)
        expected = model.decision_function(points.reshape(-1, 1))
        assert (decision[settled] == expected[settled]).all()
        labels = model.predict(points.reshape(-1, 1))
        assert (np.where(decision > 0, 1, -1)[settled] == labels[settled]).all()
        assert settled[: len(values)].all()
        checked += len(points)
        dec, mag = decisions_with_magnitude([compiled], [edge])[0]
        near = near_boundary(dec, mag)
        # What the fast path leaves is settled here unless it is within libsvm's own rounding
        # of 0 (a band of about 1e-14 of the terms' size, against the fast path's 1e-9).
        clear = np.abs(expected[len(values):]) > 1e-12 * np.maximum(mag, 1.0)
        assert settled[len(values):][near & clear].all()
        near_total += int((near & clear).sum())
    assert checked > 3000 and near_total > 1000


def test_a_unit_settles_boundary_points_without_importing_scikit_learn(trained_store, tmp_path):
    """A point on the boundary of a banked model is settled in the scoring process without
    scikit-learn or skops (whose imports would cost a process more than its whole unit)."""
    import subprocess
    import sys

    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.registry import load_model
    from tests.conftest import write_readings

    sensor = SENSORS[0]
    model = load_model(trained_store, sensor)
    compiled = compile_model(model)
    lo = compiled.mean + compiled.scale * (compiled.support.min() - 3)
    hi = compiled.mean + compiled.scale * (compiled.support.max() + 3)
    roots = _boundary_points(model, lo, hi, count=2)
    edge = [float(v) for v in np.concatenate([roots * (1 + 1e-11), roots * (1 - 1e-11)])]
    bank = Bank.of([(sensor, "", compiled)])
    assert libsvm_decisions(bank, 0, np.array(edge))[1].all()
    assert near_boundary(*decisions_with_magnitude([compiled], [np.array(edge)])[0]).all()
    rows = [(f"2024-03-05 02:{m:02d}:30.000", sensor.device, sensor.tag, repr(v))
            for m, v in enumerate(edge)]
    ingest_file(trained_store, write_readings(tmp_path / "edge.csv", rows))
    rebuild_bank(trained_store)
    script = (
        "import sys\n"
        "from fleetscore.core.hours import Hour\n"
        "from fleetscore.scoring.score import score_unit\n"
        "from fleetscore.core.sensors import Sensor\n"
        "from fleetscore.storage import LocalStore\n"
        f"r = score_unit(LocalStore({str(trained_store.root)!r}), Hour.parse('2024-03-05T02'),"
        f" [Sensor({sensor.device!r}, {sensor.tag!r})], unit_id='edge')\n"
        "assert r.scored == 1 and not r.failures, r\n"
        "print(r.predictions)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'skops')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    path, modules = out.stdout.splitlines()
    assert modules == "[]", modules
    preds = decode(trained_store.get(path), path)
    got = np.array(preds["Prediction"].to_pylist())
    vals = np.array(preds["Val"].to_pylist())
    assert (got == (model.predict(vals.reshape(-1, 1)) == -1)).all()


def test_bank_and_plain_paths_write_the_same_predictions(trained_store):
    plain = score_unit(trained_store, H1, SENSORS, unit_id="u", use_bank=False)
    plain_rows = _written(trained_store, plain)
    rebuild_bank(trained_store)
    fast = score_unit(trained_store, H1, SENSORS, unit_id="u")
    fast_rows = _written(trained_store, fast)
    assert (plain.scored, plain.anomalies) == (fast.scored, fast.anomalies)
    for column in ("TS", "Device", "Tag", "Val", "Prediction"):
        assert plain_rows[column].equals(fast_rows[column])
    assert np.allclose(plain_rows["Score"].to_numpy(), fast_rows["Score"].to_numpy(), atol=1e-9)


def test_other_estimators_fall_back_to_scikit_learn_in_the_same_unit(trained_store):
    # An IsolationForest is compiled too (tests/model/test_forest.py); an EllipticEnvelope is not.
    other = EllipticEnvelope(random_state=0).fit(np.random.default_rng(0).normal(10, 1, (200, 1)))
    save_model(trained_store, Sensor("1", "2"), other, source="test")
    stats = rebuild_bank(trained_store)
    assert (stats.sensors, stats.compiled) == (3, 2)
    result = score_unit(trained_store, H1, SENSORS, unit_id="u")
    assert result.scored == 3 and not result.failures
    preds = _written(trained_store, result)
    mine = preds.filter(np.array(preds["Tag"].to_pylist()) == "2")
    expected = (other.predict(mine["Val"].to_numpy().reshape(-1, 1)) == -1).astype(int)
    assert mine["Prediction"].to_pylist() == expected.tolist()


def test_any_model_write_invalidates_the_bank_and_rebuild_is_incremental(trained_store):
    first = rebuild_bank(trained_store, shard_sensors=2)
    assert (first.shards_written, first.shards_kept) == (2, 0)
    assert rebuild_bank(trained_store, shard_sensors=2).shards_kept == 2
    from fleetscore.model.training import train

    train(trained_store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"), nu=0.2,
          sensors={Sensor("dev_a", "t.x")})
    assert not trained_store.exists(INDEX_PATH)  # a model changed: no stale bank is used
    again = rebuild_bank(trained_store, shard_sensors=2)
    assert (again.shards_written, again.shards_kept) == (1, 1)
    assert len(list(trained_store.list("bank"))) == 5  # index, models and versions lists, two live shards


def test_bank_shards_are_plain_arrays_and_damaged_ones_are_skipped(trained_store):
    rebuild_bank(trained_store)
    [shard] = [p for p in trained_store.list("bank") if p.endswith(".npz")]
    data = trained_store.get(shard)
    assert len(Bank.decode(data)) == 3  # loads with allow_pickle=False
    trained_store.put(shard, data[:50])
    assert load_bank(trained_store, SENSORS) == {}
    result = score_unit(trained_store, H1, SENSORS, unit_id="u")
    assert result.scored == 3  # the plain path took over


@pytest.mark.reliability("R12")
def test_a_model_tampered_after_compilation_is_never_loaded_and_verify_reports_it(trained_store):
    """The bank holds what was compiled from verified bytes: a model file changed behind
    fleetscore's back is never unpickled or trusted, and `verify` names it."""
    from fleetscore.runs.verify import verify

    rebuild_bank(trained_store)
    trained_store.put(model_path(Sensor("1", "2")), b"tampered")
    assert score_unit(trained_store, H1, SENSORS, unit_id="u").scored == 3
    _, problems = verify(trained_store)
    # (score_unit's direct use writes predictions no run manifest lists: verify names those too)
    assert [p.path for p in problems if p.path.startswith("models/")] == [
        model_path(Sensor("1", "2"))]
    # Without a bank (deleted, or never built) the plain path refuses the file.
    trained_store.delete(INDEX_PATH)
    result = score_unit(trained_store, H1, SENSORS, unit_id="u")
    assert [(f.sensor, f.kind) for f in result.failures] == [("1/2", "ModelError")]


@pytest.mark.parametrize("estimator", [
    StandardScaler(), Pipeline([("a", StandardScaler()), ("b", StandardScaler())]),
])
def test_compile_refuses_what_it_cannot_represent(estimator):
    assert compile_model(estimator.fit(np.ones((5, 1)))) is None


def test_empty_shard_roundtrip():
    assert len(Bank.decode(encode_shard([]))) == 0


def test_bank_and_plain_paths_agree_on_the_demo_fleet(tmp_path):
    from fleetscore.data.ingest import ingest_file
    from fleetscore.data.synthetic import make_fleet, write_readings_csv
    from fleetscore.model.registry import list_models
    from fleetscore.model.training import train
    from fleetscore.storage import LocalStore

    fleet = make_fleet(sensors=25, hours=3, seed=5)
    write_readings_csv(fleet.readings, tmp_path / "r.csv")
    store = LocalStore(tmp_path / "s")
    ingest_file(store, tmp_path / "r.csv")
    train(store, estimator="ocsvm", until=fleet.first, nu=0.01)
    sensors = sorted(list_models(store))
    labels = {}
    for use_bank in (False, True):
        if use_bank:
            assert rebuild_bank(store).compiled == len(sensors)
        for hour in (fleet.first + 1, fleet.first + 2):
            result = score_unit(store, hour, sensors, unit_id=f"u{use_bank}", use_bank=use_bank)
            labels[(use_bank, hour)] = _written(store, result).select(
                ["TS", "Device", "Tag", "Val", "Prediction"])
    for hour in (fleet.first + 1, fleet.first + 2):
        assert labels[(True, hour)].equals(labels[(False, hour)])


# --- exactness and staleness (issue 13) -----------------------------------------------------


def _store_points(store, sensor, values, hour=H1):
    """One hour of one-minute points for a sensor, written as a window part (as ingest does)."""
    from collections import Counter

    import pyarrow as pa

    from fleetscore.data.arrivals import record_arrivals
    from fleetscore.data.windows import PART_SCHEMA, encode_part, part_path

    ends = hour.start_ms + 60_000 * np.arange(1, len(values) + 1)
    table = pa.table([pa.array([sensor.device] * len(values)), pa.array([sensor.tag] * len(values)),
                      pa.array(ends, pa.timestamp("ms", tz="UTC")), pa.array(values, pa.float64()),
                      pa.array(np.ones(len(values), dtype=np.int64))], schema=PART_SCHEMA)
    source = f"{sensor.device}-{sensor.tag}"
    store.put(part_path(hour, source), encode_part(table))
    record_arrivals(store, hour, source, Counter({sensor: len(values)}))


def _unit_labels(store, sensors, unit_id="u"):
    """Prediction per sensor, in time order, read from the file the unit says it wrote."""
    result = score_unit(store, H1, sensors, unit_id=unit_id)
    assert not result.failures, result.failures
    table = decode(store.get(result.predictions), result.predictions)
    out = {}
    for sensor in sensors:
        mask = ((np.array(table["Device"].to_pylist()) == sensor.device)
                & (np.array(table["Tag"].to_pylist()) == sensor.tag))
        out[sensor] = np.array(table["Prediction"].to_pylist())[mask]
    return out


@pytest.mark.parametrize("scaler", [
    StandardScaler(with_mean=False), StandardScaler(with_std=False),
    StandardScaler(with_mean=False, with_std=False),
])
def test_scalers_that_skip_a_step_score_exactly_as_scikit_learn(local_store, scaler):
    """StandardScaler(with_mean=False) keeps mean_ but never subtracts it."""
    rng = np.random.default_rng(3)
    model = Pipeline([("scaler", scaler), ("ocsvm", OneClassSVM(gamma=0.5, nu=0.1))])
    model.fit(rng.normal(40, 2, (60, 1)))
    values = rng.normal(40, 4, 60)
    sensor = Sensor("d", "t")
    save_model(local_store, sensor, model, source="test")
    _store_points(local_store, sensor, values)
    rebuild_bank(local_store)
    got = _unit_labels(local_store, [sensor])[sensor]
    assert got.tolist() == (model.predict(values.reshape(-1, 1)) == -1).astype(int).tolist()


class SavesDuringRebuild:
    """A store that saves a new model for ``sensor`` the moment the rebuild writes a shard
    (after it compiled the old model, before it writes the index)."""

    def __init__(self, inner, sensor, model):
        self.inner, self.sensor, self.model, self.saved = inner, sensor, model, False
        self.url = inner.url

    def put(self, path, data, **kw):
        if path.startswith("bank/shard-") and not self.saved:
            self.saved = True
            save_model(self.inner, self.sensor, self.model, source="concurrent")
        return self.inner.put(path, data, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _index_entries(store):
    """sha256 per sensor of every entry the bank's index points at."""
    import json

    out = {}
    for shard in json.loads(store.get(INDEX_PATH))["shards"]:
        bank = Bank.decode(store.get(shard["path"]))
        out.update({Sensor.parse(key): str(sha) for key, sha in
                    zip(bank.ids.to_pylist(), bank.sha.tolist(), strict=True)})
    return out


@pytest.mark.reliability("R40")
def test_a_model_saved_while_the_bank_is_rebuilt_never_scores_with_the_old_arrays(local_store):
    from fleetscore.model.registry import read_manifest

    rng = np.random.default_rng(5)
    sensor = Sensor("d", "t")
    old = Pipeline([("scaler", StandardScaler()), ("ocsvm", OneClassSVM(gamma=0.1, nu=0.1))])
    old.fit(rng.normal(10, 1, (60, 1)))
    new = Pipeline([("scaler", StandardScaler()), ("ocsvm", OneClassSVM(gamma=0.1, nu=0.1))])
    new.fit(rng.normal(500, 1, (60, 1)))  # flags every point near 10
    values = rng.normal(10, 1, 60)
    save_model(local_store, sensor, old, source="test")
    _store_points(local_store, sensor, values)
    racing = SavesDuringRebuild(local_store, sensor, new)
    rebuild_bank(racing)
    assert racing.saved
    expected = (new.predict(values.reshape(-1, 1)) == -1).astype(int)
    assert expected.all()
    assert _unit_labels(local_store, [sensor])[sensor].tolist() == expected.tolist()
    # No stale index is left behind either: what it lists is what the manifests say.
    if local_store.exists(INDEX_PATH):
        current = read_manifest(local_store, sensor).sha256
        assert all(sha == current for sha in _index_entries(local_store).values())


@pytest.mark.reliability("R40")
def test_an_unsealed_index_that_outlived_a_model_change_is_checked_entry_by_entry(trained_store):
    """An index no rebuild sealed (an older fleetscore's, or one caught mid-rebuild) vouches
    for nothing: every entry is checked against its manifest."""
    import json

    rebuild_bank(trained_store)
    index = json.loads(trained_store.get(INDEX_PATH))
    shards = {p: trained_store.get(p) for p in trained_store.list("bank") if p.endswith(".npz")}
    forest = IsolationForest(random_state=0).fit(np.random.default_rng(0).normal(10, 1, (200, 1)))
    save_model(trained_store, Sensor("1", "2"), forest, source="test")
    for legacy in ({"shards": index["shards"]}, {**index, "sealed": False}):
        trained_store.put(INDEX_PATH, json.dumps(legacy).encode())
        for path, data in shards.items():
            trained_store.put(path, data)
        assert set(load_bank(trained_store, SENSORS)) == {Sensor("1", "1"), Sensor("dev_a", "t.x")}


class CountsManifestReads:
    def __init__(self, inner):
        self.inner, self.url, self.reads = inner, inner.url, 0

    def get(self, path):
        if path.startswith("models/") and path.endswith(".json"):
            self.reads += 1
        return self.inner.get(path)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_sealed_index_vouches_for_its_entries_without_reading_manifests(trained_store):
    rebuild_bank(trained_store)
    counting = CountsManifestReads(trained_store)
    assert len(load_bank(counting, SENSORS)) == 3
    assert counting.reads == 0


@pytest.mark.reliability("R40")
@pytest.mark.parametrize("rebuilt", ["during the save", "before the save"])
def test_a_save_that_died_after_its_manifest_is_checked_until_its_marker_expires(local_store,
                                                                                 rebuilt):
    """A save wrote its model and manifest and died before its last index deletion, with a
    whole rebuild sealed before it began or while it ran: no index may vouch for the old
    arrays. A rebuild more than SAVE_GRACE later drops the marker."""
    from datetime import UTC, datetime

    from fleetscore.model.bank import SAVE_GRACE, begin_save, saving
    from fleetscore.model.registry import ModelManifest, dumps_model, manifest_path, model_path

    rng = np.random.default_rng(7)
    sensor, other = Sensor("d", "t"), Sensor("d", "u")
    old = OneClassSVM(gamma=0.1).fit(rng.normal(10, 1, (60, 1)))
    new = OneClassSVM(gamma=0.1).fit(rng.normal(500, 1, (60, 1)))
    for s in (sensor, other):
        save_model(local_store, s, old, source="test")
        _store_points(local_store, s, rng.normal(10, 1, 60))
    begun = datetime.now(UTC)
    if rebuilt == "before the save":
        rebuild_bank(local_store)
    begin_save(local_store, sensor, now=begun)
    if rebuilt == "during the save":
        rebuild_bank(local_store)
        assert set(load_bank(local_store, [sensor, other])) == {sensor, other}  # the old model
    data = dumps_model(new)
    manifest = ModelManifest.from_json(local_store.get(manifest_path(sensor)), "m")
    local_store.put(model_path(sensor), data)
    local_store.put(manifest_path(sensor), ModelManifest(**{
        **manifest.__dict__, "sha256": hashlib.sha256(data).hexdigest(), "version": 2}).to_json())
    # ... and the save died here: no index deletion, marker left.
    assert sensor not in load_bank(local_store, [sensor, other])
    labels = _unit_labels(local_store, [sensor, other])
    assert labels[sensor].tolist() == [1] * 60  # the new model flags every point near 10
    rebuild_bank(local_store, now=begun + SAVE_GRACE / 2)
    assert saving(local_store) == {"d/t"}
    rebuild_bank(local_store, now=begun + SAVE_GRACE * 2)
    assert saving(local_store) == set()
    assert set(load_bank(local_store, [sensor, other])) == {sensor, other}
    assert _index_entries(local_store)[sensor] == hashlib.sha256(data).hexdigest()


class SavesBeforeSeal:
    """A store for rebuild_bank that runs a whole save of ``sensor`` when the rebuild lists
    the save markers: after it checked the manifests, before it seals."""

    def __init__(self, inner, sensor, model):
        self.inner, self.sensor, self.model, self.url, self.saved = inner, sensor, model, inner.url, 0

    def list(self, prefix=""):
        from fleetscore.model.bank import SAVING_FOLDER

        if prefix == SAVING_FOLDER and self.inner.exists(INDEX_PATH) and not self.saved:
            self.saved += 1
            save_model(self.inner, self.sensor, self.model, source="concurrent")
        return self.inner.list(prefix)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.reliability("R40")
def test_a_save_between_the_check_and_the_seal_makes_the_seal_fail(local_store):
    """The seal is a compare-and-swap on the index the rebuild wrote: the save's deletion
    makes it fail, and the next round compiles the new model."""
    from fleetscore.model.registry import read_manifest

    rng = np.random.default_rng(8)
    sensor = Sensor("d", "t")
    old = OneClassSVM(gamma=0.1).fit(rng.normal(10, 1, (60, 1)))
    new = OneClassSVM(gamma=0.1).fit(rng.normal(500, 1, (60, 1)))
    save_model(local_store, sensor, old, source="test")
    racing = SavesBeforeSeal(local_store, sensor, new)
    rebuild_bank(racing)
    assert racing.saved
    current = read_manifest(local_store, sensor).sha256
    assert not local_store.exists(INDEX_PATH) or _index_entries(local_store) == {sensor: current}


@pytest.mark.reliability("R40")
def test_the_sealed_bank_lists_the_sensors_with_a_model_exactly(local_store):
    """Planners read the sealed bank's list of sensors with a model instead of listing
    models/: a model of a new sensor saved after the seal, during the rebuild, or by a save
    that died mid-way is in it all the same."""
    from datetime import UTC, datetime

    from fleetscore.model.bank import begin_save, sensors_with_models
    from fleetscore.model.registry import (
        ModelManifest,
        dumps_model,
        list_models,
        manifest_path,
        model_path,
    )

    rng = np.random.default_rng(9)
    model = OneClassSVM(gamma=0.1).fit(rng.normal(10, 1, (60, 1)))
    save_model(local_store, Sensor("d", "a"), model, source="test")
    rebuild_bank(local_store)
    counting = CountsListings(local_store)
    assert sensors_with_models(counting) == {Sensor("d", "a")} and not counting.listed
    save_model(local_store, Sensor("d", "b"), model, source="test")  # after the seal
    assert sensors_with_models(local_store) == list_models(local_store)
    racing = SavesDuringRebuild(local_store, Sensor("d", "c"), model)  # after the rebuild listed
    rebuild_bank(racing)
    assert racing.saved and local_store.exists(INDEX_PATH)
    assert sensors_with_models(local_store) == list_models(local_store) == {
        Sensor("d", "a"), Sensor("d", "b"), Sensor("d", "c")}
    begin_save(local_store, Sensor("d", "e"), now=datetime.now(UTC))  # a save that will die
    rebuild_bank(local_store)
    data = dumps_model(model)
    local_store.put(model_path(Sensor("d", "e")), data)
    local_store.put(manifest_path(Sensor("d", "e")), ModelManifest(
        "d", "e", 1, hashlib.sha256(data).hexdigest(), "skops", "OneClassSVM", "x", None, "t",
        "test").to_json())
    assert local_store.exists(INDEX_PATH)
    assert Sensor("d", "e") in sensors_with_models(local_store)


class CountsListings:
    def __init__(self, inner):
        self.inner, self.url, self.listed = inner, inner.url, []

    def list(self, prefix=""):
        self.listed.append(prefix)
        return self.inner.list(prefix)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class PausesBeforeManifest:
    """A store for save_model that stops just before the manifest is written (the model file
    and anything save_model does before it are done) until released."""

    def __init__(self, inner, manifest):
        import threading

        self.inner, self.manifest, self.url = inner, manifest, inner.url
        self.reached, self.release = threading.Event(), threading.Event()

    def put(self, path, data, **kw):
        if path == self.manifest:
            self.reached.set()
            assert self.release.wait(30)
        return self.inner.put(path, data, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class StartsSaveAtFirstShard:
    """A store for rebuild_bank that starts ``save`` once it has compiled (at its first shard
    write) and goes on only when the save is paused before its manifest."""

    def __init__(self, inner, save, paused):
        self.inner, self.save, self.paused, self.url, self.thread = inner, save, paused, inner.url, None

    def put(self, path, data, **kw):
        if path.startswith("bank/shard-") and self.thread is None:
            import threading

            self.thread = threading.Thread(target=self.save)
            self.thread.start()
            assert self.paused.wait(30)
        return self.inner.put(path, data, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.reliability("R40")
def test_a_save_straddling_the_index_write_leaves_no_stale_index(local_store):
    """The save begins before the rebuild writes its index and writes its manifest after the
    rebuild checked the manifests: the save itself must drop that index."""
    from fleetscore.model.registry import manifest_path, read_manifest

    rng = np.random.default_rng(6)
    sensor = Sensor("d", "t")
    old = OneClassSVM(gamma=0.1).fit(rng.normal(10, 1, (60, 1)))
    new = OneClassSVM(gamma=0.1).fit(rng.normal(500, 1, (60, 1)))
    save_model(local_store, sensor, old, source="test")
    saving = PausesBeforeManifest(local_store, manifest_path(sensor))
    rebuilding = StartsSaveAtFirstShard(
        local_store, lambda: save_model(saving, sensor, new, source="concurrent"), saving.reached)
    rebuild_bank(rebuilding)
    saving.release.set()
    rebuilding.thread.join(30)
    current = read_manifest(local_store, sensor).sha256
    assert not local_store.exists(INDEX_PATH) or set(_index_entries(local_store).values()) == {current}


@pytest.mark.reliability("R40")
def test_a_save_during_the_seals_compare_and_swap_is_not_undone(local_store, monkeypatch):
    """A save begins after the seal listed the markers, and its deletion of the index (from
    another thread) arrives between the seal's version check and its rename: on a directory
    store it must wait and then delete the sealed index, not be overwritten by it."""
    import threading

    import fleetscore.model.bank as bank_module
    from fleetscore.model.bank import SAVING_FOLDER, _rebuild_once, invalidate, seal
    from fleetscore.model.registry import ModelManifest, dumps_model, manifest_path, read_manifest
    from fleetscore.storage.local import LocalStore

    rng = np.random.default_rng(10)
    sensor = Sensor("d", "t")
    old = OneClassSVM(gamma=0.5, nu=0.2).fit(rng.normal(0, 1, (40, 1)))
    new = OneClassSVM(gamma=0.5, nu=0.2).fit(rng.normal(50, 1, (40, 1)))
    save_model(local_store, sensor, old, source="test")
    rebuild_bank(local_store)
    _, body, built = _rebuild_once(local_store, 1024)
    listed, current, threads = bank_module.saving, LocalStore._current, []

    def listing(store):  # the save's marker lands just after the seal listed them
        found = listed(store)
        local_store.put(f"{SAVING_FOLDER}/d/t/late.json", b'{"started": "now"}')
        return found

    def racing(self, path):
        version = current(self, path)
        if path == INDEX_PATH and not threads:  # inside the seal's compare-and-swap
            threads.append(threading.Thread(target=invalidate, args=(local_store,)))
            threads[0].start()
            threads[0].join(0.3)  # a plain unlink lands now; one that waits for the lock cannot
        return version

    monkeypatch.setattr(bank_module, "saving", listing)
    monkeypatch.setattr(LocalStore, "_current", racing)
    seal(local_store, body, built)
    monkeypatch.setattr(LocalStore, "_current", current)
    threads[0].join(10)
    data = dumps_model(new)  # the save goes on: its model and manifest, then it dies
    local_store.put(model_path(sensor), data)
    local_store.put(manifest_path(sensor), ModelManifest(**{
        **read_manifest(local_store, sensor).__dict__,
        "sha256": hashlib.sha256(data).hexdigest()}).to_json())
    assert sensor not in load_bank(local_store, [sensor])


def test_decisions_of_mixed_runs_stay_in_bounded_blocks():
    """Long runs with few support vectors next to a short run with many: blocks are padded to
    both maxima, so they must be sized by both, not by the largest run's product."""
    import tracemalloc

    from fleetscore.model.bank import Bank, Compiled, decide

    rng = np.random.default_rng(11)
    models = [Compiled(0, 0.0, 1.0, 0.5, 0.0, 3.0, -0.1, rng.normal(0, 1, n), np.full(n, 0.01))
              for n in [5] * 13 + [5000]]
    lengths = np.array([3600] * 13 + [1])
    values = rng.normal(0, 1, lengths.sum())
    bank = Bank.of((Sensor("d", f"t{i}"), "", m) for i, m in enumerate(models))
    stops = np.cumsum(lengths)
    tracemalloc.start()
    dec, _ = decide(bank, np.arange(len(models)), stops - lengths, stops, values)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 << 20, peak  # one padded block of all of them: about 2 GB
    expected = decisions_with_magnitude(models[-1:], [values[-1:]])[0][0]
    assert np.allclose(dec[-1:], expected) and np.isfinite(dec).all()


def test_a_model_of_no_support_vectors_decides_its_intercept():
    from fleetscore.model.bank import Bank, Compiled, decide

    empty = Compiled(0, 0.0, 1.0, 0.5, 0.0, 3.0, -0.25, np.zeros(0), np.zeros(0))
    bank = Bank.of([(Sensor("d", "t"), "", empty)])
    dec, mag = decide(bank, np.array([0]), np.array([0]), np.array([3]), np.array([0., 1., 2.]))
    assert dec.tolist() == [-0.25] * 3 and mag.tolist() == [0.25] * 3
