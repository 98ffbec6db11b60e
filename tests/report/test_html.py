import re
from html import escape as html_escape

import numpy as np
import pyarrow as pa
import pytest

from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensors import Sensor
from fleetscore.model.drift import THRESHOLD
from fleetscore.model.registry import model_path
from fleetscore.report.charts import tick_hours
from fleetscore.report.data import Axis, _Data
from fleetscore.report.html import hour_rows, write_report
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import run_hour


def test_report_is_self_contained_with_pictures_runs_and_failures(trained_store, tmp_path):
    run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    run_hour(trained_store, Hour.parse("2024-03-01T02"), SequentialBackend(trained_store, ENGINE))
    out = tmp_path / "report.html"
    info = write_report(trained_store, out)
    html = out.read_text()
    assert "3 hours, 2 runs" in info  # by default, the hours with data
    assert html.count("data:image/png;base64,") == 3
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "2024-03-01T01" in html and "partial" in html and "ModelError" in html


def test_report_counts_read_as_english(trained_store, tmp_path):
    run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    hour = Hour.parse("2024-03-01T01")
    info = write_report(trained_store, tmp_path / "r.html", first=hour, last=hour)
    assert re.fullmatch(r"1 hour, 1 run, [\d,]+ predictions", info), info


def test_report_on_an_empty_store(local_store, tmp_path):
    out = tmp_path / "r.html"
    assert "0 hours" in write_report(local_store, out)
    assert "No predictions" in out.read_text()


def test_every_hour_of_the_range_has_a_row_run_or_not(trained_store, tmp_path):
    run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    hours = hour_range(Hour.parse("2024-03-01T00"), Hour.parse("2024-03-01T03"))
    out = tmp_path / "r.html"
    write_report(trained_store, out, first=hours[0], last=hours[-1])
    html = out.read_text()
    rows = dict(re.findall(r"<tr data-hour='([^']+)'><td>[^<]+</td><td class='([^']+)'>", html))
    assert rows == {"2024-03-01T00": "not-run", "2024-03-01T01": "succeeded",
                    "2024-03-01T02": "not-run", "2024-03-01T03": "not-run"}


def test_hour_rows_show_manifest_figures_and_unknowns_blank():
    hours = [Hour.parse("2024-03-01T00"), Hour.parse("2024-03-01T01")]
    manifests = [{"window": "2024-03-01T01", "status": "no_data", "anomalies": 0,
                  "sensors": {"planned": 1200, "scored": 0, "failed": 0, "no_data": 1200,
                              "no_model": 0}}]
    rows = hour_rows(hours, manifests, {"2024-03-01T00": 0, "2024-03-01T01": 0})
    assert rows[0] == ("2024-03-01T00", "not run", ["", "", "", "", "", "", "0", ""])
    assert rows[1] == ("2024-03-01T01", "no_data", ["1,200", "0", "0", "1,200", "0", "0", "0", ""])


def test_time_axis_keeps_hours_without_predictions_as_gaps():
    # Predictions at 00:01..00:03 and 02:01: hour 01 has none, and must stay empty columns.
    start = Hour.parse("2024-03-01T00").start_ms
    axis = Axis(start, start + 3 * 3_600_000, 60_000)
    ts = ["2024-03-01 00:01:00", "2024-03-01 00:02:00", "2024-03-01 00:03:00", "2024-03-01 02:01:00"]
    preds = pa.table({"TS": ts, "Device": ["d"] * 4, "Tag": ["t"] * 4, "Val": [1.0, 2.0, 3.0, 4.0],
                      "Prediction": pa.array([0, 1, 0, 1], pa.int8())})
    data = _Data.of(preds, axis)
    assert axis.columns == 180
    assert np.flatnonzero(np.isfinite(data.values[0])).tolist() == [0, 1, 2, 120]
    assert np.isnan(data.values[0][3:120]).all()  # a line cannot join 00:03 to 02:01
    assert data.flags[0][[0, 1, 2, 120]].tolist() == [0, 1, 0, 1]
    assert data.share[1] == 100 and np.isnan(data.share[60])


def test_ticks_fall_on_whole_hours_with_about_eight_labels():
    assert [tick_hours(h) for h in (4, 8, 9, 24, 168)] == [1, 1, 2, 3, 24]


def test_a_report_over_years_is_drawn_in_buckets_and_stays_small(local_store, tmp_path):
    """Two years with a few scored hours: days, not 1,000,000 one-minute columns, and a runs
    table with a row per day that had runs."""
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.training import train
    from fleetscore.report.data import MAX_COLUMNS
    from tests.conftest import minute_readings, write_readings

    rows = []
    for start in ("2022-01-03 10:00:00", "2022-06-01 05:00:00", "2023-12-30 20:00:00"):
        rows += minute_readings("1", "1", start, 60, level=10)
    ingest_file(local_store, write_readings(tmp_path / "r.csv", sorted(rows)))
    train(local_store)
    for hour in ("2022-01-03T10", "2022-06-01T05", "2023-12-30T20"):
        run_hour(local_store, Hour.parse(hour), SequentialBackend(local_store, ENGINE))
    axis = Axis.fitting(Hour.parse("2022-01-03T10").start_ms, Hour.parse("2023-12-30T21").start_ms,
                        60_000)
    assert axis.bucketed and axis.step_ms == 86_400_000 and axis.columns <= MAX_COLUMNS
    out = tmp_path / "r.html"
    info = write_report(local_store, out)
    page = out.read_text()
    span = len(hour_range(Hour.parse("2022-01-03T10"), Hour.parse("2023-12-30T20")))
    assert info.startswith(f"{span:,} hours, 3 runs, 180 predictions")
    assert len(page) < 400_000 and "one column a day" in page
    assert page.count("<tr data-day=") == 3 and "<tr data-hour=" not in page


# --- the drift column -----------------------------------------------------------------------

SHIFTED = "D001/flow"


def _shifted_fleet(base):
    """A demo fleet of 12 sensors over 3 hours, trained on the first; ``SHIFTED`` reads
    6 noise widths higher from the second hour (after its training range), the others as
    made. Every hour is run, the training one too: the report's range covers it, and drift
    must leave it out."""
    import pyarrow.compute as pc

    from fleetscore.data.ingest import ingest_file
    from fleetscore.data.synthetic import make_fleet, write_readings_csv
    from fleetscore.model.training import train
    from fleetscore.storage import LocalStore

    fleet = make_fleet(sensors=12, hours=3, seed=1)
    readings = fleet.readings
    ts = pc.cast(readings["TS"], pa.int64()).to_numpy()
    values = readings["Value"].to_numpy().copy()
    mine = pc.equal(pc.binary_join_element_wise(readings["Device"], readings["Tag"], "/"),
                    SHIFTED).to_numpy(zero_copy_only=False)
    later = ts > fleet.first.end_ms
    values[mine & later] += 6 * values[mine & ~later].std()
    readings = readings.set_column(3, "Value", pa.array(values))
    write_readings_csv(readings, base / "readings.csv")
    store = LocalStore(base / "store")
    ingest_file(store, base / "readings.csv")
    train(store, until=fleet.first)
    for hour in (fleet.first, fleet.first + 1, fleet.first + 2):
        run_hour(store, hour, SequentialBackend(store, ENGINE))
    return store, fleet


def _drift_cells(page: str) -> dict[str, tuple[str, str]]:
    """Each row of the sensors table: (the drift cell's class, its text)."""
    return {name: (css, re.sub(r"<[^>]+>", "", text)) for name, css, text in re.findall(
        r"<tr data-sensor='([^']*)'>.*?<td class='(drift[^']*)'[^>]*>(.*?)</td></tr>", page)}


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    base = tmp_path_factory.mktemp("shifted")
    return (*_shifted_fleet(base), base)


def test_the_report_marks_the_sensor_shifted_after_its_training_as_drifted(shifted, tmp_path,
                                                                           monkeypatch):
    from fleetscore.model import drift as drift_module
    from fleetscore.report.data import _read_range
    from fleetscore.report.html import _view_and_drift

    store, fleet, _ = shifted
    read = []
    windows = drift_module.read_points_many
    monkeypatch.setattr(drift_module, "read_points_many",
                        lambda st, hours, sensors=None: read.append(list(hours))
                        or windows(st, hours, sensors))
    span, fold = _read_range(store, None, None)
    _, column = _view_and_drift(store, span, fold, None)
    hours = [fleet.first, fleet.first + 1, fleet.first + 2]
    assert {d.sensor for d in column.drifts.values() if d.drifted} == {SHIFTED}
    assert len(column.drifts) == 12 and not column.reasons
    # The recent windows are the report's predictions' values: only training hours are read.
    assert read == [[fleet.first]]
    # The statistic is model.drift's, over the report's hours (float32 values: a hair apart).
    expected = {d.sensor: d for d in drift_module.drift(store, hours)}
    for name, d in column.drifts.items():
        assert d.statistic == pytest.approx(expected[name].statistic, abs=0.01), name
        assert d.drifted == expected[name].drifted
        assert d.recent_windows == expected[name].recent_windows > 100  # not the first hour's
    assert column.drifts[SHIFTED].statistic > 0.9
    assert max(d.statistic for n, d in column.drifts.items() if n != SHIFTED) < THRESHOLD
    out = tmp_path / "r.html"
    write_report(store, out)
    cells = _drift_cells(out.read_text())
    assert len(cells) == 12
    assert {n for n, (css, _) in cells.items() if css == "drift drifted"} == {SHIFTED}
    assert re.fullmatch(r"0\.9\d drifted|1\.00 drifted", cells[SHIFTED][1])
    assert all(css == "drift" and re.fullmatch(r"0\.\d\d", text)
               for n, (css, text) in cells.items() if n != SHIFTED)
    assert "drifted above 0.5 with p &lt; 0.01: 1 of these 12." in out.read_text()


def test_drift_is_computed_for_the_sensors_table_only(shifted, tmp_path, monkeypatch):
    import fleetscore.report.data as report_data
    import fleetscore.report.html as report_html

    store, _, _ = shifted
    asked = []
    ranges = report_data.training_ranges
    monkeypatch.setattr(report_data, "training_ranges",
                        lambda st, sensors: asked.append(list(sensors)) or ranges(st, sensors))
    monkeypatch.setattr(report_html, "TOP_SENSORS", 3)
    out = tmp_path / "r.html"
    write_report(store, out)
    cells = _drift_cells(out.read_text())
    assert len(asked) == 1 and sorted(map(str, asked[0])) == sorted(cells) and len(cells) == 3


def test_a_store_without_training_ranges_shows_a_placeholder_and_reads_no_window(
        shifted, tmp_path, monkeypatch):
    """Models as an import (or a store from before ranges) leaves them: no range recorded."""
    from fleetscore.model import drift as drift_module
    from fleetscore.model.registry import list_models, load_model, save_model
    from fleetscore.report.data import NO_RANGE
    from tests.conftest import copy_tree

    store_dir = copy_tree(shifted[2] / "store", tmp_path / "store")
    from fleetscore.storage import LocalStore

    store = LocalStore(store_dir)
    for sensor in list_models(store):
        save_model(store, sensor, load_model(store, sensor), source="import:old.skops")

    def no_read(*args, **kwargs):
        raise AssertionError("drift read windows for a store without training ranges")

    monkeypatch.setattr(drift_module, "read_points_many", no_read)
    out = tmp_path / "r.html"
    write_report(store, out)
    page = out.read_text()
    cells = _drift_cells(page)
    assert len(cells) == 12 and set(cells.values()) == {("drift none", "-")}
    assert page.count(f"title='{html_escape(NO_RANGE)}'>-</td>") == 12
    assert f"- for 12 sensors: {html_escape(NO_RANGE)}." in page


def test_a_damaged_manifest_leaves_the_report_whole_and_says_so(shifted, tmp_path):
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.registry import manifest_path
    from fleetscore.storage import LocalStore
    from tests.conftest import copy_tree

    store = LocalStore(copy_tree(shifted[2] / "store", tmp_path / "store"))
    store.put(manifest_path(Sensor.parse(SHIFTED)), b"{not json")
    out = tmp_path / "r.html"
    write_report(store, out)
    page = out.read_text()
    assert set(_drift_cells(page).values()) == {("drift none", "-")}
    assert "- for 12 sensors: a model manifest is damaged" in page
