"""The scoring container's entrypoint, run as a plain module (no Docker engine here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scoring_container.__main__ import main, parse_args

ROOT = Path(__file__).resolve().parents[1]
WINDOW = "2024-03-01T01"


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=180, cwd=ROOT, check=check)


def _sorted_rows(table) -> list[tuple]:
    return sorted(zip(*(table[c].to_pylist() for c in table.column_names), strict=True))


@pytest.mark.reliability("R30")
def test_container_scores_a_saved_plan_into_its_run_and_changes_nothing_visible(trained_store):
    from fleetscore.core.hours import Hour
    from fleetscore.data.predictions import decode
    from fleetscore.runs.lifecycle import read_predictions, read_unit_result, staged_path

    hour = Hour.parse(WINDOW)
    store = trained_store.url
    _cli("run", "--store", store, "--window", WINDOW, "--unit-size", "2")
    visible = read_predictions(trained_store, hour)
    files = sorted(trained_store.list(f"predictions/{hour.path}"))
    assert visible.num_rows == 180
    dry = json.loads(_cli("plan", "--store", store, "--window", WINDOW, "--json").stdout)
    assert dry["run_id"] is None and list(trained_store.list(f"runs/{WINDOW}")) == []
    plan = json.loads(_cli("plan", "--store", store, "--window", WINDOW, "--unit-size", "2",
                           "--save", "--json").stdout)
    run_id = plan["run_id"]
    assert run_id and len(plan["units"]) == 2
    staged = []
    for unit in plan["units"]:
        proc = subprocess.run([sys.executable, "-m", "scoring_container", "--store", store,
                               "--window", WINDOW, "--run", run_id, "--unit", unit["id"]],
                              capture_output=True, text=True, timeout=180, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        assert f"unit {unit['id']} of {WINDOW}: succeeded" in proc.stderr
        assert read_unit_result(trained_store, hour, run_id, unit["id"]).scored == len(unit["sensors"])
        path = staged_path(hour, run_id, unit["id"])
        staged.append(decode(trained_store.get(path), path))
    # The container's rows are the local run's rows ...
    import pyarrow as pa
    assert _sorted_rows(pa.concat_tables(staged)) == _sorted_rows(visible)
    # ... and the hour's visible predictions did not change: no second file, verify is clean.
    assert sorted(trained_store.list(f"predictions/{hour.path}")) == files
    assert read_predictions(trained_store, hour).equals(visible)
    assert "0 problems" in _cli("verify", "--store", store).stdout


@pytest.mark.reliability("R73")
def test_container_exit_codes_tell_batch_when_a_retry_can_help(trained_store, tmp_path, caplog):
    """0 whenever a Batch retry would change nothing: the unit's result is recorded (scored,
    partial, unusable, bad arguments that still name the unit), or the command line is wrong
    and stderr says so. 1 only when nothing could be recorded and a retry may help."""
    from fleetscore.core.hours import Hour
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.registry import model_path
    from fleetscore.runs.lifecycle import read_unit_result
    from fleetscore.scoring.planning import make_plan, save_plan

    hour = Hour.parse(WINDOW)
    save_plan(trained_store, make_plan(trained_store, hour, unit_size=3), "r1")
    args = ["--store", trained_store.url, "--window", WINDOW, "--run", "r1", "--unit"]
    assert main([*args, "u000000"]) == 0
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    assert main([*args, "u000000"]) == 0  # partial: recorded, the other two are written
    assert read_unit_result(trained_store, hour, "r1", "u000000").status == "partial"
    assert main([*args, "u999999"]) == 0  # no such unit: recorded as unusable
    assert "InputError" in read_unit_result(trained_store, hour, "r1", "u999999").error
    # Bad arguments are deterministic: exit 0 (Batch would rerun any other code), recorded in
    # the unit's result when the store, hour, run and unit can still be read ...
    assert main([*args, "u000002", "--unknown", "1"]) == 0
    recorded = read_unit_result(trained_store, hour, "r1", "u000002")
    assert recorded.status == "failed" and recorded.error.startswith("UsageError: bad arguments")
    assert "--unknown" in recorded.error
    # ... else said on stderr, where the backend reads why a task left no result.
    caplog.clear()
    assert main(["--store", trained_store.url, "--window", "2024-3-1", "--run", "r1",
                 "--unit", "u000000"]) == 0
    assert "invalid hour" in caplog.text and "not retried" in caplog.text
    caplog.clear()
    assert main(["--window", WINDOW]) == 0  # missing arguments
    assert "required: --store, --run, --unit" in caplog.text
    caplog.clear()
    assert main(["--store", str(tmp_path / "nowhere"), "--window", WINDOW, "--run", "r1",
                 "--unit", "u000000"]) == 0
    assert "not retried" in caplog.text
    assert read_unit_result(trained_store, hour, "r1", "u000000").status == "partial"  # kept
    (trained_store.root / "runs" / WINDOW / "r1" / "results").chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anyway: the retry path is covered below
            assert main([*args, "u000001"]) == 1
    finally:
        (trained_store.root / "runs" / WINDOW / "r1" / "results").chmod(0o755)


def test_container_retry_code_when_the_store_is_unreachable(monkeypatch):
    monkeypatch.setenv("FLEETSCORE_STORAGE_CONNECTION_STRING",
                       "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                       "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")
    monkeypatch.setenv("FLEETSCORE_STORAGE_RETRIES", "0")
    assert main(["--store", "az://nowhere", "--window", WINDOW, "--run", "r1",
                 "--unit", "u000000"]) == 1


def test_container_accepts_the_full_command_as_arguments():
    # Batch may pass the task's whole command line to the image's ENTRYPOINT.
    args = parse_args(["python", "-m", "scoring_container", "--store", "az://c", "--window",
                       WINDOW, "--run", "r1", "--unit", "u000001"])
    assert (args.store, args.window, args.run, args.unit) == ("az://c", WINDOW, "r1", "u000001")


def test_container_dockerfile_is_slim_non_root_and_pinned():
    text = (ROOT / "scoring_container" / "Dockerfile").read_text()
    assert "\nARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n" in text
    assert "USER scorer" in text and \
        'ENTRYPOINT ["/opt/venv/bin/python", "-P", "-m", "scoring_container"]' in text
    assert "COPY fleetscore" in text and "COPY scoring_container" in text
    assert text.index("USER scorer") > text.index("RUN pip install")
    reqs = (ROOT / "scoring_container" / "requirements.txt").read_text().splitlines()
    pins = [r for r in reqs if r and not r.startswith("#")]
    assert pins and all("==" in r for r in pins)
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split("==")[0]: d.split("==")[1] for d in project["dependencies"]}
    azure = {d.split("==")[0]: d.split("==")[1] for d in project["optional-dependencies"]["azure"]}
    pinned = {r.split("==")[0]: r.split("==")[1] for r in pins}
    # The core and the Blob store (and the telemetry the container exports), at the versions
    # pyproject.toml declares; nothing the container does not import (the azure extra's Event
    # Hubs client is for `fleetscore replay`; the cli and report extras, typer, rich and
    # matplotlib, are the command line's and the report's).
    assert core.items() <= pinned.items()
    assert pinned.items() <= {**core, **azure}.items()
    assert {"azure-storage-blob", "azure-identity"} <= set(pinned)
    assert not {"typer", "rich", "matplotlib"} & set(pinned)


@pytest.mark.parametrize("argv", [["--help"]])
def test_container_help_exits_zero(argv, capsys):
    assert main(argv) == 0
    assert "--unit" in capsys.readouterr().out
