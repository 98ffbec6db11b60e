"""The report at fleet size: whatever the number of sensors, a bounded page that names the
sensors with the most anomalies and gives the fleet's totals; predictions folded in batches
give the same figures as all at once. Nothing here is timed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fleetscore.report.data as report_data
from benchmarks.bench import BENCH_HOUR
from benchmarks.bench_report import NOISY_EVERY, build, run
from fleetscore.core.hours import Hour
from fleetscore.report.data import HEATMAP_SENSORS, Axis, _Fold, _fold_predictions
from fleetscore.report.html import FAILURES_SHOWN, TOP_SENSORS, write_report
from fleetscore.runs.table import _parse_manifests, read_runs, summarize
from fleetscore.storage import LocalStore
from tests.conftest import folded_predictions

SENSORS = 2_000
HOURS = 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    store = LocalStore(root / "store")
    built = build(store, SENSORS, HOURS, sample=8, workers=1)
    out = root / "report.html"
    info = write_report(store, out)
    return store, built, info, out.read_text()


def top_rows(page: str) -> list[tuple[str, int, int]]:
    return [(name, int(a.replace(",", "")), int(w.replace(",", ""))) for name, a, w in re.findall(
        # The name cell may carry the noisy-sensor mark after the name.
        r"<tr data-sensor='([^']*)'><td>\d+</td><td>[^<]*(?:<span class='noisy'[^>]*>[^<]*"
        r"</span>)?</td><td>([\d,]+)</td><td>([\d,]+)</td>",
        page)]


def test_a_fleet_report_names_the_top_sensors_and_the_totals(fleet):
    store, built, info, page = fleet
    assert info == f"{HOURS} hours, {HOURS} runs, {built['scored'] * 60:,} predictions"
    rows = top_rows(page)
    assert len(rows) == TOP_SENSORS
    # The noisy sensors (one in NOISY_EVERY) have by far the most anomalies: they lead.
    noisy = {f"b{i // 8:06d}/t{i % 8}" for i in range(SENSORS) if i % NOISY_EVERY == 7}
    assert {name for name, _, _ in rows[:len(noisy)]} == noisy
    # They flag most of their points: the guard marks each of them (others only for an hour
    # in which a burst of their anomalies reached its hour share).
    marked = set(re.findall(r"<tr data-sensor='([^']*)'><td>\d+</td><td>[^<]*<span class='noisy'",
                            page))
    assert noisy <= marked
    anomalies = [a for _, a, _ in rows]
    assert anomalies == sorted(anomalies, reverse=True)
    assert all(w == 60 * HOURS for _, _, w in rows)
    # Totals: every sensor, every window, the anomalies the runs' manifests count.
    assert (f"{built['scored'] // HOURS:,} sensors scored, {built['scored'] * 60:,} windows, "
            f"{built['anomalies']:,} anomalies") in page
    # The charts: the heatmap's rows and the timelines are the top sensors, not the fleet.
    assert f"one row for each of the {HEATMAP_SENSORS} sensors" in page
    assert rows[0][0] in page[page.index("Line charts"):]


def test_a_fleet_report_stays_small_whatever_the_fleet(fleet):
    _, _, _, page = fleet
    # Nothing grows with the fleet: no row, line or label per sensor beyond the top ones.
    assert page.count("<tr data-sensor=") == TOP_SENSORS
    assert page.count("<tr") < TOP_SENSORS + HOURS + FAILURES_SHOWN + 10
    assert page.count("b00") < 4 * TOP_SENSORS
    assert len(page) < 1_500_000


def test_failed_sensors_beyond_the_listed_rows_are_counted(local_store, tmp_path):
    failures = [{"sensor": f"d{i}/t", "kind": "ModelNotFound", "message": "no model"}
                for i in range(3 * FAILURES_SHOWN)]
    local_store.put("runs/2024-03-01T00.json", json.dumps(
        {"window": "2024-03-01T00", "status": "partial", "failures": failures,
         "predictions": []}).encode())
    hour = Hour.parse("2024-03-01T00")
    write_report(local_store, tmp_path / "r.html", first=hour, last=hour)
    page = (tmp_path / "r.html").read_text()
    table = page[page.index("<h2>Failed sensors</h2>"):]
    assert table.count("<tr><td>") == FAILURES_SHOWN
    assert f"{3 * FAILURES_SHOWN:,} failed sensors over the range" in table
    assert f"the first {FAILURES_SHOWN:,}, in hour order, are listed" in table


def test_predictions_folded_in_small_batches_give_the_same_figures(fleet, monkeypatch):
    store, _, _, _ = fleet
    runs = read_runs(store)
    axis = Axis.fitting(BENCH_HOUR.start_ms, Hour(BENCH_HOUR.index + HOURS - 1).end_ms, 60_000)
    whole, rows = folded_predictions(store, runs)
    one = _Fold()
    one(whole)
    calls = []

    def batched_fold():
        fold = _Fold()

        def add(table):
            calls.append(table.num_rows)
            fold(table)
        return fold, add

    monkeypatch.setattr(report_data, "BATCH_BYTES", 1)  # a file a batch
    monkeypatch.setattr(report_data, "SEPARATE_BYTES", 0)  # parsed on its own, without a copy
    fold, add = batched_fold()
    assert _fold_predictions(store, runs, add).tolist() == rows.tolist()
    files = sum(len(p) for p in runs["predictions"].to_pylist())
    assert len(calls) == files > HOURS  # each file its own batch
    a, b = one.data(axis), fold.data(axis)
    assert a.sensors == b.sensors
    for name in ("flags", "values", "share", "anomalies", "windows"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)
    assert fold.rows == whole.num_rows == int(rows.sum())
    # Each prediction is kept as numbers: 17 bytes, no string.
    assert sum(sum(x.nbytes for x in part) for part in fold.parts) == 17 * fold.rows
    # Hundreds of small tables: the fleet's counts per window are merged as they pile up.
    sliced = _Fold()
    for at in range(0, whole.num_rows, whole.num_rows // 300 + 1):
        sliced(whole.slice(at, whole.num_rows // 300 + 1))
    c = sliced.data(axis)
    assert len(sliced._ends) < 64 and c.sensors == a.sensors
    np.testing.assert_allclose(c.share, a.share, rtol=1e-9)
    np.testing.assert_allclose(c.flags, a.flags, rtol=1e-6)


def test_a_range_too_large_to_keep_is_read_twice_with_the_same_figures(fleet, monkeypatch,
                                                                       tmp_path):
    """Beyond ``KEPT_BYTES`` of predictions the fold drops them and reads the range again for
    the shown sensors only: memory follows the fleet and the windows, not the predictions."""
    store, _, _, page = fleet
    runs = read_runs(store)
    axis = Axis.fitting(BENCH_HOUR.start_ms, Hour(BENCH_HOUR.index + HOURS - 1).end_ms, 60_000)
    kept = _Fold()
    _fold_predictions(store, runs, kept)
    reads = []

    def again(add):
        reads.append(1)
        return _fold_predictions(store, runs, add)

    monkeypatch.setattr(report_data, "BATCH_BYTES", 1 << 20)  # several batches: some kept, then not
    dropped = _Fold(again, kept_bytes=2 << 20)
    _fold_predictions(store, runs, dropped)
    assert dropped.parts is None and kept.parts and not reads
    a, b = kept.data(axis), dropped.data(axis)
    assert reads == [1]
    assert a.sensors == b.sensors
    for name in ("flags", "values", "share", "anomalies", "windows"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)
    # The whole page, read twice, says what the page read once says.
    monkeypatch.setattr(report_data, "KEPT_BYTES", 0)
    write_report(store, tmp_path / "twice.html")
    created = re.compile(r"Created [^<]*?\sby")
    assert created.sub("", (tmp_path / "twice.html").read_text()) == created.sub("", page)


def test_an_empty_run_list_folds_nothing(local_store):
    calls = []
    runs = summarize(_parse_manifests([]))
    assert _fold_predictions(local_store, runs, calls.append).tolist() == [] and not calls


def test_the_bench_runs_at_a_tiny_size(tmp_path):
    result = run(40, 2, directory=tmp_path, repeats=1, workers=1)
    assert result["sensors"] == 40 and result["hours"] == 2
    assert result["scored"] + result["failed"] == 80
    assert result["report"] == f"2 hours, 2 runs, {result['scored'] * 60:,} predictions"
    assert len(result["report_s"]) == 1 and result["html_bytes"] > 10_000
    again = run(40, 2, directory=tmp_path, repeats=1, reuse=True)
    assert again["report"] == result["report"] and again["html_bytes"] > 10_000
