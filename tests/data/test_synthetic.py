"""The synthetic fleet's hard sensors (idle, daily) and its labels as windows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.data.synthetic import (
    DAILY,
    IDLE,
    LEVEL,
    fleet_sensors,
    label_windows,
    make_fleet,
)
from fleetscore.data.windows import window_end_ms


def _values(fleet, device: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    r = fleet.readings
    rows = r.filter(pc.and_(pc.equal(r["Device"], device), pc.equal(r["Tag"], tag)))
    return pc.cast(rows["TS"], pa.int64()).to_numpy(), rows["Value"].to_numpy()


def test_a_plain_fleet_is_drawn_as_before_and_a_hard_one_shares_its_first_sensors():
    plain, hard = make_fleet(12, 3, seed=2), make_fleet(12, 3, seed=2, hard=True)
    assert set(plain.kinds) == {LEVEL}
    assert hard.kinds[:4] == (LEVEL, LEVEL, LEVEL, IDLE) and hard.kinds[7] == DAILY
    # The three sensors drawn before the first hard one are the same in both fleets.
    for device, tag in fleet_sensors(3):
        assert np.array_equal(_values(plain, device, tag)[1], _values(hard, device, tag)[1])


def test_idle_sensors_are_mostly_exactly_zero_with_rare_excursions():
    fleet = make_fleet(40, 6, seed=0, hard=True)
    idle = [s for s, k in zip(fleet_sensors(40), fleet.kinds, strict=True) if k == IDLE]
    assert len(idle) == 4
    for device, tag in idle:
        ts, values = _values(fleet, device, tag)
        assert (values == 0).mean() > 0.5  # more than half the readings exactly 0
        ends = window_end_ms(ts, 60)
        zero_windows = [np.all(values[ends == e] == 0) for e in np.unique(ends)]
        assert np.mean(zero_windows) > 0.5  # and more than half the windows
        assert (values != 0).any()  # with excursions
    kinds = fleet.labels.filter(pc.is_in(pc.binary_join_element_wise(
        fleet.labels["Device"], fleet.labels["Tag"], "/"), pa.array([f"{d}/{t}" for d, t in idle])))
    assert set(kinds["Kind"].to_pylist()) <= {"", "spike"}  # a stuck 0 is what they do anyway


def test_label_windows_merges_consecutive_anomalous_windows():
    minute = 60_000
    labels = pa.table({"Device": ["a"] * 6 + ["b"] * 2, "Tag": ["t"] * 8,
                       "End": pa.array([1, 2, 3, 4, 6, 7, 2, 3], pa.int64()) * minute,
                       "Anomaly": pa.array([1, 1, 0, 1, 1, 1, 1, 1], pa.int8()),
                       "Kind": ["spike"] * 8})
    # a: windows 1, 2 -> (0, 2]; 4 -> (3, 4]; 6, 7 -> (5, 7] (5 is missing: not consecutive)
    # b: windows 2, 3 -> (1, 3]
    assert label_windows(labels).to_pydict() == {
        "Device": ["a", "a", "a", "b"], "Tag": ["t"] * 4,
        "Start": [0, 3 * minute, 5 * minute, 1 * minute],
        "End": [2 * minute, 4 * minute, 7 * minute, 3 * minute]}
