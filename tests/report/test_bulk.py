"""The report and `fleetscore runs` over a backfill read manifests and predictions in bulk:
the same tables and counts as reading hour by hour, each file read once, odd files handled."""

from __future__ import annotations

import html
import json
import random

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.text import count
from fleetscore.data.predictions import COLUMNS, SCHEMA, decode, encode, predictions_folder
from fleetscore.report.data import _Span
from fleetscore.report.html import (
    DAILY_TABLE_HOURS,
    NOT_RUN,
    _daily_table,
    _runs_summary,
    _runs_table,
    hour_rows,
    write_report,
)
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import list_manifests, manifest_path, run_hour
from fleetscore.runs.table import _parse_manifests, read_runs, summarize
from fleetscore.runs.table import hour_rows as runs_hour_rows
from tests.conftest import folded_predictions

# --- the hour-by-hour reading the report had before (the oracle) ---------------------------


def old_daily_table(hours, manifests, rows):
    days = {}
    for hour, status, _ in hour_rows(hours, manifests, rows):
        day = days.setdefault(hour[:10], {})
        day[status] = day.get(status, 0) + 1
    by_window = {m["window"]: m for m in manifests}
    scored, anomalies = {}, {}
    for window, m in by_window.items():
        scored[window[:10]] = scored.get(window[:10], 0) + m.get("sensors", {}).get("scored", 0)
        anomalies[window[:10]] = anomalies.get(window[:10], 0) + m.get("anomalies", 0)
    statuses = ["succeeded", "partial", "failed", "no_data", NOT_RUN]
    head = ("<tr><th>day</th>" + "".join(f"<th>{html.escape(s.replace('_', ' '))}</th>"
                                         for s in statuses)
            + "<th>scored</th><th>anomalies</th></tr>")
    body = []
    for day, counts in sorted(days.items()):
        if counts.get(NOT_RUN, 0) == sum(counts.values()) and not any(
                (rows or {}).get(f"{day}T{h:02d}") for h in range(24)):
            continue
        body.append(f"<tr data-day='{day}'><td>{day}</td>"
                    + "".join(f"<td>{counts.get(s, 0) or ''}</td>" for s in statuses)
                    + f"<td>{scored.get(day, 0):,}</td><td>{anomalies.get(day, 0):,}</td></tr>")
    return (f"<p class='note'>{count(len(hours), 'hour')}: one row per day with runs "
            f"(hourly rows for ranges of {DAILY_TABLE_HOURS // 24} days or less).</p>"
            f"<div class='scroll'><table class='runs daily'>{head}{''.join(body)}</table></div>")


def old_runs_summary(hours, manifests):
    statuses = {}
    for _, status, _ in hour_rows(hours, manifests):
        statuses[status.replace("_", " ")] = statuses.get(status.replace("_", " "), 0) + 1
    parts = ", ".join(f"{n:,} {s}" for s, n in sorted(statuses.items(), key=lambda kv: -kv[1]))
    return f"Every hour of the range, run or not: {count(len(hours), 'hour')} ({parts})."


def synthetic(first: Hour, hours: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Manifests for a random share of the hours (some statuses missing or unusual) and
    the predictions each run's files hold."""
    rng = random.Random(seed)
    manifests, rows = [], {}
    for hour in hour_range(first, first + (hours - 1)):
        if rng.random() < 0.4:
            continue
        status = rng.choice(["succeeded", "succeeded", "partial", "failed", "no_data", None])
        m = {"window": str(hour), "anomalies": rng.randrange(5), "duration_s": rng.random(),
             "sensors": {"planned": 7, "scored": rng.randrange(8), "failed": rng.randrange(2),
                         "no_data": 0, "no_model": 0}, "predictions": []}
        if status is not None:
            m["status"] = status
        manifests.append(m)
        rows[str(hour)] = rng.choice([0, 0, 3, 60])
    return manifests, rows


def span_of(first: Hour, hours: int, manifests: list[dict], rows: dict[str, int]) -> _Span:
    runs = summarize(_parse_manifests([json.dumps(m, separators=(",", ":")).encode()
                                       for m in manifests]))
    per_run = np.array([rows[w] for w in runs["window"].to_pylist()], dtype=np.int64)
    return _Span(first, first + (hours - 1), runs, per_run)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_day_table_and_summary_read_as_the_hour_by_hour_tables(seed):
    first = Hour.parse("2023-12-30T07")  # a partial first day, a year's end
    hours = 60 * 24 + 5
    manifests, rows = synthetic(first, hours, seed)
    span = span_of(first, hours, manifests, rows)
    all_hours = hour_range(first, first + (hours - 1))
    every_hour_rows = {str(h): rows.get(str(h), 0) for h in all_hours}
    assert _daily_table(span) == old_daily_table(all_hours, manifests, every_hour_rows)
    assert _runs_summary(span) == old_runs_summary(all_hours, manifests)
    assert "<tr data-day=" in _daily_table(span)


def test_a_short_range_keeps_its_hourly_table():
    first = Hour.parse("2024-03-01T00")
    manifests, rows = synthetic(first, 30, seed=4)
    span = span_of(first, 30, manifests, rows)
    table = _runs_table(span)
    hours = hour_range(first, first + 29)
    expected = hour_rows(hours, manifests, {str(h): rows.get(str(h), 0) for h in hours})
    assert table.count("<tr data-hour=") == 30
    for hour, status, cells in expected:
        css = "not-run" if status == NOT_RUN else status
        assert (f"<tr data-hour='{hour}'><td>{hour}</td><td class='{css}'>"
                f"{status.replace('_', ' ')}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                ) in table
    assert _runs_summary(span) == old_runs_summary(hours, manifests)


# --- manifests ------------------------------------------------------------------------------


def test_manifests_read_in_bulk_say_what_list_manifests_says(trained_store):
    for hour in ("2024-03-01T00", "2024-03-01T01", "2024-03-01T02"):
        run_hour(trained_store, Hour.parse(hour), SequentialBackend(trained_store, ENGINE))
    # One manifest on one line, as a backfill may write it; one indented.
    path = manifest_path(Hour.parse("2024-03-01T01"))
    trained_store.put(path, json.dumps(json.loads(trained_store.get(path)),
                                       separators=(",", ":")).encode())
    runs = read_runs(trained_store)
    expected = [m.to_json() for m in list_manifests(trained_store)]
    assert runs["window"].to_pylist() == [m["window"] for m in expected]
    assert runs["status"].to_pylist() == [m["status"] for m in expected]
    assert runs["scored"].to_pylist() == [m["sensors"]["scored"] for m in expected]
    assert runs["anomalies"].to_pylist() == [m["anomalies"] for m in expected]
    assert runs["run_id"].to_pylist() == [m["run_id"] for m in expected]
    assert [[p["path"] for p in ps] for ps in runs["predictions"].to_pylist()] == [
        [p["path"] for p in m["predictions"]] for m in expected]
    assert runs["hour"].to_pylist() == [Hour.parse(m["window"]).index for m in expected]


@pytest.mark.parametrize("odd", [b"{not json", b"", b"[1, 2]", b'{"window": "x"}{"a": 1}'])
def test_an_odd_manifest_is_skipped_and_the_others_still_read(odd):
    good = [{"window": "2024-03-01T02", "status": "succeeded", "anomalies": 2,
             "sensors": {"scored": 3}, "failures": [{"sensor": "a/b", "kind": "K",
                                                     "message": "m", "unit": "u0"}]},
            # a float count and a missing status: the one-by-one reading takes them too
            {"window": "2024-03-01T01", "anomalies": 1.0, "predictions": [{"path": "p.csv"}]},
            {"status": "succeeded"},  # no window: not an hour's run
            {"window": "2024-13-01T00", "status": "succeeded"}]  # not an hour
    runs = summarize(_parse_manifests([json.dumps(m).encode() for m in good] + [odd]))
    assert runs.num_rows == 2
    assert runs["window"].to_pylist() == ["2024-03-01T01", "2024-03-01T02"]
    assert runs["status"].to_pylist() == [None, "succeeded"]
    assert runs["anomalies"].to_pylist() == [1, 2]
    assert runs["failures"].to_pylist()[1] == [{"sensor": "a/b", "kind": "K", "message": "m"}]
    assert runs["predictions"].to_pylist() == [[{"path": "p.csv"}], None]


def test_the_later_of_two_manifests_for_one_hour_wins_as_in_list_manifests(local_store):
    local_store.put("runs/2024-03-01T01.json", json.dumps(
        {"window": "2024-03-01T01", "status": "failed"}).encode())
    local_store.put("runs/x-copy.json", json.dumps(
        {"window": "2024-03-01T01", "status": "succeeded"}).encode())
    assert {m.window: m.status for m in list_manifests(local_store)} == {
        "2024-03-01T01": "succeeded"}
    assert read_runs(local_store)["status"].to_pylist() == ["succeeded"]


class RecordingStore:
    """A store that remembers what was read (and is not a LocalStore: the concurrent path)."""

    def __init__(self, inner):
        self.inner, self.url, self.read = inner, inner.url, []

    def get(self, path):
        self.read.append(path)
        return self.inner.get(path)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_runs_of_a_range_read_only_that_range_manifests(trained_store):
    for hour in ("2024-03-01T00", "2024-03-01T01", "2024-03-01T02"):
        run_hour(trained_store, Hour.parse(hour), SequentialBackend(trained_store, ENGINE))
    store = RecordingStore(trained_store)
    rows = runs_hour_rows(store, first=Hour.parse("2024-03-01T01"),
                          last=Hour.parse("2024-03-01T01"))
    assert [(r.window, r.status, r.scored) for r in rows] == [("2024-03-01T01", "succeeded", 3)]
    assert [p for p in store.read if p.startswith("runs/")] == ["runs/2024-03-01T01.json"]
    every = runs_hour_rows(store)
    assert [r.window for r in every] == ["2024-03-01T00", "2024-03-01T01", "2024-03-01T02"]
    assert all(r.status == "succeeded" and r.has_data for r in every)


# --- predictions files ----------------------------------------------------------------------


def table(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(COLUMNS, r, strict=True)) for r in rows], schema=SCHEMA)


def rows_of(t: pa.Table) -> list[tuple]:
    return sorted(zip(*(t[c].to_pylist() for c in ("TS", "Device", "Tag", "Val", "Prediction")),
                      strict=True))


@pytest.mark.parametrize("use_local", [True, False])
def test_predictions_files_are_read_once_each_and_counted_per_run(local_store, use_local):
    a = table([("2024-03-01 00:01:00", "d", "t", 1.0, 0, 0.1),
               ("2024-03-01 00:02:00", "d", "t", 2.0, 1, None)])
    b = table([("2024-03-01 01:01:00", "d", "u", 3.0, 1, 0.3)])
    c = table([("2024-03-01 02:01:00", "e", "t", 4.0, 0, 0.4),
               ("2024-03-01 02:02:00", "e", "t", 5.0, 0, 0.5),
               ("2024-03-01 02:03:00", "e", "t", 6.0, 1, 0.6)])
    files = {
        "predictions/a.csv": encode([a]),  # as written
        "predictions/b.csv": encode([b]).rstrip(b"\n"),  # no final line break
        "predictions/c.parquet": encode([c], "parquet"),
        "predictions/empty.csv": encode([]),  # a header, no row
        "predictions/shared.csv": encode([b]),  # listed by two hours
    }
    for path, data in files.items():
        local_store.put(path, data)
    manifests = [
        {"window": "2024-03-01T00", "predictions": [{"path": "predictions/a.csv"},
                                                    {"path": "predictions/empty.csv"}]},
        {"window": "2024-03-01T01", "predictions": [{"path": "predictions/b.csv"},
                                                    {"path": "predictions/shared.csv"}]},
        {"window": "2024-03-01T02", "predictions": [{"path": "predictions/c.parquet"},
                                                    {"path": "predictions/shared.csv"}]},
        {"window": "2024-03-01T03", "predictions": []},
    ]
    runs = summarize(_parse_manifests([json.dumps(m).encode() for m in manifests]))
    store = local_store if use_local else RecordingStore(local_store)
    preds, rows = folded_predictions(store, runs)
    assert rows.tolist() == [2, 2, 4, 0]
    assert rows_of(preds) == rows_of(pa.concat_tables([a, b, c, b]))  # the shared file once
    if not use_local:
        assert sorted(store.read) == sorted(files)


@pytest.mark.parametrize("separate", [None, 0])
def test_a_csv_not_as_written_is_read_on_its_own(local_store, monkeypatch, separate):
    if separate is not None:  # every CSV parsed on its own, as a large one is
        import fleetscore.report.data

        monkeypatch.setattr(fleetscore.report.data, "SEPARATE_BYTES", separate)
    a = table([("2024-03-01 00:01:00", "d", "t", 1.0, 0, 0.1)])
    odd = (b"Device,Tag,TS,Val,Prediction,Score\n"  # another column order
           b"d,x,2024-03-01 00:03:00,7.5,1,0.9\n")
    blank = encode([a]) + b"\n" + b"2024-03-01 00:05:00,d,y,8.0,0,0.2\n"  # a blank line
    for path, data in {"p/a.csv": encode([a]), "p/odd.csv": odd, "p/blank.csv": blank}.items():
        local_store.put(path, data)
    runs = summarize(_parse_manifests([json.dumps(
        {"window": "2024-03-01T00", "predictions": [{"path": "p/a.csv"}, {"path": "p/odd.csv"},
                                                    {"path": "p/blank.csv"}]}).encode()]))
    preds, rows = folded_predictions(local_store, runs)
    expected = pa.concat_tables([decode(local_store.get(p), p)
                                 for p in ("p/a.csv", "p/odd.csv", "p/blank.csv")])
    assert rows.tolist() == [expected.num_rows] == [4]
    assert rows_of(preds) == rows_of(expected)


def test_the_report_reads_compact_manifests_and_hours_of_an_earlier_version(trained_store,
                                                                             tmp_path):
    for hour in ("2024-03-01T00", "2024-03-01T01", "2024-03-01T02"):
        run_hour(trained_store, Hour.parse(hour), SequentialBackend(trained_store, ENGINE))
    before = write_report(trained_store, tmp_path / "a.html")
    assert before == "3 hours, 3 runs, 540 predictions"
    # T01 on one line; T02 as an earlier version wrote it: no list, its folder's files count.
    for hour, drop in (("2024-03-01T01", False), ("2024-03-01T02", True)):
        path = manifest_path(Hour.parse(hour))
        m = json.loads(trained_store.get(path))
        if drop:
            del m["predictions"]
        trained_store.put(path, json.dumps(m, separators=(",", ":")).encode())
    assert list(trained_store.list(predictions_folder(Hour.parse("2024-03-01T02"))))
    assert write_report(trained_store, tmp_path / "b.html") == before
    page = (tmp_path / "b.html").read_text()
    assert page.count("<td class='succeeded'>succeeded</td><td>") == 3
    runs_table = page[page.index("<table class='runs'>"):]
    assert runs_table.count("<td>180</td>") == 3  # predictions per hour


def test_a_listed_file_that_is_missing_is_an_error_not_a_silent_gap(trained_store, tmp_path):
    from fleetscore.errors import NotFound

    run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    for path in list(trained_store.list(predictions_folder(Hour.parse("2024-03-01T01")))):
        trained_store.delete(path)
    with pytest.raises(NotFound):
        write_report(trained_store, tmp_path / "r.html")


def test_the_summary_orders_ties_as_the_hours_first_show_them():
    first = Hour.parse("2024-03-01T00")
    # T00 not run, T01 failed, T02 succeeded, T03 failed, T04 succeeded, T05 not run
    manifests = [{"window": "2024-03-01T01", "status": "failed"},
                 {"window": "2024-03-01T02", "status": "succeeded"},
                 {"window": "2024-03-01T03", "status": "failed"},
                 {"window": "2024-03-01T04", "status": "succeeded"}]
    span = span_of(first, 6, manifests, dict.fromkeys((m["window"] for m in manifests), 0))
    expected = old_runs_summary(hour_range(first, first + 5), manifests)
    assert expected.endswith("(2 not run, 2 failed, 2 succeeded).")
    assert _runs_summary(span) == expected
    long = span_of(first, 400, manifests, dict.fromkeys((m["window"] for m in manifests), 0))
    assert _runs_summary(long) == old_runs_summary(hour_range(first, first + 399), manifests)


def test_a_range_takes_the_runs_whose_window_is_in_it_whatever_the_file_name(local_store,
                                                                            tmp_path):
    for name, window in (("2024-03-01T01", "2024-03-01T01"), ("copy-a", "2024-03-01T02"),
                         ("copy-b", "2023-01-01T00")):
        local_store.put(f"runs/{name}.json", json.dumps(
            {"window": window, "status": "no_data", "predictions": []}).encode())
    first, last = Hour.parse("2024-03-01T00"), Hour.parse("2024-03-01T03")
    assert read_runs(local_store, first=first, last=last)["window"].to_pylist() == [
        "2024-03-01T01", "2024-03-01T02"]
    info = write_report(local_store, tmp_path / "r.html", first=first, last=last)
    assert info == "4 hours, 2 runs, 0 predictions"
    # No data anywhere: the default range is the runs' hours but no_data ones, so none here.
    assert write_report(local_store, tmp_path / "r.html").startswith("0 hours, 0 runs")
