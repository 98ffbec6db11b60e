"""Faults and bad input, one test (at least) per row of docs/reliability.md (its id in the
``reliability`` marker). After every fault, a rerun yields exactly a clean run's predictions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleetscore.compute.local import LocalBackend, SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.errors import AlreadyRunning
from fleetscore.runs import locks
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, run_hour
from fleetscore.runs.locks import lock_path
from fleetscore.settings import Settings
from fleetscore.storage import LocalStore
from tests.conftest import ROOT, Azurite, minute_readings, predictions_snapshot, write_readings

reliability = pytest.mark.reliability
UNIT_SIZE = "30"


def _fleetscore(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetscore", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@reliability("R4")
def test_huge_line_is_rejected_by_number_and_memory_stays_bounded(local_store, tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "w") as f:
        f.write("TS,Device,Tag,Value\n2024-03-01 00:00:10,1,1,1.0\n")
        f.write("2024-03-01 00:00:20,1,1," + "9" * 20_000_000 + "x\n")
        f.write("2024-03-01 00:00:30,1,1,3.0\n")
    import tracemalloc

    tracemalloc.start()
    try:
        result = ingest_file(local_store, path, block_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.rows == 2 and result.rejected == 1
    reject = result.rejects_sample[0]
    assert reject.line == 3 and "longer than a reading can be" in reject.reason
    assert "20,000,025 bytes" in reject.reason and len(reject.text) <= 200
    # The 20 MB line is never held whole: memory follows the 1 MiB block, not the line.
    assert peak < 8 << 20, f"peak {peak:,} bytes"


@reliability("R5")
def test_duplicated_rows_count_once_and_are_named(local_store, tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 2)
    path = write_readings(tmp_path / "d.csv", rows[:3] + [rows[1]] + rows[3:])
    result = ingest_file(local_store, path)
    assert result.rejected == 1 and result.rejects_sample[0].reason == "duplicate of line 3"
    assert result.rows == len(rows)


@reliability("R6")
def test_out_of_order_points_aggregate_as_sorted_ones(tmp_path):
    from fleetscore.data.windows import read_points

    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 30, seed=4)
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    ingest_file(a, write_readings(tmp_path / "sorted.csv", rows))
    ingest_file(b, write_readings(tmp_path / "shuffled.csv", rows[::-1]))
    hour = Hour.parse("2024-03-01T00")
    assert read_points(a, hour).equals(read_points(b, hour))


@reliability("R9")
def test_truncated_model_file_fails_its_sensor_alone(trained_store):
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.registry import model_path

    path = model_path(Sensor("1", "2"))
    data = trained_store.get(path)
    trained_store.put(path, data[: len(data) // 2])
    summary = run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    assert summary.status == "partial"
    assert [(f["sensor"], f["kind"]) for f in summary.failures] == [("1/2", "ModelError")]


@reliability("R13")
def test_verify_names_files_changed_after_they_were_written(trained_store, capsys):
    from fleetscore.cli.app import main

    run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    with pytest.raises(SystemExit) as clean:
        main(["verify", "--store", trained_store.url])
    assert clean.value.code in (0, None)
    window = next(p for p in trained_store.list("windows/2024/03/01/01"))
    trained_store.put(window, trained_store.get(window)[:100])
    prediction = next(p for p in trained_store.list("predictions/2024/03/01/01"))
    trained_store.put(prediction, trained_store.get(prediction).replace(b",0,", b",1,", 1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:
        main(["verify", "--store", trained_store.url])
    err = capsys.readouterr().err
    assert bad.value.code == 3
    assert window in err and prediction in err and "changed or truncated" in err


@reliability("R13")
def test_unreadable_window_file_fails_its_units_naming_the_file(trained_store):
    window = next(p for p in trained_store.list("windows/2024/03/01/01"))
    trained_store.put(window, b"PAR1 not really parquet")
    summary = run_hour(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store, ENGINE))
    assert summary.status == "failed" and summary.failed == 3
    assert all(window in f["message"] for f in summary.failures)


def _run_while_killing_workers(store, hour, *, times: int | None):
    """Run the hour on a 2-worker pool while a thread SIGKILLs its workers: ``times`` of them,
    or every worker that starts (None). Returns the summary and how many were killed."""
    backend = LocalBackend(store.url, Settings(), workers=2, engine=ENGINE)
    stop = threading.Event()
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            if times is not None and len(killed) >= times:
                return
            pool = backend._pool
            for pid in list(pool._processes) if pool is not None and pool._processes else []:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
                if times is not None and len(killed) >= times:
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        summary = run_hour(store, hour, backend, unit_size=30)
    finally:
        stop.set()
        thread.join()
        backend.close()
    return summary, len(killed)


@reliability("R16")
def test_worker_killed_mid_unit_is_retried_once(fleet_store, fleet_template):
    summary, killed = _run_while_killing_workers(fleet_store, fleet_template["hour"], times=1)
    assert killed == 1 and summary.status == "succeeded"
    assert predictions_snapshot(fleet_store.root) == fleet_template["clean"]


@reliability("R16")
def test_worker_killed_again_fails_its_units_and_a_rerun_heals(fleet_store, fleet_template):
    summary, killed = _run_while_killing_workers(fleet_store, fleet_template["hour"], times=None)
    assert killed >= 2 and summary.status == "failed"
    assert {f["kind"] for f in summary.failures} == {"WorkerCrashed"}
    rerun = run_hour(fleet_store, fleet_template["hour"], SequentialBackend(fleet_store, ENGINE),
                     unit_size=30)
    assert rerun.status == "succeeded"
    assert predictions_snapshot(fleet_store.root) == fleet_template["clean"]


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (pool workers are children of a fork server)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        out += frontier
    return out


@reliability("R17")
def test_run_killed_with_sigkill_then_rerun_is_complete_and_untorn(fleet_store, fleet_template):
    window = str(fleet_template["hour"])
    proc = _fleetscore("run", "--store", fleet_store.url, "--window", window, "--unit-size",
                       UNIT_SIZE, "--workers", "2")
    deadline = time.monotonic() + 60
    while not fleet_store.exists(lock_path(fleet_template["hour"])) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    workers = _children(proc.pid)
    assert workers, "the run's worker pool had not started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Its pool's workers die with it: no orphan is left holding memory.
    gone_by = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in workers) and time.monotonic() < gone_by:
        time.sleep(0.05)
    left = [p for p in workers if Path(f"/proc/{p}").exists()]
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in left]
    # The dead run left its lock: the next run takes it over (its holder no longer exists).
    rerun = _fleetscore("run", "--store", fleet_store.url, "--window", window, "--unit-size",
                        UNIT_SIZE, "--workers", "2")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert predictions_snapshot(fleet_store.root) == fleet_template["clean"]
    assert not fleet_store.exists(lock_path(fleet_template["hour"]))
    assert all(not p.split("/")[-1].startswith(".tmp-") for p in fleet_store.list(""))


@reliability("R18")
def test_second_run_of_the_same_hour_says_already_running(fleet_store, fleet_template):
    from datetime import UTC, datetime

    hour = fleet_template["hour"]
    locks.acquire(fleet_store, hour, "other", now=datetime.now(UTC), pid=os.getpid())
    with pytest.raises(AlreadyRunning, match="already being scored"):
        run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE))
    proc = _fleetscore("run", "--store", fleet_store.url, "--window", str(hour))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4 and "already being scored" in err and "Traceback" not in err
    assert locks.holds(fleet_store, hour, "other")  # the refused runs left the lock alone
    locks.release(fleet_store, hour, "other")
    assert not list(fleet_store.list("predictions"))  # nothing was written meanwhile
    summary = run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    assert summary.status == "succeeded"
    assert predictions_snapshot(fleet_store.root) == fleet_template["clean"]


@reliability("R18")
def test_a_run_started_while_another_is_inside_is_refused(fleet_store, fleet_template):
    """The first run is held inside (between plan and scoring) while a second CLI run starts:
    the second must be refused with exit 4, and the first completes untouched."""
    hour = fleet_template["hour"]
    inside, go_on = threading.Event(), threading.Event()

    class Held(SequentialBackend):
        def submit(self, window, units, *, run_id=""):
            inside.set()
            go_on.wait(60)
            super().submit(window, units, run_id=run_id)

    result = {}
    first = threading.Thread(target=lambda: result.update(
        summary=run_hour(fleet_store, hour, Held(fleet_store, ENGINE), unit_size=30)))
    first.start()
    try:
        assert inside.wait(60)
        proc = _fleetscore("run", "--store", fleet_store.url, "--window", str(hour),
                           "--unit-size", UNIT_SIZE, "--workers", "1")
        out, err = proc.communicate(timeout=300)
    finally:
        go_on.set()
        first.join()
    assert proc.returncode == 4 and "already being scored" in err, (proc.returncode, err)
    assert result["summary"].status == "succeeded"
    assert predictions_snapshot(fleet_store.root) == fleet_template["clean"]
    assert json.loads(fleet_store.get(f"runs/{hour}.json"))["status"] == "succeeded"


@pytest.fixture
def own_azurite(tmp_path):
    """An Azurite of this test's own, persisting to disk so it can be stopped and restarted."""
    emulator = Azurite()
    location = tmp_path / "azurite"
    location.mkdir()

    def start():
        emulator.proc = subprocess.Popen(
            [str(ROOT / "node_modules/.bin/azurite-blob"), "--skipApiVersionCheck",
             "--disableTelemetry", "--silent", "--location", str(location),
             "--blobHost", "127.0.0.1", "--blobPort", str(emulator.blob_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        from tests.conftest import _wait_listening
        _wait_listening(emulator.blob_port, emulator.proc)

    emulator.start = start
    start()
    yield emulator
    emulator.stop()


@reliability("R19")
def test_store_restarting_mid_run_is_ridden_out(own_azurite, fleet_template):
    from fleetscore.model.training import train
    from fleetscore.storage.blob import BlobStore

    store = BlobStore("fleet", connection_string=own_azurite.connection_string, retries=5)
    ingest_file(store, fleet_template["readings"])
    train(store, estimator="ocsvm", until=fleet_template["hour"] - 1)  # as the template
    restarted = threading.Event()

    def bounce():
        time.sleep(0.3)
        own_azurite.stop()
        time.sleep(1.0)
        own_azurite.start()
        restarted.set()

    thread = threading.Thread(target=bounce)
    thread.start()
    summary = run_hour(store, fleet_template["hour"], SequentialBackend(store, ENGINE), unit_size=30)
    thread.join()
    assert restarted.is_set() and summary.status == "succeeded", summary.failures[:3]
    got = sorted(line for p in store.list("predictions") for line in store.get(p).splitlines()[1:])
    assert got == fleet_template["clean"]
    store.close()


@reliability("R20")
def test_store_down_is_one_clear_line_and_nothing_half_written(own_azurite, fleet_template, tmp_path):
    env = {**os.environ, "FLEETSCORE_STORAGE_CONNECTION_STRING": own_azurite.connection_string,
           "FLEETSCORE_STORAGE_RETRIES": "1"}
    proc = _fleetscore("ingest", str(fleet_template["readings"]), "--store", "az://fleet", env=env)
    assert proc.wait(timeout=120) == 0
    own_azurite.stop()
    proc = _fleetscore("train", "--store", "az://fleet", env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(r"error: cannot .*fleet.*Connection refused", err)
    own_azurite.start()
    from fleetscore.storage.blob import BlobStore

    store = BlobStore("fleet", connection_string=own_azurite.connection_string)
    assert not list(store.list("models"))  # no model, whole or half, was written
    store.close()


@reliability("R23")
def test_rerun_with_another_unit_size_never_duplicates(fleet_store, fleet_template):
    hour = fleet_template["hour"]
    run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=7)
    run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    assert predictions_snapshot(fleet_store.root) == fleet_template["clean"]
    assert read_manifest(fleet_store, hour).sensors.scored == 120


@reliability("R24")
def test_no_secret_in_the_repository_or_in_settings_repr():
    settings = Settings.from_env({"FLEETSCORE_STORAGE_CONNECTION_STRING": "AccountKey=c2VjcmV0",
                                  "FLEETSCORE_BATCH_ACCOUNT_KEY": "a2V5c2VjcmV0"})
    assert "c2VjcmV0" not in repr(settings) and "a2V5c2VjcmV0" not in repr(settings)
    well_known_dev_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    patterns = [re.compile(p) for p in (r"AccountKey=[A-Za-z0-9+/=]{20,}", r"-----BEGIN [A-Z ]*PRIVATE KEY",
                                        r"SharedAccessKey=[A-Za-z0-9+/=]{20,}", r"sig=[A-Za-z0-9%]{20,}")]
    for name in tracked.splitlines():
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore").replace(well_known_dev_key, "")
        for pattern in patterns:
            assert not pattern.search(text), f"{name} holds something like a secret: {pattern.pattern}"


@reliability("R25")
@pytest.mark.parametrize("args", [
    ["verify", "--store", "ftp://nowhere"],
    ["models", "list", "--store", "az://"],
    ["batch", "estimate", "--sensors", "0"],
    ["batch", "estimate", "--sensors", "10", "--vm-size", "Nope"],
    ["batch", "estimate"],
    ["report", "--to", "2024-99-01T00"],
    ["models", "import", "."],
    ["models", "bank", "--store", "ftp://nowhere"],
    ["bench", "--sensors", "0"],
    ["plan", "--window", "2024-03-01T01", "--unit-size", "0"],
    ["ingest", "--interval", "60"],
])
def test_more_commands_with_bad_arguments_never_trace(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stderr.strip()


def test_every_row_of_the_reliability_table_has_a_test():
    rows = re.findall(r"^\| (R\d+) \|", (ROOT / "docs" / "reliability.md").read_text(), re.M)
    assert rows, "docs/reliability.md has no rows"
    sources = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [r for r in rows if f'reliability("{r}")' not in sources]
    assert not missing, f"rows without a test: {missing}"
