"""The Stream Analytics-shaped bench: its input looks like the job's output, and its figures
show what compaction changes (counts only: nothing here is timed)."""

from __future__ import annotations

import pyarrow.parquet as pq

from benchmarks.bench_sa import SA_HOUR, bench_store, sa_sensors, write_sa_hour
from fleetscore.data.windows import read_points, windows_folder
from fleetscore.storage import LocalStore


def test_the_input_is_shaped_as_the_job_writes_it(tmp_path):
    store = LocalStore(tmp_path / "s")
    sensors = sa_sensors(250)
    paths = write_sa_hour(store, sensors, rows_per_file=100, minutes=3)
    assert sorted(paths) == list(store.list(windows_folder(SA_HOUR)))
    assert len(paths) == 9  # 3 minutes x ceil(250 / 100) files
    for path in paths:
        assert path.startswith("windows/2026/01/05/01/0_") and path.endswith(".parquet")
    table = pq.read_table(store.open(paths[0]))
    assert table.column_names == ["Device", "Tag", "WindowEnd", "Value", "Count", "WindowHour"]
    assert set(table["WindowHour"].to_pylist()) == {"2026/01/05/01"}
    devices = table["Device"].to_pylist()
    assert devices != sorted(devices)  # emission order, not sorted
    assert read_points(store, SA_HOUR).num_rows == 250 * 3


def test_compaction_keeps_window_reads_per_unit_flat(tmp_path):
    raw = bench_store(LocalStore(tmp_path / "raw"), "local", 200, units=(1, 10), repeats=1,
                      compact=False, rows_per_file=100)
    done = bench_store(LocalStore(tmp_path / "compact"), "local", 200, units=(1, 10),
                       repeats=1, compact=True, rows_per_file=100)
    # Raw: every unit opens every file; the hour is read once per unit.
    assert [r.files_opened_per_unit for r in raw.rows] == [raw.files, raw.files]
    assert raw.rows[1].hour_reads > 9 * raw.rows[0].hour_reads
    # Compacted: one file a unit, 6 requests, and a tenth of the sensors reads far less.
    assert [r.files_opened_per_unit for r in done.rows] == [1, 1]
    assert [r.window_requests_per_unit for r in done.rows] == [6, 6]
    assert done.rows[1].window_bytes_per_unit < done.rows[0].window_bytes_per_unit / 2


def test_the_command(cli, monkeypatch):
    import json

    code, out, _ = cli("bench", "--stream-analytics", "--sensors", "40", "--repeats", "1",
                       "--json")
    assert code == 0
    (local,) = json.loads(out)
    assert local["store"] == "local" and local["files"] == 60 and local["compacted"]
    assert [r["units"] for r in local["rows"]] == [1, 10, 40]  # at most a sensor a unit
    assert all(r["window_requests_per_unit"] == 6 for r in local["rows"])
    monkeypatch.delenv("FLEETSCORE_STORAGE_CONNECTION_STRING", raising=False)
    code, _, err = cli("bench", "--stream-analytics", "--blob", "--sensors", "40")
    assert code == 2 and "FLEETSCORE_STORAGE_CONNECTION_STRING" in err


def test_the_scoring_bench_compares_the_run_with_the_in_memory_predict_loop(tmp_path):
    from benchmarks.bench import run_bench

    result = run_bench(60, sample=20, repeats=1, workers=1, directory=tmp_path)
    body = result.to_json()
    assert result.labels_identical and result.memory_loop_us > 0
    expected = result.memory_loop_us / (result.run_s / result.sensors * 1e6)
    assert body["run_vs_memory_loop"] == expected
    assert result.run_parquet_s > 0
    assert body["run_parquet_vs_memory_loop"] == \
        result.memory_loop_us / (result.run_parquet_s / result.sensors * 1e6)
