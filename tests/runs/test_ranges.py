"""Backfills (fleetscore.runs.ranges): many hours in spans, each hour still its own run."""

import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from fleetscore.compute.local import LocalBackend, SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import hours_with_arrivals
from fleetscore.data.ingest import ingest_file
from fleetscore.data.predictions import predictions_folder
from fleetscore.errors import FleetscoreError, UsageError
from fleetscore.model.bank import rebuild_bank
from fleetscore.model.registry import model_path
from fleetscore.model.training import train
from fleetscore.runs import locks, ranges
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, read_predictions, run_hour
from fleetscore.runs.ranges import run_range
from fleetscore.storage import LocalStore
from tests.conftest import copy_tree

reliability = pytest.mark.reliability


def _current_run_span(store, hours, job):
    """``ranges.run_span`` as a test patched it, looked up when called (a forked pool worker
    sees the patch): the engine the backends below are handed."""
    return ranges.run_span(store, hours, job)


SPAN_ENGINE = replace(ENGINE, run_span=_current_run_span)


def _hours(store) -> list[Hour]:
    return hours_with_arrivals(store)


def _visible(store, hours):
    return {str(h): read_predictions(store, h) for h in hours}


def _check_hour_is_clean(store, hour, manifest) -> None:
    """What every run leaves: its manifest's files and nothing else, no staging, no lock."""
    assert sorted(f.path for f in manifest.predictions) == \
        list(store.list(predictions_folder(hour)))
    assert list(store.list(f"runs/{hour}")) == []
    assert not store.exists(locks.lock_path(hour))


def test_a_range_scores_each_hour_as_its_hourly_run_does(trained_store, tmp_path):
    hourly = LocalStore(copy_tree(trained_store.root, tmp_path / "hourly"))
    hours = _hours(trained_store)
    assert len(hours) >= 3
    for hour in hours:
        run_hour(hourly, hour, SequentialBackend(hourly, ENGINE))
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    assert [s.window for s in result.summaries] == [str(h) for h in hours]
    assert result.not_run == () and result.exit_code == 0
    for hour, summary in zip(hours, result.summaries, strict=True):
        assert read_predictions(trained_store, hour).equals(read_predictions(hourly, hour))
        manifest = read_manifest(trained_store, hour)
        assert manifest.run_id == summary.run_id and manifest.status == summary.status
        assert manifest.sensors == read_manifest(hourly, hour).sensors
        _check_hour_is_clean(trained_store, hour, manifest)
    # One run id for the range, one manifest per hour.
    assert len({s.run_id for s in result.summaries}) == 1


def test_the_process_pool_gives_the_same_predictions(trained_store, tmp_path):
    pooled = LocalStore(copy_tree(trained_store.root, tmp_path / "pooled"))
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    backend = LocalBackend(pooled.url, workers=2, engine=SPAN_ENGINE)
    try:
        result = run_range(pooled, hours, backend)
    finally:
        backend.close()
    assert {s.status for s in result.summaries} == {"succeeded"}
    for hour in hours:
        assert read_predictions(pooled, hour).equals(read_predictions(trained_store, hour))
        _check_hour_is_clean(pooled, hour, read_manifest(pooled, hour))


def test_a_broken_model_fails_alone_and_keeps_its_earlier_rows(trained_store):
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    before = _visible(trained_store, hours)
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    assert result.exit_code == 3
    for hour, summary in zip(hours, result.summaries, strict=True):
        if summary.planned:
            assert summary.status == "partial"
            assert [f["sensor"] for f in summary.failures] == ["1/2"]
            assert summary.kept_from_earlier_run == ("1/2",)
        # Every row of the hour is still there: new ones for the others, the old ones of 1/2.
        assert read_predictions(trained_store, hour).sort_by(
            [("Device", "ascending"), ("Tag", "ascending"), ("TS", "ascending")]
        ).select(["Device", "Tag", "TS"]).equals(before[str(hour)].select(["Device", "Tag", "TS"]))


def test_a_rerun_of_chosen_sensors_keeps_the_others(trained_store):
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    before = _visible(trained_store, hours)
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE),
                       sensors=[Sensor("1", "1")])
    for hour, summary in zip(hours, result.summaries, strict=True):
        assert summary.scored <= 1
        assert read_predictions(trained_store, hour).equals(before[str(hour)])


def test_parquet_predictions(trained_store):
    hours = _hours(trained_store)[:2]
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE), fmt="parquet")
    for hour in hours:
        assert all(p.endswith(".parquet") for p in trained_store.list(predictions_folder(hour)))
        assert read_predictions(trained_store, hour).num_rows > 0


@reliability("R44")
def test_an_hour_another_run_holds_is_left_to_it_and_named(trained_store):
    hours = _hours(trained_store)
    held = hours[1]
    from datetime import UTC, datetime

    locks.acquire(trained_store, held, "other-run", now=datetime.now(UTC), pid=os.getpid())
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    assert [h for h, _, _ in result.not_run] == [str(held)]
    assert result.not_run[0][1] == "AlreadyRunning" and result.exit_code == 4
    assert [s.window for s in result.summaries] == [str(h) for h in hours if h != held]
    assert read_manifest(trained_store, held) is None  # nothing written for the held hour
    assert locks.holds(trained_store, held, "other-run")  # and its lock untouched
    for hour in hours:
        if hour != held:
            assert not trained_store.exists(locks.lock_path(hour))


def test_an_hour_not_ended_is_refused_before_anything_runs(trained_store):
    future = Hour.from_datetime(__import__("datetime").datetime.now()) + 2
    with pytest.raises(UsageError, match="has not ended"):
        run_range(trained_store, [*_hours(trained_store), future],
                  SequentialBackend(trained_store, SPAN_ENGINE))
    assert all(read_manifest(trained_store, h) is None for h in _hours(trained_store))


def test_hours_with_many_sensors_run_as_hourly_runs(trained_store, monkeypatch):
    monkeypatch.setattr(ranges, "SPAN_MAX_SENSORS", 2)  # the fixture's hours have 3 sensors
    hours = _hours(trained_store)
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    for hour in hours:
        units = {u.id for u in read_manifest(trained_store, hour).unit_results}
        assert units and "span" not in units  # planned in units, as an hourly run
    assert {s.status for s in result.summaries} == {"succeeded"}


def test_progress_counts_every_hour(trained_store):
    seen = []
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE),
              progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, len(hours)) and seen[-1] == (len(hours), len(hours))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_spans_cover_every_hour_once_in_order():
    sizes = [(Hour(i), n) for i, n in enumerate([3, 0, 5, 1, 1, 9, 2, 0, 4])]
    spans = ranges.pack(sizes, workers=2)
    assert [h for span in spans for h in span] == [h for h, _ in sizes]
    assert len(spans) > 1


# --- workers that die or hang ---------------------------------------------------------------


def _die_first(marker: Path, times: int):
    """A run_span that kills its worker, after closing the span's first hour, ``times`` times
    (counted in a file: each attempt runs in a fresh process)."""
    real = ranges.run_span

    def run_span(store, hours, job):
        attempts = int(marker.read_text()) if marker.exists() else 0
        if attempts < times:
            marker.write_text(str(attempts + 1))
            real(store, hours[:1], job)
            os._exit(1)
        return real(store, hours, job)

    return run_span


@reliability("R42")
def test_a_dead_worker_s_span_runs_again_once(trained_store, tmp_path, monkeypatch):
    monkeypatch.setattr(ranges, "SPANS_PER_WORKER", 1)  # one span of every hour
    monkeypatch.setattr(ranges, "run_span", _die_first(tmp_path / "deaths", 1))
    hours = _hours(trained_store)
    backend = LocalBackend(trained_store.url, workers=1, engine=SPAN_ENGINE)
    try:
        result = run_range(trained_store, hours, backend)
    finally:
        backend.close()
    assert (tmp_path / "deaths").read_text() == "1"
    assert [s.status for s in result.summaries] == ["succeeded"] * len(hours)
    # The hour closed before the worker died stays as it was closed, the rest by the retry.
    assert len({read_manifest(trained_store, h).run_id for h in hours}) == 1
    for hour in hours:
        _check_hour_is_clean(trained_store, hour, read_manifest(trained_store, hour))


@reliability("R42")
def test_a_span_that_dies_twice_fails_its_hours_and_keeps_earlier_rows(trained_store, tmp_path,
                                                                      monkeypatch):
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    before = _visible(trained_store, hours)
    monkeypatch.setattr(ranges, "SPANS_PER_WORKER", 1)
    monkeypatch.setattr(ranges, "run_span", _die_first(tmp_path / "deaths", 2))
    backend = LocalBackend(trained_store.url, workers=1, engine=SPAN_ENGINE)
    try:
        result = run_range(trained_store, hours, backend)
    finally:
        backend.close()
    statuses = [s.status for s in result.summaries]
    # Each attempt closed one hour before its worker died; the others failed, saying why.
    assert statuses[:2] == ["succeeded"] * 2 and set(statuses[2:]) == {"failed"}
    failed = result.summaries[2:]
    assert all(f["kind"] == "WorkerCrashed" for s in failed for f in s.failures)
    for hour in hours[2:]:
        assert read_predictions(trained_store, hour).equals(before[str(hour)])
        _check_hour_is_clean(trained_store, hour, read_manifest(trained_store, hour))


def _late(store, hours, job):
    """A span that finishes, but only after the deadline."""
    time.sleep(4)
    return ranges.__dict__["_real_run_span"](store, hours, job)


@reliability("R43")
def test_a_span_past_the_deadline_is_stopped_and_its_hours_failed(trained_store, monkeypatch):
    monkeypatch.setattr(ranges, "_real_run_span", ranges.run_span, raising=False)
    monkeypatch.setattr(ranges, "run_span", _late)
    hours = _hours(trained_store)
    backend = LocalBackend(trained_store.url, workers=1, engine=SPAN_ENGINE)
    started = time.monotonic()
    try:
        result = run_range(trained_store, hours, backend, deadline=timedelta(seconds=1))
    finally:
        backend.close()
    assert time.monotonic() - started < 30
    assert result.summaries and all(s.status in ("failed", "no_data") for s in result.summaries)
    kinds = {f["kind"] for s in result.summaries for f in s.failures}
    assert kinds == {"DeadlineExceeded"}
    # The late worker was stopped: it never closes an hour the range already failed.
    time.sleep(5)
    for hour in hours:
        manifest = read_manifest(trained_store, hour)
        assert manifest.status in ("failed", "no_data")
        _check_hour_is_clean(trained_store, hour, manifest)


# --- the same on Azure Blob (Azurite) -------------------------------------------------------


def test_a_range_on_blob_storage(store, fleet_csv):
    ingest_file(store, fleet_csv)
    train(store, until=Hour.parse("2024-03-01T00"))
    rebuild_bank(store)
    hours = _hours(store)
    result = run_range(store, hours, SequentialBackend(store, SPAN_ENGINE))
    assert {s.status for s in result.summaries} == {"succeeded"}
    for hour in hours:
        manifest = read_manifest(store, hour)
        _check_hour_is_clean(store, hour, manifest)
        assert read_predictions(store, hour).num_rows > 0


def test_hours_with_nothing_to_score_close_in_a_span(trained_store):
    """An hour whose sensors all lack a model (or, here, fall outside the chosen sensors)
    closes with its own status beside hours that score."""
    hours = _hours(trained_store)
    trained_store.delete("models/dev_a/t.x.json")
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE),
                       sensors=[Sensor("dev_a", "t.x")])
    # Data and no model: nothing to score (no_data, exit 6), the manifest says why (no_model).
    assert [s.status for s in result.summaries] == ["no_data"] * len(hours)
    assert all(s.no_model == 1 and s.planned == 0 for s in result.summaries)
    for hour in hours:
        _check_hour_is_clean(trained_store, hour, read_manifest(trained_store, hour))


def test_an_unreadable_data_file_fails_only_its_hours(trained_store):
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    before = _visible(trained_store, hours)
    bad = hours[1]
    (part,) = [p for p in trained_store.list(f"windows/{bad.path}") if p.endswith(".parquet")]
    trained_store.put(part, b"not parquet")
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    status = {s.window: s.status for s in result.summaries}
    assert status.pop(str(bad)) == "failed"
    assert set(status.values()) == {"succeeded"}
    assert read_predictions(trained_store, bad).equals(before[str(bad)])


def test_each_hour_reports_its_own_share_of_the_time(trained_store):
    started = time.perf_counter()
    result = run_range(trained_store, _hours(trained_store), SequentialBackend(trained_store, SPAN_ENGINE))
    elapsed = time.perf_counter() - started
    # Shares of the span, not each hour's time since the range began: they add up to no more
    # than the range took.
    assert 0 < sum(s.duration_s for s in result.summaries) <= elapsed


def _range_of_slow_spans(store, monkeypatch, seconds: float, deadline_s: float):
    """Every hour its own span (one worker), each taking ``seconds``: the range's result."""
    real = ranges.run_span

    def slow(store, hours, job):
        time.sleep(seconds)
        return real(store, hours, job)

    monkeypatch.setattr(ranges, "run_span", slow)
    hours = _hours(store)
    assert len(ranges.pack([(h, 3) for h in hours], workers=1)) == len(hours) == 3
    backend = LocalBackend(store.url, workers=1, engine=SPAN_ENGINE)
    try:
        return run_range(store, hours, backend, deadline=timedelta(seconds=deadline_s))
    finally:
        backend.close()


@reliability("R43")
def test_the_deadline_counts_per_span_not_for_the_whole_range(trained_store, monkeypatch):
    """Three spans of 2 s each on one worker take 6 s: more than the 5 s deadline in all, but
    each ends well within 5 s of its start, so none is failed."""
    result = _range_of_slow_spans(trained_store, monkeypatch, 2, 5)
    assert [s.status for s in result.summaries] == ["succeeded"] * 3


def _forever(store, hours, job):
    time.sleep(120)


def test_closing_the_pool_stops_spans_still_running(trained_store, monkeypatch):
    """An interrupted range (Ctrl-C) closes its backend: spans still running are stopped,
    not waited for."""
    from fleetscore.runs.ranges import Job

    monkeypatch.setattr(ranges, "run_span", _forever)
    backend = LocalBackend(trained_store.url, workers=1, engine=SPAN_ENGINE)
    job = Job("r1", "2024-03-02T00:00:00+00:00", "local", 900.0, None, "csv")
    future = backend.submit_span(_hours(trained_store), job)
    time.sleep(0.5)
    started = time.monotonic()
    backend.close()
    assert time.monotonic() - started < 30 and future.done()


# --- found in review: pools, interrupts, error kinds ---------------------------------------


def _locks_left(store, hours):
    return [str(h) for h in hours if store.exists(locks.lock_path(h))]




def test_a_queued_span_is_not_failed_for_time_it_spent_waiting(trained_store, monkeypatch):
    """Each span takes 3 s, the deadline is 5 s: no span runs longer than the deadline from
    its start, so none fails, however long the others waited before it."""
    result = _range_of_slow_spans(trained_store, monkeypatch, 3, 5)
    assert {f["kind"] for s in result.summaries for f in s.failures} == set()
    assert [s.status for s in result.summaries] == ["succeeded"] * 3




def _one_span_dies(marker: Path, bad_hour: str):
    """The span holding ``bad_hour`` kills its worker every time (a hour that OOMs); the other
    spans are innocent: they take 1.5 s and succeed."""
    real = ranges.run_span

    def run_span(store, hours, job):
        if any(str(h) == bad_hour for h in hours):
            deaths = int(marker.read_text()) if marker.exists() else 0
            marker.write_text(str(deaths + 1))
            os._exit(1)
        time.sleep(1.5)
        return real(store, hours, job)

    return run_span


def test_spans_on_a_pool_broken_by_another_span_are_not_failed_as_crashed(
        trained_store, tmp_path, monkeypatch):
    hours = _hours(trained_store)
    bad = hours[0]
    monkeypatch.setattr(ranges, "run_span", _one_span_dies(tmp_path / "deaths", str(bad)))
    backend = LocalBackend(trained_store.url, workers=2, engine=SPAN_ENGINE)
    try:
        result = run_range(trained_store, hours, backend)
    finally:
        backend.close()
    spans = ranges.pack([(h, 3) for h in hours], workers=2)
    assert len(spans) >= 2 and spans[0] == [bad]
    status = {s.window: s.status for s in result.summaries}
    # The dying span's hour fails, as documented ...
    assert status[str(bad)] == "failed"
    # ... and the spans that only shared its pool start again and succeed.
    others = {h: status.get(str(h)) for h in hours if h != bad}
    assert set(others.values()) == {"succeeded"}, (others, [
        (s.window, {f["kind"] for f in s.failures}) for s in result.summaries])




def test_an_interrupt_while_closing_a_span_releases_its_hours(trained_store, monkeypatch):
    """As run_hour does, a span releases its hours on any BaseException, also while it
    closes them."""
    monkeypatch.setattr(ranges, "SPANS_PER_WORKER", 1)  # one span of every hour
    def close_span_hour(store, plan, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ranges, "close_span_hour", close_span_hour)
    hours = _hours(trained_store)
    with pytest.raises(KeyboardInterrupt):
        run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    assert _locks_left(trained_store, hours) == []




def test_an_error_while_failing_a_span_s_hours_releases_their_locks(trained_store, monkeypatch):
    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    # An earlier predictions file that cannot be read (any FleetscoreError in close_hour does).
    (first,) = read_manifest(trained_store, hours[0]).predictions
    trained_store.put(first.path, b"\x00not,a\ncsv\xff")

    def broken_span(store, hours, job):
        raise RuntimeError("the span failed")

    monkeypatch.setattr(ranges, "run_span", broken_span)
    try:
        run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    except FleetscoreError:
        pass  # raising is what the hourly path does too; leaving the lock is not
    assert _locks_left(trained_store, hours) == []




def test_an_hour_that_fails_to_close_in_a_span_keeps_its_error_kind(trained_store, monkeypatch):
    from fleetscore.errors import InputError
    from fleetscore.runs import lifecycle

    hours = _hours(trained_store)
    run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    real = lifecycle.promote

    def promote(store, hour, *args, **kw):  # the first hour's close meets damaged input
        if hour == hours[0]:
            raise InputError("predictions file P is unreadable")
        return real(store, hour, *args, **kw)

    monkeypatch.setattr(lifecycle, "promote", promote)
    result = run_range(trained_store, hours, SequentialBackend(trained_store, SPAN_ENGINE))
    assert [h for h, _, _ in result.not_run] == [str(hours[0])]
    # The error keeps its kind and exit code (not 4, "held by another run").
    assert result.not_run[0][1] == "InputError" and result.exit_code == 2
