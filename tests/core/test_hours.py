from datetime import UTC, datetime

import pytest

from fleetscore.core.hours import Hour, hour_range, previous_full_hour
from fleetscore.errors import UsageError


def test_parse_and_format_roundtrip():
    hour = Hour.parse("2018-08-29T01")
    assert str(hour) == "2018-08-29T01"
    assert hour.path == "2018/08/29/01"
    assert hour.start == datetime(2018, 8, 29, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["2018-08-29", "2018-08-29T1", "2018-13-01T00", "2018-02-30T00",
                                 "2018-08-29T24", "yesterday", ""])
def test_bad_hours_are_usage_errors(bad):
    with pytest.raises(UsageError, match="YYYY-MM-DDTHH|invalid hour"):
        Hour.parse(bad)


def test_window_label_on_the_hour_belongs_to_the_previous_hour():
    # A run for H covers labels in (H:00, H+1:00].
    h = Hour.parse("2018-08-29T01")
    assert Hour.of_label_ms(h.end_ms) == h
    assert Hour.of_label_ms(h.start_ms) == h - 1
    assert Hour.of_label_ms(h.start_ms + 60_000) == h


def test_hour_range_inclusive_and_reversed():
    a, b = Hour.parse("2018-08-28T23"), Hour.parse("2018-08-29T01")
    assert [str(h) for h in hour_range(a, b)] == ["2018-08-28T23", "2018-08-29T00", "2018-08-29T01"]
    with pytest.raises(UsageError, match="reversed"):
        hour_range(b, a)


def test_previous_full_hour():
    assert str(previous_full_hour(datetime(2024, 3, 1, 0, 5, tzinfo=UTC))) == "2024-02-29T23"
