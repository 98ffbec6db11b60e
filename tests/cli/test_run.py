"""`fleetscore run`, `plan` and `runs` as operators use them: no silent success, the API's
meaning for --force and --sensors, resumable ranges, and JSON with a stable shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fleetscore.core.hours import Hour
from fleetscore.runs.lifecycle import read_manifest, read_predictions

reliability = pytest.mark.reliability
H1 = "2024-03-01T01"


@reliability("R27")
@pytest.mark.parametrize("command", [["run", "--window", H1], ["plan", "--window", H1],
                                     ["report", "--out", "r.html"], ["verify"],
                                     ["models", "list"], ["runs"]])
def test_commands_refuse_a_store_that_does_not_exist(cli, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*command, "--store", str(tmp_path / "mistyped"))
    assert code == 2 and "no fleetscore store at" in err and "Traceback" not in err
    assert not (tmp_path / "mistyped").exists()


@reliability("R27")
def test_run_refuses_an_hour_that_has_not_ended(cli, trained_store):
    now = Hour.from_datetime(datetime.now(UTC))
    code, _, err = cli("run", "--store", trained_store.url, "--window", str(now))
    assert code == 2 and "has not ended yet" in err
    code, _, err = cli("run", "--store", trained_store.url, "--from", H1, "--to", str(now + 3))
    assert code == 2 and "has not ended yet" in err
    assert read_manifest(trained_store, Hour.parse(H1)) is None  # nothing started


@reliability("R27")
def test_an_hour_with_no_data_has_its_own_status_and_exit_code(cli, trained_store):
    code, out, err = cli("run", "--store", trained_store.url, "--window", "2024-02-01T00")
    assert code == 6 and "no_data" in out and "nothing to score" in err


def test_plan_is_a_dry_run_unless_saved(cli, trained_store):
    cli("run", "--store", trained_store.url, "--window", H1)
    manifest = read_manifest(trained_store, Hour.parse(H1))
    code, out, _ = cli("plan", "--store", trained_store.url, "--window", H1, "--unit-size", "1")
    assert code == 0 and "not saved" in out and list(trained_store.list(f"runs/{H1}")) == []
    code, out, _ = cli("plan", "--store", trained_store.url, "--window", H1, "--save", "--json")
    run_id = json.loads(out)["run_id"]
    assert trained_store.exists(f"runs/{H1}/{run_id}/plan.json")
    assert read_manifest(trained_store, Hour.parse(H1)) == manifest  # the hour's run untouched


def test_run_json_has_a_stable_shape(cli, trained_store):
    code, out, _ = cli("run", "--store", trained_store.url, "--window", H1, "--json")
    body = json.loads(out)
    assert code == 0 and body["skipped"] == []
    [run] = body["runs"]
    assert set(run) == {"window", "run_id", "status", "exit_code", "planned", "scored", "failed",
                        "no_data", "no_model", "anomalies", "failures", "kept_from_earlier_run",
                        "manifest", "duration_s", "top_anomalous"}
    assert (run["window"], run["status"], run["scored"]) == (H1, "succeeded", 3)


def test_a_succeeded_hour_reruns_only_with_force_and_sensors_rerun_alone(cli, trained_store):
    cli("run", "--store", trained_store.url, "--window", H1)
    code, _, err = cli("run", "--store", trained_store.url, "--window", H1)
    assert code == 2 and "--force" in err
    code, out, _ = cli("run", "--store", trained_store.url, "--window", H1, "--force",
                       "--sensors", "1/2", "--json")
    [run] = json.loads(out)["runs"]
    assert code == 0 and (run["planned"], run["scored"]) == (1, 1)
    assert read_predictions(trained_store, Hour.parse(H1)).num_rows == 180  # the others kept
    code, _, err = cli("run", "--store", trained_store.url, "--window", H1, "--force",
                       "--sensors", "bad id")
    assert code == 2 and "Traceback" not in err


def test_a_range_resumes_where_it_stopped(cli, trained_store):
    cli("run", "--store", trained_store.url, "--window", "2024-03-01T01")
    code, out, err = cli("run", "--store", trained_store.url, "--from", "2024-03-01T00",
                         "--to", "2024-03-01T02", "--json")
    body = json.loads(out)
    assert body["skipped"] == ["2024-03-01T01"]
    assert [r["window"] for r in body["runs"]] == ["2024-03-01T00", "2024-03-01T02"]
    code, out, err = cli("run", "--store", trained_store.url, "--all", "--missing", "--json")
    assert json.loads(out)["runs"] == [] and code == 0
    code, out, _ = cli("run", "--store", trained_store.url, "--all", "--force", "--json")
    assert len(json.loads(out)["runs"]) == 3


def test_runs_lists_every_hour_with_its_status_and_the_hours_never_run(cli, trained_store):
    cli("run", "--store", trained_store.url, "--window", "2024-03-01T01")
    cli("run", "--store", trained_store.url, "--window", "2024-02-29T22")  # no data there
    code, out, _ = cli("runs", "--store", trained_store.url, "--json")
    hours = json.loads(out)["hours"]
    assert [(h["window"], h["status"], h["has_data"]) for h in hours] == [
        ("2024-02-29T22", "no_data", False), ("2024-02-29T23", "never_run", False),
        ("2024-03-01T00", "never_run", True), ("2024-03-01T01", "succeeded", True),
        ("2024-03-01T02", "never_run", True)]
    assert hours[3]["scored"] == 3 and hours[3]["run_id"]
    code, out, _ = cli("runs", "--store", trained_store.url, "--status", "never_run")
    assert code == 0 and "2024-03-01T00" in out and "2024-03-01T01" not in out
    assert "3 hours: 3 never_run" in out
    code, _, err = cli("runs", "--store", trained_store.url, "--status", "bogus")
    assert code == 2


def test_verify_and_models_list_speak_json(cli, trained_store):
    cli("run", "--store", trained_store.url, "--window", H1)
    code, out, _ = cli("verify", "--store", trained_store.url, "--json")
    body = json.loads(out)
    assert code == 0 and body["problems"] == [] and body["checked"] >= 6
    code, out, _ = cli("models", "list", "--store", trained_store.url, "--json")
    models = json.loads(out)["models"]
    assert [m["sensor"] for m in models] == ["1/1", "1/2", "dev_a/t.x"]
    assert {"sha256", "estimator", "version", "trained_on"} <= set(models[0])


def test_a_run_of_an_empty_hour_does_not_stretch_the_report(cli, trained_store, tmp_path):
    cli("run", "--store", trained_store.url, "--window", H1)
    cli("run", "--store", trained_store.url, "--window", "2020-01-01T00")  # no data: no_data
    code, out, _ = cli("report", "--store", trained_store.url, "--out", str(tmp_path / "r.html"))
    assert code == 0 and "3 hours" in out  # 2024-03-01T00 .. T02, the hours with data


def test_a_long_run_summary_is_bounded_with_totals(cli, trained_store, monkeypatch):
    import fleetscore.cli.run

    monkeypatch.setattr(fleetscore.cli.run, "ROWS_SHOWN", 2)
    code, out, _ = cli("run", "--store", trained_store.url, "--all")
    assert code == 0
    assert "2024-03-01T00" in out and "2024-03-01T01" in out and "2024-03-01T02" not in out
    assert "... 1 more" in out and "3 hours" in out and "3 succeeded" in out


def test_a_range_reruns_hours_scored_before_a_model_changed(cli, trained_store):
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.registry import save_model
    from fleetscore.model.training import reference_model

    cli("run", "--store", trained_store.url, "--all")
    code, out, _ = cli("run", "--store", trained_store.url, "--all", "--json")
    assert json.loads(out)["runs"] == []  # all current
    import numpy as np
    save_model(trained_store, Sensor("1", "1"),
               reference_model().fit(np.linspace(0, 20, 50).reshape(-1, 1)), source="test")
    code, out, _ = cli("run", "--store", trained_store.url, "--all", "--json")
    assert [r["window"] for r in json.loads(out)["runs"]] == [
        "2024-03-01T00", "2024-03-01T01", "2024-03-01T02"]


def test_a_range_with_nothing_left_to_run_says_so_without_an_empty_table(cli, trained_store):
    cli("run", "--store", trained_store.url, "--all")
    code, out, err = cli("run", "--store", trained_store.url, "--all")
    assert code == 0 and out == ""
    assert "skipped 3 hours whose last run succeeded" in err


def test_hours_not_run_exit_with_their_errors_code_not_always_4(capsys):
    """4 says another run held the hour; an hour not run for damaged input exits 2."""
    from fleetscore.cli.run import _report_runs

    damaged = ("2024-03-01T00", "InputError", "predictions file P is unreadable")
    held = ("2024-03-01T01", "AlreadyRunning", "another run holds 2024-03-01T01")
    assert _report_runs([], [damaged], set(), as_json=True) == 2
    assert _report_runs([], [held], set(), as_json=True) == 4
    assert _report_runs([], [held, damaged], set(), as_json=True) == 2
