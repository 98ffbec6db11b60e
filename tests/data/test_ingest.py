import hashlib

import numpy as np
import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import read_arrivals
from fleetscore.data.ingest import ingest_file
from fleetscore.data.windows import read_points
from fleetscore.storage import LocalStore
from tests.conftest import minute_readings, write_readings


def _snapshot(store):
    return {p: hashlib.sha256(store.get(p)).hexdigest() for p in store.list("")}


def test_reference_data_ingest(store, refdata):
    result = ingest_file(store, refdata)
    assert result.rows == 17_768 and result.rejected == 0
    assert result.sensors == 15
    assert [str(h) for h in result.hours] == ["2018-08-28T23", "2018-08-29T00", "2018-08-29T01",
                                               "2018-08-29T02", "2018-08-29T03"]
    arrivals = read_arrivals(store, Hour.parse("2018-08-29T01"))
    assert len(arrivals) == 15 and sum(arrivals.values()) == result.hours_detail["2018-08-29T01"]


@pytest.mark.reliability("R7")
def test_ingesting_the_same_file_twice_gives_the_same_store(store, fleet_csv):
    ingest_file(store, fleet_csv)
    before = _snapshot(store)
    again = ingest_file(store, fleet_csv)
    assert again.parts_written == 0 and again.parts_existing == 3
    assert _snapshot(store) == before


@pytest.mark.reliability("R6")
def test_a_later_file_with_late_points_merges_into_the_hour(local_store, tmp_path):
    early = write_readings(tmp_path / "a.csv", [("2024-03-01 00:00:10", "1", "1", 1.0),
                                                ("2024-03-01 00:05:10", "1", "1", 5.0)])
    late = write_readings(tmp_path / "b.csv", [("2024-03-01 00:00:40", "1", "1", 3.0),
                                               ("2024-03-01 00:10:10", "1", "2", 9.0)])
    ingest_file(local_store, early)
    ingest_file(local_store, late)
    hour = Hour.parse("2024-03-01T00")
    rows = [(r["Tag"], r["Value"], r["Count"]) for r in read_points(local_store, hour).to_pylist()]
    assert rows == [("1", 2.0, 2), ("1", 5.0, 1), ("2", 9.0, 1)]
    assert read_arrivals(local_store, hour) == {Sensor("1", "1"): 3, Sensor("1", "2"): 1}


def test_bad_rows_go_to_a_rejects_file_and_good_rows_are_kept(local_store, tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 5)
    rows.insert(3, ("garbage", "1", "1", 1.0))
    path = write_readings(tmp_path / "r.csv", rows)
    result = ingest_file(local_store, path)
    assert result.rejected == 1 and result.rows == 20
    assert result.rejects_sample[0].line == 5
    text = local_store.get(result.rejects_path).decode()
    assert text.splitlines()[0] == "line,reason,text" and "garbage" in text


@pytest.mark.reliability("R31")
def test_overlapping_files_count_each_reading_once(local_store, tmp_path):
    """Exports of overlapping ranges: the second file repeats some readings of the first."""
    first = write_readings(tmp_path / "a.csv", [("2024-03-01 00:00:10", "1", "1", 1.0),
                                                ("2024-03-01 00:00:20", "1", "1", 2.0),
                                                ("2024-03-01 00:00:30", "1", "1", 3.0),
                                                ("2024-03-01 00:00:40", "1", "1", 6.0)])
    second = write_readings(tmp_path / "b.csv", [("2024-03-01 00:00:30", "1", "1", 3.0),
                                                 ("2024-03-01 00:00:40", "1", "1", 6.0),
                                                 ("2024-03-01 00:00:50", "1", "1", 8.0),
                                                 ("2024-03-01 00:01:10", "1", "1", 4.0)])
    ingest_file(local_store, first)
    result = ingest_file(local_store, second)
    assert result.duplicates == 2 and result.windows == 2
    hour = Hour.parse("2024-03-01T00")
    rows = [(r["End"] // 1000 % 3600, r["Value"], r["Count"])
            for r in read_points(local_store, hour).to_pylist()]
    assert rows == [(60, 4.0, 5), (120, 4.0, 1)]  # (1+2+3+6+8)/5, not counted twice
    again = ingest_file(local_store, second)  # the same file again: nothing new at all
    assert again.parts_written == 0 and read_points(local_store, hour).num_rows == 2


def test_a_repeat_with_another_value_in_a_later_file_keeps_the_first(local_store, tmp_path):
    ingest_file(local_store, write_readings(tmp_path / "a.csv", [("2024-03-01 00:00:10", "1", "1", 1.0)]))
    result = ingest_file(local_store, write_readings(tmp_path / "b.csv",
                                                     [("2024-03-01 00:00:10", "1", "1", 9.0)]))
    assert result.duplicates == 1 and result.windows == 0
    [row] = read_points(local_store, Hour.parse("2024-03-01T00")).to_pylist()
    assert (row["Value"], row["Count"]) == (1.0, 1)


def test_an_ingest_that_crashed_after_its_readings_completes_when_rerun(local_store, tmp_path,
                                                                       monkeypatch):
    import fleetscore.data.ingest
    from fleetscore.data.ingest import readings_folder

    # Hour files (tests/data/test_day_parts.py crashes an ingest of day parts).
    monkeypatch.setattr(fleetscore.data.ingest, "SPARSE_HOUR_WINDOWS", 0)

    path = write_readings(tmp_path / "a.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 5))
    ingest_file(local_store, path)
    hour = Hour.parse("2024-03-01T00")
    for p in local_store.list(f"windows/{hour.path}"):
        local_store.delete(p)  # the window part never got written
    assert list(local_store.list(readings_folder(hour)))
    result = ingest_file(local_store, path)
    assert result.duplicates == 0 and result.parts_written == 1
    assert read_points(local_store, hour)["Count"].to_pylist() == [4] * 5


def test_ingest_reports_bytes_then_hours(local_store, fleet_csv):
    seen = []
    ingest_file(local_store, fleet_csv, block_bytes=4096, progress=lambda d, t: seen.append((d, t)))
    size = fleet_csv.stat().st_size
    byte_calls = [c for c in seen if c[1] == size]
    assert len(byte_calls) > 3 and byte_calls[-1] == (size, size)
    assert seen[-2:] == [(0, 3), (3, 3)]  # then the hours written


def test_runs_of_hours_deduplicate_as_one_pass(tmp_path, monkeypatch):
    """A file is deduplicated a run of whole hours at a time (memory follows a run): any run
    size keeps the same first reading of every repeated key."""
    from fleetscore.data import ingest as ingest_module

    rows = []
    for hour in range(5):
        for minute in range(3):
            ts = f"2024-03-01 {hour:02d}:{minute:02d}:05.000"
            rows += [(ts, "d", "t", 1.0 + hour), (ts, "d", "t", 99.0), (ts, "e", "u", 2.0)]
    path = write_readings(tmp_path / "r.csv", rows)
    seen = {}
    for name, limit in (("one", 10**9), ("runs", 4)):
        monkeypatch.setattr(ingest_module, "DEDUP_ROWS", limit)
        store = LocalStore(tmp_path / name)
        result = ingest_file(store, path)
        hours = [Hour.parse(f"2024-03-01T{h:02d}") for h in range(-1, 5) if h >= 0]
        seen[name] = ([read_points(store, h).to_pylist() for h in hours], result.windows)
    assert seen["one"] == seen["runs"]
    assert len(ingest_module._hour_runs(np.repeat(np.arange(5), 9), 4)) == 5
    values = [p["Value"] for ps in seen["runs"][0] for p in ps if p["Device"] == "d"]
    assert 99.0 not in values  # the first reading of a key wins, in every run


def test_parts_are_sorted_by_device_tag_and_time_whatever_the_file_order(local_store, tmp_path):
    """Units prune row groups by Device, and readers skip sorting sorted parts: every part of
    a shuffled file comes out in (Device, Tag, time) order, ids compared as strings."""
    import random

    import pyarrow.parquet as pq

    rows = []
    for i, (device, tag) in enumerate([("b", "1"), ("B", "2"), ("a_1", "t"), ("a-1", "t"),
                                       ("a", "T"), ("a", "t.x"), ("10", "z"), ("9", "z")]):
        rows += minute_readings(device, tag, "2024-03-01 00:00:00", 90, seed=i)
    random.Random(0).shuffle(rows)
    ingest_file(local_store, write_readings(tmp_path / "shuffled.csv", rows))
    parts = [p for p in local_store.list("") if p.endswith(".parquet")]
    assert any(p.startswith("windows/") for p in parts) and any(
        p.startswith("readings/") for p in parts)
    for path in parts:
        table = pq.read_table(local_store.open(path))
        time = "TS" if "TS" in table.column_names else "WindowEnd"
        keys = list(zip(table["Device"].to_pylist(), table["Tag"].to_pylist(),
                        table[time].to_pylist(), strict=True))
        assert keys == sorted(keys), path
