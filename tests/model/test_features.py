"""Derived features (``train --features diff,hour``): the same columns in training, which sees
a sensor's whole history, and in scoring, which sees one hour and the hour before's last
point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetscore.core.hours import MS_PER_HOUR
from fleetscore.errors import UsageError
from fleetscore.model.features import DIFF_GAP_MS, matrix, parse

MINUTE = 60_000


@st.composite
def histories(draw):
    """A sensor's window ends over a few hours, with gaps (sometimes longer than an hour)."""
    steps = draw(st.lists(st.sampled_from([MINUTE, MINUTE, 2 * MINUTE, 59 * MINUTE,
                                           DIFF_GAP_MS, DIFF_GAP_MS + MINUTE, 3 * MS_PER_HOUR]),
                          min_size=1, max_size=120))
    ends = 1_709_251_200_000 + MINUTE + np.cumsum([0, *steps]).astype(np.int64)
    values = np.array(draw(st.lists(st.floats(-1e6, 1e6), min_size=len(ends),
                                    max_size=len(ends))))
    return ends, values


@settings(max_examples=200, deadline=None)
@given(histories(), st.sampled_from([("diff",), ("hour",), ("diff", "hour"), ("hour", "diff")]))
def test_an_hour_with_the_last_point_before_it_gets_the_whole_historys_rows(series, names):
    ends, values = series
    whole = matrix(names, ends, values)
    hours = (ends - 1) // MS_PER_HOUR
    for hour in np.unique(hours):
        mine = hours == hour
        before = np.flatnonzero(hours == hour - 1)
        previous = (int(ends[before[-1]]), float(values[before[-1]])) if len(before) else None
        assert np.array_equal(matrix(names, ends[mine], values[mine], previous), whole[mine])


def test_diff_is_the_change_since_the_previous_window_within_an_hour_and_0_after_a_gap():
    ends = np.array([MINUTE, 2 * MINUTE, 2 * MINUTE + DIFF_GAP_MS, 3 * MINUTE + 2 * DIFF_GAP_MS])
    values = np.array([1.0, 4.0, 2.0, 9.0])
    assert matrix(("diff",), ends, values)[:, 1].tolist() == [0.0, 3.0, -2.0, 0.0]
    assert matrix(("diff",), ends[1:], values[1:], (MINUTE, 1.0))[:, 1].tolist() == [3.0, -2.0, 0.0]


def test_hour_is_the_hour_of_day_the_window_is_filed_under():
    day = 1_709_251_200_000  # 2024-03-01T00:00Z
    ends = np.array([day + MINUTE, day + MS_PER_HOUR, day + MS_PER_HOUR + MINUTE,
                     day + 24 * MS_PER_HOUR])
    assert matrix(("hour",), ends, np.zeros(4))[:, 1].tolist() == [0.0, 0.0, 1.0, 23.0]


def test_no_features_is_the_value_as_one_column():
    values = np.array([1.0, 2.0])
    assert matrix((), np.array([1, 2]), values).tolist() == [[1.0], [2.0]]


@pytest.mark.parametrize(("text", "message"), [("diff,speed", "unknown feature 'speed'"),
                                                ("hour,hour", "named twice")])
def test_a_bad_feature_list_is_a_usage_error_naming_it(text, message):
    with pytest.raises(UsageError, match=message):
        parse(text)
    assert parse(" diff , hour ") == ("diff", "hour") and parse("") == ()
