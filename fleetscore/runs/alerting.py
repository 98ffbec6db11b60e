"""The run's side of alerts: when an hour closes (inside its lock, so a concurrent run cannot
close it at the same time), the stored rules are evaluated on its visible predictions and its
status, and each new alert is recorded once. Delivery is the entry point's step after the run
(``alerts.deliver``): a sink never holds an hour's lock, and never fails its run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import pyarrow as pa

from fleetscore.alerts.evaluate import (
    anomaly_candidates,
    run_candidates,
    silent_candidates,
)
from fleetscore.alerts.records import load_rules, raise_alerts
from fleetscore.core.hours import Hour
from fleetscore.data.arrivals import read_arrivals
from fleetscore.errors import FleetscoreError, first_line
from fleetscore.storage import Store

log = logging.getLogger("fleetscore.alerts")


def alerts_for_hour(store: Store, hour: Hour, run_id: str, *, status: str, reason: str,
                    rows: Callable[[], pa.Table | None], previous_rows: Callable[[], pa.Table | None],
                    now: datetime) -> tuple[str, ...]:
    """Keys of the alerts this close of the hour raised (none without stored rules). A
    failure here is logged and raises nothing: alerts never fail a run."""
    try:
        rules = load_rules(store)
        if rules is None:
            return ()
        candidates = run_candidates(rules, str(hour), status, reason)
        hour_rows = rows() if rules.watching("anomaly") else None
        if hour_rows is not None:
            candidates += anomaly_candidates(rules, hour_rows, previous_rows())
        if rules.watching("sensor_silent"):
            candidates += silent_candidates(rules, str(hour), silent_sensors(store, hour))
        made = raise_alerts(store, rules, candidates, hour=str(hour), run_id=run_id, now=now)
        return tuple(r.key for r in made)
    except (FleetscoreError, OSError, ValueError) as exc:
        log.warning("alerts of %s not evaluated: %s", hour, first_line(exc),
                    extra={"window": str(hour)})
        return ()


def silent_sensors(store: Store, hour: Hour) -> list[tuple[str, str]]:
    """Sensors the previous hour's arrival records hold and this hour's do not."""
    before, now = read_arrivals(store, hour - 1), read_arrivals(store, hour)
    return sorted((s.device, s.tag) for s in before if s not in now)
