"""The command line as an operator meets it every day (issue 14): mistakes, estimates,
progress, help, numbers and model import."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
import skops.io as sio
from rich.console import Console

import fleetscore.cli.common as cli_common
from fleetscore import __version__
from fleetscore.cli.app import main
from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.model.training import default_model
from tests.conftest import minute_readings, write_readings


def fleetscore(*args: str, cwd=None, columns: int = 100) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    env.pop("FLEETSCORE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def one_line_usage_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "internal error" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- A: user mistakes are user errors --------------------------------------------------------


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


def test_demo_dir_an_existing_file_is_a_usage_error(tmp_path):
    (tmp_path / "README.md").write_text("x")
    line = one_line_usage_error(fleetscore("demo", "--dir", "README.md", cwd=tmp_path))
    assert "README.md" in line and "not a directory" in line
    assert (tmp_path / "README.md").read_text() == "x"


# --- B: batch estimate -----------------------------------------------------------------------


def test_batch_estimate_unknown_vm_size_names_the_missing_options(cli):
    code, _, err = cli("batch", "estimate", "--sensors", "10000", "--vm-size", "Standard_Foo")
    assert code == 2 and "pass --cores and --price-per-hour" in err
    code, _, err = cli("batch", "estimate", "--sensors", "10000", "--vm-size", "Standard_Foo",
                       "--price-per-hour", "0.5")
    assert code == 2 and "pass --cores," in err  # never a silent 2 cores
    code, out, _ = cli("batch", "estimate", "--sensors", "10000", "--vm-size", "Standard_Foo",
                       "--price-per-hour", "0.5", "--cores", "4")
    assert code == 0 and "(4 cores, $0.5000/node-hour)" in out


def test_batch_estimate_prints_figures_that_add_up(cli):
    code, out, _ = cli("batch", "estimate", "--sensors", "10000")
    assert code == 0
    # By hand: 10,000 x 3.5 ms = 35 core-seconds, one task of 35 s + 10 s container start.
    assert "35.0 core-seconds of scoring in 1 task of up to 10,000 sensors, each 45 s" in out
    assert "1 node, done in 45 s (of the 6 min left before the deadline)" in out
    # Billed 4 + 0.75 + 5 minutes at $0.096 an hour.
    assert f"${(4 + 0.75 + 5) / 60 * 0.096:.4f} a run" in out
    assert ">= 2 min" not in out and "6 min of work" not in out


# --- E: progress ---------------------------------------------------------------------------


def test_progress_is_quiet_when_not_on_a_terminal(cli, tmp_path, fleet_csv):
    store = str(tmp_path / "s")
    for args in (("ingest", str(fleet_csv)), ("train", "--until", "2024-03-01T00")):
        code, out, err = cli(*args, "--store", store)
        assert code == 0, err
        assert not re.search(r"[━╸⠋]|ingesting|training", out + err), out + err


def test_progress_shows_on_a_terminal(cli, tmp_path, fleet_csv, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(cli_common, "err", Console(file=screen, force_terminal=True, width=100))
    store = str(tmp_path / "s")
    for args in (("ingest", str(fleet_csv)), ("train", "--until", "2024-03-01T00")):
        code, _, _ = cli(*args, "--store", store)
        assert code == 0, screen.getvalue()
    shown = screen.getvalue()
    assert "ingesting fleet.csv" in shown and "training" in shown
    assert "0/?" not in shown


def test_progress_on_the_demo_counts_training(tmp_path, monkeypatch, capsys):
    screen = io.StringIO()
    monkeypatch.setattr(cli_common, "err", Console(file=screen, force_terminal=True, width=100))
    with pytest.raises(SystemExit) as done:
        main(["demo", "--dir", str(tmp_path / "d"), "--sensors", "4", "--hours", "2",
              "--workers", "1"])
    assert (done.value.code or 0) == 0
    shown = screen.getvalue()
    assert "training" in shown and "scoring 2026-01-05T01" in shown and "4/4" in shown


# --- F: help, version, numbers, import ------------------------------------------------------


def test_short_help_and_version():
    assert fleetscore("-h").returncode == 0
    sub = fleetscore("report", "-h")
    assert sub.returncode == 0 and "--out" in sub.stdout
    version = fleetscore("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fleetscore {__version__}"


def test_help_shows_flags_as_flags_and_rewraps():
    run_help = fleetscore("run", "-h").stdout
    assert re.search(r"--all\s+Every hour", run_help) and "<bool>" not in run_help
    # A docstring's own line breaks are not kept: every paragraph fills the terminal's width,
    # only its last line is short.
    plan_help = fleetscore("plan", "-h", columns=120).stdout
    description = plan_help.split("Usage:")[1].split("╭")[0].splitlines()[1:]
    paragraphs = [[]]
    for line in (x.strip() for x in description):
        paragraphs.append([]) if not line else paragraphs[-1].append(line)
    paragraphs = [p for p in paragraphs if p]
    assert len(paragraphs) >= 2, plan_help
    for lines in paragraphs:
        assert all(len(line) > 120 - 30 for line in lines[:-1]), lines


def test_the_command_line_leaves_typer_as_it_is():
    """Help shows flags without a type through the app's own command classes: importing the
    command line patches nothing of typer's (nor of click's, vendored in typer.core)."""
    import typer.core

    import fleetscore.cli.app  # noqa: F401 - the import is what is checked

    patched = [f"{cls.__name__}.{name}" for cls in vars(typer.core).values()
               if isinstance(cls, type) and cls.__module__.startswith("typer")
               for name, value in vars(cls).items()
               if callable(value) and not getattr(value, "__module__", "typer").startswith("typer")]
    assert patched == []


def test_models_import_help_names_both_file_namings():
    text = re.sub(r"[\s│]+", " ", fleetscore("models", "import", "-h", columns=200).stdout)
    assert "{Device}_{Tag}.skops" in text and "model_{Device}_{Tag}.skops" in text
    assert "--sensor" in text


def test_counts_read_as_english_with_thousands_separators(cli, tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 30, per_minute=40)
    path = write_readings(tmp_path / "one.csv", rows)
    code, out, _ = cli("ingest", str(path), "--store", str(tmp_path / "s"))
    assert code == 0
    assert re.search(r": 1,200 rows -> \d\d windows of 1 sensor in 1 hour \(", out), out


def test_train_and_the_demo_share_one_documented_default(cli, tmp_path, fleet_csv):
    store = str(tmp_path / "s")
    assert cli("ingest", str(fleet_csv), "--store", store)[0] == 0
    code, out, _ = cli("train", "--store", store, "--until", "2024-03-01T00")
    assert code == 0 and f"(nu={DEFAULT_NU:g}, gamma={DEFAULT_GAMMA:g})" in out
    code, out, _ = cli("models", "list", "--store", store)
    assert f"train:nu={DEFAULT_NU},gamma={DEFAULT_GAMMA}" in out.replace(" ", "")


def _model_file(path):
    import numpy as np

    sio.dump(default_model().fit(np.arange(20.0).reshape(-1, 1)), path)
    return path


def test_a_failed_import_leaves_no_empty_store_behind(cli, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "nounderscore.skops").write_bytes(b"x")
    store = tmp_path / "new-store"
    code, _, err = cli("models", "import", str(models), "--store", str(store))
    assert code == 2 and "nounderscore.skops" in err
    assert not store.exists()


def test_an_ambiguous_model_name_can_be_given_its_sensor(cli, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    model = _model_file(models / "a_b_c.skops")  # a/b_c or a_b/c
    store = str(tmp_path / "s")
    code, _, err = cli("models", "import", str(models), "--store", store)
    assert code == 2 and "ambiguous" in err and "--sensor DEVICE/TAG" in err
    code, out, _ = cli("models", "import", str(model), "--sensor", "a_b/c", "--store", store)
    assert code == 0 and "imported 1 model from" in out
    assert (tmp_path / "s" / "models" / "a_b" / "c.skops").exists()
    code, _, err = cli("models", "import", str(models), "--sensor", "a_b/c", "--store", store)
    assert code == 2 and "give a file, not a folder" in err


def test_a_failed_import_leaves_no_empty_blob_container_behind(cli, tmp_path, azurite,
                                                                monkeypatch):
    import uuid

    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("FLEETSCORE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    models = tmp_path / "models"
    models.mkdir()
    (models / "nounderscore.skops").write_bytes(b"x")
    container = f"t{uuid.uuid4().hex[:20]}"
    code, _, err = cli("models", "import", str(models), "--store", f"az://{container}")
    assert code == 2 and "nounderscore.skops" in err
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert not service.get_container_client(container).exists()
    # A container that existed before is left alone, even when empty.
    service.create_container(container)
    code, _, _ = cli("models", "import", str(models), "--store", f"az://{container}")
    assert code == 2 and service.get_container_client(container).exists()
    service.delete_container(container)
