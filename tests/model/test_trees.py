"""Compiled IsolationForests of 1 to 3 features (``model/trees.py``): decisions within 1e-9 of
scikit-learn's and labels equal to ``predict`` on hypothesis-generated data, at and beside the
thresholds, for many sensors in one call, and through an npz shard loaded without pickle."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest
from sklearn.svm import OneClassSVM

import fleetscore.model.trees as trees_module
from fleetscore.core.sensors import Sensor
from fleetscore.model.trees import (
    TREES_TOLERANCE,
    CompiledTrees,
    Trees,
    compile_trees,
    decide_trees,
    trees_decisions,
    trees_near_boundary,
    trees_probe_disagreement,
)


def _fit(X: np.ndarray, **params) -> IsolationForest:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_samples above the sample count: scikit-learn's note
        return IsolationForest(**params).fit(X)


def _compiled(forest: IsolationForest) -> CompiledTrees:
    compiled, why = compile_trees(forest)
    assert why is None and compiled is not None
    return compiled


def _assert_like_sklearn(forest: IsolationForest, got: np.ndarray, X: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, labels = forest.decision_function(X), forest.predict(X)
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max(initial=0) <= TREES_TOLERANCE
    settled = ~trees_near_boundary(got)
    assert (np.where(got < 0, -1, 1) == labels)[settled].all()


def _at_thresholds(forest: IsolationForest, base: np.ndarray) -> np.ndarray:
    """Rows of ``base`` with one column set to a split's threshold, exactly as scikit-learn
    stores it (float64), so that the cast to float32 decides which side the row goes."""
    rows = []
    for tree, columns in zip(forest.estimators_, forest.estimators_features_, strict=True):
        t = tree.tree_
        subsampled = len(columns) != forest.n_features_in_
        for node in np.flatnonzero(t.children_left != -1):
            row = base[node % len(base)].copy()
            row[columns[t.feature[node]] if subsampled else t.feature[node]] = t.threshold[node]
            rows.append(row)
    return np.array(rows).reshape(-1, base.shape[1])


COLUMN_KINDS = st.sampled_from(["normal", "duplicates", "constant", "drawn"])


@st.composite
def fitted(draw) -> tuple[IsolationForest, np.ndarray]:
    n_features = draw(st.integers(1, 3))
    n_samples = draw(st.integers(2, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    columns = []
    for kind in draw(st.lists(COLUMN_KINDS, min_size=n_features, max_size=n_features)):
        if kind == "normal":
            columns.append(rng.normal(draw(st.floats(-1e3, 1e3)), 10.0, n_samples))
        elif kind == "duplicates":
            columns.append(rng.choice([0.0, 0.1, 0.1, 2.5, -7.0], n_samples))
        elif kind == "constant":
            columns.append(np.full(n_samples, draw(st.floats(-1e4, 1e4))))
        else:
            columns.append(np.array(draw(st.lists(
                st.floats(-1e6, 1e6, allow_nan=False), min_size=n_samples, max_size=n_samples))))
    forest = _fit(np.column_stack(columns),
                  n_estimators=draw(st.sampled_from([1, 4, 25])),
                  max_samples=draw(st.sampled_from(["auto", 0.5, 1.0, 3, 40])),
                  contamination=draw(st.sampled_from(["auto", 0.01, 0.1, 0.4])),
                  max_features=draw(st.sampled_from([1.0, 1, 0.7])),
                  random_state=draw(st.integers(0, 1000)))
    return forest, np.column_stack(columns)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fitted(), st.integers(0, 2**32 - 1))
def test_decisions_and_labels_equal_sklearns(case, seed):
    forest, X = case
    compiled = _compiled(forest)
    rng = np.random.default_rng(seed)
    low, high = X.min(axis=0), X.max(axis=0)
    width = np.maximum(high - low, 1.0)
    around = rng.uniform(low - width, high + width, (50, X.shape[1]))
    far = np.array([low - 1e3 * width, high + 1e3 * width])
    rows = np.concatenate([X, around, far, _at_thresholds(forest, X)])
    _assert_like_sklearn(forest, trees_decisions(compiled, rows), rows)


def test_rows_exactly_at_float32_thresholds_go_left():
    """Thresholds scikit-learn draws are rarely float32s; made float32s, a row exactly at one
    shows ``<=`` (left) apart from ``<``."""
    rng = np.random.default_rng(5)
    for X in (rng.normal(size=(300, 1)),
              np.column_stack([rng.normal(size=300), np.full(300, 3.0)])):  # splits on column 0
        forest = _fit(X, n_estimators=30, random_state=2)
        for tree in forest.estimators_:
            thresholds = tree.tree_.threshold  # a view: set in place
            inner = tree.tree_.children_left != -1
            thresholds[inner] = thresholds[inner].astype(np.float32)
        rows = _at_thresholds(forest, X)
        assert (rows.astype(np.float32) == rows).all()
        _assert_like_sklearn(forest, trees_decisions(_compiled(forest), rows), rows)


def test_float32_rounding_decides_the_side():
    """A float64 row at a threshold rounds to the nearest float32, often above it: scikit-learn
    sends it right, where the float64 value itself would go left."""
    X = np.random.default_rng(11).normal(size=(500, 1))
    forest = _fit(X, n_estimators=50, contamination=0.05, random_state=4)
    rows = _at_thresholds(forest, X)
    assert (rows.astype(np.float32).astype(np.float64) > rows).any()
    _assert_like_sklearn(forest, trees_decisions(_compiled(forest), rows), rows)


def test_subsampled_features_map_to_the_forests_columns():
    X = np.random.default_rng(3).normal(size=(400, 3)) * [1.0, 100.0, 0.01]
    forest = _fit(X, n_estimators=40, max_features=2, random_state=8)
    assert any(list(f) != [0, 1] for f in forest.estimators_features_)
    rows = np.concatenate([X, _at_thresholds(forest, X)])
    _assert_like_sklearn(forest, trees_decisions(_compiled(forest), rows), rows)


def _fleet() -> list[tuple[Sensor, IsolationForest, CompiledTrees]]:
    rng = np.random.default_rng(21)
    fleet = []
    for i, (n_features, params) in enumerate([
            (1, {}), (2, {"n_estimators": 7}), (3, {"max_samples": 30}),
            (3, {"max_features": 1, "contamination": 0.1}), (2, {"max_samples": 1}),
            (1, {"n_estimators": 3, "contamination": 0.2})]):
        forest = _fit(rng.normal(i, 1 + i, size=(200, n_features)), random_state=i, **params)
        fleet.append((Sensor(f"dev{i}", "temp"), forest, _compiled(forest)))
    return fleet


def test_many_sensors_of_different_widths_in_one_call(monkeypatch):
    fleet = _fleet()
    trees = Trees.of((s, f"sha{i}", c) for i, (s, _, c) in enumerate(fleet))
    rng = np.random.default_rng(1)
    X = rng.normal(2, 4, size=(100, 3))
    X[:, 1:][rng.random((100, 2)) < 0.2] = np.nan  # unread by narrower models: no matter
    entries = np.array([3, 0, 5, 1, 2, 4, 0])
    starts = np.array([0, 10, 25, 30, 50, 70, 80])
    stops = np.array([10, 20, 30, 50, 70, 80, 95])  # rows 20:25 and 95: left uncovered
    got = decide_trees(trees, entries, starts, stops, X)
    for e, a, b in zip(entries, starts, stops, strict=True):
        width, forest = fleet[e][2].n_features, fleet[e][1]
        read = np.isfinite(X[a:b, :width]).all(axis=1)
        assert np.isnan(got[a:b][~read]).all()
        _assert_like_sklearn(forest, got[a:b][read], X[a:b, :width][read])
    assert np.isnan(got[20:25]).all() and np.isnan(got[95:]).all()
    monkeypatch.setattr(trees_module, "PAIRS_PER_CHUNK", 40)  # rows in slices: the same
    assert np.array_equal(decide_trees(trees, entries, starts, stops, X), got, equal_nan=True)
    assert np.isnan(decide_trees(trees, entries[:0], starts[:0], stops[:0], X)).all()


def test_rows_not_finite_as_float32_are_left_to_sklearn():
    (_, forest, compiled), = _fleet()[1:2]  # two features
    rows = np.array([[0.5, np.nan], [np.inf, 0.0], [1e39, 0.0], [0.0, -1e39], [0.5, 0.5]])
    got = trees_decisions(compiled, rows)
    assert np.isnan(got[:4]).all() and np.isfinite(got[4])
    assert trees_near_boundary(np.array([np.nan, 0.0, 5e-10, -5e-10, 1e-8])).tolist() == \
        [True, True, True, True, False]
    with pytest.raises(ValueError):
        decide_trees(Trees.of([(Sensor("d", "t"), "", compiled)]), np.array([0]), np.array([0]),
                     np.array([2]), np.zeros((2, 1)))


def test_packed_trees_round_trip_through_an_npz_without_pickle():
    fleet = _fleet()
    whole = Trees.of((s, f"{i:064x}", c) for i, (s, _, c) in enumerate(fleet))
    picked = Trees.concat([whole.select(np.array([4, 1, 4])), Trees.empty(),
                           whole.select(np.array([0, 2])), Trees.of([])])
    sink = io.BytesIO()
    np.savez(sink, **picked.to_arrays(), **Trees.empty().to_arrays("none_"))
    sink.seek(0)
    with np.load(sink, allow_pickle=False) as z:
        loaded, empty = Trees.from_arrays(z, "trees_"), Trees.from_arrays(z, "none_")
    assert len(loaded) == 5 and len(empty) == 0
    assert loaded.ids.to_pylist() == ["dev4/temp", "dev1/temp", "dev4/temp", "dev0/temp",
                                      "dev2/temp"]
    assert loaded.sha[1] == f"{1:064x}"
    keys = pa.array(["dev2/temp", "dev3/temp", "dev1/temp"])
    assert loaded.index(keys).tolist() == [4, -1, 1]
    assert empty.index(keys).tolist() == [-1, -1, -1]
    got = loaded.get(Sensor("dev2", "temp"))
    for field in CompiledTrees.__dataclass_fields__:
        assert np.array_equal(getattr(got, field), getattr(fleet[2][2], field))
    assert loaded.get(Sensor("dev3", "temp")) is None
    X = np.random.default_rng(2).normal(size=(50, 3))
    entries, starts, stops = np.array([1, 3, 4]), np.array([0, 10, 30]), np.array([10, 30, 50])
    assert np.array_equal(decide_trees(loaded, entries, starts, stops, X),
                          decide_trees(whole, np.array([1, 0, 2]), starts, stops, X),
                          equal_nan=True)


def test_what_is_not_compiled_says_why():
    assert "not an IsolationForest" in compile_trees(OneClassSVM().fit(np.zeros((3, 1))))[1]
    assert "not fitted" in compile_trees(IsolationForest())[1]
    (_, forest, compiled), = _fleet()[2:3]
    assert trees_probe_disagreement(forest, compiled) is None
    shifted = CompiledTrees(**{**compiled.__dict__, "offset": compiled.offset + 1e-6})
    assert "differ" in trees_probe_disagreement(forest, shifted)
