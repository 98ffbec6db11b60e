"""The runaway-sensor guard: the pure policy (fleetscore/alerts/noisy.py), and end to end: a
sensor whose model flags most of its points is marked in each hour's manifest and raises one
``noisy_sensor`` alert across the hours it stays noisy, its anomaly alerts held back; another
once it calms down and flares again; the other sensors are never marked."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fleetscore.alerts.noisy import day_candidates, hot, hour_counts, judge, missing
from fleetscore.alerts.records import all_records, apply_rules
from fleetscore.alerts.rules import NoisySettings, RulesError, parse_rules
from fleetscore.compute.local import SequentialBackend
from fleetscore.contracts import NoisySensor, RunManifest, SensorFlags
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.ingest import ingest_file
from fleetscore.model.training import train
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, run_hour
from tests.conftest import minute_readings, write_readings

S = NoisySettings()


def _rows(counts: dict[str, tuple[int, int]]) -> pa.Table:
    devices, tags, labels = [], [], []
    for sensor, (flagged, points) in counts.items():
        device, tag = sensor.split("/")
        devices += [device] * points
        tags += [tag] * points
        labels += [1] * flagged + [0] * (points - flagged)
    return pa.table({"Device": devices, "Tag": tags, "Prediction": pa.array(labels, pa.int64())})


def test_hour_counts_are_each_sensors_flagged_points_and_points():
    rows = _rows({"A/t": (40, 60), "B/t": (1, 60)})
    assert hour_counts(rows) == {"A/t": (40, 60), "B/t": (1, 60)}
    assert hour_counts(rows, only={"B/t"}) == {"B/t": (1, 60)}
    assert hour_counts(None) == {}


def test_a_sensor_flagging_half_its_hour_is_noisy_the_others_are_not():
    current = {"A/t": (31, 60), "B/t": (1, 60), "C/t": (29, 60)}
    day = {"A/t": (40, 1440), "B/t": (10, 1440), "C/t": (40, 1440)}  # a calm day otherwise
    noisy = judge("2024-03-01T05", current, day, S, {})
    assert [(n.sensor, n.hour_share, n.since) for n in noisy] == [
        ("A/t", round(31 / 60, 4), "2024-03-01T05")]


def test_too_few_points_say_nothing():
    assert judge("2024-03-01T05", {"A/t": (3, 3)}, {"A/t": (3, 3)}, S, {}) == ()


def test_a_fifth_of_the_day_is_noisy_though_no_hour_reached_half():
    current = {"A/t": (15, 60)}  # 25% this hour, under 50%
    day = {"A/t": (300, 1440)}  # 20.8% of the day
    (n,) = judge("2024-03-01T05", current, day, S, {"A/t": "2024-03-01T02"})
    assert n.day_share == round(300 / 1440, 4) and n.since == "2024-03-01T02"
    assert judge("2024-03-01T05", current, {"A/t": (200, 1440)}, S, {}) == ()


def test_only_sensors_that_reached_the_day_bar_in_some_hour_are_candidates():
    listed = hot({"A/t": (12, 60), "B/t": (11, 60)}, S)  # 20% and 18%
    assert [f.sensor for f in listed] == ["A/t"]
    assert day_candidates({"C/t": (30, 60)}, [listed, ()], S) == {"A/t", "C/t"}
    # an earlier hour that lists every candidate is not read; one that does not, or a
    # manifest of an earlier version (None), is
    assert not missing(listed, {"A/t"})
    assert missing(listed, {"A/t", "C/t"}) and missing(None, {"A/t"})


def test_noisy_settings_from_the_rules_file():
    text = ('[noisy]\nhour_share = 0.6\nday_share = 0.25\nmin_points = 20\n'
            '[[rule]]\nname = "noisy"\non = "noisy_sensor"\nsinks = ["ops"]\n'
            '[sink.ops]\ntype = "app_insights"\n')
    assert parse_rules(text).noisy == NoisySettings(0.6, 0.25, 20)
    with pytest.raises(RulesError, match="noisy.day_share"):
        parse_rules(text.replace("0.25", "1.5"))


def test_the_manifest_round_trip_keeps_the_noisy_sensors_and_the_counts():
    m = RunManifest(window="2024-03-01T05", status="succeeded", predictions=(),
                    noisy=(NoisySensor("A/t", 0.9, 0.4, 54, 60, "2024-03-01T03"),),
                    flag_counts=(SensorFlags("A/t", 54, 60),))
    assert RunManifest.decode(m.encode(), "m") == m
    earlier = RunManifest(window="2024-03-01T05", status="succeeded")
    back = RunManifest.decode(earlier.encode(), "m")
    assert back.noisy == () and back.flag_counts is None


# --- end to end -------------------------------------------------------------------------------

RULES = """
[noisy]
day_share = 0.9  # so the calm hours are calm by the day too: the second flare is a new streak

[[rule]]
name = "sustained"
sensors = "*"
min_windows = 3
of_last = 5
sinks = ["ops"]

[[rule]]
name = "noisy"
on = "noisy_sensor"
snooze = "2h"
sinks = ["ops"]

[sink.ops]
type = "app_insights"
"""
HOURS = [Hour.parse(f"2024-03-01T{h:02d}") for h in range(1, 8)]
NOISY_HOURS = {1, 2, 3, 6}  # hour 4 and 5 calm: a flare at 6 is a new streak


@pytest.fixture
def noisy_store(local_store, tmp_path):
    rows = []
    for i, (device, tag) in enumerate([("A", "temp"), ("B", "temp"), ("C", "temp")]):
        for ts, d, t, v in minute_readings(device, tag, "2024-03-01 00:00:00", 8 * 60, seed=i,
                                           level=20.0):
            if (d, t) == ("A", "temp") and int(ts[11:13]) in NOISY_HOURS:
                v += 60  # every window of the hour far off what the model learnt
            rows.append((ts, d, t, v))
    ingest_file(local_store, write_readings(tmp_path / "noisy.csv", sorted(rows)))
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    apply_rules(local_store, RULES, "rules.toml")
    return local_store


@pytest.mark.reliability("R85")
def test_a_runaway_sensor_is_marked_every_noisy_hour_and_alerted_once_per_streak(noisy_store):
    for hour in HOURS:
        run_hour(noisy_store, hour, SequentialBackend(noisy_store, ENGINE))
    marked = {h.index: [n.sensor for n in read_manifest(noisy_store, h).noisy] for h in HOURS}
    assert {str(Hour(i)) for i, names in marked.items() if names} == {
        str(h) for h in HOURS if h.index % 24 in NOISY_HOURS}
    assert all(names == ["A/temp"] for names in marked.values() if names)
    records = sorted(all_records(noisy_store), key=lambda r: r.first_window)
    noisy = [r for r in records if r.rule == "noisy"]
    assert [r.first_window for r in noisy] == _streak_starts(marked)
    assert noisy[0].group == "A/temp" and "held back" in noisy[0].detail
    # its windows raised no anomaly alert while it was noisy
    assert not any(r.rule == "sustained" and r.group == "A/temp" for r in records
                   if r.first_window[:13].replace(" ", "T") in _noisy_hours(marked))


def _noisy_hours(marked):
    return {str(Hour(i)) for i, names in marked.items() if names}


def _streak_starts(marked):
    starts, before = [], False
    for i in sorted(marked):
        if marked[i] and not before:
            starts.append(str(Hour(i)))
        before = bool(marked[i])
    return starts


def test_runs_and_the_report_show_the_noisy_sensors(noisy_store):
    from fleetscore.report.data import _read_range
    from fleetscore.runs.table import hour_rows

    for hour in HOURS[:2]:
        run_hour(noisy_store, hour, SequentialBackend(noisy_store, ENGINE))
    rows = hour_rows(noisy_store, first=HOURS[0], last=HOURS[1])
    assert [r.noisy for r in rows] == [("A/temp",), ("A/temp",)]
    span, _ = _read_range(noisy_store, HOURS[0], HOURS[1])
    assert span.noisy() == {"A/temp": 2}


def test_the_guard_counts_from_the_units_without_reading_the_hours_rows(local_store):
    """The units report the sensors that flag at least FLAG_FLOOR of their points; the guard
    judges from those and never reads the hour's predictions back (a whole fleet's CSV)."""
    from fleetscore.core.hours import Hour
    from fleetscore.runs.alerting import noisy_guard

    def unread():
        raise AssertionError("the hour's rows were read")

    guard = noisy_guard(local_store, Hour.parse("2024-03-01T05"), rows=unread,
                        manifest_of=lambda h: None, rows_of=lambda h, m: unread(),
                        counted={"d/loud": (50, 60), "d/quiet": (4, 60)})
    assert [n.sensor for n in guard.noisy] == ["d/loud"]



def test_a_rerun_of_other_sensors_keeps_a_noisy_streak_going(noisy_store):
    """A rerun of one quiet sensor must not clear the hour's noisy sensors (its units counted
    only their own rows), or the next hour would start a new streak and alert again."""
    for hour in HOURS[:2]:
        run_hour(noisy_store, hour, SequentialBackend(noisy_store, ENGINE))
    run_hour(noisy_store, HOURS[1], SequentialBackend(noisy_store, ENGINE),
             sensors=[Sensor("B", "temp")])
    assert [n.sensor for n in read_manifest(noisy_store, HOURS[1]).noisy] == ["A/temp"]
    run_hour(noisy_store, HOURS[2], SequentialBackend(noisy_store, ENGINE))
    noisy = [r for r in all_records(noisy_store) if r.rule == "noisy"]
    assert [r.first_window for r in noisy] == [str(HOURS[0])]
