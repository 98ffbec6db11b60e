"""The Stream Analytics query and the local aggregation: same windows, same fields, same hours."""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.hours import Hour
from fleetscore.ingest import ingest_file
from fleetscore.readings import parse_ts
from fleetscore.settings import DEFAULT_INTERVAL_S
from fleetscore.windows import read_points
from tests.conftest import ROOT

QUERY = (ROOT / "stream_analytics" / "query.asaql").read_text()
BODY = re.sub(r"--[^\n]*", "", QUERY)  # the query without its comments


def test_stream_query_window_matches_the_local_default():
    windows = re.findall(r"TumblingWindow\(\s*second\s*,\s*(\d+)\s*\)", BODY, re.I)
    assert windows == [str(DEFAULT_INTERVAL_S)]
    assert re.search(r"FROM\s+readings\s+TIMESTAMP\s+BY\s+TS", BODY, re.I)
    assert re.search(r"AVG\(CAST\(Value AS float\)\)\s+AS\s+Value", BODY)
    assert re.search(r"COUNT\(\*\)\s+AS\s+\[Count\]", BODY)
    assert re.search(r"System\.Timestamp\(\)\s+AS\s+WindowEnd", BODY)
    assert re.search(r"GROUP BY .*Device.*Tag.*TumblingWindow", BODY)


def test_stream_query_outputs_carry_the_fields_the_store_and_arrivals_read():
    blob = re.search(r"SELECT (.*?)\s+INTO windowsblob", BODY, re.S).group(1)
    hub = re.search(r"SELECT (.*?)\s+INTO windowshub", BODY, re.S).group(1)
    for field in ("Device", "Tag", "WindowEnd", "Value", "[Count]", "WindowHour"):
        assert field in blob
    for field in ("DeviceId", "Tag", "WindowEnd", "Value", "[Count]"):
        assert field in hub
    stream_bicep = (ROOT / "infra" / "modules" / "stream.bicep").read_text()
    assert "windows/{WindowHour}" in stream_bicep
    for name in ("'readings'", "'windowsblob'", "'windowshub'"):
        assert name in stream_bicep
    assert "loadTextContent('../../stream_analytics/query.asaql')" in stream_bicep


def _query_semantics(path):
    """The query, evaluated by hand: TumblingWindow(second, 60) with AVG and COUNT, and the
    WindowHour folder of each window (the hour of WindowEnd - 1 ms)."""
    sums, counts = defaultdict(float), defaultdict(int)
    with open(path) as f:
        for row in csv.DictReader(f):
            ts = parse_ts(row["TS"])
            end = math.ceil(ts / 60_000) * 60_000  # System.Timestamp() of the window
            key = (row["Device"], row["Tag"], end)
            sums[key] += float(row["Value"])
            counts[key] += 1
    out = {}
    for key in sums:
        end = datetime.fromtimestamp(key[2] / 1000, tz=UTC)
        folder = (end - timedelta(milliseconds=1)).strftime("%Y/%m/%d/%H")
        out[key] = (sums[key] / counts[key], counts[key], folder)
    return out


def test_stream_semantics_equal_the_local_aggregation_on_the_reference_data(local_store, refdata):
    expected = _query_semantics(refdata)
    ingest_file(local_store, refdata)
    seen = {}
    folders = {p.rsplit("/", 1)[0].removeprefix("windows/") for p in local_store.list("windows")}
    for folder in sorted(folders):
        hour = Hour.parse(folder[:4] + "-" + folder[5:7] + "-" + folder[8:10] + "T" + folder[11:13])
        for r in read_points(local_store, hour).to_pylist():
            seen[(r["Device"], r["Tag"], r["End"])] = (r["Value"], r["Count"], folder)
    assert seen.keys() == expected.keys()
    for key, (value, count, folder) in seen.items():
        e_value, e_count, e_folder = expected[key]
        assert (count, folder) == (e_count, e_folder)
        assert math.isclose(value, e_value, rel_tol=1e-12)


def test_stream_analytics_parquet_files_are_read_like_local_parts(local_store):
    """A file as the job writes it: unsorted, microsecond timestamps, an extra column."""
    hour = Hour.parse("2024-03-01T01")
    ends = [datetime(2024, 3, 1, 2, 0, tzinfo=UTC), datetime(2024, 3, 1, 1, 1, tzinfo=UTC)]
    table = pa.table({
        "Device": ["7", "7"], "Tag": ["1", "1"],
        "WindowEnd": pa.array(ends, pa.timestamp("us", tz="UTC")),
        "Value": [2.5, 1.5], "Count": pa.array([4, 5], pa.int64()),
        "WindowHour": ["2024/03/01/01", "2024/03/01/01"],
    })
    import io

    sink = io.BytesIO()
    pq.write_table(table, sink)
    local_store.put("windows/2024/03/01/01/0_4f1e_1.parquet", sink.getvalue())
    rows = read_points(local_store, hour).to_pylist()
    assert [(r["End"], r["Value"], r["Count"]) for r in rows] == [
        (int(ends[1].timestamp() * 1000), 1.5, 5), (int(ends[0].timestamp() * 1000), 2.5, 4)]
