"""Local backends: a process pool (the default) and an in-process sequential one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from fleetscore.compute.base import FAILED, PENDING, ComputeBackend, Engine, UnitStatus
from fleetscore.core.hours import Hour
from fleetscore.errors import BackendError, FleetscoreError
from fleetscore.scoring.planning import Unit
from fleetscore.settings import Settings
from fleetscore.storage import Store, open_store
from fleetscore.storage.workers import init_worker, worker_store


def init_scoring_worker(spec: str, settings: Settings) -> None:
    """A scoring worker: the process settings and store of ``init_worker``, then warmed up."""
    init_worker(spec, settings)
    warm_up()


def warm_up() -> None:
    """Score a few points of a made-up sensor in memory, through every step a unit takes
    (Parquet read and write, the bank's arithmetic, CSV): a fresh process pays for its first
    use of each now, while the run is still being planned,
    instead of in its first unit."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleetscore.core.sensors import Sensor
    from fleetscore.data.predictions import encode, predictions_columns
    from fleetscore.model.bank import Bank, Compiled, decide

    values = np.linspace(-1.0, 1.0, 60)
    sink = io.BytesIO()
    pq.write_table(pa.table({"Value": values}), sink, compression="zstd")
    values = pq.read_table(pa.BufferReader(sink.getvalue()))["Value"].to_numpy()
    bank = Bank.of([(Sensor("warm", "up"), "", Compiled(0, 0.0, 1.0, 1.0, 0.0, 3.0, -0.5,
                                                        np.array([0.0]), np.array([1.0])))])
    decision, _ = decide(bank, np.zeros(1, np.int64), np.zeros(1, np.int64),
                         np.array([len(values)]), values)
    table = predictions_columns(np.arange(1, 61) * 60_000, pa.array(["warm"] * 60),
                                pa.array(["up"] * 60), values, (decision <= 0).astype(np.int8),
                                decision, np.ones(60, bool))
    for fmt in ("parquet", "csv"):
        encode([table], fmt)


class SequentialBackend(ComputeBackend):
    """Runs each unit inside ``submit``: deterministic, debuggable, no processes.

    Also what the Functions app uses to score a unit inside its activity: ``poll`` falls back to
    the unit's result in the store, so a status call in another worker process finds it."""

    name = "sequential"
    inline = True
    spans = True

    def __init__(self, store: Store, engine: Engine) -> None:
        self._store = store
        self._engine = engine
        self._done: dict[tuple[Hour, str, str], UnitStatus] = {}

    def submit(self, window: Hour, units: Sequence[Unit], *, run_id: str = "") -> None:
        for unit in units:
            try:
                result = self._engine.run_unit(self._store, window, run_id, unit.id)
                self._done[(window, run_id, unit.id)] = UnitStatus(result.status, result)
            except FleetscoreError as exc:
                self._done[(window, run_id, unit.id)] = UnitStatus(FAILED, error_kind=exc.kind,
                                                                   error=str(exc))

    def poll(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "",
             timeout: float = 1.0) -> dict[str, UnitStatus]:
        out = {}
        for u in unit_ids:
            status = self._done.get((window, run_id, u))
            if status is None:
                result = self._engine.read_unit_result(self._store, window, run_id, u)
                status = UnitStatus(result.status, result) if result else UnitStatus(PENDING)
            out[u] = status
        return out

    def cancel(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "") -> None:
        pass  # nothing runs outside submit

    def submit_span(self, hours: Sequence[Hour], job) -> Future:
        """Run a backfill's span (fleetscore/runs/ranges.py) here and now."""
        future: Future = Future()
        try:
            future.set_result(self._engine.run_span(self._store, hours, job))
        except Exception as exc:  # noqa: BLE001 - the range reads it as the span's failure
            future.set_exception(exc)
        return future

    def reset_spans(self) -> None:
        pass

    def finish(self, window: Hour, *, run_id: str = "") -> None:
        for key in [k for k in self._done if k[:2] == (window, run_id)]:
            del self._done[key]

    def close(self) -> None:
        self._done.clear()


# --- process pool ---------------------------------------------------------------------------

def _work(run_unit, window: str, run_id: str, unit_id: str) -> dict:
    try:
        return {"result": run_unit(worker_store(), Hour.parse(window), run_id, unit_id).to_json()}
    except FleetscoreError as exc:
        return {"error_kind": exc.kind, "error": str(exc)}


def _span_work(run_span, hours: Sequence[Hour], job) -> list[dict]:
    return run_span(worker_store(), hours, job)


Key = tuple[Hour, str, str]  # window, run id, unit id


class LocalBackend(ComputeBackend):
    """A pool of worker processes on this machine, each with its own store client.

    A worker that dies (killed, out of memory) breaks the whole pool: every unit it held is
    resubmitted once on a fresh pool, and a unit whose second attempt dies too is failed with
    ``WorkerCrashed``.
    """

    name = "local"
    attempts = 2
    waits = True  # poll blocks until a unit ends (or its timeout): no sleeping between polls
    spans = True

    def __init__(self, store_spec: str, settings: Settings | None = None,
                 workers: int | None = None, *, engine: Engine) -> None:
        self._engine = engine
        self.workers = workers or os.cpu_count() or 1
        self._spec, self._settings = store_spec, settings or Settings.from_env()
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Key, Future] = {}
        self._tries: dict[Key, int] = {}
        self._spans: list[Future] = []  # a backfill's spans on the pool
        self._reader: Store | None = None  # the parent's store: results of units it does not hold

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, initializer=init_scoring_worker,
                initargs=(self._spec, self._settings))
        return self._pool

    def start(self) -> None:
        """Start the workers now (each warms up as it starts, see workers.warm_up): a run
        calls this before it plans, so they are ready when its units are."""
        self._executor().submit(int)  # launches the processes; nothing to wait for

    def submit(self, window: Hour, units: Sequence[Unit], *, run_id: str = "") -> None:
        for unit in units:
            if (window, run_id, unit.id) not in self._futures:
                self._start((window, run_id, unit.id))

    def _start(self, key: Key) -> None:
        self._tries[key] = self._tries.get(key, 0) + 1
        window, run_id, unit_id = key
        try:
            self._futures[key] = self._executor().submit(
                _work, self._engine.run_unit, str(window), run_id, unit_id)
        except BrokenProcessPool:
            self._reset_pool()
            try:
                self._futures[key] = self._executor().submit(
                    _work, self._engine.run_unit, str(window), run_id, unit_id)
            except BrokenProcessPool as exc:
                raise BackendError(f"the local worker pool cannot start: {exc}") from exc

    def _reset_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def submit_span(self, hours: Sequence[Hour], job) -> Future:
        """Run a backfill's span (fleetscore/runs/ranges.py) on the pool."""
        try:
            future = self._executor().submit(_span_work, self._engine.run_span, hours, job)
        except BrokenProcessPool:
            self._reset_pool()
            future = self._executor().submit(_span_work, self._engine.run_span, hours, job)
        self._spans = [f for f in self._spans if not f.done()] + [future]
        return future

    def reset_spans(self) -> None:
        """A fresh pool: after a worker died (the pool is broken), or to stop spans past their
        deadline (their workers are stopped, not waited for)."""
        self._stop_pool(terminate=True)
        self._spans.clear()

    def _stop_pool(self, *, terminate: bool) -> None:
        """Shut the pool down; with ``terminate`` its workers are stopped first, not waited
        for (the executor has no public way to do it)."""
        if self._pool is None:
            return
        if terminate:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def _retry_crashed(self, keys: Sequence[Key]) -> None:
        crashed = [k for k in keys
                   if (f := self._futures.get(k)) is not None and f.done() and not f.cancelled()
                   and isinstance(f.exception(), BrokenProcessPool)
                   and self._tries.get(k, 0) < self.attempts]
        if crashed:
            self._reset_pool()
            for key in crashed:
                self._start(key)

    def poll(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "",
             timeout: float = 1.0) -> dict[str, UnitStatus]:
        keys = [(window, run_id, u) for u in unit_ids]
        futures = [self._futures[k] for k in keys if k in self._futures]
        if futures and not any(f.done() for f in futures):
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        self._retry_crashed(keys)
        return {k[2]: self._status(self._futures[k]) if k in self._futures else self._stored(k)
                for k in keys}

    def _stored(self, key: Key) -> UnitStatus:
        """A unit this pool does not hold (its run finished here, or another process submitted
        it): its stored result, as the sequential backend and Batch report it, else pending."""
        if self._reader is None:
            self._reader = open_store(self._spec, self._settings)
        result = self._engine.read_unit_result(self._reader, *key)
        return UnitStatus(result.status, result) if result else UnitStatus(PENDING)

    def cancel(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "") -> None:
        # A queued unit is dropped; a running one cannot be stopped without killing the pool,
        # and what it writes lands in the run's staging, which is never promoted.
        for unit_id in unit_ids:
            future = self._futures.get((window, run_id, unit_id))
            if future is not None:
                future.cancel()

    def finish(self, window: Hour, *, run_id: str = "") -> None:
        for key in [k for k in self._futures if k[:2] == (window, run_id)]:
            del self._futures[key]
            self._tries.pop(key, None)

    @staticmethod
    def _status(future: Future) -> UnitStatus:
        from fleetscore.scoring.score import UnitResult

        if not future.done():
            return UnitStatus(PENDING)
        if future.cancelled():
            return UnitStatus(FAILED, error_kind="Cancelled", error="cancelled before it started")
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, BrokenProcessPool):
                return UnitStatus(FAILED, error_kind="WorkerCrashed",
                                  error="its worker process died twice (killed, or out of memory)")
            return UnitStatus(FAILED, error_kind=type(exc).__name__, error=f"worker failed: {exc}")
        body = future.result()
        if "result" in body:
            result = UnitResult.from_json(body["result"])
            return UnitStatus(result.status, result)
        return UnitStatus(FAILED, error_kind=body["error_kind"], error=body["error"])

    def close(self) -> None:
        # A unit given up at its deadline may still be running (a hung model): stop its
        # worker rather than wait for it.
        self._stop_pool(terminate=any(not f.done()
                                      for f in [*self._futures.values(), *self._spans]))
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._futures.clear()
        self._tries.clear()
        self._spans.clear()
