"""Day parts: a source's sparse hours of a day share one readings part, one window part and one
arrival record. The layout must never change what readers return: each hour reads exactly what
it would read from hour files, readings are counted once across hour and day files, re-ingest
and crashed ingests write nothing twice, and the many-hour readers read each day file once."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data import ingest as ingest_module
from fleetscore.data.arrivals import (
    day_arrival_path,
    hours_with_arrivals,
    read_arrivals,
    read_arrivals_many,
)
from fleetscore.data.ingest import day_readings_path, ingest_file, readings_path
from fleetscore.data.windows import (
    day_part_path,
    part_path,
    read_points,
    read_points_many,
)
from fleetscore.errors import InputError
from fleetscore.storage import LocalStore
from tests.conftest import write_readings

DAY = "2024-03-01"
H = [Hour.parse(f"{DAY}T{h:02d}") for h in range(24)]


def _rows(day: str, hour: int, device: str, tag: str, n: int, *, value: float = 10.0,
          second: int = 7) -> list[tuple]:
    """``n`` readings 5 minutes apart in the hour (one window each)."""
    t0 = datetime.fromisoformat(f"{day} {hour:02d}:00:00")
    return [((t0 + timedelta(seconds=300 * i + second)).strftime("%Y-%m-%d %H:%M:%S.000"),
             device, tag, round(value + i * 0.37, 3)) for i in range(n)]


def _files(store, area: str) -> list[str]:
    return sorted(store.list(area))


def _snapshot(store) -> dict[str, str]:
    return {p: hashlib.sha256(store.get(p)).hexdigest() for p in store.list("")}


@pytest.fixture
def dense_everything(monkeypatch):
    """The old layout: every hour gets its own files."""
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 0)


class GetCounter:
    """A store wrapper that counts get/open calls per path."""

    def __init__(self, inner):
        self.inner, self.url, self.calls = inner, inner.url, Counter()

    def get(self, path):
        self.calls[path] += 1
        return self.inner.get(path)

    def open(self, path):
        self.calls[path] += 1
        return self.inner.open(path)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# --- layout ---------------------------------------------------------------------------------

def test_sparse_hours_of_a_day_share_one_file_per_area(store, tmp_path):
    rows = _rows(DAY, 1, "d1", "t", 3) + _rows(DAY, 5, "d2", "t", 10) + \
        _rows("2024-03-02", 7, "d1", "t", 1)
    result = ingest_file(store, write_readings(tmp_path / "r.csv", rows))
    sid = result.source_id
    second = Hour.parse("2024-03-02T07")
    assert _files(store, "windows") == sorted([day_part_path(H[1], sid),
                                                     day_part_path(second, sid)])
    assert _files(store, "readings") == sorted([day_readings_path(H[1], sid),
                                                      day_readings_path(second, sid)])
    assert _files(store, "arrivals") == sorted([day_arrival_path(H[1], sid),
                                                      day_arrival_path(second, sid)])
    assert result.parts_written == 2 and result.windows == 14 and result.sensors == 2
    assert result.hours == (H[1], H[5], second)
    assert result.hours_detail == {"2024-03-01T01": 3, "2024-03-01T05": 10, "2024-03-02T07": 1}
    record = json.loads(store.get(day_arrival_path(H[1], sid)))
    assert record["hours"] == {"2024-03-01T01": [["d1", "t", 3]],
                               "2024-03-01T05": [["d2", "t", 10]]}
    assert record["part"] == day_part_path(H[1], sid)
    assert record["sha256"] == hashlib.sha256(store.get(record["part"])).hexdigest()


def test_dense_hours_keep_their_hour_files_beside_the_day_part(local_store, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 5)
    rows = _rows(DAY, 1, "d1", "t", 4) + _rows(DAY, 2, "d1", "t", 5) + _rows(DAY, 3, "d2", "t", 2)
    result = ingest_file(local_store, write_readings(tmp_path / "r.csv", rows))
    sid = result.source_id
    assert _files(local_store, "windows") == sorted([part_path(H[2], sid),
                                                     day_part_path(H[1], sid)])
    assert _files(local_store, "readings") == sorted([readings_path(H[2], sid),
                                                      day_readings_path(H[1], sid)])
    assert result.parts_written == 2
    assert read_arrivals(local_store, H[2]) == {Sensor("d1", "t"): 5}
    assert read_arrivals(local_store, H[3]) == {Sensor("d2", "t"): 2}
    assert hours_with_arrivals(local_store) == [H[1], H[2], H[3]]


# --- readers --------------------------------------------------------------------------------

def test_a_day_part_read_for_an_hour_gives_only_that_hours_rows(local_store, tmp_path):
    rows = _rows(DAY, 0, "d1", "t", 12) + _rows(DAY, 1, "d1", "t", 12) + \
        _rows(DAY, 23, "d1", "t", 12) + _rows(DAY, 1, "d2", "t", 2)
    # The window labelled 01:00 belongs to hour 00, not hour 01.
    rows += [(f"{DAY} 01:00:00.000", "d2", "t", 4.0)]
    ingest_file(local_store, write_readings(tmp_path / "r.csv", rows))
    for hour, n in [(H[0], 13), (H[1], 14), (H[23], 12), (H[2], 0)]:
        points = read_points(local_store, hour)
        assert points.num_rows == n
        ends = points["End"].to_numpy()
        assert ((ends > hour.start_ms) & (ends <= hour.end_ms)).all()
    one = read_points(local_store, H[1], [Sensor("d2", "t")])
    assert one["Device"].to_pylist() == ["d2", "d2"]


def test_day_parts_read_exactly_as_hour_parts(local_store, tmp_path, monkeypatch):
    """The same files, laid out by day or by hour: the same tables, bit for bit (merged
    windows included: the parts are combined in the same order)."""
    a = _rows(DAY, 3, "d1", "t", 12, second=11) + _rows(DAY, 4, "d1", "t", 3)
    b = _rows(DAY, 3, "d1", "t", 12, value=20.0, second=40) + _rows(DAY, 4, "d2", "t", 3)
    c = _rows(DAY, 3, "d1", "t", 6, value=30.0, second=55)
    files = [write_readings(tmp_path / f"{n}.csv", r) for n, r in [("a", a), ("b", b), ("c", c)]]
    by_hour = LocalStore(tmp_path / "by_hour")
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 0)
    for f in files:
        ingest_file(by_hour, f)
    monkeypatch.undo()
    for f in files:
        ingest_file(local_store, f)
    assert not any("/day/" in p for p in by_hour.list("windows"))
    assert all("/day/" in p for p in local_store.list("windows"))
    merged = read_points(local_store, H[3])
    assert merged["Count"].to_pylist()[:6] == [3] * 6  # three files' points in each window
    for hour in H[:6]:
        for sensors in (None, [Sensor("d1", "t")], [Sensor("d2", "t")]):
            assert read_points(local_store, hour, sensors).equals(read_points(by_hour, hour, sensors))
        assert read_arrivals(local_store, hour) == read_arrivals(by_hour, hour)


def test_read_points_many_equals_read_points_and_reads_each_day_part_once(store, tmp_path):
    rows = []
    for day in ("2024-03-01", "2024-03-02"):
        for hour in (0, 5, 6, 23):
            rows += _rows(day, hour, "d1", "t", 5) + _rows(day, hour, "d2", "u", 2)
    ingest_file(store, write_readings(tmp_path / "a.csv", rows))
    late = _rows("2024-03-01", 5, "d1", "t", 3, value=50.0, second=30)
    ingest_file(store, write_readings(tmp_path / "b.csv", late))
    hours = [Hour.parse("2024-02-29T23") + i for i in range(60)]
    day_parts = [p for p in store.list("windows") if "/day/" in p]
    assert len(day_parts) == 3
    for sensors in (None, [Sensor("d1", "t")]):
        counting = GetCounter(store)
        many = read_points_many(counting, hours, sensors)
        assert list(many) == hours
        for hour in hours:
            assert many[hour].equals(read_points(store, hour, sensors))
        assert {p: counting.calls[p] for p in day_parts} == {p: 1 for p in day_parts}


def test_read_points_many_reads_day_parts_beside_compacted_hours(local_store):
    """A Stream Analytics hour, compacted, and a source's day part with rows of that hour."""
    from benchmarks.bench_sa import SA_HOUR, sa_sensors, write_sa_hour
    from fleetscore.data import compaction
    from fleetscore.data.windows import PART_SCHEMA, encode_part

    sensors = sa_sensors(16)
    write_sa_hour(local_store, sensors, rows_per_file=40, minutes=5)
    before = read_points(local_store, SA_HOUR)
    end = pa.array([SA_HOUR.start_ms + 60_000, SA_HOUR.start_ms + 3 * 3_600_000 + 60_000],
                   pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    extra = pa.table([pa.array([sensors[0].device, "zz"]), pa.array([sensors[0].tag, "t"]),
                      end, pa.array([1e3, 7.0]), pa.array([5, 1], pa.int64())], schema=PART_SCHEMA)
    local_store.put(day_part_path(SA_HOUR, "x"), encode_part(extra))
    uncompacted = read_points(local_store, SA_HOUR)
    assert uncompacted.num_rows == before.num_rows  # merged into sensor 0's first window
    assert compaction.compact_hour(local_store, SA_HOUR) is not None
    assert read_points(local_store, SA_HOUR).equals(uncompacted)
    many = read_points_many(local_store, [SA_HOUR, SA_HOUR + 3])
    assert many[SA_HOUR].equals(uncompacted)
    assert many[SA_HOUR + 3]["Device"].to_pylist() == ["zz"]


def test_arrival_readers_see_day_records_and_read_each_once(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 4)
    rows = _rows(DAY, 2, "d1", "t", 3) + _rows(DAY, 9, "d1", "t", 4) + \
        _rows("2024-03-03", 1, "d2", "t", 2)
    ingest_file(store, write_readings(tmp_path / "a.csv", rows))
    ingest_file(store, write_readings(tmp_path / "b.csv", _rows(DAY, 2, "d3", "t", 1)))
    expected = [H[2], H[9], Hour.parse("2024-03-03T01")]
    counting = GetCounter(store)
    assert hours_with_arrivals(counting) == expected
    records = [p for p in store.list("arrivals") if "/day/" in p]
    assert len(records) == 3 and all(counting.calls[p] == 1 for p in records)
    hours = [H[0] + i for i in range(60)]
    counting = GetCounter(store)
    many = read_arrivals_many(counting, hours)
    assert all(counting.calls[p] == 1 for p in records)
    assert many == {h: read_arrivals(store, h) for h in hours}
    assert many[H[2]] == {Sensor("d1", "t"): 3, Sensor("d3", "t"): 1}
    assert many[H[9]] == {Sensor("d1", "t"): 4}  # an hour file (dense at 4)


def test_a_malformed_day_record_is_named(local_store):
    path = day_arrival_path(H[0], "bad")
    for body in (b"{not json", json.dumps({"hours": {"2024-03-02T01": []}}).encode(),
                 json.dumps({"hours": {"2024-03-01T24": []}}).encode()):
        local_store.put(path, body)
        with pytest.raises(InputError, match=f"arrival record {path} is malformed"):
            hours_with_arrivals(local_store)
        with pytest.raises(InputError, match=path):
            read_arrivals(local_store, H[1])


def test_malformed_rows_of_an_hour_record_are_named(local_store):
    """Records are read column by column: a row of another shape, or a count that is not a
    number, still names the file."""
    from fleetscore.data.arrivals import arrival_path

    path = arrival_path(H[1], "bad")
    for rows in ([["d", "t"]], [["d", "t", 1, 2]], [5], [["d", "t", "x"]], [["d", "t", 1], "abc"]):
        local_store.put(path, json.dumps({"window": str(H[1]), "sensors": rows}).encode())
        with pytest.raises(InputError, match=f"arrival record {path} is malformed"):
            read_arrivals(local_store, H[1])
    local_store.put(path, json.dumps({"sensors": [["d", "t", 2], ["d", "u", 3]]}).encode())
    local_store.put(arrival_path(H[1], "more"), json.dumps({"sensors": [["d", "t", 1]]}).encode())
    assert read_arrivals(local_store, H[1]) == {Sensor("d", "t"): 3, Sensor("d", "u"): 3}


# --- dedup, re-ingest, crashes --------------------------------------------------------------

@pytest.mark.parametrize("dense_first", [True, False])
def test_a_reading_is_counted_once_across_hour_and_day_files(local_store, tmp_path, monkeypatch,
                                                             dense_first):
    first = _rows(DAY, 4, "d1", "t", 6)
    second = first[2:] + _rows(DAY, 4, "d1", "t", 2, second=50)
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 0 if dense_first else 10**6)
    ingest_file(local_store, write_readings(tmp_path / "a.csv", first))
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 10**6 if dense_first else 0)
    result = ingest_file(local_store, write_readings(tmp_path / "b.csv", second))
    assert result.duplicates == 4 and result.windows == 2
    assert any("/day/" in p for p in local_store.list("readings"))
    assert any("/day/" not in p for p in local_store.list("readings"))
    points = read_points(local_store, H[4])
    assert points["Count"].to_pylist() == [2, 2, 1, 1, 1, 1]
    assert sum(read_arrivals(local_store, H[4]).values()) == 8


def test_reingesting_a_file_writes_nothing(local_store, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 5)
    rows = _rows(DAY, 1, "d1", "t", 3) + _rows(DAY, 2, "d1", "t", 8) + _rows("2024-03-05", 1, "d", "t", 1)
    path = write_readings(tmp_path / "r.csv", rows)
    first = ingest_file(local_store, path)
    before = _snapshot(local_store)
    again = ingest_file(local_store, path)
    assert (first.parts_written, again.parts_written, again.parts_existing) == (3, 0, 3)
    assert again.duplicates == 0 and again.hours == first.hours
    assert _snapshot(local_store) == before


@pytest.mark.parametrize("lost", ["windows", "windows+arrivals", "arrivals"])
def test_a_crashed_ingest_of_a_day_completes_when_rerun(store, tmp_path, lost):
    rows = _rows(DAY, 1, "d1", "t", 3) + _rows(DAY, 2, "d2", "t", 4)
    path = write_readings(tmp_path / "r.csv", rows)
    sid = ingest_file(store, path).source_id
    complete = _snapshot(store)
    if "windows" in lost:
        store.delete(day_part_path(H[1], sid))
    if "arrivals" in lost:
        store.delete(day_arrival_path(H[1], sid))
    result = ingest_file(store, path)
    assert result.duplicates == 0 and result.parts_written == int("windows" in lost)
    assert _snapshot(store) == complete


def test_a_late_file_for_a_sparse_hour_merges_with_the_day_part(local_store, tmp_path):
    early = _rows(DAY, 6, "d1", "t", 4)  # windows 06:05, 06:10, ...
    late = [(f"{DAY} 06:00:30.000", "d1", "t", 20.0),  # a new point in the first window
            early[1],  # a reading already stored: skipped
            (f"{DAY} 06:45:00.000", "d1", "t", 7.0),  # a new window
            (f"{DAY} 06:30:00.000", "d9", "t", 1.0)]  # a new sensor
    ingest_file(local_store, write_readings(tmp_path / "a.csv", early))
    result = ingest_file(local_store, write_readings(tmp_path / "b.csv", late))
    assert result.duplicates == 1 and result.windows == 3
    assert len([p for p in local_store.list("windows") if "/day/" in p]) == 2
    rows = [(r["Device"], r["End"] // 1000 % 3600, r["Value"], r["Count"])
            for r in read_points(local_store, H[6]).to_pylist()]
    first = float(early[0][3])
    assert rows == [("d1", 60, (first + 20.0) / 2, 2), ("d1", 360, float(early[1][3]), 1),
                    ("d1", 660, float(early[2][3]), 1), ("d1", 960, float(early[3][3]), 1),
                    ("d1", 2700, 7.0, 1), ("d9", 1800, 1.0, 1)]
    assert read_arrivals(local_store, H[6]) == {Sensor("d1", "t"): 6, Sensor("d9", "t"): 1}


@pytest.mark.parametrize("first_threshold,then", [(0, 10**6), (10**6, 0)])
def test_a_reingest_keeps_the_layout_an_earlier_ingest_gave_the_file(
        local_store, tmp_path, monkeypatch, first_threshold, then):
    """A store written with other thresholds (or by an earlier version): the same file again
    writes nothing and never lays an hour out twice."""
    rows = _rows(DAY, 1, "d1", "t", 3) + _rows(DAY, 2, "d2", "t", 4)
    path = write_readings(tmp_path / "r.csv", rows)
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", first_threshold)
    ingest_file(local_store, path)
    before = _snapshot(local_store)
    points = [read_points(local_store, h) for h in H[:3]]
    monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", then)
    again = ingest_file(local_store, path)
    assert again.parts_written == 0 and again.duplicates == 0
    assert _snapshot(local_store) == before
    assert [read_points(local_store, h) for h in H[:3]] == points


def test_verify_names_a_truncated_day_part(store, tmp_path):
    from fleetscore.runs.verify import verify

    result = ingest_file(store, write_readings(tmp_path / "r.csv", _rows(DAY, 1, "d", "t", 3)))
    assert verify(store) == (1, [])
    part = day_part_path(H[1], result.source_id)
    store.put(part, store.get(part)[:-20])
    checked, problems = verify(store)
    assert checked == 1 and [p.path for p in problems] == [part]
    assert "changed or truncated" in problems[0].reason


def test_an_unreadable_day_part_is_named(local_store, tmp_path):
    result = ingest_file(local_store, write_readings(tmp_path / "r.csv", _rows(DAY, 1, "d", "t", 3)))
    part = day_part_path(H[1], result.source_id)
    local_store.put(part, b"PAR1 not really parquet")
    with pytest.raises(InputError, match=f"window file {part} is unreadable"):
        read_points(local_store, H[1])
    with pytest.raises(InputError, match=f"window file {part} is unreadable"):
        read_points_many(local_store, [H[1]])


# --- property: any split of readings into files, any dense/sparse mix ----------------------

_reading = st.tuples(
    st.integers(0, 2),  # day
    st.sampled_from([0, 1, 23]),  # hour
    st.integers(0, 3599),  # second in the hour
    st.sampled_from([("d1", "t"), ("d1", "u"), ("d2", "t")]),
    st.integers(-50, 50),  # value (tenths)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(readings=st.lists(_reading, min_size=1, max_size=60),
       assignment=st.lists(st.integers(0, 2), min_size=60, max_size=60),
       threshold=st.sampled_from([1, 3, 8, 10**6]))
def test_any_split_into_files_reads_as_one_file(tmp_path_factory, readings, assignment, threshold):
    base = tmp_path_factory.mktemp("prop")
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    rows = []
    # A reading repeated in several files repeats its value: which of two *different* values
    # at one (Device, Tag, TS) is kept depends on which file came first, not on the layout.
    value_of: dict[tuple, int] = {}
    for day, hour, second, (device, tag), tenths in readings:
        ts = t0 + timedelta(days=day, hours=hour, seconds=second)
        tenths = value_of.setdefault((ts, device, tag), tenths)
        rows.append((ts.strftime("%Y-%m-%d %H:%M:%S.000"), device, tag, tenths / 10))
    files: dict[int, list[tuple]] = {}
    for row, f in zip(rows, assignment, strict=False):
        files.setdefault(f, []).append(row)
    # Files overlap: the last file repeats the first one's readings.
    files[3] = files[min(files)]
    single = LocalStore(base / "single")
    ingest_file(single, write_readings(base / "all.csv", rows))
    split, by_hour = LocalStore(base / "split"), LocalStore(base / "by_hour")
    original = ingest_module.SPARSE_HOUR_WINDOWS
    try:
        for store, limit in ((split, threshold), (by_hour, 0)):
            ingest_module.SPARSE_HOUR_WINDOWS = limit
            for f, part in sorted(files.items()):
                ingest_file(store, write_readings(base / f"{f}.csv", part))
    finally:
        ingest_module.SPARSE_HOUR_WINDOWS = original
    hours = [Hour.from_datetime(t0) + i for i in range(72)]
    assert hours_with_arrivals(split) == hours_with_arrivals(single)
    many = read_points_many(split, hours)
    arrivals = read_arrivals_many(split, hours)
    for hour in hours:
        got, want = read_points(split, hour), read_points(single, hour)
        assert got.equals(many[hour])
        assert got.equals(read_points(by_hour, hour))  # the layout never changes a bit
        assert got.select(["Device", "Tag", "End", "Count"]).equals(
            want.select(["Device", "Tag", "End", "Count"]))
        assert np.allclose(got["Value"].to_numpy(), want["Value"].to_numpy(), rtol=1e-12, atol=1e-12)
        # Counts are per source (a window two files touch counts twice), as in hour records.
        assert arrivals[hour] == read_arrivals(split, hour) == read_arrivals(by_hour, hour)
        assert set(arrivals[hour]) == set(read_arrivals(single, hour))


def test_a_day_record_is_never_written_before_its_part(local_store, tmp_path):
    """An ingest that dies writing a day's window part leaves no record announcing it; the
    rerun completes the day."""
    from fleetscore.errors import StoreError

    class FailingWindows(GetCounter):
        def put(self, path, data, **kw):
            if path.startswith("windows/") and "/day/" in path:
                raise StoreError(f"cannot write {path}")
            return self.inner.put(path, data, **kw)

    path = write_readings(tmp_path / "r.csv", _rows(DAY, 1, "d", "t", 3))
    with pytest.raises(StoreError):
        ingest_file(FailingWindows(local_store), path)
    assert not list(local_store.list("arrivals")) and hours_with_arrivals(local_store) == []
    result = ingest_file(local_store, path)
    assert result.duplicates == 0 and result.parts_written == 1
    assert read_arrivals(local_store, H[1]) == {Sensor("d", "t"): 3}


def test_hour_files_and_day_parts_of_one_window_merge_in_the_hour_layouts_order(
        tmp_path, monkeypatch):
    """Three sources in one window, one of them dense: the floats add up in the order hour
    files alone would give ((0.1 + 0.2) + 0.3 differs from 0.1 + (0.2 + 0.3) in the last bit)."""
    seen = set()
    for values in [(0.1, 0.2, 0.3), (0.3, 0.1, 0.2), (0.2, 0.3, 0.1)]:
        files = [write_readings(tmp_path / f"{values}-{i}.csv",
                                [(f"{DAY} 05:00:{10 * (i + 1)}.000", "d", "t", v)])
                 for i, v in enumerate(values)]
        by_hour = LocalStore(tmp_path / f"{values}-hours")
        monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 0)
        for f in files:
            ingest_file(by_hour, f)
        expected = read_points(by_hour, H[5])
        seen.add(expected["Value"][0].as_py())
        for dense in range(3):
            mixed = LocalStore(tmp_path / f"{values}-{dense}")
            for i, f in enumerate(files):
                monkeypatch.setattr(ingest_module, "SPARSE_HOUR_WINDOWS", 0 if i == dense else 10**6)
                ingest_file(mixed, f)
            assert len([p for p in mixed.list("windows") if "/day/" in p]) == 2
            assert read_points(mixed, H[5]).equals(expected)
            assert read_points_many(mixed, [H[5]])[H[5]].equals(expected)
    assert len(seen) > 1  # the order shows in the bits


def test_a_missing_day_part_is_named_as_the_hours_missing_input(local_store, tmp_path):
    """A rerun whose sensor lost its input names what is gone: for a sparse hour, the day
    part its day record names (not 'no arrival record names it')."""
    from fleetscore.runs.lifecycle import missing_inputs

    ingest_file(local_store, write_readings(tmp_path / "r.csv", _rows(DAY, 1, "d1", "t", 12)))
    (part,) = [p for p in _files(local_store, "windows") if "/day/" in p]
    local_store.delete(part)
    assert missing_inputs(local_store, H[1]) == f"{part} is missing"
    assert "no arrival record" in missing_inputs(local_store, H[5])  # no data that hour
