import csv
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.readings import parse_ts
from fleetscore.data.windows import (
    _row_groups,
    aggregate,
    check_interval,
    combine,
    encode_part,
    part_path,
    read_points,
    window_end_ms,
)
from fleetscore.errors import UsageError
from tests.conftest import windows_by_hour


def test_window_end_is_the_epoch_aligned_ceiling():
    ts = np.array([0, 1, 59_999, 60_000, 60_001, 119_999], dtype=np.int64)
    assert window_end_ms(ts, 60).tolist() == [0, 60_000, 60_000, 60_000, 120_000, 120_000]


def test_interval_must_divide_the_hour():
    assert check_interval(60) == 60
    for bad in (0, -60, 7, 7200):
        with pytest.raises(UsageError, match="divide an hour"):
            check_interval(bad)


def _readings(rows):
    return pa.table({
        "Device": pa.array([r[1] for r in rows], pa.string()),
        "Tag": pa.array([r[2] for r in rows], pa.string()),
        "TS": pa.array([parse_ts(r[0]) for r in rows], pa.int64()),
        "Value": pa.array([float(r[3]) for r in rows], pa.float64()),
    })


def test_aggregate_mean_and_count_per_window_and_hour_split():
    rows = [("2024-01-01 00:59:30", "1", "1", 1), ("2024-01-01 01:00:00", "1", "1", 3),  # (00:59, 01:00]
            ("2024-01-01 01:00:01", "1", "1", 10),                                        # (01:00, 01:01]
            ("2024-01-01 01:00:30", "1", "2", 7)]
    hours = windows_by_hour(combine([aggregate(_readings(rows), 60)]))
    h0, h1 = Hour.parse("2024-01-01T00"), Hour.parse("2024-01-01T01")
    assert set(hours) == {h0, h1}
    assert hours[h0].to_pylist()[0]["Value"] == 2.0 and hours[h0].to_pylist()[0]["Count"] == 2
    assert [(r["Tag"], r["Value"], r["Count"]) for r in hours[h1].to_pylist()] == [
        ("1", 10.0, 1), ("2", 7.0, 1)]


def test_combining_partials_equals_aggregating_at_once():
    rng = np.random.default_rng(1)
    rows = [(f"2024-01-01 00:{m:02d}:{s:02d}", "d", str(t), float(rng.normal()))
            for m in range(10) for s in range(0, 60, 7) for t in range(3)]
    whole = windows_by_hour(aggregate(_readings(rows), 60))
    halves = windows_by_hour(combine([aggregate(_readings(rows[::2]), 60),
                                      aggregate(_readings(rows[1::2]), 60)]))
    for hour in whole:
        a, b = whole[hour].to_pydict(), halves[hour].to_pydict()
        assert a["Count"] == b["Count"] and np.allclose(a["Value"], b["Value"], rtol=1e-12)


def test_reference_data_aggregation_matches_a_plain_python_tumbling_window(refdata):
    sums, counts = defaultdict(float), defaultdict(int)
    with open(refdata) as f:
        for row in csv.DictReader(f):
            end = math.ceil(parse_ts(row["TS"]) / 60_000) * 60_000
            key = (row["Device"], row["Tag"], end)
            sums[key] += float(row["Value"])
            counts[key] += 1
    from fleetscore.data.readings import iter_readings
    partials = combine(aggregate(t, 60) for t, _ in iter_readings(refdata))
    got = {}
    for table in windows_by_hour(partials).values():
        for r in table.to_pylist():
            got[(r["Device"], r["Tag"], int(r["WindowEnd"].timestamp() * 1000))] = (r["Value"], r["Count"])
    assert set(got) == set(sums)
    for key, (value, count) in got.items():
        assert count == counts[key]
        assert value == pytest.approx(sums[key] / counts[key], rel=1e-12)


def test_parts_merge_with_count_weighted_means(local_store):
    hour = Hour.parse("2024-01-01T00")
    a = windows_by_hour(aggregate(_readings([("2024-01-01 00:00:10", "1", "1", 1.0),
                                         ("2024-01-01 00:00:20", "1", "1", 2.0)]), 60))[hour]
    b = windows_by_hour(aggregate(_readings([("2024-01-01 00:00:50", "1", "1", 6.0)]), 60))[hour]
    local_store.put(part_path(hour, "a"), encode_part(a))
    local_store.put(part_path(hour, "b"), encode_part(b))
    rows = read_points(local_store, hour).to_pylist()
    assert [(r["Value"], r["Count"]) for r in rows] == [(3.0, 3)]


def test_reading_a_few_sensors_skips_other_row_groups(local_store, monkeypatch):
    import pyarrow.parquet as pq

    import fleetscore.data.windows as windows

    monkeypatch.setattr(windows, "ROW_GROUP_ROWS", 60)
    hour = Hour.parse("2024-01-01T00")
    rows = [(f"2024-01-01 00:{m:02d}:30", f"d{d:03d}", "t", float(d)) for d in range(50) for m in range(60)]
    table = windows_by_hour(aggregate(_readings(rows), 60))[hour]
    local_store.put(part_path(hour, "x"), windows.encode_part(table))
    with local_store.open(part_path(hour, "x")) as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_row_groups == 50
        assert len(_row_groups(parquet, [Sensor("d007", "t")])) == 1
    points = read_points(local_store, hour, [Sensor("d007", "t"), Sensor("d042", "t")])
    assert set(points["Device"].to_pylist()) == {"d007", "d042"}
    assert points.num_rows == 120


@pytest.mark.parametrize("dense", [True, False])
def test_a_units_read_skips_rows_with_no_id(local_store, monkeypatch, dense):
    """A window file from outside may hold a row with a null Device or Tag: no sensor's row,
    left out of a unit's read (matching ids through dictionaries must not trip on it)."""
    from fleetscore.data.windows import PART_SCHEMA

    hour = Hour.parse("2024-03-01T01")
    ends = [hour.start_ms + 60_000 * i for i in (1, 2, 3, 4)]
    table = pa.table([pa.array([None, "d", "d", "e"]), pa.array(["t", "t", None, "t"]),
                      pa.array(ends, pa.timestamp("ms", tz="UTC")),
                      pa.array([1.0, 2.0, 3.0, 4.0]), pa.array([1, 1, 1, 1])], schema=PART_SCHEMA)
    local_store.put(part_path(hour, "outside"), encode_part(table))
    if not dense:  # the lookup by bisection, as for a fleet of very many tags
        monkeypatch.setattr("fleetscore.data.windows.DENSE_PAIRS", 0)
    got = read_points(local_store, hour, [Sensor("d", "t"), Sensor("e", "t")])
    assert got["Device"].to_pylist() == ["d", "e"] and got["Value"].to_pylist() == [2.0, 4.0]
