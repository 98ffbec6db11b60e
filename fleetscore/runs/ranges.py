"""Backfills: many hours run with the per-hour overhead amortized, each hour still its own run.

Every hour of a range keeps what an hourly run gives it: its lock, its plan, its own manifest
(``runs/HOUR.json``) and predictions files, promoted only when it succeeds, the earlier rows of
failed sensors kept. What changes is how the work is cut:

```
pack   one read of the arrival records sizes every hour; hours are packed, in order, into
       *spans* of about equal work: a unit that covers several hours
span   a worker takes its span's hours (each hour's lock), plans them from one read of their
       arrival records, scores them with one read of each data file and one load of the bank
       and models, and closes each hour (runs.close_hour: promote from memory, manifest,
       release). Nothing is staged; the pool, not this process, does the per-hour writing;
       an hour is locked only while its span runs.
```

Hours with more than SPAN_MAX_SENSORS sensors to score are not packed: they run as an hourly
run does (``runs.run_hour``: units, staging, a deadline per hour), and so do all hours on a
backend that cannot run spans (Azure Batch: a backfill there is the orchestrator's reruns).

A span whose worker dies is run once more on a fresh pool (hours it closed stay closed); a
span that dies twice, or runs longer than the deadline (counted from its start, so a range
of any length can run), fails the hours it did not close,
as a unit failure fails its hour: each gets a manifest saying why, the earlier predictions
stay. An hour another run holds is left to it and named at the end (AlreadyRunning), after
every other hour of the range is done.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, sorted_unique
from fleetscore.data.arrivals import read_arrivals_many
from fleetscore.data.compaction import compact_for_run
from fleetscore.data.predictions import encode_split, predictions_folder
from fleetscore.data.windows import read_points, read_points_many
from fleetscore.errors import AlreadyRunning, FleetscoreError, LockLost, error_class
from fleetscore.model.bank import load_bank, registry_damage, sensors_with_models
from fleetscore.model.challengers import load_challengers
from fleetscore.runs.lifecycle import (
    DEADLINE,
    Progress,
    RunSummary,
    check_ended,
    close_hour,
    closed_manifest,
    drop_staging,
    locks,
    new_run_id,
    readable_manifest,
    run_hour,
    summary_of,
)
from fleetscore.runs.locks import LOCK_TTL
from fleetscore.scoring.planning import SMALL_FLEET, Plan, Unit, plan_hour
from fleetscore.scoring.score import Group, UnitResult, score_many, shadow_unit
from fleetscore.storage import Store

SPAN_MAX_SENSORS = SMALL_FLEET  # an hour with more sensors to score runs as an hourly run
SPAN_MAX_SENSOR_HOURS = 4096  # a span's work: small enough to balance, big enough to amortize
SPANS_PER_WORKER = 4
SPAN_UNIT = "span"  # the unit id of an hour run in a span (one unit an hour)
ATTEMPTS = 2  # a span whose worker dies is run once more on a fresh pool


def span_id(index: int) -> str:
    return f"s{index:06d}"


def pack(sizes: Sequence[tuple[Hour, int]], *, workers: int) -> list[list[Hour]]:
    """Cut hours (with their sensors to score) into spans of about equal work, in order."""
    work = sum(n for _, n in sizes)
    target = max(1, min(SPAN_MAX_SENSOR_HOURS,
                        math.ceil(work / (SPANS_PER_WORKER * max(1, workers)))))
    spans: list[list[Hour]] = []
    current: list[Hour] = []
    size = 0
    for hour, n in sizes:
        if current and size + max(n, 1) > target:
            spans.append(current)
            current, size = [], 0
        current.append(hour)
        size += max(n, 1)  # an hour with nothing to score still costs its manifest
    if current:
        spans.append(current)
    return spans


@dataclass(frozen=True)
class Job:
    """What every span of one range shares (sent to the workers with each span)."""

    run_id: str
    started: str  # ISO time the range began: each hour's manifest says so
    backend: str
    ttl_s: float
    sensors: tuple[Sensor, ...] | None  # a rerun of chosen sensors; None: all
    fmt: str
    # Sensors whose stored model is damaged (bank.registry_damage, looked for once a range),
    # and why: left out of every hour's unit and failed by name.
    damaged: tuple[tuple[Sensor, str], ...] = ()
    max_failed_percent: float | None = None  # an hour past it fails whole (runs.over_threshold)


# --- a span (what a worker runs) -------------------------------------------------------------


def run_span(store: Store, hours: Sequence[Hour], job: Job) -> list[dict]:
    """Run a span's hours, each as its own run. Returns, per hour, its summary, or why it
    was not run or not closed (``{"window", "error_kind", "error"}``)."""
    ttl = timedelta(seconds=job.ttl_s)
    # The manifests' start is the range's (before any model was loaded: what a resumed range
    # compares with the models' times); each hour's duration is its share of the span.
    started = datetime.fromisoformat(job.started)
    begun = time.perf_counter()
    out: list[dict] = []
    taken = []
    open_hours: set[Hour] = set()
    try:
        for hour in hours:
            try:
                locks.acquire(store, hour, job.run_id, now=datetime.now(UTC), ttl=ttl,
                              pid=os.getpid())
            except AlreadyRunning as exc:
                out.append(_error(hour, exc))
                continue
            taken.append(hour)
            open_hours.add(hour)
        for hour in taken:
            drop_staging(store, hour, keep=job.run_id)
            compact_for_run(store, hour)
        arrivals = read_arrivals_many(store, taken)
        with_model = sensors_with_models(store)
        plans = [_one_unit(plan_hour(h, arrivals[h], with_model, sensors=job.sensors,
                                     fmt=job.fmt, damaged=dict(job.damaged)), SPAN_UNIT)
                 for h in taken]
        union = sorted({s for p in plans for u in p.units for s in u.sensors})
        try:
            tables = read_points_many(store, taken, union)
        except FleetscoreError:
            tables = None  # read hour by hour, so only the unreadable hours fail
        scored = _score(store, plans, tables, load_bank(store, union))
        # Each hour's duration: an even share of the span's common work, plus its own close.
        shared = (time.perf_counter() - begun) / max(1, len(plans))
        for plan in plans:
            result, data = scored.get(plan.window, (None, None))
            closing = time.perf_counter()
            try:
                summary = close_span_hour(
                    store, plan, job, [result] if result else [],
                    {result.unit_id: data} if data else {}, started=started, ttl=ttl,
                    duration_s=shared + time.perf_counter() - closing)
                out.append({"summary": summary.to_json()})
            except FleetscoreError as exc:
                locks.release(store, plan.window, job.run_id)
                out.append(_error(plan.window, exc))
            open_hours.discard(plan.window)
    except BaseException:
        # Whatever stops the span (an interrupt, a bug) leaves no hour of it locked.
        for hour in open_hours:
            locks.release(store, hour, job.run_id)
        raise
    return out


def _one_unit(plan: Plan, unit_id: str) -> Plan:
    sensors = tuple(s for u in plan.units for s in u.sensors)
    return replace(plan, units=(Unit(unit_id, sensors, plan.format),) if sensors else (),
                   unit_size=max(1, len(sensors)))


def _error(hour: Hour, exc: FleetscoreError) -> dict:
    return {"window": str(hour), "error_kind": exc.kind, "error": str(exc)}


def _score(store: Store, plans: Sequence[Plan], tables: Mapping | None,
           bank: Mapping) -> dict[Hour, tuple[UnitResult, bytes | None]]:
    """Every hour of the span scored in one pass (score_many): each hour's unit result and
    its encoded predictions. An hour whose data cannot be read fails alone."""
    out: dict[Hour, tuple[UnitResult, bytes | None]] = {}
    groups = []
    for plan in plans:
        if not plan.units:
            continue
        unit, hour = plan.units[0], plan.window
        try:
            table = tables[hour] if tables is not None else read_points(store, hour, unit.sensors)
        except FleetscoreError as exc:
            out[hour] = (UnitResult.all_failed(str(hour), unit.id, unit.sensors, exc.kind,
                                               str(exc)), None)
            continue
        groups.append(Group(hour, unit.id, sorted(unit.sensors), table))
    fmt = plans[0].format if plans else "csv"
    results, table, rows = score_many(store, groups, bank=bank)
    # The span's challengers, read once for all its hours; each hour's shadow file is written
    # after its visible rows are computed, from the same points.
    challengers = load_challengers(store, sorted_unique(s for g in groups for s in g.sensors)) \
        if groups else None
    for group, result, data in zip(groups, results, encode_split(table, rows, fmt), strict=True):
        result = replace(result, shadow=shadow_unit(store, group, fmt, challengers))
        if not result.scored:
            out[group.hour] = (result, None)
            continue
        target = f"{predictions_folder(group.hour)}/{group.unit_id}.{fmt}"  # names the format
        out[group.hour] = (replace(result, predictions=target,
                                   predictions_sha256=hashlib.sha256(data).hexdigest()), data)
    return out


def close_span_hour(store: Store, plan: Plan, job: Job, results: Sequence[UnitResult],
                    payloads: Mapping[str, bytes], *, started: datetime,
                    ttl: timedelta, duration_s: float | None = None) -> RunSummary:
    hour = plan.window
    now = datetime.now(UTC)
    previous = readable_manifest(store, hour)
    locks.renew(store, hour, job.run_id, now=now, ttl=ttl)  # LockLost: another run owns it
    return close_hour(store, hour, job.run_id, plan, results, previous=previous,
                      started=started, now=now, backend_name=job.backend, payloads=payloads,
                      duration_s=duration_s, max_failed_percent=job.max_failed_percent)


# --- the range (this process) ----------------------------------------------------------------


@dataclass(frozen=True)
class RangeResult:
    summaries: tuple[RunSummary, ...]
    not_run: tuple[tuple[str, str, str], ...]  # (hour, error kind, message)

    @property
    def exit_code(self) -> int:
        """0 all succeeded; an hour that could not be run: its error's code (4: another run
        held it); else the worst of the runs' own codes (3 failures, 6 no data)."""
        if self.not_run:
            return not_run_exit_code(self.not_run)
        codes = {s.exit_code for s in self.summaries}
        return 3 if 3 in codes else (6 if 6 in codes else 0)


def not_run_exit_code(not_run: Sequence[tuple[str, str, str]]) -> int:
    """The exit code of hours that could not be run, (hour, error kind, message) each: the
    worst of their errors' own codes; 4 (another run held them) only when that is all."""
    codes = {error_class(kind).exit_code for _, kind, _ in not_run}
    return max(codes - {AlreadyRunning.exit_code}, default=AlreadyRunning.exit_code)


def run_range(
    store: Store, hours: Sequence[Hour], backend, *, sensors: Iterable[Sensor] | None = None,
    unit_size: int | None = None, deadline: timedelta = DEADLINE, ttl: timedelta = LOCK_TTL,
    progress: Progress | None = None, fmt: str = "csv",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_failed_percent: float | None = None,
) -> RangeResult:
    """Run every hour of ``hours``, each its own run: their summaries, in order, and the hours
    that could not be run (another run held them, or took them over)."""
    hours = sorted(set(hours))
    started = clock()
    for hour in hours:
        check_ended(hour, started)
    chosen = None if sensors is None else tuple(sorted(set(sensors)))
    total, finished = len(hours), 0
    out: dict[Hour, RunSummary] = {}
    errors: list[tuple[str, FleetscoreError]] = []

    def advance(n: int) -> None:
        nonlocal finished
        finished += n
        if progress:
            progress(finished, total)

    def hourly(hour: Hour) -> None:
        try:
            out[hour] = run_hour(store, hour, backend, sensors=chosen, unit_size=unit_size,
                                 deadline=deadline, ttl=ttl, fmt=fmt, clock=clock,
                                 max_failed_percent=max_failed_percent)
        except (AlreadyRunning, LockLost) as exc:
            errors.append((str(hour), exc))
        advance(1)

    advance(0)
    if not backend.spans:
        for hour in hours:
            hourly(hour)
    else:
        with_model = sensors_with_models(store)
        arrivals = read_arrivals_many(store, hours)
        sizes = [(h, plan_hour(h, arrivals[h], with_model, sensors=chosen).sensors)
                 for h in hours]
        job = Job(run_id=new_run_id(started), started=started.isoformat(), backend=backend.name,
                  ttl_s=ttl.total_seconds(), sensors=chosen, fmt=fmt,
                  damaged=tuple(sorted(registry_damage(store).items())),
                  max_failed_percent=max_failed_percent)
        spans = pack([(h, n) for h, n in sizes if n <= SPAN_MAX_SENSORS],
                     workers=backend.workers)
        _drive(store, backend, spans, job, deadline=deadline, clock=clock, out=out,
               errors=errors, advance=advance)
        for hour, n in sizes:
            if n > SPAN_MAX_SENSORS:
                hourly(hour)
    return RangeResult(tuple(out[h] for h in hours if h in out),
                       tuple((h, e.kind, str(e)) for h, e in errors))


def _drive(store: Store, backend, spans: list[list[Hour]], job: Job, *, deadline: timedelta,
           clock: Callable[[], datetime], out: dict[Hour, RunSummary],
           errors: list[tuple[str, FleetscoreError]], advance: Callable[[int], None]) -> None:
    """Run the spans on the backend's pool, no more at a time than it has workers (so a
    span starts when it is handed over, and its deadline counts from then).

    A worker that dies breaks the whole pool, and with it every span on it: none of them is
    blamed. They run again one at a time on a fresh pool, so the span that kills its worker
    again is known; it fails (WorkerCrashed) and the others go on."""
    _Driver(store, backend, spans, job, deadline, clock, out, errors, advance).run()


@dataclass
class _Driver:
    """``_drive``'s state: which spans wait, which run (and until when), which are suspects
    of a broken pool, and how often each one's worker died."""

    store: Store
    backend: Any
    spans: list[list[Hour]]
    job: Job
    deadline: timedelta
    clock: Callable[[], datetime]
    out: dict[Hour, RunSummary]
    errors: list[tuple[str, FleetscoreError]]
    advance: Callable[[int], None]
    waiting: list[int] = field(default_factory=list)
    suspects: list[int] = field(default_factory=list)  # run again, one at a time
    deaths: dict[int, int] = field(default_factory=dict)
    ends: dict[int, datetime] = field(default_factory=dict)
    running: dict[Future, int] = field(default_factory=dict)

    def run(self) -> None:
        self.waiting = list(range(len(self.spans)))[::-1]
        self.deaths = dict.fromkeys(range(len(self.spans)), 0)
        room = max(1, self.backend.workers)
        while self.waiting or self.suspects or self.running:
            if self.suspects:
                if not self.running:
                    self._start(self.suspects.pop(0))
            else:
                while self.waiting and len(self.running) < room:
                    self._start(self.waiting.pop())
            now = self.clock()
            timeout = max(0.0, min((self.ends[i] - now).total_seconds()
                                   for i in self.running.values()))
            alone = len(self.running) == 1
            done, _ = wait(list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)
            if any([self._collect(future, alone) for future in done]):
                self._after_a_broken_pool()
            self._stop_late()

    def _start(self, index: int) -> None:
        self.ends[index] = self.clock() + self.deadline
        hours = [h for h in self.spans[index] if not _closed_into(self.store, h, self.job,
                                                                  self.out)] \
            if self.deaths[index] else self.spans[index]
        self.running[self.backend.submit_span(hours, self.job)] = index

    def _fail(self, index: int, kind: str, message: str) -> None:
        _fail(self.store, self.spans[index], self.job, kind, message, out=self.out,
              errors=self.errors)
        self.advance(len(self.spans[index]))

    def _collect(self, future: Future, alone: bool) -> bool:
        """Take a finished span's hours; True when its pool broke under it."""
        index = self.running.pop(future)
        exc = future.exception()
        if exc is None:
            for body in future.result():
                if "summary" in body:
                    self.out[Hour.parse(body["summary"]["window"])] = \
                        RunSummary.from_json(body["summary"])
                else:
                    self.errors.append((body["window"], _rebuild(body)))
            self.advance(len(self.spans[index]))
            return False
        if not isinstance(exc, BrokenProcessPool):
            self._fail(index, type(exc).__name__, f"span failed: {exc}")
            return False
        self.deaths[index] += 1
        if alone and self.deaths[index] >= ATTEMPTS:
            self._fail(index, "WorkerCrashed",
                       "its worker process died twice (killed, or out of memory)")
        else:
            self.suspects.append(index)
        return True

    def _after_a_broken_pool(self) -> None:
        # Every span still on the broken pool is a suspect too; a fresh pool takes them.
        self.suspects += [i for f, i in self.running.items()
                          if not f.done() or isinstance(f.exception(), BrokenProcessPool)]
        self.running = {f: i for f, i in self.running.items() if i not in self.suspects}
        for index in self.suspects:
            self.deaths[index] = max(self.deaths[index], 1)  # closed hours are skipped on rerun
        self.backend.reset_spans()

    def _stop_late(self) -> None:
        now = self.clock()
        late = {i for i in self.running.values() if now >= self.ends[i]}
        if not late:
            return
        # Stop the pool first, so a late span cannot close an hour after it is failed; the
        # other spans on it start again.
        others = [i for i in self.running.values() if i not in late]
        self.running = {}
        self.backend.reset_spans()
        for index in others:
            self.deaths[index] = max(self.deaths[index], 1)
        self.waiting += others
        for index in sorted(late):
            self._fail(index, "DeadlineExceeded",
                       f"span {span_id(index)} did not finish within {self.deadline} of its start")


def _rebuild(body: Mapping) -> FleetscoreError:
    """The error a worker reported, as its own type (its kind and exit code kept)."""
    return error_class(body["error_kind"])(body["error"])


def _closed_into(store: Store, hour: Hour, job: Job, out: dict[Hour, RunSummary]) -> bool:
    """Did this run already close the hour (a worker that died after closing some hours of
    its span)? If so its summary goes to ``out``."""
    manifest = closed_manifest(store, hour, job.run_id)
    if manifest is not None:
        out[hour] = summary_of(manifest)
    return manifest is not None


def _fail(store: Store, span: Sequence[Hour], job: Job, kind: str, message: str, *,
          out: dict[Hour, RunSummary], errors: list[tuple[str, FleetscoreError]]) -> None:
    """Close the span's hours it did not close itself, each planned sensor failed with
    ``kind``: their manifests say why, their earlier predictions stay."""
    ttl = timedelta(seconds=job.ttl_s)
    started = datetime.fromisoformat(job.started)
    with_model = sensors_with_models(store)
    for hour in span:
        if _closed_into(store, hour, job, out):
            continue
        try:
            locks.acquire(store, hour, job.run_id, now=datetime.now(UTC), ttl=ttl,
                          pid=os.getpid())
        except AlreadyRunning as exc:
            errors.append((str(hour), exc))
            continue
        try:
            plan = _one_unit(plan_hour(hour, read_arrivals_many(store, [hour])[hour],
                                       with_model, sensors=job.sensors, fmt=job.fmt),
                             SPAN_UNIT)
            results = [UnitResult.all_failed(str(hour), u.id, u.sensors, kind, message)
                       for u in plan.units]
            out[hour] = close_span_hour(store, plan, job, results, {}, started=started, ttl=ttl,
                                        duration_s=0.0)
        except FleetscoreError as exc:
            locks.release(store, hour, job.run_id)
            errors.append((str(hour), exc))
        except BaseException:
            locks.release(store, hour, job.run_id)
            raise
