"""Operational alerts through the same rules and sinks: an hour that ended failed or partial,
an hour with data whose run did not finish by its deadline, sensors that stopped sending."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetscore.alerts.records import all_records, apply_rules, load_rules
from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.ingest import ingest_file
from fleetscore.model.registry import model_path
from fleetscore.model.training import train
from fleetscore.runs.alerting import deliver_owed
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import run_hour
from tests.conftest import minute_readings, write_readings

RULES = """
[[rule]]
name = "bad-hours"
on = "run_failed"
sinks = ["ops"]

[[rule]]
name = "late"
on = "run_late"
severity = "error"
sinks = ["ops"]

[[rule]]
name = "quiet"
on = "sensor_silent"
group_by = "device"
sinks = ["ops"]

[sink.ops]
type = "webhook"
url = "{url}"
format = "slack"
"""


@pytest.fixture
def ops_store(local_store, tmp_path, webhook):
    rows = []
    for i, (device, tag) in enumerate([("A", "x"), ("A", "y"), ("B", "x")]):
        minutes = 120 if (device, tag) != ("A", "y") else 180  # A/x, B/x stop after 01:59
        rows += minute_readings(device, tag, "2024-03-01 00:00:00", minutes, seed=i)
    ingest_file(local_store, write_readings(tmp_path / "ops.csv", sorted(rows)))
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    apply_rules(local_store, RULES.format(url=webhook.url), "rules.toml")
    return local_store


def _owed(store, now):
    return deliver_owed(store, load_rules(store), now=now, deadline=timedelta(hours=2))


def test_a_partial_hour_and_silent_sensors_each_alert_once(ops_store, webhook):
    ops_store.put(model_path(Sensor("B", "x")), b"damaged")
    run_hour(ops_store, Hour.parse("2024-03-01T01"), SequentialBackend(ops_store, ENGINE))
    run_hour(ops_store, Hour.parse("2024-03-01T02"), SequentialBackend(ops_store, ENGINE))
    _owed(ops_store, datetime(2024, 3, 1, 2, 50, tzinfo=UTC))  # before any hour is late
    texts = sorted(p["text"] for p in webhook.posts)
    assert len(texts) == 3, texts
    assert texts[0].startswith("[warning] bad-hours: run: partial: 1 of 3 sensors failed")
    assert texts[1].startswith("[warning] quiet: A (x): 1 sensor(s) sent nothing this hour, "
                               "2024-03-01T02")
    assert texts[2].startswith("[warning] quiet: B (x): 1 sensor(s) sent nothing this hour")
    # Rerunning the hours raises nothing again.
    run_hour(ops_store, Hour.parse("2024-03-01T02"), SequentialBackend(ops_store, ENGINE))
    _owed(ops_store, datetime(2024, 3, 1, 2, 55, tzinfo=UTC))
    assert len(webhook.posts) == 3


def test_an_hour_with_data_and_no_run_past_its_deadline_alerts_once(ops_store, webhook):
    run_hour(ops_store, Hour.parse("2024-03-01T01"), SequentialBackend(ops_store, ENGINE))
    # Hours 00 and 02 have data and nobody ran them; with a 2 h deadline 00 is late from
    # 03:00, 02 from 05:00. Each is raised once.
    assert _owed(ops_store, datetime(2024, 3, 1, 2, 59, tzinfo=UTC)).sent == 0
    assert _owed(ops_store, datetime(2024, 3, 1, 3, 30, tzinfo=UTC)).sent == 1
    assert _owed(ops_store, datetime(2024, 3, 1, 4, 59, tzinfo=UTC)).sent == 0
    assert _owed(ops_store, datetime(2024, 3, 1, 5, 10, tzinfo=UTC)).sent == 1
    assert _owed(ops_store, datetime(2024, 3, 1, 6, 10, tzinfo=UTC)).sent == 0
    late = sorted((r.first_window, r.severity, r.state) for r in all_records(ops_store)
                  if r.rule == "late")
    assert late == [("2024-03-01T00", "error", "sent"), ("2024-03-01T02", "error", "sent")]
    assert "hour 2024-03-01T02 has data and no finished run 2 h after it ended" in \
        webhook.posts[-1]["text"]


def test_a_damaged_arrival_record_never_holds_back_the_alerts_owed(ops_store, webhook):
    """One damaged arrival record in the last day: its hour counts as having data (and is
    late, so said), and every other alert owed is still delivered."""
    ops_store.put(model_path(Sensor("B", "x")), b"damaged")
    run_hour(ops_store, Hour.parse("2024-03-01T01"), SequentialBackend(ops_store, ENGINE))
    record = next(p for p in ops_store.list("arrivals/2024/03/01") if p.endswith(".json"))
    ops_store.put(record, b"garbage")  # the day's record: hours 00 and 02 have data, no run
    assert _owed(ops_store, datetime(2024, 3, 1, 5, 10, tzinfo=UTC)).sent == 3
    texts = sorted(p["text"] for p in webhook.posts)
    assert [t for t in texts if t.startswith("[warning] bad-hours: run: partial")]
    assert [h for h in ("00", "02") if any(f"2024-03-01T{h} has data and no finished run" in t
                                             for t in texts)] == ["00", "02"]


def test_an_alert_whose_open_marker_was_not_written_is_delivered_after_all(ops_store, webhook,
                                                                           monkeypatch):
    """The store failed between an alert's record and its open marker: the next time the
    same alert is raised (a rerun; the next hour of an ongoing episode), the marker is put
    again, and the alert is delivered instead of staying pending forever."""
    from fleetscore.alerts.records import OPEN
    from fleetscore.errors import StoreError

    ops_store.put(model_path(Sensor("B", "x")), b"damaged")
    real_put = ops_store.put
    failed = []

    def put(path, data, **kw):
        if path.startswith(OPEN) and not failed:
            failed.append(path)
            raise StoreError("the store failed")
        return real_put(path, data, **kw)

    monkeypatch.setattr(ops_store, "put", put)
    hour = Hour.parse("2024-03-01T01")
    run_hour(ops_store, hour, SequentialBackend(ops_store, ENGINE))  # its alerts: not all
    assert failed and _owed(ops_store, datetime(2024, 3, 1, 2, 10, tzinfo=UTC)).sent == 0
    run_hour(ops_store, hour, SequentialBackend(ops_store, ENGINE))  # the rerun
    assert _owed(ops_store, datetime(2024, 3, 1, 2, 20, tzinfo=UTC)).sent == 1
    assert webhook.posts[-1]["text"].startswith("[warning] bad-hours: run: partial")
