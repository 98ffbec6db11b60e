"""The `fleetscore` command, end to end, as a user runs it; its help and version (cli.app)."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import skops.io as sio

from fleetscore import __version__
from fleetscore.data.readings import parse_ts
from fleetscore.model.training import reference_model
from tests.cli.conftest import fleetscore
from tests.conftest import minute_readings, write_readings


def _aggregate_by_hand(path):
    """An independent tumbling window: (Device, Tag, end ms) -> mean."""
    sums, counts = defaultdict(float), defaultdict(int)
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (row["Device"], row["Tag"], math.ceil(parse_ts(row["TS"]) / 60_000) * 60_000)
            sums[key] += float(row["Value"])
            counts[key] += 1
    return {k: sums[k] / counts[k] for k in sums}


def test_reference_data_ingest_import_run_all_matches_scikit_learn(cli, refdata, tmp_path):
    store = str(tmp_path / "store")
    code, out, _ = cli("ingest", str(refdata), "--store", store)
    assert code == 0 and "17,768 rows" in out

    means = _aggregate_by_hand(refdata)
    first_hour_end = parse_ts("2018-08-29 00:00:00")
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    models = {}
    for device, tag in sorted({(d, t) for d, t, _ in means}):
        train = [v for (d, t, end), v in means.items() if (d, t) == (device, tag) and end <= first_hour_end]
        model = reference_model().fit(np.array(train).reshape(-1, 1))
        sio.dump(model, models_dir / f"model_{device}_{tag}.skops")  # the reference's naming
        models[(device, tag)] = model
    code, out, _ = cli("models", "import", str(models_dir), "--store", store)
    assert code == 0 and "imported 15 models" in out

    code, out, _ = cli("run", "--all", "--store", store, "--workers", "2")
    assert code == 0, out
    checked = 0
    for pred_file in sorted((tmp_path / "store" / "predictions").rglob("*.csv")):
        with open(pred_file) as f:
            reader = csv.reader(f)
            assert next(reader)[:5] == ["TS", "Device", "Tag", "Val", "Prediction"]
            for ts, device, tag, val, prediction, _score in reader:
                end = parse_ts(ts)
                assert float(val) == pytest.approx(means[(device, tag, end)], rel=1e-12)
                expected = int(models[(device, tag)].predict([[float(val)]])[0] == -1)
                assert int(prediction) == expected
                checked += 1
    assert checked == len(means)  # every aggregated point of every hour was scored once
    manifests = sorted((tmp_path / "store" / "runs").glob("*.json"))
    assert [m.stem for m in manifests] == ["2018-08-28T23", "2018-08-29T00", "2018-08-29T01",
                                           "2018-08-29T02", "2018-08-29T03"]
    assert all(json.loads(m.read_text())["status"] == "succeeded" for m in manifests)


def test_train_plan_json_run_and_report(cli, fleet_csv, tmp_path):
    store = str(tmp_path / "s")
    assert cli("ingest", str(fleet_csv), "--store", store)[0] == 0
    code, out, _ = cli("train", "--estimator", "ocsvm", "--store", store, "--until", "2024-03-01T00",
                       "--nu", "0.05")
    assert code == 0 and "trained 3 models" in out
    code, out, _ = cli("plan", "--store", store, "--window", "2024-03-01T01", "--json")
    plan = json.loads(out)
    assert plan["window"] == "2024-03-01T01"
    assert [u["sensors"] for u in plan["units"]] == [["1/1"], ["1/2"], ["dev_a/t.x"]]
    assert all(set(u) == {"id", "sensors", "format"} for u in plan["units"])
    code, out, _ = cli("run", "--store", store, "--from", "2024-03-01T01", "--to", "2024-03-01T02",
                       "--backend", "sequential")
    assert code == 0 and "2024-03-01T02" in out and "succeeded" in out
    report = tmp_path / "r.html"
    code, out, _ = cli("report", "--store", store, "--out", str(report))
    assert code == 0
    assert report.read_text().count("data:image/png;base64,") == 3
    code, out, _ = cli("models", "list", "--store", store)
    assert code == 0 and "dev_a/t.x" in out


def test_partial_run_exits_3_and_names_the_sensor(cli, trained_store):
    (trained_store.root / "models" / "1" / "2.skops").write_bytes(b"broken")
    code, out, err = cli("run", "--store", trained_store.url, "--window", "2024-03-01T01",
                         "--backend", "sequential")
    assert code == 3 and "partial" in out and "1/2" in err


BAD_INVOCATIONS = [
    ["ingest", "/nonexistent.csv"],
    ["ingest", "{empty}"],
    ["ingest", "{wrong_header}"],
    ["ingest", "{good}", "--interval", "7"],
    ["train", "--estimator", "ocsvm", "--nu", "2"],
    ["train", "--until", "yesterday"],
    ["models", "import", "/nonexistent-dir"],
    ["plan"],
    ["plan", "--window", "2024-13-01T00"],
    ["run"],
    ["run", "--window", "2024-03-01T01", "--all"],
    ["run", "--from", "2024-03-01T05", "--to", "2024-03-01T01"],
    ["run", "--window", "2024-03-01T01", "--backend", "warp"],
    ["run", "--window", "2024-03-01T01", "--workers", "0"],
    ["run", "--all", "--store", "ftp://x"],
    ["report", "--from", "bad"],
    ["demo", "--hours", "1"],
    ["no-such-command"],
]


@pytest.mark.reliability("R25")
@pytest.mark.parametrize("args", BAD_INVOCATIONS, ids=lambda a: " ".join(a))
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(args, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b,c\n1,2,3\n")
    good = write_readings(tmp_path / "good.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 2))
    args = [a.format(empty=empty, wrong_header=wrong, good=good) for a in args]
    if "--store" not in args and args[0] not in ("demo", "no-such-command"):
        args += ["--store", str(tmp_path / "s")]
    proc = subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip(), "a user error must say what is wrong"


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

