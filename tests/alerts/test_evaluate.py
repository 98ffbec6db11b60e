"""What an hour raises, as pure functions: K of the last N windows, across the hour boundary,
grouped by sensor or device, and the run's own alerts."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from fleetscore.alerts.evaluate import anomaly_candidates, run_candidates, silent_candidates
from fleetscore.alerts.rules import parse_rules

RULE = """
[[rule]]
name = "r"
sensors = "{sensors}"
min_windows = {k}
of_last = {n}
group_by = "{group}"
sinks = ["s"]

[[rule]]
name = "runs"
on = "run_failed"
sinks = ["s"]

[[rule]]
name = "quiet"
on = "sensor_silent"
group_by = "device"
sinks = ["s"]

[sink.s]
type = "webhook"
url = "http://127.0.0.1:9/x"
"""


def _rules(k=3, n=5, group="sensor", sensors="*"):
    return parse_rules(RULE.format(k=k, n=n, group=group, sensors=sensors))


def _rows(hour: int, series: dict[tuple[str, str], list[int]]) -> pa.Table:
    cols: dict[str, list] = {"TS": [], "Device": [], "Tag": [], "Val": [], "Prediction": [],
                             "Score": []}
    for (device, tag), labels in series.items():
        for minute, label in enumerate(labels, 1):
            h, m = divmod(hour * 60 + minute, 60)
            cols["TS"].append(f"2024-03-01 {h:02d}:{m:02d}:00")
            cols["Device"].append(device)
            cols["Tag"].append(tag)
            cols["Val"].append(1.0)
            cols["Prediction"].append(label)
            cols["Score"].append(-1.0 - minute if label else 1.0)
    return pa.table(cols)


def test_an_episode_across_the_hour_boundary_is_raised_once_by_the_hour_it_fires_in():
    rules = _rules()
    # Two anomalous windows end hour 1, one starts hour 2: 3 of the last 5 fire at 02:01.
    hour1 = _rows(1, {("D", "t"): [0] * 58 + [1, 1]})
    hour2 = _rows(2, {("D", "t"): [1, 1] + [0] * 58})
    assert anomaly_candidates(rules, hour1, None) == []
    [c] = anomaly_candidates(rules, hour2, hour1)
    assert (c.first_window, c.last_window, c.windows) == ("2024-03-01 01:59:00",
                                                          "2024-03-01 02:02:00", 4)
    # Had it fired in hour 1 already, hour 2 continues that episode and raises nothing.
    hour1 = _rows(1, {("D", "t"): [0] * 57 + [1, 1, 1]})
    assert [c.first_window for c in anomaly_candidates(rules, hour1, None)] == [
        "2024-03-01 01:58:00"]
    assert anomaly_candidates(rules, hour2, hour1) == []


def test_group_by_device_makes_one_alert_of_a_devices_tags_and_sensors_are_selected():
    rows = _rows(1, {("D", "a"): [1, 1, 1] + [0] * 57, ("D", "b"): [0] * 10 + [1] * 4 + [0] * 46,
                     ("E", "a"): [1, 1, 1] + [0] * 57})
    by_device = anomaly_candidates(_rules(group="device"), rows, None)
    assert [(c.group, c.tags, c.windows) for c in by_device] == [("D", ("a", "b"), 7),
                                                                  ("E", ("a",), 3)]
    by_sensor = anomaly_candidates(_rules(sensors="D/*"), rows, None)
    assert [c.group for c in by_sensor] == ["D/a", "D/b"]


@given(st.lists(st.integers(0, 1), min_size=60, max_size=60), st.integers(1, 6),
       st.integers(0, 5))
def test_k_of_n_matches_a_plain_count(labels, n, extra):
    k = max(1, min(n, n - extra))
    rules = _rules(k=k, n=n)
    got = anomaly_candidates(rules, _rows(1, {("D", "t"): labels}), None)
    firing = [sum(labels[max(0, i - n + 1): i + 1]) >= k for i in range(60)]
    starts = [i for i in range(60) if firing[i] and (i == 0 or not firing[i - 1])]
    assert len(got) == (1 if starts else 0)  # one alert per group per hour
    if starts:
        first = min(i for i in range(max(0, starts[0] - n + 1), starts[0] + 1) if labels[i])
        assert got[0].first_window == f"2024-03-01 01:{first + 1:02d}:00" if first < 59 \
            else got[0].first_window == "2024-03-01 02:00:00"


def test_the_runs_own_alerts():
    rules = _rules()
    assert run_candidates(rules, "2024-03-01T01", "succeeded", "") == []
    [c] = run_candidates(rules, "2024-03-01T01", "partial", "2 of 40 sensors failed")
    assert (c.rule, c.group, c.first_window, c.detail) == (
        "runs", "run", "2024-03-01T01", "partial: 2 of 40 sensors failed")
    [quiet] = silent_candidates(rules, "2024-03-01T01", [("D", "a"), ("D", "b")])
    assert (quiet.group, quiet.tags) == ("D", ("a", "b"))
