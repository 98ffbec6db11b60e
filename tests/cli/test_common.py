"""What the commands share (cli.common): the progress bar, on a terminal only."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

import fleetscore.cli.common as cli_common
from fleetscore.cli.app import main


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

