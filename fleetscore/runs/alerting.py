"""The run's side of alerts: when an hour closes (inside its lock, so a concurrent run cannot
close it at the same time), the stored rules are evaluated on its visible predictions and its
status, and each new alert is recorded once. Delivery is the entry point's step after the run
(``alerts.deliver``): a sink never holds an hour's lock, and never fails its run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.alerts.deliver import DeliveryReport, deliver
from fleetscore.alerts.evaluate import (
    Candidate,
    anomaly_candidates,
    run_candidates,
    silent_candidates,
)
from fleetscore.alerts.noisy import (
    DAY_HOURS,
    Counts,
    add,
    day_candidates,
    held_back,
    hot,
    hour_counts,
    judge,
    missing,
    noisy_candidates,
)
from fleetscore.alerts.records import load_rules, raise_alerts
from fleetscore.alerts.rules import NoisySettings, Rules
from fleetscore.contracts import NoisySensor, RunManifest, SensorFlags
from fleetscore.core.hours import Hour
from fleetscore.data.arrivals import read_arrivals
from fleetscore.errors import FleetscoreError, InputError, first_line
from fleetscore.storage import Store

log = logging.getLogger("fleetscore.alerts")
LATE_LOOKBACK_HOURS = 24  # how far back an hour with data and no run is looked for


def manifest_path(hour: Hour) -> str:
    """An hour's run manifest (here, below the lifecycle that writes it: late runs look)."""
    return f"runs/{hour}.json"


@dataclass(frozen=True)
class Guard:
    """What the runaway guard found for an hour: its noisy sensors, and what its manifest
    lists for the next hours' rolling day (None: not found, the next hours read its rows)."""

    noisy: tuple[NoisySensor, ...] = ()
    flag_counts: tuple[SensorFlags, ...] | None = None


def noisy_guard(store: Store, hour: Hour, *, rows: Callable[[], pa.Table | None],
                manifest_of: Callable[[Hour], RunManifest | None],
                rows_of: Callable[[Hour, RunManifest], pa.Table | None],
                counted: Counts | None = None) -> Guard:
    """The hour's noisy sensors (fleetscore/alerts/noisy.py), from the sensors its units
    counted (``counted``: every sensor that flagged at least FLAG_FLOOR; else its visible
    rows are read), the previous 23 hours' manifests and, for the few sensors that need
    them, their predictions (``rows_of``). A failure is logged and marks nothing: the guard
    never fails a run."""
    try:
        settings = _noisy_settings(store)
        current = counted if counted is not None else hour_counts(rows())
        earlier = [(hour - back, manifest_of(hour - back)) for back in range(1, DAY_HOURS)]
        old = {h: hour_counts(rows_of(h, m)) for h, m in earlier
               if m is not None and m.flag_counts is None}  # an earlier version's manifest
        candidates = day_candidates(current, [
            m.flag_counts if m.flag_counts is not None else hot(old[h], settings)
            for h, m in earlier if m is not None], settings)
        day: Counts = {}
        add(day, current, candidates)
        for h, m in earlier if candidates else ():
            if m is None:
                continue  # no run: the hour scored nothing
            if h in old:
                add(day, old[h], candidates)
            elif missing(m.flag_counts, candidates):
                add(day, hour_counts(rows_of(h, m), candidates), candidates)
            else:
                add(day, {f.sensor: (f.flagged, f.points) for f in m.flag_counts or ()},
                    candidates)
        previous = earlier[0][1]
        streaks = {n.sensor: n.since for n in previous.noisy} if previous is not None else {}
        return Guard(judge(str(hour), current, day, settings, streaks), hot(current, settings))
    except (FleetscoreError, OSError, ValueError, pa.ArrowException) as exc:
        log.warning("noisy sensors of %s not looked for: %s", hour, first_line(exc),
                    extra={"window": str(hour)})
        return Guard()


def _noisy_settings(store: Store) -> NoisySettings:
    """The ``[noisy]`` table of the stored rules; the defaults without rules (the guard
    marks noisy sensors in manifests, ``runs`` and the report whether or not anyone hears)."""
    rules = load_rules(store)
    return rules.noisy if rules is not None else NoisySettings()


def alerts_for_hour(store: Store, hour: Hour, run_id: str, *, status: str, reason: str,
                    rows: Callable[[], pa.Table | None], previous_rows: Callable[[], pa.Table | None],
                    now: datetime, noisy: tuple[NoisySensor, ...] = ()) -> tuple[str, ...]:
    """Keys of the alerts this close of the hour raised (none without stored rules). A
    failure here is logged and raises nothing: alerts never fail a run. ``noisy``: the
    guard's noisy sensors, alerted once each and their anomaly alerts held back."""
    try:
        rules = load_rules(store)
        if rules is None:
            return ()
        candidates = run_candidates(rules, str(hour), status, reason)
        candidates += noisy_candidates(rules, str(hour), noisy)
        hour_rows = rows() if rules.watching("anomaly") else None
        if hour_rows is not None:
            hour_rows = _without(hour_rows, held_back(rules, noisy))
            candidates += anomaly_candidates(rules, hour_rows, previous_rows())
        if rules.watching("sensor_silent"):
            candidates += silent_candidates(rules, str(hour), silent_sensors(store, hour))
        made = raise_alerts(store, rules, candidates, hour=str(hour), run_id=run_id, now=now)
        return tuple(r.key for r in made)
    except (FleetscoreError, OSError, ValueError) as exc:
        log.warning("alerts of %s not evaluated: %s", hour, first_line(exc),
                    extra={"window": str(hour)})
        return ()


def _without(rows: pa.Table, sensors: set[str]) -> pa.Table:
    """The rows of every sensor but ``sensors``."""
    if not sensors:
        return rows
    keys = pc.binary_join_element_wise(rows["Device"], rows["Tag"], "/")
    return rows.filter(pc.invert(pc.is_in(keys, value_set=pa.array(sorted(sensors), pa.string()))))


def silent_sensors(store: Store, hour: Hour) -> list[tuple[str, str]]:
    """Sensors the previous hour's arrival records hold and this hour's do not."""
    before, now = read_arrivals(store, hour - 1), read_arrivals(store, hour)
    return sorted((s.device, s.tag) for s in before if s not in now)


def raise_late(store: Store, rules: Rules, *, now: datetime, deadline: timedelta) -> int:
    """Record a ``run_late`` alert for each of the last day's hours that has data but no run
    manifest although its deadline (its end plus ``deadline``) has passed. Returns how many
    were new; nothing without a rule that watches for it."""
    watching = rules.watching("run_late")
    if not watching:
        return 0
    current = Hour.from_datetime(now)
    late = []
    for back in range(1, LATE_LOOKBACK_HOURS + 1):
        hour = current - back
        due = datetime.fromtimestamp(hour.end_ms / 1000, tz=now.tzinfo) + deadline
        if now >= due and not store.exists(manifest_path(hour)) and _has_data(store, hour):
            late.append(hour)
    candidates = [Candidate(r.name, r.on, r.severity, "run", str(h), str(h),
                            detail=f"hour {h} has data and no finished run "
                            f"{deadline.total_seconds() / 3600:g} h after it "
                            "ended") for r in watching for h in sorted(late)]
    return len(raise_alerts(store, rules, candidates, hour=str(current), run_id="", now=now))


def _has_data(store: Store, hour: Hour) -> bool:
    """The hour has arrival records; a damaged one counts (something arrived: `verify`
    names the record), rather than stopping the alerts of every other hour."""
    try:
        return bool(read_arrivals(store, hour))
    except InputError:
        return True


def deliver_owed(store: Store, rules: Rules, *, now: datetime, deadline: timedelta,
                 store_url: str = "") -> DeliveryReport:
    """What an entry point does after its runs: late hours raised, then every alert that is
    owed a sink delivered (each caller: the CLI's run, ``alerts deliver``, the Functions
    app's finalize activity). Late hours that cannot be looked for never hold back the
    alerts already owed."""
    try:
        raise_late(store, rules, now=now, deadline=deadline)
    except FleetscoreError as exc:
        log.warning("late hours not looked for: %s", first_line(exc))
    return deliver(store, rules, now=now, store_url=store_url)
