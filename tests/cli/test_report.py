"""`fleetscore report` and `verify` (cli.report): a mistaken --out is a usage error, and so
is a --backtest file that is not what `backtest --json` prints."""

from __future__ import annotations

import json

import pytest

from fleetscore.scoring.backtest import Backtest, Figures, SensorResult
from tests.cli.conftest import fleetscore, one_line_usage_error


def test_report_out_a_directory_is_a_usage_error(trained_store, tmp_path):
    line = one_line_usage_error(fleetscore("report", "--store", trained_store.url, "--out", str(tmp_path)))
    assert "is a directory" in line


def test_report_out_in_a_missing_folder_is_a_usage_error(trained_store, tmp_path):
    target = tmp_path / "no" / "such" / "report.html"
    line = one_line_usage_error(fleetscore("report", "--store", trained_store.url, "--out", str(target)))
    assert "does not exist" in line and not (tmp_path / "no").exists()


def test_report_out_under_a_file_is_a_usage_error(trained_store, tmp_path):
    afile = tmp_path / "README.md"
    afile.write_text("x")
    line = one_line_usage_error(fleetscore("report", "--store", trained_store.url, "--out",
                                           str(afile / "r.html")))
    assert "is not a directory" in line



def _backtest_file(tmp_path, text: str | None):
    path = tmp_path / "backtest.json"
    if text is not None:
        path.write_text(text)
    return path


@pytest.mark.parametrize("text, says", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ('{"sensors": []}', "not a backtest result"),
])
def test_report_backtest_a_bad_file_is_one_line_naming_it(trained_store, tmp_path, text, says):
    path = _backtest_file(tmp_path, text)
    out = tmp_path / "r.html"
    line = one_line_usage_error(fleetscore("report", "--store", trained_store.url, "--out",
                                           str(out), "--backtest", str(path)))
    assert str(path) in line and says in line and not out.exists()


def test_report_backtest_adds_the_section(trained_store, tmp_path):
    """What `backtest --json` prints (here, its record of a hand-built result) is shown."""
    model = Figures(1_440, 15, 2, 1, 60, 9, 1.0, 12.0, 0.2)
    chance = Figures(1_440, 15, 2, 0.4, 60, 0.625, 1.0, 9.0, 0.15)
    bt = Backtest(0.15, ("2024-03-01T00", "2024-03-01T02"),
                  (SensorResult("1/2", 60, "2024-03-01T01", model, chance),), (), 0, ("hour",),
                  "iforest")
    path = _backtest_file(tmp_path, json.dumps(bt.to_json()))
    out = tmp_path / "r.html"
    proc = fleetscore("report", "--store", trained_store.url, "--out", str(out),
                      "--backtest", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "a backtest of 1 sensor" in proc.stdout
    page = out.read_text()
    assert "<h2>Backtest</h2>" in page and "iforest, fitted on value+hour" in page
    assert "Worst sensor: 1/2, 1.0% of its points flagged." in page
