"""The error threshold (``max_failed_percent``): an hour where too many sensors fail ends
``failed`` whole, its visible predictions untouched, the reason in its manifest; on Batch the
units not yet done are terminated, so no further task starts."""

from __future__ import annotations

import shutil
import sys
from collections import Counter

import pytest

from fleetscore.compute.base import PENDING, UnitStatus
from fleetscore.compute.batch import BatchBackend
from fleetscore.compute.local import SequentialBackend
from fleetscore.core.sensors import Sensor
from fleetscore.data.ingest import ingest_file
from fleetscore.model.registry import model_path
from fleetscore.model.training import train
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, run_hour
from fleetscore.settings import BatchSettings, Settings
from fleetscore.storage import LocalStore
from tests.compute.batch_emulator import BatchEmulator, ProcessRunner, installed_site
from tests.conftest import ROOT, demo_readings, predictions_snapshot


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """40 sensors, trained on the first hour, the second scored once by a clean run."""
    base = tmp_path_factory.mktemp("forty")
    fleet, readings = demo_readings(base, sensors=40, hours=2, seed=5)
    store = LocalStore(base / "store")
    ingest_file(store, readings)
    train(store, until=fleet.first)
    run_hour(store, fleet.first + 1, SequentialBackend(store, ENGINE))
    return base / "store", fleet.first + 1


def _copy(forty, tmp_path) -> LocalStore:
    return LocalStore(shutil.copytree(forty[0], tmp_path / "store"))


def _damage(store: LocalStore, count: int) -> list[Sensor]:
    sensors = sorted(Sensor.parse(p.removeprefix("models/").removesuffix(".skops"))
                     for p in store.list("models") if p.endswith(".skops"))[:count]
    for s in sensors:
        store.put(model_path(s), b"not a model")
    return sensors


@pytest.mark.reliability("R81")
@pytest.mark.parametrize("damaged, status", [(8, "failed"), (2, "partial")])
def test_past_the_threshold_the_hour_fails_whole_and_keeps_what_was_visible(
        forty, tmp_path, damaged, status):
    store = _copy(forty, tmp_path)
    hour = forty[1]
    before = predictions_snapshot(store.root)
    earlier = read_manifest(store, hour)
    _damage(store, damaged)
    summary = run_hour(store, hour, SequentialBackend(store, ENGINE), max_failed_percent=10)
    manifest = read_manifest(store, hour)
    assert (summary.status, manifest.status) == (status, status)
    assert manifest.sensors.failed == damaged
    if status == "failed":
        assert manifest.reason == ("8 of 40 sensors failed, more than the 10% allowed: "
                                   "nothing of this run was promoted")
        assert predictions_snapshot(store.root) == before
        assert manifest.predictions == earlier.predictions  # the same files stay visible
    else:  # this run's files are promoted; the failed sensors' earlier rows are kept
        assert manifest.reason == "" and predictions_snapshot(store.root) == before
        assert manifest.run_id in {f.run_id for f in manifest.predictions}
        assert manifest.predictions != earlier.predictions
        assert len(manifest.kept_from_earlier_run) == 2


def test_on_batch_no_further_task_starts_once_the_threshold_is_passed(
        forty, tmp_path, tmp_path_factory):
    store = _copy(forty, tmp_path)
    hour = forty[1]
    before = predictions_snapshot(store.root)
    _damage(store, 12)  # the first three units of four sensors: every sensor fails
    assert not (store.root / "bank" / "index.json").exists()  # units load the damaged files
    site = installed_site(tmp_path_factory.getbasetemp(), ROOT)
    emulator = BatchEmulator(runner=ProcessRunner(sys.executable, site), slots=1,
                             task_root=tmp_path / "nodes").start()
    try:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        client = BatchClient(emulator.endpoint, AzureNamedKeyCredential(emulator.account, "a2V5"))
        backend = BatchBackend(store, store.url, Settings(batch=BatchSettings(
            endpoint=emulator.endpoint, task_retries=0)), client=client, engine=ENGINE)
        summary = run_hour(store, hour, backend, unit_size=4, max_failed_percent=10)
        backend.close()
        started = len(emulator.attempts)
    finally:
        emulator.stop()
    assert summary.status == "failed"
    assert 2 <= started < 10, started  # 10 units; the later ones were terminated unstarted
    failures = read_manifest(store, hour).failures
    assert {f.kind for f in failures} >= {"ThresholdExceeded"}
    assert predictions_snapshot(store.root) == before


class _Lagging(SequentialBackend):
    """Each unit runs in submit, but its first polls (submit's and the wait loop's first)
    still say pending: a process pool's future ends a moment after its unit wrote its result
    and its failed marker."""

    def __init__(self, store, engine, lag: int = 2):
        super().__init__(store, engine)
        self._polls: Counter[str] = Counter()
        self._lag = lag

    def poll(self, window, unit_ids, *, run_id="", timeout=1.0):
        out = super().poll(window, unit_ids, run_id=run_id, timeout=timeout)
        self._polls.update(unit_ids)
        return {u: UnitStatus(PENDING) if self._polls[u] <= self._lag else status
                for u, status in out.items()}


def test_a_unit_that_already_wrote_its_result_is_counted_not_cancelled(forty, tmp_path):
    store = _copy(forty, tmp_path)
    hour = forty[1]
    _damage(store, 8)  # two units of four fail whole; the eight others score
    summary = run_hour(store, hour, _Lagging(store, ENGINE), unit_size=4, max_failed_percent=10)
    manifest = read_manifest(store, hour)
    assert summary.status == "failed"
    assert (manifest.sensors.failed, manifest.sensors.scored) == (8, 32)
    # Every unit had run before the first poll: none of them is said not to have run.
    assert manifest.reason == ("8 of 40 sensors failed, more than the 10% allowed: "
                               "nothing of this run was promoted")


def test_past_the_threshold_a_damaged_manifest_still_keeps_what_was_visible(forty, tmp_path):
    """The hour's manifest is damaged, so the visible files are what its folder holds: an
    hour failed whole keeps them, and the next manifest lists them."""
    store = _copy(forty, tmp_path)
    hour = forty[1]
    before = predictions_snapshot(store.root)
    store.put(f"runs/{hour}.json", b"garbage")
    _damage(store, 8)
    summary = run_hour(store, hour, SequentialBackend(store, ENGINE), max_failed_percent=10)
    assert summary.status == "failed"
    assert predictions_snapshot(store.root) == before and before
    assert read_manifest(store, hour).predictions  # listed again, not dropped


def test_a_damaged_earlier_predictions_file_does_not_stop_a_rerun(forty, tmp_path):
    """A rerun in which a sensor fails carries that sensor's earlier rows on: an earlier file
    it cannot read is passed over (its rows were lost already), the rerun ends, and the
    folder holds what the new manifest lists, nothing more."""
    store = _copy(forty, tmp_path)
    hour = forty[1]
    damaged = read_manifest(store, hour).predictions[0].path
    store.put(damaged, b"garbage")
    _damage(store, 1)
    summary = run_hour(store, hour, SequentialBackend(store, ENGINE))
    assert summary.status == "partial"
    listed = {f.path for f in read_manifest(store, hour).predictions}
    assert set(store.list(f"predictions/{hour.path}")) == listed and damaged not in listed


def test_a_rerun_of_other_sensors_keeps_the_hours_failures_standing(forty, tmp_path):
    """A sensor failed in the hour's run; a rerun of another sensor leaves it as it was, so
    the hour stays partial (not succeeded: a range would then skip it), its failure named."""
    store = _copy(forty, tmp_path)
    hour = forty[1]
    (broken,) = _damage(store, 1)
    assert run_hour(store, hour, SequentialBackend(store, ENGINE)).status == "partial"
    other = next(s for s in (Sensor.parse(f"D{i:03d}/flow") for i in range(40))
                 if s != broken and store.exists(model_path(s)))
    for _ in range(2):  # twice: the failure is carried on, said once
        summary = run_hour(store, hour, SequentialBackend(store, ENGINE), sensors=[other])
        manifest = read_manifest(store, hour)
        assert (summary.status, manifest.status) == ("partial", "partial")
        [failure] = manifest.failures
        assert failure.sensor == str(broken) and failure.message.count("not rerun since") == 1


def test_standing_failures_do_not_count_against_a_reruns_threshold(forty, tmp_path):
    """Eight sensors failed in the hour's run; a rerun of one good sensor with a 10%
    threshold scores it: the hour stays partial (the eight still stand), not failed whole."""
    store = _copy(forty, tmp_path)
    hour = forty[1]
    broken = set(_damage(store, 8))
    assert run_hour(store, hour, SequentialBackend(store, ENGINE)).status == "partial"
    other = next(s for s in (Sensor.parse(f"D{i:03d}/flow") for i in range(40))
                 if s not in broken and store.exists(model_path(s)))
    summary = run_hour(store, hour, SequentialBackend(store, ENGINE), sensors=[other],
                       max_failed_percent=10)
    manifest = read_manifest(store, hour)
    assert (summary.status, manifest.status, manifest.reason) == ("partial", "partial", "")
    assert manifest.sensors.failed == 8 and manifest.sensors.scored == 1
