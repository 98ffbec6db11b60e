"""`fleetscore ingest` (cli.data): bad rows named and kept apart, counts in plain English."""

from __future__ import annotations

import re

import pytest

from tests.conftest import minute_readings, write_readings


@pytest.mark.reliability("R1")
def test_ingest_with_bad_rows_keeps_good_ones_and_exits_3(cli, tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 3)
    rows.append(("2024-03-01 00:10:00", "1", "1", "oops"))
    path = write_readings(tmp_path / "r.csv", rows)
    code, out, err = cli("ingest", str(path), "--store", str(tmp_path / "s"))
    assert code == 3 and "12 rows" in out and "line 14" in err and "not a number" in err



def test_counts_read_as_english_with_thousands_separators(cli, tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 30, per_minute=40)
    path = write_readings(tmp_path / "one.csv", rows)
    code, out, _ = cli("ingest", str(path), "--store", str(tmp_path / "s"))
    assert code == 0
    assert re.search(r": 1,200 rows -> \d\d windows of 1 sensor in 1 hour \(", out), out



def test_a_missing_readings_file_is_said_before_any_is_ingested(cli, tmp_path):
    """Exit 2 says nothing was done: the files given are all looked for first."""
    path = write_readings(tmp_path / "one.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 3))
    code, out, err = cli("ingest", str(path), str(tmp_path / "nosuch.csv"),
                         "--store", str(tmp_path / "s"))
    assert code == 2 and "nosuch.csv" in err and out == ""
    assert not (tmp_path / "s").exists()


@pytest.mark.reliability("R5")
def test_a_repeat_with_another_value_is_named_as_a_conflict_not_dropped_silently(cli, tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 2)
    ts, device, tag, value = rows[0]
    path = write_readings(tmp_path / "r.csv", [rows[0], rows[1], (ts, device, tag, value + 4)])
    code, out, err = cli("ingest", str(path), "--store", str(tmp_path / "s"))
    assert code == 3 and "line 4: conflicts with line 2" in err
