"""`fleetscore report` and `verify` (cli.report): a mistaken --out is a usage error."""

from __future__ import annotations

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

