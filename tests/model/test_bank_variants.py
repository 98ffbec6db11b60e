"""The bank over model variants: whatever the scaler, kernel and parameters, the labels a unit
writes are scikit-learn's ``predict``, whether the bank compiled the model or left it to
scikit-learn. And the other outlier detectors people use for this job score through the
plain path."""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import SGDOneClassSVM
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import record_arrivals
from fleetscore.data.predictions import decode
from fleetscore.data.windows import PART_SCHEMA, encode_part, part_path
from fleetscore.model.bank import compile_verdict, load_bank, rebuild_bank
from fleetscore.model.registry import save_model
from fleetscore.scoring.score import score_unit
from fleetscore.storage import LocalStore

HOUR = Hour.parse("2024-03-01T01")

scalers = st.one_of(
    st.none(),
    st.builds(StandardScaler, with_mean=st.booleans(), with_std=st.booleans()),
    st.builds(MinMaxScaler, feature_range=st.sampled_from([(0, 1), (-1, 1), (-5, 2)]),
              clip=st.booleans()),
    st.builds(RobustScaler, with_centering=st.booleans(), with_scaling=st.booleans(),
              unit_variance=st.booleans()),
    st.builds(MaxAbsScaler, clip=st.booleans()),
)
svms = st.builds(
    OneClassSVM,
    kernel=st.sampled_from(["rbf", "linear", "poly", "sigmoid"]),
    gamma=st.one_of(st.sampled_from(["scale", "auto"]), st.floats(1e-3, 10)),
    coef0=st.floats(-2, 2),
    degree=st.integers(0, 5),
    nu=st.floats(0.02, 0.95),
    # libsvm may take minutes to converge on an unscaled polynomial kernel; a capped fit is
    # still a model like any other.
    max_iter=st.just(5000),
)


@st.composite
def variants(draw):
    """A model and its data: training points (sometimes constant, sometimes repeated) and an
    hour of points around, on and far beyond them."""
    scaler, svm = draw(scalers), draw(svms)
    model = svm if scaler is None else Pipeline([("scaler", scaler), ("ocsvm", svm)])
    level = draw(st.floats(-1e3, 1e3))
    spread = draw(st.one_of(st.just(0.0), st.floats(1e-3, 1e2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    train = level + spread * rng.normal(0, 1, draw(st.integers(30, 60)))
    if draw(st.booleans()):
        train = np.round(train, 1)  # repeated values, as sensors with a coarse resolution give
    values = np.concatenate([
        level + 3 * spread * rng.normal(0, 1, 40),
        rng.choice(train, 12),  # exactly on training points (and support vectors)
        [level - 50 * spread - 1, level + 50 * spread + 1, level, 0.0, -level,
         level + 1e-9, train.min(), train.max()],
    ])
    # Sometimes a parameter changed after fitting: what get_params says is then not what the
    # model computes, and only the probe check keeps the bank from compiling the wrong gamma.
    retuned = draw(st.one_of(st.none(), st.none(), st.floats(1e-3, 10)))
    return model, train, values, retuned


def _write_points(store, points: dict[Sensor, np.ndarray]) -> None:
    """An hour of one-minute points per sensor, as ingest writes them."""
    rows = [(s, HOUR.start_ms + 60_000 * (i + 1), v) for s, vs in points.items()
            for i, v in enumerate(vs)]
    table = pa.table([pa.array([s.device for s, _, _ in rows]), pa.array([s.tag for s, _, _ in rows]),
                      pa.array([t for _, t, _ in rows], pa.timestamp("ms", tz="UTC")),
                      pa.array([v for _, _, v in rows], pa.float64()),
                      pa.array(np.ones(len(rows), dtype=np.int64))], schema=PART_SCHEMA)
    store.put(part_path(HOUR, "test"), encode_part(table))
    record_arrivals(store, HOUR, "test", Counter({s: len(vs) for s, vs in points.items()}))


def _unit_labels(store, sensors) -> dict[Sensor, list[int]]:
    """Each sensor's labels in time order, from the predictions file the unit says it wrote."""
    result = score_unit(store, HOUR, sensors, unit_id="variants")
    assert not result.failures, result.failures
    table = decode(store.get(result.predictions), result.predictions)
    rows = sorted(zip(table["Device"].to_pylist(), table["Tag"].to_pylist(),
                      table["TS"].to_pylist(), table["Prediction"].to_pylist(), strict=True))
    out: dict[Sensor, list[int]] = {s: [] for s in sensors}
    for device, tag, _, label in rows:
        out[Sensor(device, tag)].append(label)
    return out


def _fitted(model, train):
    try:
        return model.fit(train.reshape(-1, 1))
    except ValueError:  # libsvm's "dual coefficients are not finite" on degenerate data
        reject()


def _expected(model, values) -> list[int]:
    return (model.predict(values.reshape(-1, 1)) == -1).astype(int).tolist()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(variants(), min_size=1, max_size=3))
def test_unit_labels_equal_scikit_learn_for_every_model_variant(cases):
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and degenerate-data warnings of fitting
        store = LocalStore(root)
        sensors = [Sensor(f"d{i}", "t") for i in range(len(cases))]
        for sensor, (model, train, _, retuned) in zip(sensors, cases, strict=True):
            _fitted(model, train)
            if retuned is not None:
                (model.steps[-1][1] if hasattr(model, "steps") else model).set_params(gamma=retuned)
            save_model(store, sensor, model, source="test")
        _write_points(store, {s: c[2] for s, c in zip(sensors, cases, strict=True)})
        rebuild_bank(store)
        banked = load_bank(store, sensors)
        got = _unit_labels(store, sensors)
        for sensor, (model, _, values, _) in zip(sensors, cases, strict=True):
            event("compiled" if sensor in banked else "left to scikit-learn")
            assert got[sensor] == _expected(model, values), (sensor, model)


# --- what the bank takes ----------------------------------------------------------------------


@pytest.mark.parametrize("scaler", [
    None, StandardScaler(), StandardScaler(with_mean=False), StandardScaler(with_std=False),
    MinMaxScaler(), MinMaxScaler(feature_range=(-1, 1), clip=True), RobustScaler(),
    RobustScaler(with_centering=False), MaxAbsScaler(), MaxAbsScaler(clip=True),
])
@pytest.mark.parametrize("svm", [
    OneClassSVM(), OneClassSVM(gamma="auto", nu=0.3), OneClassSVM(kernel="linear"),
    OneClassSVM(kernel="poly", degree=2, coef0=1.0, gamma=0.5),
    OneClassSVM(kernel="sigmoid", coef0=-0.5, gamma=0.2),
])
def test_the_bank_compiles_every_scaler_and_kernel_it_reproduces(scaler, svm):
    """The hypothesis test passes whether or not the bank takes a model: this one makes sure
    it does take the ordinary ones, not leave them all to scikit-learn."""
    train = np.random.default_rng(1).normal(40, 3, (60, 1))
    model = svm if scaler is None else Pipeline([("scaler", scaler), ("ocsvm", svm)])
    verdict = compile_verdict(model.fit(train))
    assert verdict.compiled is not None, verdict.reason


@pytest.mark.reliability("R41")
def test_a_model_changed_after_fitting_is_left_to_scikit_learn_with_the_reason():
    """The probe check: a gamma set after fitting is what get_params says, not what the model
    uses; the compiled copy would disagree, so the model stays with scikit-learn."""
    model = OneClassSVM(gamma=0.1).fit(np.random.default_rng(2).normal(0, 1, (60, 1)))
    model.set_params(gamma=5.0)
    verdict = compile_verdict(model)
    assert verdict.compiled is None
    assert "differ from scikit-learn's on probe points" in verdict.reason


# --- the plain path -------------------------------------------------------------------------


OTHER_DETECTORS = {
    "IsolationForest": IsolationForest(random_state=0),
    "EllipticEnvelope": EllipticEnvelope(random_state=0),
    "LocalOutlierFactor": LocalOutlierFactor(novelty=True, n_neighbors=10),
    "SGDOneClassSVM": Pipeline([("scaler", StandardScaler()),
                                ("sgd", SGDOneClassSVM(nu=0.1, random_state=0))]),
}


@pytest.mark.reliability("R41")
def test_other_outlier_detectors_score_through_scikit_learn_and_are_counted(tmp_path):
    rng = np.random.default_rng(4)
    store = LocalStore(tmp_path / "store")
    cases = {}
    for i, (name, detector) in enumerate(OTHER_DETECTORS.items()):
        sensor = Sensor(f"d{i}", name)
        train = rng.normal(10 * (i + 1), 2, (60, 1))
        save_model(store, sensor, detector.fit(train), source="test")
        cases[sensor] = (detector, rng.normal(10 * (i + 1), 5, 60))
    ocsvm = Sensor("svm", "t")
    model = Pipeline([("scaler", StandardScaler()), ("ocsvm", OneClassSVM(gamma=0.1))])
    cases[ocsvm] = (model.fit(rng.normal(0, 1, (60, 1))), rng.normal(0, 2, 60))
    save_model(store, ocsvm, model, source="test")
    _write_points(store, {s: values for s, (_, values) in cases.items()})
    stats = rebuild_bank(store)
    # The IsolationForest is compiled too, as a forest beside the SVMs (tests/model/test_forest.py).
    assert (stats.sensors, stats.compiled) == (5, 2)
    assert dict(stats.left) == {
        "EllipticEnvelope is not a OneClassSVM": 1,
        "LocalOutlierFactor is not a OneClassSVM": 1, "SGDOneClassSVM is not a OneClassSVM": 1}
    loaded = load_bank(store, cases)
    assert set(loaded) == {ocsvm}
    assert loaded.forests.ids.to_pylist() == ["d0/IsolationForest"]
    got = _unit_labels(store, list(cases))
    for sensor, (detector, values) in cases.items():
        assert got[sensor] == _expected(detector, values), sensor
        assert 0 < sum(got[sensor]) < len(values), sensor  # the test data has both labels


def test_kept_shards_still_count_what_is_left_to_scikit_learn(tmp_path):
    store = LocalStore(tmp_path / "store")
    train = np.random.default_rng(0).normal(0, 1, (60, 1))
    save_model(store, Sensor("a", "t"), EllipticEnvelope(random_state=0).fit(train),
               source="test")  # not compiled (an IsolationForest now is)
    save_model(store, Sensor("b", "t"), OneClassSVM().fit(train), source="test")
    first = rebuild_bank(store)
    again = rebuild_bank(store)
    assert (again.shards_written, again.shards_kept) == (0, 1)
    assert again.left == first.left == (("EllipticEnvelope is not a OneClassSVM", 1),)


@pytest.mark.reliability("R41")
def test_models_bank_prints_what_it_left_to_scikit_learn_and_why(tmp_path):
    import subprocess
    import sys

    store = LocalStore(tmp_path / "store")
    train = np.random.default_rng(0).normal(0, 1, (60, 1))
    save_model(store, Sensor("a", "t"), EllipticEnvelope(random_state=0).fit(train),
               source="test")  # not compiled (an IsolationForest now is)
    save_model(store, Sensor("b", "t"), OneClassSVM().fit(train), source="test")
    proc = subprocess.run([sys.executable, "-m", "fleetscore", "models", "bank", "--store",
                           str(tmp_path / "store")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 models compiled" in proc.stdout
    assert "left to scikit-learn: 1 EllipticEnvelope is not a OneClassSVM" in proc.stdout


def test_a_broken_manifest_leaves_the_rest_of_the_bank_in_place(tmp_path):
    """Rebuilds go on while manifests change; one that is merely broken is not a change."""
    from fleetscore.model.bank import INDEX_PATH
    from fleetscore.model.registry import manifest_path

    store = LocalStore(tmp_path / "store")
    train = np.random.default_rng(0).normal(0, 1, (60, 1))
    for name in ("a", "b"):
        save_model(store, Sensor(name, "t"), OneClassSVM().fit(train), source="test")
    store.put(manifest_path(Sensor("a", "t")), b"{not json")
    stats = rebuild_bank(store)
    assert store.exists(INDEX_PATH)
    assert (stats.compiled, stats.left) == (1, (("manifest missing or malformed", 1),))
    assert set(load_bank(store, [Sensor("a", "t"), Sensor("b", "t")])) == {Sensor("b", "t")}
