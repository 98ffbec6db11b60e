"""``fleetscore backtest`` run as a user runs it, in a process of its own, on a demo store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetscore.cli.demo import run_demo
from fleetscore.scoring.backtest import Backtest
from tests.cli.conftest import fleetscore, one_line_usage_error


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("backtest")
    run_demo(base / "d", sensors=10, hours=6, seed=0, workers=1, say=lambda _: None)
    return base / "d"


def _files(store: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in store.rglob("*") if p.is_file()}


def test_backtest_json_on_the_demo_writes_nothing(demo):
    before = _files(demo / "store")
    proc = fleetscore("backtest", "labels-windows.csv", "--store", "store", "--json", cwd=demo)
    assert proc.returncode == 0, proc.stderr
    assert _files(demo / "store") == before  # models and predictions untouched
    result = json.loads(proc.stdout)
    assert result["train_fraction"] == 0.15
    assert result["hours"] == ["2026-01-05T00", "2026-01-05T05"]
    assert len(result["sensors"]) == 10 and result["skipped"] == []
    assert "exact" in result["chance_method"]
    overall = result["overall"]
    # Every labelled window of the demo is after its first hour, the one trained on (15% of
    # 6 hours, rounded up): all are scored.
    labelled = len((demo / "labels-windows.csv").read_text().splitlines()) - 1
    assert overall["model"]["windows"] == overall["chance"]["windows"] == labelled
    assert result["labels_unscored"] == 0
    assert sum(s["model"]["windows_hit"] for s in result["sensors"]) == \
        overall["model"]["windows_hit"]
    assert overall["model"]["flagged"] == overall["chance"]["flagged"]
    shares = {s["sensor"]: s["model"]["flagged_share"] for s in result["sensors"]}
    assert overall["worst_share"] == max(shares.values())
    assert shares[overall["worst_sensor"]] == overall["worst_share"]
    # The large injected anomalies are placed better than chance places flags.
    assert overall["model"]["inside_share"] > overall["chance"]["inside_share"]
    # What it prints is the record the report reads: read back, it prints the same again.
    again = Backtest.from_json(result)
    assert again.to_json() == result
    assert again.estimator == result["estimator"] == "iforest"  # the default


def test_backtest_table(demo):
    proc = fleetscore("backtest", "labels-windows.csv", "--store", "store",
                      "--train-fraction", "0.5", cwd=demo, columns=160)
    assert proc.returncode == 0, proc.stderr
    assert "overall" in proc.stdout and "chance" in proc.stdout
    assert "worst sensor: D" in proc.stdout
    assert "trained on the first 50%" in proc.stdout
    assert "model: iforest, on value" in proc.stdout


def test_nu_and_gamma_reach_the_model(demo):
    """A larger nu lets the model flag more: the flagged share follows the option."""
    shares = []
    for nu in ("0.01", "0.2"):
        proc = fleetscore("backtest", "labels-windows.csv", "--store", "store", "--estimator",
                          "ocsvm", "--nu", nu, "--json", cwd=demo)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert f"nu={nu}" in result["estimator"]
        shares.append(result["overall"]["model"]["flagged_share"])
    assert shares[1] > shares[0]


def test_estimator_iforest_is_fitted_instead(demo):
    """The same history with train's IsolationForest: named in the output, and other flags
    than the default model's."""
    runs = {}
    for name in ("ocsvm", "iforest"):
        proc = fleetscore("backtest", "labels-windows.csv", "--store", "store", "--estimator",
                          name, "--json", cwd=demo)
        assert proc.returncode == 0, proc.stderr
        runs[name] = json.loads(proc.stdout)
    assert runs["iforest"]["estimator"] == "iforest"
    assert runs["iforest"]["overall"]["model"] != runs["ocsvm"]["overall"]["model"]


def test_features_reach_the_model_and_are_named(demo):
    """IsolationForest on value, diff and hour: other flags than on the value alone, and the
    JSON and the table say what the model saw."""
    runs = {}
    for names in ("", "diff,hour"):
        extra = ["--features", names] if names else []
        proc = fleetscore("backtest", "labels-windows.csv", "--store", "store", "--estimator",
                          "iforest", *extra, "--json", cwd=demo)
        assert proc.returncode == 0, proc.stderr
        runs[names] = json.loads(proc.stdout)
    assert runs[""]["features"] == [] and runs[""]["inputs"] == "value"
    assert runs["diff,hour"]["features"] == ["diff", "hour"]
    assert runs["diff,hour"]["inputs"] == "value+diff+hour"
    assert runs["diff,hour"]["overall"]["model"] != runs[""]["overall"]["model"]
    proc = fleetscore("backtest", "labels-windows.csv", "--store", "store", "--features", "hour",
                      cwd=demo, columns=160)
    assert proc.returncode == 0, proc.stderr
    assert "model: iforest, on value+hour" in proc.stdout


def test_a_range_without_data_is_nothing_to_score(demo):
    proc = fleetscore("backtest", "labels-windows.csv", "--store", "store",
                      "--from", "2027-01-01T00", "--to", "2027-01-01T05", cwd=demo)
    assert proc.returncode == 6, proc.stderr
    assert "nothing to score" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_labels_row_is_one_line_naming_file_and_line(demo, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Device,Tag,Start,End\nD000,temp,2026-01-05 02:00,2026-01-05 03:00\n"
                   "D000,temp,yesterday,2026-01-05 03:00\n")
    line = one_line_usage_error(fleetscore("backtest", str(bad), "--store", "store", cwd=demo))
    assert "bad.csv: line 3" in line and "yesterday" in line


@pytest.mark.parametrize("args, says", [
    (["--train-fraction", "1"], "--train-fraction"),
    (["--from", "2026-01-05T05", "--to", "2026-01-05T01"], "reversed"),
    (["--from", "soon"], "invalid hour"),
    (["--nu", "2"], "--nu"),
    (["--gamma", "0"], "--gamma"),
    (["--estimator", "magic"], "--estimator"),
    (["--estimator", "iforest", "--nu", "0.1"], "takes neither"),
    (["--features", "diff,slope"], "unknown feature 'slope'"),
    (["--features", "hour,hour"], "named twice"),
])
def test_bad_options_are_usage_errors(demo, args, says):
    line = one_line_usage_error(fleetscore("backtest", "labels-windows.csv", "--store", "store",
                                           *args, cwd=demo))
    assert says in line
