"""Sensor codes sort and group as the (Device, Tag) strings do, and the windows aggregated by
them are bit for bit those aggregated by the strings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.core.sensor_codes import sensor_codes, sort_by_sensor
from fleetscore.data.windows import PARTIAL_SCHEMA, aggregate, window_end_ms

# Valid ids, with the characters whose byte order differs from a naive guess (digits before
# capitals before '_' before small letters; '-' and '.' before all of them; prefixes first).
ids = st.text(alphabet="aAzZ09_-.", min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(ids, ids), min_size=1, max_size=60))
def test_codes_sort_as_the_two_strings(pairs):
    devices = pa.array([d for d, _ in pairs], pa.string())
    tags = pa.array([t for _, t in pairs], pa.string())
    codes = sensor_codes(devices, tags)
    by_strings = pc.sort_indices(pa.table({"d": devices, "t": tags}),
                                 sort_keys=[("d", "ascending"), ("t", "ascending")]).to_numpy()
    by_codes = np.argsort(codes.codes, kind="stable")
    assert [pairs[i] for i in by_codes] == [pairs[i] for i in by_strings]
    # Equal codes are equal sensors, and a code gives back its sensor's names.
    device, tag = codes.device_tag(codes.codes)
    assert list(zip(device.to_pylist(), tag.to_pylist(), strict=True)) == pairs


def test_a_missing_id_has_no_code():
    with pytest.raises(ValueError):
        sensor_codes(pa.array(["a", None]), pa.array(["t", "t"]))


def _aggregate_by_strings(readings: pa.Table, interval_s: int) -> pa.Table:
    """The windows as sorted and grouped by the id strings (how aggregate did it before)."""
    readings = readings.sort_by([("Device", "ascending"), ("Tag", "ascending"),
                                 ("TS", "ascending"), ("Value", "ascending")])
    grouped = pa.table({
        "Device": readings["Device"], "Tag": readings["Tag"],
        "End": pa.array(window_end_ms(readings["TS"].to_numpy(), interval_s), pa.int64()),
        "Value": readings["Value"],
    }).group_by(["Device", "Tag", "End"], use_threads=False).aggregate(
        [("Value", "sum"), ("Value", "count")])
    return pa.table([grouped["Device"], grouped["Tag"], grouped["End"], grouped["Value_sum"],
                     pc.cast(grouped["Value_count"], pa.int64())], schema=PARTIAL_SCHEMA)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["d1", "D1", "d10", "d_2", "x.y"]),
                          st.sampled_from(["t", "T", "t-1", "t.1"]),
                          # Many readings a window (sums of 3 and more), and repeated times:
                          # the order of a sum's terms must be the one order, ties included.
                          st.one_of(st.integers(0, 900_000),
                                    st.integers(0, 60).map(lambda k: k * 15_000)),
                          st.one_of(st.floats(-1e9, 1e9, allow_nan=False, width=32),
                                    st.floats(-1, 1, allow_nan=False))),
                min_size=1, max_size=300),
       st.sampled_from([60, 300]), st.randoms(use_true_random=False))
def test_windows_are_bit_for_bit_those_of_the_strings(rows, interval_s, random):
    random.shuffle(rows)  # arrival order must not matter either way
    readings = pa.table({"Device": [r[0] for r in rows], "Tag": [r[1] for r in rows],
                         "TS": pa.array([r[2] for r in rows], pa.int64()),
                         "Value": pa.array([r[3] for r in rows], pa.float64())})
    keys = [("Device", "ascending"), ("Tag", "ascending"), ("End", "ascending")]
    ours = aggregate(readings, interval_s).sort_by(keys)
    assert ours.equals(_aggregate_by_strings(readings, interval_s).sort_by(keys))


@pytest.mark.parametrize("same_time", [False, True])
def test_a_window_sums_its_readings_in_time_then_value_order(same_time):
    """Float sums depend on the order of their terms: a window's is the one order of (TS,
    Value), whatever order the readings arrived in (ties in time broken by value)."""
    values = [1.0, 2.0**53, -(2.0**53), 1.0, 1.0]  # 1.0 is lost beside 2**53, or not
    times = [60_000] * 5 if same_time else [10_000, 20_000, 30_000, 40_000, 50_000]
    canonical = [v for _, v in sorted(zip(times, values, strict=True))]
    expected = 0.0
    for v in canonical:
        expected += v
    reverse = 0.0
    for v in reversed(canonical):
        reverse += v
    assert expected != reverse  # the data is one where the order shows
    for arrival in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        readings = pa.table({"Device": ["d"] * 5, "Tag": ["t"] * 5,
                             "TS": pa.array([times[i] for i in arrival], pa.int64()),
                             "Value": pa.array([values[i] for i in arrival], pa.float64())})
        windows = aggregate(readings, 60)
        assert windows["Sum"].to_pylist() == [expected] and windows["Count"].to_pylist() == [5]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(ids, st.none()), st.one_of(ids, st.none()),
                          st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=80),
       st.booleans(), st.booleans())
def test_sorting_by_sensor_is_the_stable_sort_by_the_strings(rows, with_first, nulls):
    if not nulls:
        rows = [(d or "d", t or "t", e, f) for d, t, e, f in rows]
    table = pa.table({"Device": pa.array([r[0] for r in rows], pa.string()),
                      "Tag": pa.array([r[1] for r in rows], pa.string()),
                      "End": pa.array([r[2] for r in rows], pa.int64())})
    first = np.array([r[3] for r in rows], np.int64) if with_first else None
    keyed = table.append_column("_first", pa.array(first if with_first else np.zeros(len(rows),
                                                                                    np.int64)))
    by_strings = pc.sort_indices(keyed, sort_keys=[
        ("_first", "ascending"), ("Device", "ascending"), ("Tag", "ascending"),
        ("End", "ascending")]).to_numpy()
    assert sort_by_sensor(table, ["End"], first=first).to_numpy().tolist() == by_strings.tolist()
