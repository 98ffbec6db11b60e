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


def _predictions(store_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store_dir)): p.read_bytes()
            for p in sorted((store_dir / "predictions").rglob("*.csv"))}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetscore.cli", *args], capture_output=True,
                          text=True, timeout=180, cwd=ROOT, check=True)


def test_container_per_unit_writes_exactly_what_the_local_run_writes(trained_store):
    store = trained_store.url
    _cli("run", "--store", store, "--window", WINDOW, "--unit-size", "2")
    expected = _predictions(trained_store.root)
    assert expected
    for path in (trained_store.root / "predictions").rglob("*.csv"):
        path.unlink()
    plan = json.loads(_cli("plan", "--store", store, "--window", WINDOW, "--unit-size", "2",
                           "--json").stdout)
    assert len(plan["units"]) == 2
    for unit in plan["units"]:
        proc = subprocess.run([sys.executable, "-m", "scoring_container", "--store", store,
                               "--window", WINDOW, "--unit", unit["id"]],
                              capture_output=True, text=True, timeout=180, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        assert f"unit {unit['id']} of {WINDOW}: succeeded" in proc.stderr
    assert _predictions(trained_store.root) == expected


def test_container_exit_codes(trained_store):
    from fleetscore.models import model_path
    from fleetscore.planning import make_plan, save_plan
    from fleetscore.hours import Hour
    from fleetscore.sensors import Sensor

    save_plan(trained_store, make_plan(trained_store, Hour.parse(WINDOW), unit_size=3))
    args = ["--store", trained_store.url, "--window", WINDOW, "--unit"]
    assert main([*args, "u000000"]) == 0
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    assert main([*args, "u000000"]) == 3  # partial: the other two are written
    assert main([*args, "u999999"]) == 2  # no such unit in the plan
    assert main(["--store", trained_store.url, "--window", "2024-3-1", "--unit", "u000000"]) == 2
    assert main(["--window", WINDOW]) == 2  # missing arguments


def test_container_accepts_the_full_command_as_arguments():
    # Batch may pass the task's whole command line to the image's ENTRYPOINT.
    args = parse_args(["python", "-m", "scoring_container", "--store", "az://c", "--window",
                       WINDOW, "--unit", "u000001"])
    assert (args.store, args.window, args.unit) == ("az://c", WINDOW, "u000001")


def test_container_dockerfile_is_slim_non_root_and_pinned():
    text = (ROOT / "scoring_container" / "Dockerfile").read_text()
    assert "\nFROM python:3.11-slim\n" in text
    assert "USER scorer" in text and 'ENTRYPOINT ["python", "-m", "scoring_container"]' in text
    assert "COPY fleetscore" in text and "COPY scoring_container" in text
    assert text.index("USER scorer") > text.index("RUN pip install")
    reqs = (ROOT / "scoring_container" / "requirements.txt").read_text().splitlines()
    pins = [r for r in reqs if r and not r.startswith("#")]
    assert pins and all("==" in r for r in pins)
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {d.split("==")[0]: d.split("==")[1] for d in
                [*project["dependencies"], *project["optional-dependencies"]["azure"]]}
    assert {r.split("==")[0]: r.split("==")[1] for r in pins} == declared


@pytest.mark.parametrize("argv", [["--help"]])
def test_container_help_exits_zero(argv, capsys):
    assert main(argv) == 0
    assert "--unit" in capsys.readouterr().out
