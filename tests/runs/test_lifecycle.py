"""The run lifecycle (fleetscore.runs.lifecycle): begin, submit, poll, finalize, and the CLI's loop."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from fleetscore.compute.base import PENDING, RUNNING, UnitStatus
from fleetscore.compute.local import LocalBackend, SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.predictions import predictions_folder
from fleetscore.errors import LockLost, StoreError, UsageError
from fleetscore.model import registry as models
from fleetscore.model.registry import model_path
from fleetscore.runs import lifecycle as runs
from fleetscore.runs import locks
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import Backoff, manifest_path, read_manifest, read_predictions, run_hour

reliability = pytest.mark.reliability

H1 = Hour.parse("2024-03-01T01")


def _rows(store, hour) -> dict[str, int]:
    table = read_predictions(store, hour)
    out: dict[str, int] = {}
    for d, t in zip(table["Device"].to_pylist(), table["Tag"].to_pylist(), strict=True):
        out[f"{d}/{t}"] = out.get(f"{d}/{t}", 0) + 1
    return out


def test_run_writes_manifest_with_counts(trained_store):
    summary = run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE))
    assert summary.status == "succeeded" and summary.exit_code == 0
    # The store's layout (runs/HOUR.json), as written.
    manifest = json.loads(trained_store.get(manifest_path(H1)))
    assert manifest["window"] == "2024-03-01T01" and manifest["run_id"] == summary.run_id
    assert manifest["sensors"] == {
        "planned": 3, "scored": 3, "failed": 0, "no_data": 0, "no_model": 0}
    assert manifest["anomalies"] == read_predictions(trained_store, H1)["Prediction"].to_numpy().sum()
    assert manifest["version"] and manifest["duration_s"] >= 0 and len(manifest["unit_results"]) == 3
    # The visible files are the manifest's, and nothing of the run's staging is left.
    assert sorted(f["path"] for f in manifest["predictions"]) == \
        list(trained_store.list(predictions_folder(H1)))
    assert list(trained_store.list(f"runs/{H1}")) == []
    assert not trained_store.exists(locks.lock_path(H1))


def test_partial_run_names_the_failed_sensor(trained_store):
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    summary = run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE))
    assert summary.status == "partial" and summary.exit_code == 3
    assert [(f["sensor"], f["kind"]) for f in summary.failures] == [("1/2", "ModelError")]
    assert read_predictions(trained_store, H1).num_rows == 120


def test_rerun_with_other_unit_size_leaves_no_duplicates(trained_store):
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=1)
    once = read_predictions(trained_store, H1)
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=2)
    assert len(list(trained_store.list(predictions_folder(H1)))) == 2
    assert read_predictions(trained_store, H1).equals(once)


def test_process_pool_writes_exactly_what_the_sequential_backend_writes(trained_store):
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE))
    sequential = read_predictions(trained_store, H1)
    backend = LocalBackend(trained_store.url, workers=2, engine=ENGINE)
    try:
        summary = run_hour(trained_store, H1, backend)
    finally:
        backend.close()
        backend.close()
    assert summary.status == "succeeded"
    assert read_predictions(trained_store, H1).equals(sequential)


@reliability("R27")
def test_hour_with_no_data_is_said_plainly(trained_store):
    summary = run_hour(trained_store, Hour.parse("2024-02-01T00"), SequentialBackend(trained_store, ENGINE))
    assert (summary.status, summary.exit_code, summary.planned, summary.no_data) == \
        ("no_data", 6, 0, 3)
    assert read_manifest(trained_store, Hour.parse("2024-02-01T00")).status == "no_data"


@reliability("R27")
def test_hour_not_ended_is_refused(trained_store):
    now = datetime.now(UTC)
    with pytest.raises(UsageError, match="has not ended"):
        run_hour(trained_store, Hour.from_datetime(now), SequentialBackend(trained_store, ENGINE))
    assert read_manifest(trained_store, Hour.from_datetime(now)) is None


class FlakyStore:
    """Fails the first ``fails`` writes whose path contains ``match`` (a transient error)."""

    def __init__(self, store, match: str, fails: int = 1) -> None:
        self._store, self._match, self.fails = store, match, fails
        self.url = store.url

    def put(self, path, data, **kw):
        if self._match in path and self.fails:
            self.fails -= 1
            raise StoreError(f"cannot write {path}: connection reset")
        return self._store.put(path, data, **kw)

    def __getattr__(self, name):
        return getattr(self._store, name)


@reliability("R28")
def test_failed_rerun_keeps_the_last_good_predictions(trained_store):
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=3)
    before = read_predictions(trained_store, H1)
    assert _rows(trained_store, H1) == {"1/1": 60, "1/2": 60, "dev_a/t.x": 60}
    flaky = FlakyStore(trained_store, "/results/")  # the unit's result cannot be recorded
    summary = run_hour(flaky, H1, SequentialBackend(flaky, ENGINE), unit_size=3)
    assert summary.status == "failed" and summary.scored == 0
    assert read_predictions(trained_store, H1).equals(before)
    assert list(summary.kept_from_earlier_run) == ["1/1", "1/2", "dev_a/t.x"]
    assert read_manifest(trained_store, H1).kept_from_earlier_run == ("1/1", "1/2", "dev_a/t.x")


@reliability("R28")
def test_rerun_where_one_sensor_fails_keeps_its_rows_and_replaces_the_others(trained_store):
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=3)
    old = read_predictions(trained_store, H1)
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    summary = run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=1)
    assert summary.status == "partial" and summary.kept_from_earlier_run == ("1/2",)
    assert _rows(trained_store, H1) == {"1/1": 60, "1/2": 60, "dev_a/t.x": 60}
    assert read_predictions(trained_store, H1).equals(old)  # same models: same rows
    names = [p.rsplit("/", 1)[1] for p in trained_store.list(predictions_folder(H1))]
    assert sorted(n.split("-")[0] for n in names) == ["kept", "u000000", "u000002"]


def test_rerun_of_some_sensors_keeps_the_others(trained_store):
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=3)
    old = read_predictions(trained_store, H1)
    summary = run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE),
                       sensors=[Sensor("1", "2")])
    assert (summary.status, summary.planned, summary.scored) == ("succeeded", 1, 1)
    assert _rows(trained_store, H1) == {"1/1": 60, "1/2": 60, "dev_a/t.x": 60}
    assert read_predictions(trained_store, H1).equals(old)
    assert read_manifest(trained_store, H1).restricted is True


@reliability("R28")
def test_sensor_with_no_data_anymore_loses_its_old_rows(trained_store):
    """A full rerun replaces the hour: a sensor that now scores nothing keeps no old file."""
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=1)
    trained_store.delete(models.manifest_path(Sensor("1", "2")))  # the model is withdrawn
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=1)
    assert "1/2" not in _rows(trained_store, H1)


class SlowBackend(SequentialBackend):
    """Units never finish on their own; records what was cancelled."""

    inline = False

    def __init__(self, store):
        super().__init__(store, ENGINE)
        self.cancelled: list[str] = []
        self.polls = 0

    def submit(self, window, units, *, run_id=""):
        self.units = list(units)

    def poll(self, window, unit_ids, *, run_id="", timeout=1.0):
        self.polls += 1
        return {u: UnitStatus(RUNNING) for u in unit_ids}

    def cancel(self, window, unit_ids, *, run_id=""):
        self.cancelled += list(unit_ids)


class FakeClock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=UTC)
        self.slept: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@reliability("R29")
def test_wait_sleeps_backs_off_and_cancels_at_the_deadline(trained_store):
    clock, backend = FakeClock(), SlowBackend(trained_store)
    summary = run_hour(trained_store, H1, backend, unit_size=3, deadline=timedelta(seconds=30),
                       backoff=Backoff(first=0.5, factor=2, most=4), clock=clock,
                       sleep=clock.sleep)
    assert clock.slept[:4] == [0.5, 1, 2, 4] and max(clock.slept) == 4
    assert 8 <= backend.polls <= 14  # about 30 s of polls, not a busy loop
    assert backend.cancelled == ["u000000"]
    assert summary.status == "failed"
    assert summary.failures[0]["kind"] == "DeadlineExceeded"


@reliability("R29")
def test_late_straggler_is_never_promoted(trained_store):
    """A unit past the deadline that writes its result anyway (Batch could not stop it in
    time) changes nothing visible: finalize goes by the outcome the poll recorded."""
    hour, now = H1, datetime.now(UTC)
    ticket = runs.begin(trained_store, hour, run_id="r1", now=now, deadline=now, unit_size=3)
    backend = SlowBackend(trained_store)
    runs.submit(trained_store, backend, hour, "r1", ticket.units)
    states = runs.poll(trained_store, backend, hour, "r1", ticket.units, now=now, deadline=now)
    assert states["u000000"].error_kind == "DeadlineExceeded"
    runs.run_unit(trained_store, hour, "r1", "u000000")  # the straggler finishes late
    summary = runs.finalize(trained_store, hour, "r1", states, started=now, now=now,
                            backend_name="slow", backend=backend)
    assert summary.scored == 0 and read_predictions(trained_store, hour).num_rows == 0
    assert backend.cancelled == ["u000000", ]


def test_finalize_after_losing_the_lock_promotes_nothing(trained_store):
    hour, now = H1, datetime.now(UTC)
    ticket = runs.begin(trained_store, hour, run_id="r1", now=now, deadline=now, unit_size=3,
                        ttl=timedelta(seconds=1))
    backend = SequentialBackend(trained_store, ENGINE)
    states = runs.submit(trained_store, backend, hour, "r1", ticket.units)
    later = now + timedelta(seconds=5)  # r1's lock lapsed; r2 takes the hour
    runs.begin(trained_store, hour, run_id="r2", now=later, deadline=later)
    with pytest.raises(LockLost):
        runs.finalize(trained_store, hour, "r1", states, started=now, now=later,
                      backend_name="sequential")
    assert read_manifest(trained_store, hour) is None
    assert locks.holds(trained_store, hour, "r2")


def test_begin_is_idempotent_for_its_run_and_clears_stale_staging(trained_store):
    now = datetime.now(UTC)
    runs.begin(trained_store, H1, run_id="old", now=now, deadline=now, unit_size=1,
               ttl=timedelta(seconds=1))
    later = now + timedelta(seconds=5)
    first = runs.begin(trained_store, H1, run_id="new", now=later, deadline=later, unit_size=1)
    again = runs.begin(trained_store, H1, run_id="new", now=later, deadline=later, unit_size=1)
    assert first == again and first.units == ("u000000", "u000001", "u000002")
    assert all(p.startswith(f"runs/{H1}/new/") for p in trained_store.list(f"runs/{H1}"))


def test_error_mid_run_releases_the_lock_and_promotes_nothing(trained_store):
    class Broken(SequentialBackend):
        def poll(self, *a, **kw):
            raise StoreError("boom")

        inline = False

    with pytest.raises(StoreError):
        run_hour(trained_store, H1, Broken(trained_store, ENGINE))
    assert not trained_store.exists(locks.lock_path(H1))
    assert read_manifest(trained_store, H1) is None


def test_pending_units_are_polled_not_resubmitted(trained_store):
    backend = SlowBackend(trained_store)
    now = datetime.now(UTC)
    ticket = runs.begin(trained_store, H1, run_id="r1", now=now,
                        deadline=now + timedelta(hours=1))
    out = runs.submit(trained_store, backend, H1, "r1", ticket.units)
    assert {s.state for s in out.values()} == {PENDING}


def test_a_retried_finalize_returns_the_same_summary(trained_store):
    now = datetime.now(UTC)
    ticket = runs.begin(trained_store, H1, run_id="r1", now=now, deadline=now + timedelta(hours=1))
    backend = SequentialBackend(trained_store, ENGINE)
    states = runs.submit(trained_store, backend, H1, "r1", ticket.units)
    first = runs.finalize(trained_store, H1, "r1", states, started=now, now=now,
                          backend_name="sequential")
    again = runs.finalize(trained_store, H1, "r1", states, started=now, now=now,
                          backend_name="sequential")
    assert again == first and first.scored == 3
    assert read_predictions(trained_store, H1).num_rows == 180


def test_progress_moves_unit_by_unit_on_an_inline_backend(trained_store):
    seen = []
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=1,
             progress=lambda done, total: seen.append((done, total)))
    assert [d for d, _ in seen][:4] == [0, 1, 2, 3] and {t for _, t in seen} == {3}


def test_parquet_predictions_hold_the_same_rows_and_mix_with_csv_in_reruns(trained_store):
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=3)
    as_csv = read_predictions(trained_store, H1)
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), unit_size=1, fmt="parquet")
    files = list(trained_store.list(predictions_folder(H1)))
    assert len(files) == 3 and all(f.endswith(".parquet") for f in files)
    assert read_predictions(trained_store, H1).equals(as_csv)
    # A rerun of one sensor in CSV keeps the others' Parquet files as they are.
    run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), sensors=[Sensor("1", "2")])
    files = sorted(f.rsplit(".", 1)[1] for f in trained_store.list(predictions_folder(H1)))
    assert files == ["csv", "parquet", "parquet"]
    assert read_predictions(trained_store, H1).equals(as_csv)
    with pytest.raises(UsageError, match="predictions format"):
        run_hour(trained_store, H1, SequentialBackend(trained_store, ENGINE), fmt="xlsx")
