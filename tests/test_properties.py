"""Property-based tests (hypothesis): aggregation, hour arithmetic, ids, the predictions CSV."""

from __future__ import annotations

import math
import re
import string
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.core.hours import MS_PER_HOUR, Hour
from fleetscore.core.sensors import ID_PATTERN, Sensor, is_valid_id
from fleetscore.data.predictions import decode, encode, predictions_table
from fleetscore.data.windows import aggregate, combine, window_end_ms
from tests.conftest import windows_by_hour

ids = st.from_regex(rf"\A{ID_PATTERN}\Z").filter(lambda s: s not in (".", ".."))
T0 = 1_700_000_000_000
readings = st.lists(
    st.tuples(st.sampled_from(["1", "2", "a_b"]), st.sampled_from(["x", "y"]),
              st.integers(T0, T0 + 3 * MS_PER_HOUR), st.floats(-1e6, 1e6, allow_nan=False)),
    min_size=1, max_size=200)


def _table(rows):
    return pa.table({"Device": [r[0] for r in rows], "Tag": [r[1] for r in rows],
                     "TS": pa.array([r[2] for r in rows], pa.int64()),
                     "Value": pa.array([r[3] for r in rows], pa.float64())})


@settings(max_examples=60, deadline=None)
@given(readings, st.sampled_from([1, 10, 60, 300, 3600]))
def test_aggregation_is_a_tumbling_window_mean(rows, interval):
    expected = defaultdict(list)
    for device, tag, ts, value in rows:
        end = math.ceil(ts / (interval * 1000)) * interval * 1000
        expected[(device, tag, end)].append(value)
    got = {}
    for hour, table in windows_by_hour(aggregate(_table(rows), interval)).items():
        for r in table.to_pylist():
            end = int(r["WindowEnd"].timestamp() * 1000)
            assert Hour.of_label_ms(end) == hour
            assert hour.start_ms < end <= hour.end_ms  # labels in (H:00, H+1:00]
            got[(r["Device"], r["Tag"], end)] = (r["Value"], r["Count"])
    assert set(got) == set(expected)
    for key, values in expected.items():
        mean, count = got[key]
        assert count == len(values)
        assert math.isclose(mean, math.fsum(values) / len(values), rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=40, deadline=None)
@given(readings, st.randoms(use_true_random=False))
def test_aggregation_ignores_order_and_splitting(rows, rnd):
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(rows))
    whole = windows_by_hour(aggregate(_table(rows), 60))
    parts = windows_by_hour(combine([aggregate(_table(shuffled[:cut]), 60),
                                 aggregate(_table(shuffled[cut:]), 60)]))
    assert whole.keys() == parts.keys()
    for hour in whole:
        a, b = whole[hour].to_pydict(), parts[hour].to_pydict()
        assert a["Count"] == b["Count"]
        assert np.allclose(a["Value"], b["Value"], rtol=1e-9, atol=1e-6)
    # A pure reordering within one block is bit-identical.
    again = windows_by_hour(aggregate(_table(shuffled), 60))
    assert all(whole[h].equals(again[h]) for h in whole)


@given(st.integers(0, 200_000), st.integers(1, 60_000))
def test_window_ends_are_aligned_ceilings(minutes, offset_ms):
    ts = np.array([minutes * 60_000 + offset_ms], dtype=np.int64)
    end = int(window_end_ms(ts, 60)[0])
    assert end % 60_000 == 0 and end - 60_000 < ts[0] <= end


@given(st.integers(0, 1_000_000))
def test_hour_text_roundtrip_and_arithmetic(index):
    hour = Hour(index)
    assert Hour.parse(str(hour)) == hour
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d", str(hour))
    assert (hour + 1) - 1 == hour and Hour.of_label_ms(hour.end_ms) == hour
    assert Hour.of_label_ms(hour.start_ms + 1) == hour
    assert hour.path == str(hour).replace("-", "/").replace("T", "/")


@given(st.text(max_size=80))
def test_id_validation_matches_the_rule_and_never_escapes(text):
    valid = is_valid_id(text)
    # The rule written out independently of the regex it is implemented with.
    allowed = set(string.ascii_letters + string.digits + "_.-")
    assert valid == (1 <= len(text) <= 64 and set(text) <= allowed and text not in (".", ".."))
    if valid:
        parts = Sensor(text, text).path.split("/")
        assert parts == [text, text] and ".." not in parts and "" not in parts


@settings(max_examples=60, deadline=None)
@given(ids, ids, st.lists(st.tuples(st.integers(0, 10**8), st.floats(allow_nan=False, allow_infinity=False,
                                                                        width=64),
                                    st.booleans(), st.floats(-1e3, 1e3, allow_nan=False)),
                          min_size=1, max_size=50, unique_by=lambda r: r[0]))
def test_predictions_csv_roundtrip(device, tag, rows):
    rows.sort()
    ends = np.array([r[0] * 60_000 for r in rows], dtype=np.int64)
    values = np.array([r[1] for r in rows])
    labels = np.array([int(r[2]) for r in rows])
    scores = np.array([r[3] for r in rows])
    data = encode([predictions_table(device, tag, ends, values, labels, scores)])
    assert data.splitlines()[0] == b"TS,Device,Tag,Val,Prediction,Score"
    back = decode(data, "p.csv").to_pydict()
    assert back["Device"] == [device] * len(rows) and back["Tag"] == [tag] * len(rows)
    assert back["Val"] == values.tolist()  # exact: shortest round-trip float text
    assert back["Prediction"] == labels.tolist() and back["Score"] == scores.tolist()


@pytest.mark.parametrize("text", ["a\n", "\na", "a\r", "a\nb", "ab\n\n", "\n", "a\x00"])
def test_ids_with_line_breaks_anywhere_are_refused(text):
    assert not is_valid_id(text)
