"""The Stream Analytics query and the local aggregation: same windows, same fields, same hours."""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.data.readings import parse_ts
from fleetscore.data.windows import read_points
from fleetscore.settings import DEFAULT_INTERVAL_S
from tests.conftest import ROOT

QUERY = (ROOT / "stream_analytics" / "query.asaql").read_text()
BODY = re.sub(r"--[^\n]*", "", QUERY)  # the query without its comments


def test_stream_query_window_matches_the_local_default():
    windows = re.findall(r"TumblingWindow\(\s*second\s*,\s*(\d+)\s*\)", BODY, re.I)
    assert windows == [str(DEFAULT_INTERVAL_S)]
    assert re.search(r"FROM\s+readings\s+TIMESTAMP\s+BY\s+TS", BODY, re.I)
    assert re.search(r"TRY_CAST\(Value AS float\)\s+AS\s+Value", BODY)
    assert re.search(r"AVG\(Value\)\s+AS\s+Value", BODY)
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


def _try_cast_float(text: str) -> float | None:
    """TRY_CAST(x AS float): the value, or NULL when the cast fails (never an error)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _query_semantics(path):
    """The query, evaluated by hand: TRY_CAST of Value with NULLs dropped, TumblingWindow(second,
    60) with AVG and COUNT, and the WindowHour folder of each window (the hour of WindowEnd - 1 ms)."""
    sums, counts = defaultdict(float), defaultdict(int)
    with open(path) as f:
        for row in csv.DictReader(f):
            value = _try_cast_float(row["Value"])
            if value is None:
                continue  # WHERE Value IS NOT NULL
            row["Value"] = value
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


# --- bad values: TRY_CAST, never CAST ------------------------------------------------------------


def test_stream_query_never_casts_input_fields_with_cast():
    """One event whose Value is not a number would stop the whole job with CAST; TRY_CAST
    gives NULL and the reading is dropped (https://learn.microsoft.com/stream-analytics-query/
    try-cast-azure-stream-analytics)."""
    assert not re.search(r"(?<!TRY_)CAST\(\s*(Value|Device|Tag)\b", BODY)
    for field, kind in (("Value", "float"), ("Device", "nvarchar\\(max\\)"),
                        ("Tag", "nvarchar\\(max\\)")):
        assert re.search(rf"TRY_CAST\({field} AS {kind}\) AS {field}", BODY), field
    windows = re.search(r"Windows AS \((.*?)\n\)", BODY, re.S).group(1)
    assert re.search(r"WHERE Value IS NOT NULL AND Device IS NOT NULL AND Tag IS NOT NULL",
                     windows)
    # The cast happens in the step that reads the input with its event time.
    assert re.search(r"TRY_CAST\(Value AS float\) AS Value\s+FROM readings TIMESTAMP BY TS", BODY)


def test_stream_semantics_drop_bad_values_as_local_ingest_rejects_them(local_store, tmp_path):
    from tests.conftest import minute_readings, write_readings

    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 5) + \
        minute_readings("2", "7", "2024-03-01 00:00:00", 5, seed=1)
    for i, bad in ((3, "abc"), (7, ""), (25, "n/a")):
        rows[i] = (*rows[i][:3], bad)
    path = write_readings(tmp_path / "bad.csv", sorted(rows, key=lambda r: (r[0], r[1])))
    expected = _query_semantics(path)
    assert sum(count for _, count, _ in expected.values()) == len(rows) - 3
    ingest_file(local_store, path)
    seen = {(r["Device"], r["Tag"], r["End"]): (r["Value"], r["Count"])
            for r in read_points(local_store, Hour.parse("2024-03-01T00")).to_pylist()}
    assert seen.keys() == expected.keys()
    for key, (value, count) in seen.items():
        assert count == expected[key][1] and math.isclose(value, expected[key][0], rel_tol=1e-12)


# --- event ordering: the job's policy and what it does to late, early and historical events -----

STREAM_BICEP = (ROOT / "infra" / "modules" / "stream.bicep").read_text()
EARLY_ARRIVAL_S = 300  # fixed by the service: events more than 5 minutes early are dropped


def ordering_policy() -> tuple[str, int, int]:
    """(action, out-of-order tolerance s, late-arrival tolerance s) as infra deploys the job."""
    action = re.search(r"eventsOutOfOrderPolicy:\s*'(\w+)'", STREAM_BICEP).group(1)
    out_of_order = int(re.search(r"eventsOutOfOrderMaxDelayInSeconds:\s*(\d+)", STREAM_BICEP).group(1))
    late = int(re.search(r"eventsLateArrivalMaxDelayInSeconds:\s*(\d+)", STREAM_BICEP).group(1))
    return action, out_of_order, late


class EventOrdering:
    """One input partition under the documented policies (learn.microsoft.com/azure/
    stream-analytics/event-ordering and .../stream-analytics-time-handling): an event more than
    the late-arrival tolerance behind its arrival time is dropped, or with Adjust re-timed to
    arrival - tolerance; then one behind the watermark (the largest event time seen minus the
    out-of-order tolerance) is dropped, or with Adjust re-timed to the watermark; an event more
    than 5 minutes ahead of its arrival is dropped. Returns System.Timestamp, or None (dropped)."""

    def __init__(self, action: str, out_of_order_s: int, late_s: int) -> None:
        self.action, self.out_of_order_ms, self.late_ms = action, out_of_order_s * 1000, late_s * 1000
        self.max_seen_ms: int | None = None

    def accept(self, event_ms: int, arrival_ms: int) -> int | None:
        if event_ms > arrival_ms + EARLY_ARRIVAL_S * 1000:
            return None
        if arrival_ms - event_ms > self.late_ms:
            if self.action == "Drop":
                return None
            event_ms = arrival_ms - self.late_ms
        if self.max_seen_ms is not None and event_ms < self.max_seen_ms - self.out_of_order_ms:
            if self.action == "Drop":
                return None
            event_ms = self.max_seen_ms - self.out_of_order_ms
        self.max_seen_ms = event_ms if self.max_seen_ms is None else max(self.max_seen_ms, event_ms)
        return event_ms


def test_event_ordering_policy_drops_instead_of_moving_events_into_the_current_window():
    action, out_of_order, late = ordering_policy()
    assert action == "Drop"
    assert (out_of_order, late) == (60, 120)
    # The policy's latest output of hour H's last window, plus the blob output's batching of up
    # to a minute, comes before the timer scores H at H+1:05 (SCORING_SCHEDULE "0 5 * * * *").
    schedule = re.search(r"param scoringSchedule string = '([^']+)'",
                         (ROOT / "infra" / "main.bicep").read_text()).group(1)
    minute = int(schedule.split()[1])
    assert max(out_of_order, late) + 60 + 60 <= minute * 60
    now = int(datetime(2026, 1, 5, 10, 30, tzinfo=UTC).timestamp() * 1000)
    job = EventOrdering(action, out_of_order, late)
    assert job.accept(now - 10_000, now) == now - 10_000  # on time
    assert job.accept(now - 90_000, now + 1000) is None  # within the late tolerance, but more
    # than 60 s behind the newest event of its partition: out of order beyond tolerance
    fresh = EventOrdering(action, out_of_order, late)
    assert fresh.accept(now - 110_000, now) == now - 110_000  # 110 s late: kept, own window
    assert fresh.accept(now - 130_000, now) is None  # 130 s late: dropped
    assert fresh.accept(now + 301_000, now) is None  # more than 5 minutes early: dropped


def test_event_ordering_historical_events_are_dropped_not_stamped_with_the_current_hour():
    """The reason for Drop: with Adjust a reading of 2018 sent today is stamped today."""
    _, out_of_order, late = ordering_policy()
    now = int(datetime(2026, 1, 5, 10, 30, tzinfo=UTC).timestamp() * 1000)
    historical = int(datetime(2018, 8, 28, 23, 0, 5, tzinfo=UTC).timestamp() * 1000)
    adjust = EventOrdering("Adjust", out_of_order, late)
    stamped = adjust.accept(historical, now)
    assert stamped == now - late * 1000  # lands in the current hour's windows: wrong data
    assert EventOrdering("Drop", out_of_order, late).accept(historical, now) is None
