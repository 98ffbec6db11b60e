"""The backtest's figures on fixtures small enough to count by hand (the arithmetic is written
beside each assertion), the chance line against brute force, and the labels file's errors."""

from __future__ import annotations

import json
from dataclasses import astuple
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.core.sensors import Sensor
from fleetscore.data.ingest import ingest_file
from fleetscore.errors import InputError
from fleetscore.model import features
from fleetscore.scoring.backtest import (
    Backtest,
    Figures,
    Label,
    SensorResult,
    backtest_sensor,
    chance_figures,
    detector_figures,
    read_backtest,
    read_labels,
    run_backtest,
    split_hours,
)
from fleetscore.storage import LocalStore

MIN = 60_000
BASE = 1_767_571_200_000  # 2026-01-05 00:00 UTC


def _fixture():
    """Ten scored points, window ends at minutes 1..10. Label A (2, 5] holds minutes 3, 4, 5;
    label B (8, 10] holds 9, 10; label C (20, 30] holds no scored point and is not counted.
    Flags at minutes 4 and 7."""
    ends = BASE + np.arange(1, 11) * MIN
    labels = [Label(BASE + 2 * MIN, BASE + 5 * MIN), Label(BASE + 8 * MIN, BASE + 10 * MIN),
              Label(BASE + 20 * MIN, BASE + 30 * MIN)]
    flags = np.isin(np.arange(1, 11), [4, 7])
    return ends, flags, labels


def test_detector_figures_by_hand():
    ends, flags, labels = _fixture()
    f = detector_figures(ends, flags, labels, interval_s=60)
    assert (f.points, f.flagged, f.windows) == (10, 2, 2)  # C has no scored point
    assert f.windows_hit == 1  # A (flag at 4); B (9, 10) has none
    assert f.points_in_labels == 5  # 3, 4, 5, 9, 10
    assert f.flags_in_labels == 1  # 4 of {4, 7}
    assert f.flagged_share == pytest.approx(0.2)  # 2 / 10
    assert f.inside_share == pytest.approx(0.5)  # 1 / 2
    # 10 one-minute points are 10/1440 = 1/144 of a sensor-day; 1 false flag: 144 a day
    assert f.false_per_day == pytest.approx(144)
    assert f.lead_minutes == pytest.approx(2)  # A's first flag at 4, its Start at 2
    assert f.lead_fraction == pytest.approx(2 / 3)  # 2 of A's 3 minutes


def test_chance_figures_by_hand():
    """Two flags among ten points, uniformly. A (3 points) gets none with probability
    C(7,2)/C(10,2) = 21/45, B (2 points) C(8,2)/C(10,2) = 28/45: hits 24/45 + 17/45 = 41/45.
    First flag in A at its 1st, 2nd, 3rd point (leads 1, 2, 3 min): 1 - 8/10 = 9/45,
    8/10 - 28/45 = 8/45, 28/45 - 21/45 = 7/45, lead summed 46/45 min (fraction: /3);
    in B (leads 1, 2): 9/45, 8/45, lead summed 25/45 (fraction: /2)."""
    ends, _, labels = _fixture()
    f = chance_figures(ends, 2, labels, interval_s=60)
    assert f.windows_hit == pytest.approx(41 / 45)
    assert f.flags_in_labels == pytest.approx(1.0)  # 2 flags x 5 labelled / 10 points
    assert f.inside_share == pytest.approx(0.5)
    assert f.false_per_day == pytest.approx(144)  # (2 - 1) x 144
    assert f.lead_minutes == pytest.approx((46 / 45 + 25 / 45) / (41 / 45))  # 71/41
    assert f.lead_fraction == pytest.approx((46 / 135 + 25 / 90) / (41 / 45))  # 167/246
    assert f.flagged_share == pytest.approx(0.2)  # the model's count, by construction


def test_chance_figures_equal_the_average_over_every_placement():
    """The analytical expectations against brute force: all C(10, 3) placements of 3 flags."""
    ends, _, labels = _fixture()
    hits, inside, lead = Fraction(0), Fraction(0), Fraction(0)
    placements = list(combinations(range(10), 3))
    for chosen in placements:
        flags = np.isin(np.arange(10), chosen)
        f = detector_figures(ends, flags, labels)
        hits += Fraction(int(f.windows_hit))
        inside += Fraction(int(f.flags_in_labels))
        lead += Fraction(f.lead_minutes_sum).limit_denominator(1000)
    c = chance_figures(ends, 3, labels)
    assert c.windows_hit == pytest.approx(float(hits / len(placements)))
    assert c.flags_in_labels == pytest.approx(float(inside / len(placements)))
    assert c.lead_minutes_sum == pytest.approx(float(lead / len(placements)))


def test_split_hours_trains_on_the_first_share_of_hours_with_data():
    hour = 3_600_000
    # points in 4 hours with data (hour 2 empty), 2 a hour
    ends = BASE + np.array([1, 2, 1 * 60 + 1, 1 * 60 + 2, 3 * 60 + 1, 3 * 60 + 2,
                            4 * 60 + 1, 4 * 60 + 2]) * MIN
    assert split_hours(ends, 0.15) == 2  # ceil(0.15 x 4) = 1 hour: its 2 points
    assert split_hours(ends, 0.3) == 4  # ceil(1.2) = 2 hours: a started hour is trained on
    assert split_hours(ends, 0.5) == 4  # 2 hours
    assert split_hours(ends, 0.99) == 6  # never all: the last hour is scored
    assert split_hours(ends[:2], 0.5) == 0  # one hour: nothing to score
    assert split_hours(np.array([BASE + hour]), 0.5) == 0


class Threshold:
    """A stand-in estimator (make_model's seam): flags values above 5."""

    def fit(self, x):
        return self

    def predict(self, x):
        return np.where(x[:, 0] > 5, -1, 1)


def test_run_backtest_on_a_store_by_hand(tmp_path):
    """One sensor, a reading each minute for 4 hours (240 windows, 60 an hour), value 10 at
    the windows ending 02:05, 02:06 and 03:30, else 0. Fraction 0.15: ceil(0.6) = 1 hour
    trained (60 points), 180 scored. The label (02:04, 02:07] holds 02:05..02:07."""
    rows = ["TS,Device,Tag,Value"]
    for i in range(240):
        end = i + 1  # the window's end, in minutes after 00:00
        value = 10 if end in (2 * 60 + 5, 2 * 60 + 6, 3 * 60 + 30) else 0
        rows.append(f"2026-01-05 {i // 60:02d}:{i % 60:02d}:30,D1,t,{value}")
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    store = LocalStore(tmp_path / "store", create=True)
    ingest_file(store, tmp_path / "r.csv")
    before = sorted(store.list(""))
    labels = {Sensor("D1", "t"): (Label(BASE + 124 * MIN, BASE + 127 * MIN),),
              Sensor("D9", "x"): (Label(BASE, BASE + MIN),)}
    result = run_backtest(store, labels, make_model=Threshold)
    assert sorted(store.list("")) == before  # nothing written
    (s,) = result.sensors
    assert (s.sensor, s.trained_points, s.scored_from) == ("D1/t", 60, "2026-01-05T01")
    m = s.model
    assert (m.points, m.flagged, m.windows, m.windows_hit) == (180, 3, 1, 1)
    assert (m.points_in_labels, m.flags_in_labels) == (3, 2)
    assert m.lead_minutes == pytest.approx(1)  # 02:05 - 02:04
    assert m.false_per_day == pytest.approx(1 / (180 / 1440))  # 1 false flag in 1/8 day
    assert result.labels_unscored == 1  # D9/x has no data
    assert result.worst is s
    assert result.to_json()["overall"]["model"]["windows_hit"] == 1
    assert result.to_json()["features"] == [] and result.to_json()["inputs"] == "value"


class Recorder:
    """A stand-in estimator that keeps what it was fitted on and asked to predict."""

    seen: list[np.ndarray] = []

    def fit(self, x):
        Recorder.seen.append(np.array(x))
        return self

    def predict(self, x):
        Recorder.seen.append(np.array(x))
        return np.where(x[:, 0] > 5, -1, 1)


@pytest.mark.parametrize("names", [(), ("diff",), ("hour",), ("diff", "hour"), ("hour", "diff")])
def test_trained_and_scored_columns_are_the_whole_series_matrix_cut_in_two(names):
    """Four hours of points, one a minute but for a gap of 3 hours before the last hour (its
    first diff is 0 after the gap) and a jump right after the first hour (the first scored
    point's diff looks back at the last trained point, across the hour boundary)."""
    minutes = np.concatenate([np.arange(1, 121), np.arange(301, 361)])
    ends = BASE + minutes * MIN
    values = np.sin(minutes / 7.0)
    values[60] = 9.0  # the window ending 01:01, the first scored point
    Recorder.seen = []
    result = backtest_sensor(Sensor("D1", "t"), ends, values, (), train_fraction=0.15,
                             make_model=Recorder, features=names)
    whole = features.matrix(names, ends, values)
    fitted, scored = Recorder.seen
    assert result.trained_points == 60  # ceil(0.15 x 3 hours with data) = 1 hour
    assert fitted.shape == (60, features.width(names))
    np.testing.assert_array_equal(fitted, whole[:60])
    np.testing.assert_array_equal(scored, whole[60:])
    if "diff" in names:
        column = 1 + names.index("diff")
        assert scored[0, column] == pytest.approx(9.0 - values[59])  # not 0: it looks back
        assert scored[60, column] == 0  # after the 3-hour gap


def _labels(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_read_labels(tmp_path):
    path = _labels(tmp_path, "Device,Tag,Start,End\nD1,t,2026-01-05 02:00,2026-01-05T03:00Z\n"
                   "D1,t,2026-01-05 01:00:00,2026-01-05 01:10:00\n\n")
    assert read_labels(path) == {Sensor("D1", "t"): (
        Label(BASE + 60 * MIN, BASE + 70 * MIN), Label(BASE + 120 * MIN, BASE + 180 * MIN))}


@pytest.mark.parametrize("text, where, what", [
    ("TS,Device,Tag\n", "line 1", "header"),
    ("Device,Tag,Start,End\nD1,t,2026-01-05 02:00,2026-01-05 03:00\nD1,t,soon,2026-01-05\n",
     "line 3", "'soon' is not a timestamp"),
    ("Device,Tag,Start,End\nD1,t,2026-01-05 03:00,2026-01-05 02:00\n", "line 2", "not after"),
    ("Device,Tag,Start,End\nD/1,t,2026-01-05 02:00,2026-01-05 03:00\n", "line 2", "D/1"),
    ("Device,Tag,Start,End\nD1,t,2026-01-05 02:00\n", "line 2", "expected 4 fields"),
    ("", "line 1", "header"),
])
def test_a_bad_labels_row_is_named_by_file_and_line(tmp_path, text, where, what):
    path = _labels(tmp_path, text)
    with pytest.raises(InputError) as caught:
        read_labels(path)
    message = str(caught.value)
    assert str(path) in message and where in message and what in message
    assert "\n" not in message


def test_a_missing_labels_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_labels(tmp_path / "nope.csv")


# --- one encoder, one decoder ---------------------------------------------------------------

_counts = st.integers(0, 10**9)
_reals = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
_figures = st.builds(Figures, _counts, _counts | _reals, _counts, _counts | _reals, _counts,
                     _counts | _reals, _reals, _reals, _reals)
_names = st.text(min_size=1, max_size=12)
_results = st.builds(SensorResult, _names, _counts, _names, _figures, _figures)
_backtests = st.builds(
    Backtest, st.floats(0.01, 0.99), st.none() | st.tuples(_names, _names),
    st.lists(_results, max_size=4).map(tuple),
    st.lists(st.tuples(_names, _names), max_size=3).map(tuple), _counts,
    st.sampled_from([(), ("diff",), ("hour",), ("diff", "hour"), ("hour", "diff")]), _names)


@settings(max_examples=200, deadline=None)
@given(_backtests)
def test_a_backtest_survives_its_json(backtest):
    """What ``backtest --json`` prints (through the JSON text) is read back field for field,
    int counts as ints and expectations as floats."""
    again = Backtest.from_json(json.loads(json.dumps(backtest.to_json())))
    assert again == backtest
    assert [type(x) for x in astuple(again)] == [type(x) for x in astuple(backtest)]
    for before, after in zip(backtest.sensors, again.sensors, strict=True):
        assert [type(x) for x in astuple(after.model)] == [type(x) for x in astuple(before.model)]


def test_the_json_keeps_the_derived_figures_beside_the_raw_ones():
    ends, flags, labels = _fixture()
    f = detector_figures(ends, flags, labels)
    record = f.to_json()
    assert record["points_in_labels"] == 5 and record["lead_minutes_sum"] == pytest.approx(2)
    assert record["inside_share"] == pytest.approx(0.5)
    assert record["false_flags_per_sensor_day"] == pytest.approx(144)
    assert Figures.from_json(record) == f


def _record() -> dict:
    ends, flags, labels = _fixture()
    result = SensorResult("D1/t", 60, "2026-01-05T01", detector_figures(ends, flags, labels),
                          chance_figures(ends, 2, labels))
    return Backtest(0.15, ("2026-01-05T00", "2026-01-05T03"), (result,), (), 0,
                    ("diff",), "iforest").to_json()


@pytest.mark.parametrize("damage, says", [
    (lambda r: r.pop("sensors"), "'sensors': expected a list"),
    (lambda r: r["sensors"][0]["model"].pop("points_in_labels"), "sensors[0].model: "
     "'points_in_labels'"),
    (lambda r: r["sensors"][0].update(chance=3), "sensors[0].chance: expected an object"),
    (lambda r: r["sensors"][0]["model"].update(flagged="2"), "'flagged': expected a finite"),
    (lambda r: r.update(features=["slope"]), "features: expected some of diff, hour"),
    (lambda r: r.update(hours="2026"), "hours: expected null"),
    (lambda r: r.pop("estimator"), "'estimator': expected a string"),
])
def test_a_damaged_record_is_refused_naming_the_field(tmp_path, damage, says):
    record = _record()
    damage(record)
    path = tmp_path / "bt.json"
    path.write_text(json.dumps(record))
    with pytest.raises(InputError) as caught:
        read_backtest(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a backtest result") and says in message, message
    assert "\n" not in message


@pytest.mark.parametrize("content, says", [
    (None, "no such file"), ("{", "not JSON"), ("[1, 2]", "expected an object"),
    (b"\xff\xfe", "cannot read")])
def test_a_file_that_is_not_a_backtest_is_one_error_naming_it(tmp_path, content, says):
    path = tmp_path / "bt.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as caught:
        read_backtest(path)
    assert str(path) in str(caught.value) and says in str(caught.value)


def test_a_good_record_is_read(tmp_path):
    path = tmp_path / "bt.json"
    path.write_text(json.dumps(_record()))
    result = read_backtest(path)
    assert (result.estimator, result.features, result.sensors[0].sensor) == \
        ("iforest", ("diff",), "D1/t")
