"""The ComputeBackend contract, one suite for every backend: the process pool, in-process
(sequential), and Azure Batch (the real azure-batch client over HTTP to the emulator, whose
tasks run the scoring container's entry point as processes). The run lifecycle relies on
exactly these promises and on nothing a particular backend happens to do."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from fleetscore.compute import load_backend
from fleetscore.compute.base import ComputeBackend, UnitStatus
from fleetscore.compute.batch import BatchBackend
from fleetscore.core.hours import Hour
from fleetscore.errors import BackendError
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, read_predictions, run_hour
from fleetscore.scoring.planning import make_plan, save_plan
from fleetscore.settings import BatchSettings, Settings
from tests.compute.batch_emulator import BatchEmulator, ProcessRunner, installed_site
from tests.conftest import ROOT

H1 = Hour.parse("2024-03-01T01")
BACKENDS = ["local", "sequential", "batch"]


@pytest.fixture(params=BACKENDS)
def backend(request, trained_store, tmp_path_factory, tmp_path) -> Iterator[ComputeBackend]:
    if request.param == "batch":
        site = installed_site(tmp_path_factory.getbasetemp(), ROOT)
        emulator = BatchEmulator(runner=ProcessRunner(sys.executable, site), slots=2,
                                 task_root=tmp_path / "nodes").start()
        client = BatchClient(emulator.endpoint, AzureNamedKeyCredential(emulator.account, "a2V5"))
        settings = Settings(batch=BatchSettings(endpoint=emulator.endpoint, task_retries=1))
        made: ComputeBackend = BatchBackend(trained_store, trained_store.url, settings,
                                            client=client, engine=ENGINE)
    else:
        emulator = None
        made = load_backend(request.param, trained_store, store_spec=trained_store.url,
                            settings=Settings(), workers=2, engine=ENGINE)
    yield made
    made.close()
    if emulator is not None:
        emulator.stop()


def _until_done(backend: ComputeBackend, ids: list[str], run_id: str,
                seconds: float = 120) -> dict[str, UnitStatus]:
    ends = time.monotonic() + seconds
    while True:
        states = backend.poll(H1, ids, run_id=run_id, timeout=0.5)
        if all(s.done for s in states.values()) or time.monotonic() > ends:
            return states
        if not backend.waits:
            time.sleep(0.2)


def _planned(store, run_id: str) -> list:
    plan = make_plan(store, H1)
    save_plan(store, plan, run_id)
    return list(plan.units)


def test_capabilities_are_declared_on_the_base_class(backend):
    for name in ("inline", "waits", "spans"):
        assert isinstance(getattr(type(backend), name), bool), name
    assert isinstance(backend.workers, int) and backend.workers >= 1
    if not backend.spans:
        with pytest.raises(BackendError, match="runs no backfill spans"):
            backend.submit_span([H1], None)


def test_every_unit_submitted_ends_with_its_result(backend, trained_store):
    units = _planned(trained_store, "r1")
    backend.submit(H1, units, run_id="r1")
    states = _until_done(backend, [u.id for u in units], "r1")
    assert set(states) == {u.id for u in units}
    assert all(s.state == "succeeded" and s.result is not None for s in states.values()), states
    assert sum(s.result.scored for s in states.values()) == 3


def test_submitting_a_unit_again_in_the_same_run_is_harmless(backend, trained_store):
    units = _planned(trained_store, "r2")
    backend.submit(H1, units, run_id="r2")
    backend.submit(H1, units, run_id="r2")
    states = _until_done(backend, [u.id for u in units], "r2")
    assert all(s.state == "succeeded" for s in states.values()), states
    assert sum(s.result.scored for s in states.values()) == 3


def test_cancel_finish_and_close_after_the_units_end_are_safe(backend, trained_store):
    units = _planned(trained_store, "r3")
    backend.submit(H1, units, run_id="r3")
    states = _until_done(backend, [u.id for u in units], "r3")
    backend.cancel(H1, [u.id for u in units], run_id="r3")  # already done: nothing to stop
    backend.finish(H1, run_id="r3")
    again = backend.poll(H1, [u.id for u in units], run_id="r3", timeout=0)
    assert {u: s.state for u, s in again.items()} == {u: s.state for u, s in states.items()}
    backend.close()
    backend.close()  # idempotent


def test_a_whole_hour_runs_the_same_on_every_backend(backend, trained_store):
    summary = run_hour(trained_store, H1, backend)
    assert (summary.status, summary.scored, summary.failed) == ("succeeded", 3, 0)
    assert read_predictions(trained_store, H1).num_rows == 180
    assert read_manifest(trained_store, H1).backend == backend.name
