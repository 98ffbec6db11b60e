"""IsolationForests in the bank: compiled decisions and labels equal scikit-learn's, alone, in a
unit beside OneClassSVMs and models the bank does not compile, and from `train --estimator
iforest` through `fleetscore run`."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.predictions import decode
from fleetscore.model.bank import Bank, _load_shard, compile_any, encode_shard, load_bank, rebuild_bank
from fleetscore.model.estimators import make
from fleetscore.model.forest import (
    CompiledForest,
    Forests,
    _compact,
    compile_forest,
    decide_forests,
    forest_decisions,
    forest_near_boundary,
    forest_settled,
    step_function,
)
from fleetscore.model.registry import save_model
from fleetscore.scoring.score import Group, score_many
from fleetscore.storage import LocalStore
from tests.model.test_bank_variants import HOUR, _unit_labels, _write_points


def _labels(forest, compiled, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What scoring does: compiled labels, scikit-learn's own near 0."""
    decision = forest_decisions(compiled, values)
    labels = (decision < 0).astype(int)
    edge = forest_near_boundary(decision)
    if edge.any():
        labels[edge] = forest.predict(values[edge].reshape(-1, 1)) == -1
    return labels, decision


def _check(forest, values: np.ndarray) -> None:
    compiled, reason = compile_forest(forest)
    assert compiled is not None, reason
    assert compiled.cuts.dtype == np.float32
    # At every cut and every tree's own threshold (which the compiled cuts round down to
    # float32, or drop), the float32 values on either side and the value itself.
    thresholds = np.concatenate([e.tree_.threshold[e.tree_.children_left != -1]
                                 for e in forest.estimators_])
    with np.errstate(over="ignore"):
        near = np.concatenate([compiled.cuts, thresholds.astype(np.float32)])
    near = near[np.isfinite(near)]
    probes = np.concatenate([values, thresholds, near, np.nextafter(near, np.float32(np.inf)),
                             np.nextafter(near, np.float32(-np.inf))]).astype(np.float64)
    labels, decision = _labels(forest, compiled, probes)
    expected = forest.decision_function(probes.reshape(-1, 1))
    sure = np.isfinite(decision)
    assert (decision[sure] == expected[sure]).all()  # the same sums, bit for bit
    assert (labels == (forest.predict(probes.reshape(-1, 1)) == -1)).all()
    # What scoring does: near 0, scikit-learn's last steps from the bank where it kept them.
    exact, left = forest_settled(compiled, probes)
    assert (exact[~left] == expected[~left]).all()
    assert ((exact < 0) == (forest.predict(probes.reshape(-1, 1)) == -1))[~left].all()


datasets = st.one_of(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=300),
    st.lists(st.integers(-3, 3).map(float), min_size=2, max_size=300),  # few distinct values
    st.builds(lambda n, k, v: [0.0] * n + [v] * k, st.integers(2, 200), st.integers(0, 10),
              st.floats(-50, 50)),  # mostly zero
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets, st.integers(1, 25), st.sampled_from(["auto", 0.01, 0.1, 0.3]),
       st.sampled_from(["auto", 1.0, 16]), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_compiled_forest_labels_and_decisions_equal_scikit_learn(train, trees, contamination,
                                                                 max_samples, seed, probe_seed):
    train = np.asarray(train, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_samples above the data: scikit-learn says so
        forest = IsolationForest(n_estimators=trees, contamination=contamination,
                                 max_samples=max_samples, random_state=seed).fit(
            train.reshape(-1, 1))
    rng = np.random.default_rng(probe_seed)
    spread = max(1.0, float(np.ptp(train)))
    _check(forest, np.concatenate([train, rng.uniform(train.min() - spread,
                                                      train.max() + spread, 200)]))


def test_boundary_cases_constant_and_mostly_zero_training_data():
    rng = np.random.default_rng(3)
    for train in (np.zeros(100), np.full(50, 7.25), np.r_[np.zeros(500), rng.normal(4, 1, 20)],
                  np.r_[np.zeros(300), [1e-300, -1e-300, 3.4e38]]):
        forest = make("iforest").fit(train.reshape(-1, 1))
        _check(forest, np.r_[train, rng.normal(0, 5, 100), [0.0, -0.0, 1e39, -1e39]])


def test_constant_forest_settles_every_point_as_scikit_learn_does():
    """Trained on one value, every point's decision is exactly 0: scikit-learn calls them all
    inliers (only a decision below 0 is an outlier). The compiled decision alone is too near
    0 to trust; scikit-learn's last steps, kept in the bank, give its exact 0."""
    forest = make("iforest").fit(np.zeros((40, 1)))
    compiled, _ = compile_forest(forest)
    assert compiled is not None and len(compiled.cuts) == 0
    values = np.array([-5.0, 0.0, 5.0])
    assert forest_near_boundary(forest_decisions(compiled, values)).all()
    labels, _ = _labels(forest, compiled, values)
    assert labels.tolist() == [0, 0, 0]
    exact, left = forest_settled(compiled, values)
    assert not left.any() and exact.tolist() == forest.decision_function(
        values.reshape(-1, 1)).tolist() == [0.0, 0.0, 0.0]


def test_a_point_on_a_cut_takes_the_interval_the_cut_closes():
    """scikit-learn sends x <= threshold left: a point equal to a cut is in the interval below
    it. (Fitted thresholds are rarely float32 values, so fitted forests seldom show it.)"""
    compiled = CompiledForest(np.array([0.0, 1.0]), np.array([-1.0, 0.5, -0.25]))
    got = forest_decisions(compiled, np.array([-1.0, 0.0, 0.5, 1.0, 1.0 + 1e-12, 1.0 + 2**-23, 2.0]))
    assert got.tolist() == [-1.0, -1.0, 0.5, 0.5, 0.5, -0.25, -0.25]  # 1 + 1e-12 is 1 in float32


def test_cuts_round_down_to_float32_and_cuts_between_equal_decisions_go():
    """1 - 1e-12 and 1 - 1e-13 both round down to the float32 below 1 (no float32 lies
    between them, so the decision after the first is unreachable); 2.0 separates two equal
    decisions."""
    cuts = np.array([0.5, 1 - 1e-12, 1 - 1e-13, 2.0, 3.0])
    decisions = np.array([-0.5, -0.1, 0.7, 0.2, 0.2, -0.3])
    compacted = _compact(cuts, decisions)
    below_one = np.nextafter(np.float32(1), np.float32(0))
    assert compacted.cuts.dtype == np.float32
    assert compacted.cuts.tolist() == [0.5, float(below_one), 3.0]
    assert compacted.decisions.tolist() == [-0.5, -0.1, 0.2, -0.3]
    points = np.array([0.5, 0.75, float(below_one), 1.0, 2.0, 2.5, 3.0, 3.5])
    assert forest_decisions(compacted, points).tolist() == \
        forest_decisions(CompiledForest(cuts, decisions), points).tolist()


def test_compacted_forest_decides_as_the_full_step_function_of_a_format_3_bank():
    rng = np.random.default_rng(8)
    forest = make("iforest").fit(np.round(rng.normal(50, 10, (60, 1)), 3))
    compiled, _ = compile_forest(forest)
    cuts, decisions, _, _ = step_function(forest)
    assert len(compiled.cuts) < len(cuts)  # single-point leaves side by side: equal decisions
    near = cuts.astype(np.float32)
    points = np.concatenate([cuts, near, np.nextafter(near, np.float32(np.inf)),
                             np.nextafter(near, np.float32(-np.inf)), rng.normal(50, 30, 500)])
    assert np.array_equal(forest_decisions(compiled, points),
                          forest_decisions(CompiledForest(cuts, decisions), points))


def _zero_forest():
    """A forest trained where its two lowest training scores are equal, so offset_ is one of
    them and the points scoring it have a decision of exactly 0 (as some of bench_users' do)."""
    rng = np.random.default_rng(4)
    train = np.r_[np.round(rng.normal(50, 1, 58), 3), 40.0, 60.0]
    for seed in range(200):
        forest = make("iforest", random_state=seed).fit(train.reshape(-1, 1))
        compiled, _ = compile_forest(forest)
        if compiled is not None and (compiled.decisions == 0).any():
            return forest, compiled
    raise AssertionError("no seed gives a decision of exactly 0")


def test_points_near_0_are_settled_as_scikit_learn_decides_them_without_it():
    forest, compiled = _zero_forest()
    assert compiled.near is not None and len(compiled.near.interval)
    closing = np.append(compiled.cuts, np.nextafter(compiled.cuts[-1], np.float32(np.inf)))
    inside = closing[compiled.near.interval].astype(np.float64)
    values = np.r_[inside, np.random.default_rng(1).normal(50, 5, 200)]
    got, left = forest_settled(compiled, values)
    assert not left.any()  # every point decided here, none left for scikit-learn
    assert np.array_equal(got, forest.decision_function(values.reshape(-1, 1)))
    assert ((got < 0) == (forest.predict(values.reshape(-1, 1)) == -1)).all()
    assert (got[: len(inside)] == 0).any()
    # A bank that kept nothing near 0 (format 4 and older) leaves them to scikit-learn.
    bare = CompiledForest(compiled.cuts, compiled.decisions)
    assert forest_settled(bare, values)[1][: len(inside)].all()


def test_non_finite_points_are_left_to_scikit_learn():
    forest = make("iforest").fit(np.random.default_rng(0).normal(size=(100, 1)))
    compiled, _ = compile_forest(forest)
    decision = forest_decisions(compiled, np.array([np.nan, np.inf, 1e300, 0.5]))
    assert np.isnan(decision[:3]).all() and np.isfinite(decision[3])


def test_packed_forests_select_concat_and_decide_many_at_once():
    rng = np.random.default_rng(5)
    forests = [make("iforest", n_estimators=10, random_state=i).fit(
        rng.normal(i, 1 + i, (80, 1))) for i in range(4)]
    compiled = [compile_forest(f)[0] for f in forests]
    packed = Forests.concat([Forests.of([(Sensor(f"d{i}", "t"), "", c)]) for i, c in
                             enumerate(compiled)]).select(np.array([3, 1, 0, 2]))
    assert packed.ids.to_pylist() == ["d3/t", "d1/t", "d0/t", "d2/t"]
    values = rng.normal(2, 4, 40)
    entries = np.array([2, 1, 3, 0])  # d0, d1, d2, d3: 10 points each
    got = decide_forests(packed, entries, np.arange(4) * 10, np.arange(1, 5) * 10, values)
    for i, forest in enumerate(forests):
        part = values[10 * i : 10 * i + 10]
        assert (got[10 * i : 10 * i + 10] == forest.decision_function(part.reshape(-1, 1))).all()
    assert packed.index(pa.array(["d2/t", "x/y"])).tolist() == [3, -1]


@pytest.fixture(scope="module")
def shard_forests():
    """40 small compiled forests of sensors s00/t .. s39/t, and a shard of them beside an SVM."""
    rng = np.random.default_rng(13)
    forests = [(Sensor(f"s{i:02d}", "t"), f"{i:064x}", compile_forest(make(
        "iforest", n_estimators=4, random_state=i).fit(rng.normal(i, 1, (30, 1))))[0])
        for i in range(40)]
    svm = compile_any(make("ocsvm").fit(rng.normal(0, 1, (30, 1)))).compiled
    return forests, encode_shard([(Sensor("s05", "svm"), "f" * 64, svm)], forests=forests)


@pytest.mark.parametrize("wanted", [[3], [0, 1, 2, 39], list(range(10, 30)),
                                    [0, 5, 6, 30, 38], [1, 2, 3, 20, 21, 37, 38, 39]])
def test_a_local_shard_read_in_ranges_gives_what_decoding_it_whole_gives(tmp_path, shard_forests,
                                                                        wanted):
    """Runs of wanted forests near each other are read together, far ones apart (RUN_GAP)."""
    forests, data = shard_forests
    store = LocalStore(tmp_path / "store")
    store.put("bank/shard.npz", data)
    keys = pa.array([f"s{i:02d}/t" for i in wanted] + ["s05/svm", "x/y"])
    for sha in (True, False):
        got, expected = _load_shard(store, "bank/shard.npz", keys, sha), \
            Bank.decode(data, sha=sha).only(keys)
        assert got.ids.to_pylist() == expected.ids.to_pylist() == ["s05/svm"]
        g, e = got.forests, expected.forests
        assert g.ids.to_pylist() == e.ids.to_pylist() == [f"s{i:02d}/t" for i in wanted]
        assert np.array_equal(g.offsets, e.offsets) and np.array_equal(g.sha, e.sha)
        assert np.array_equal(g.cuts, e.cuts) and np.array_equal(g.decisions, e.decisions)
        for i in wanted:
            mine = g.get(Sensor(f"s{i:02d}", "t"))
            assert np.array_equal(mine.decisions, forests[i][2].decisions)


def test_a_damaged_shard_is_refused_not_misread(tmp_path, shard_forests):
    """Refused with an error load_bank catches (the shard's sensors then go to scikit-learn):
    bytes cut from the middle, or offsets pointing past the arrays' ends."""
    forests, data = shard_forests
    store = LocalStore(tmp_path / "store")
    cut = data.index(b"forest_decisions.npy") + 400
    store.put("bank/cut.npz", data[:cut] + data[cut + 64:])
    with np.load(io.BytesIO(data)) as z:
        arrays = {name: z[name] for name in z.files}
    arrays["forest_offsets"][-1] += 10
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    store.put("bank/past.npz", sink.getvalue())
    for path in ("bank/cut.npz", "bank/past.npz"):
        with pytest.raises((ValueError, KeyError, OSError, zipfile.BadZipFile)):
            _load_shard(store, path, pa.array(["s39/t"]), False)


@pytest.fixture
def mixed_store(tmp_path):
    """A unit of an ocsvm, two iforests (one of constant data) and an EllipticEnvelope."""
    rng = np.random.default_rng(11)
    store = LocalStore(tmp_path / "store")
    models = {Sensor("a", "ocsvm"): make("ocsvm", nu=0.05, gamma=0.5).fit(rng.normal(0, 1, (80, 1))),
              Sensor("b", "iforest"): make("iforest").fit(rng.normal(5, 2, (300, 1))),
              Sensor("c", "flat"): make("iforest").fit(np.zeros((60, 1))),
              Sensor("d", "envelope"): EllipticEnvelope(random_state=0).fit(
                  rng.normal(10, 1, (80, 1)))}
    values = {Sensor("a", "ocsvm"): rng.normal(0, 2, 60), Sensor("b", "iforest"): rng.normal(5, 4, 60),
              Sensor("c", "flat"): np.r_[np.zeros(50), rng.normal(0, 1, 10)],
              Sensor("d", "envelope"): rng.normal(10, 3, 60)}
    for sensor, model in models.items():
        save_model(store, sensor, model, source="test")
    _write_points(store, values)
    return store, models, values


def test_a_unit_mixing_ocsvm_iforest_and_an_uncompiled_model_scores_each_as_scikit_learn(
        mixed_store):
    store, models, values = mixed_store
    stats = rebuild_bank(store)
    assert (stats.sensors, stats.compiled) == (4, 3)
    bank = load_bank(store, models)
    assert set(bank) == {Sensor("a", "ocsvm")}
    assert sorted(bank.forests.ids.to_pylist()) == ["b/iforest", "c/flat"]
    got = _unit_labels(store, sorted(models))
    for sensor, model in models.items():
        expected = (model.predict(values[sensor].reshape(-1, 1)) == -1).astype(int).tolist()
        assert got[sensor] == expected, sensor
    assert 0 < sum(got[Sensor("b", "iforest")]) < 60  # both labels, so the sign matters


def test_a_compiled_forest_needs_no_model_load_and_scores_as_scikit_learn(mixed_store):
    store, models, values = mixed_store
    rebuild_bank(store)
    sensors = sorted(models)
    from fleetscore.data.windows import read_points

    loaded: list[Sensor] = []

    def load(sensor):
        from fleetscore.model.features import Detector

        loaded.append(sensor)
        return Detector(models[sensor])

    points = read_points(store, HOUR, sensors)
    (result,), table, _ = score_many(store, [Group(HOUR, "u", sensors, points, exact=True)],
                                     bank=load_bank(store, sensors), load=load)
    assert result.scored == 4 and not result.failures
    # The flat forest's points all sit on 0, settled by scikit-learn's own last steps kept in
    # the bank; the envelope is not compiled: only it loads.
    assert sorted(loaded) == [Sensor("d", "envelope")]
    flat = table.filter(pa.compute.equal(table["Tag"], "flat"))
    expected = models[Sensor("c", "flat")].decision_function(
        values[Sensor("c", "flat")].reshape(-1, 1))
    assert np.array_equal(flat["Score"].to_numpy(), expected) and (expected == 0).all()
    assert flat["Prediction"].to_pylist() == [0] * 60  # a decision of exactly 0 is an inlier
    mine = table.filter(pa.compute.equal(table["Tag"], "iforest"))
    forest = models[Sensor("b", "iforest")]
    expected = forest.decision_function(values[Sensor("b", "iforest")].reshape(-1, 1))
    assert np.array_equal(mine["Score"].to_numpy(), expected)


def _fleetscore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=300)


def test_train_iforest_then_run_scores_with_the_compiled_forests(tmp_path):
    from fleetscore.model.registry import load_model, read_manifest

    rng = np.random.default_rng(2)
    start = Hour.parse("2024-03-01T00")
    lines = ["TS,Device,Tag,Value"]
    for h in range(6):
        for minute in range(60):
            ts = (start + h).start.strftime("%Y-%m-%dT%H:") + f"{minute:02d}:30Z"
            lines += [f"{ts},dev1,temp,{rng.normal(20, 2):.4f}",
                      f"{ts},dev2,flow,{0.0 if rng.random() < 0.8 else rng.normal(5, 1):.4f}"]
    readings = tmp_path / "readings.csv"
    readings.write_text("\n".join(lines) + "\n")
    store = str(tmp_path / "store")
    assert _fleetscore("ingest", str(readings), "--store", store).returncode == 0
    refused = _fleetscore("train", "--store", store, "--estimator", "iforest", "--nu", "0.1")
    assert refused.returncode != 0 and "--nu and --gamma are the ocsvm's" in refused.stderr
    trained = _fleetscore("train", "--store", store, "--estimator", "iforest",
                          "--until", str(start + 4), "--workers", "1")
    assert trained.returncode == 0, trained.stderr
    assert "(iforest)" in trained.stdout and "2 of 2 models compiled" in trained.stdout
    st = LocalStore(tmp_path / "store")
    assert read_manifest(st, Sensor("dev1", "temp")).estimator.startswith("IsolationForest")
    ran = _fleetscore("run", "--store", store, "--window", str(start + 5))
    assert ran.returncode == 0, ran.stderr
    rows = [decode(st.get(p), p) for p in st.list(f"predictions/{(start + 5).path}")
            if p.endswith(".csv")]
    table = pa.concat_tables(rows)
    assert table.num_rows == 120
    for sensor in (Sensor("dev1", "temp"), Sensor("dev2", "flow")):
        mine = table.filter(pa.compute.equal(table["Tag"], sensor.tag))
        model = load_model(st, sensor)
        vals = mine["Val"].to_numpy().reshape(-1, 1)
        assert mine["Prediction"].to_pylist() == (model.predict(vals) == -1).astype(int).tolist()
