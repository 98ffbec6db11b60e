"""Alerts end to end on one machine: a fleet with a 10-window anomaly on one sensor and a
1-window spike on another, a rule "3 of the last 5 windows, group by device, snooze 6 h", and
a real HTTP server on localhost as the webhook."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from fleetscore.alerts.deliver import deliver
from fleetscore.alerts.records import all_records, apply_rules
from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.model.training import train
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, run_hour
from tests.conftest import minute_readings, write_readings

H1, H2 = Hour.parse("2024-03-01T01"), Hour.parse("2024-03-01T02")
RULES = """
[[rule]]
name = "sustained"
sensors = "*"
min_windows = 3
of_last = 5
group_by = "device"
snooze = "6h"
severity = "warning"
sinks = ["ops"]

[sink.ops]
type = "webhook"
url = "{url}"
timeout = "{timeout}"
"""


def _fleet(tmp_path, *, later_episode: bool = False):
    rows = []
    for i, (device, tag) in enumerate([("A", "temp"), ("A", "flow"), ("B", "temp"), ("C", "temp")]):
        series = minute_readings(device, tag, "2024-03-01 00:00:00", 180, seed=i, level=20.0)
        for k, (ts, d, t, v) in enumerate(series):
            minute = k // 4
            if (d, t) == ("A", "temp") and 80 <= minute < 90:  # 01:20 .. 01:29: 10 windows
                v += 60
            if (d, t) == ("A", "temp") and later_episode and 150 <= minute < 155:  # 02:30 ..
                v += 60
            if (d, t) == ("B", "temp") and minute == 100:  # 01:40: one window
                v += 60
            rows.append((ts, d, t, v))
    return write_readings(tmp_path / "alerts.csv", sorted(rows))


@pytest.fixture
def alert_store(local_store, tmp_path, webhook):
    ingest_file(local_store, _fleet(tmp_path, later_episode=True))
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    apply_rules(local_store, RULES.format(url=webhook.url, timeout="1s"), "rules.toml")
    return local_store


def _run(store, hour):
    return run_hour(store, hour, SequentialBackend(store, ENGINE))


def _deliver(store, webhook, now=None):
    from fleetscore.alerts.records import load_rules

    return deliver(store, load_rules(store), now=now or datetime.now(UTC))


@pytest.mark.reliability("R80")
def test_one_alert_for_the_sustained_anomaly_none_for_the_spike_and_none_again(
        alert_store, webhook):
    summary = _run(alert_store, H1)
    assert summary.status == "succeeded"
    manifest = read_manifest(alert_store, H1)
    assert manifest.alerts == ("sustained|A|2024-03-01 01:21:00",)
    report = _deliver(alert_store, webhook)
    assert (report.sent, report.failed) == (1, 0)
    [post] = webhook.posts
    assert (post["rule"], post["device"], post["tags"]) == ("sustained", "A", ["temp"])
    assert (post["first_window"], post["last_window"], post["windows"]) == (
        "2024-03-01 01:21:00", "2024-03-01 01:30:00", 10)
    assert post["score"] < 0 and post["key"] == webhook.headers[0]["Idempotency-Key"]
    assert post["report"].startswith("fleetscore report --store ") and \
        post["report"].endswith("--from 2024-03-01T01 --to 2024-03-01T01")
    # A forced rerun of the hour raises the same key: nothing new, nothing sent.
    _run(alert_store, H1)
    assert read_manifest(alert_store, H1).alerts == ()
    # The next hour: A/temp's second episode (02:31 ..) is within the 6 h snooze.
    _run(alert_store, H2)
    _deliver(alert_store, webhook)
    assert len(webhook.posts) == 1
    states = sorted((r.first_window, r.state) for r in all_records(alert_store))
    assert states == [("2024-03-01 01:21:00", "sent"), ("2024-03-01 02:31:00", "snoozed")]


@pytest.mark.reliability("R82")
def test_a_sink_answering_500_then_200_gets_the_alert_exactly_once(alert_store, webhook):
    webhook.script = [500]
    _run(alert_store, H1)
    now = datetime.now(UTC)
    first = _deliver(alert_store, webhook, now)
    assert (first.sent, first.failed) == (0, 1)
    [record] = list(all_records(alert_store))
    assert record.state == "failed" and "500" in record.deliveries["ops"].last_error
    assert _deliver(alert_store, webhook, now + timedelta(seconds=5)).waiting == 1  # backing off
    assert len(webhook.posts) == 1
    again = _deliver(alert_store, webhook, now + timedelta(minutes=1))
    assert (again.sent, again.failed) == (1, 0)
    _deliver(alert_store, webhook, now + timedelta(hours=2))
    assert len(webhook.posts) == 2  # the failed attempt, then the one delivery
    assert [r.state for r in all_records(alert_store)] == ["sent"]


@pytest.mark.reliability("R82")
def test_a_sink_that_hangs_is_timed_out_and_retried(alert_store, webhook):
    webhook.script = ["hang"]
    webhook.hang_s = 4.0
    _run(alert_store, H1)
    now = datetime.now(UTC)
    started = time.monotonic()
    first = _deliver(alert_store, webhook, now)
    assert first.failed == 1 and time.monotonic() - started < 3.5  # the sink's 1 s timeout
    [record] = list(all_records(alert_store))
    assert "timed out" in record.deliveries["ops"].last_error.lower()
    assert _deliver(alert_store, webhook, now + timedelta(minutes=1)).sent == 1
    assert [r.state for r in all_records(alert_store)] == ["sent"]


def test_the_report_shows_the_hours_alerts(alert_store, webhook, tmp_path):
    from fleetscore.report.html import write_report

    _run(alert_store, H1)
    _run(alert_store, H2)
    _deliver(alert_store, webhook)
    page = tmp_path / "report.html"
    write_report(alert_store, page)
    text = page.read_text()
    section = text[text.index("<h2>Alerts</h2>"):]
    section = section[: section.index("</table>")]
    assert "2 alerts raised for these hours" in text
    assert section.count("<tr><td>") == 2
    assert "<td>sustained</td><td>warning</td><td>A (temp)</td>" in section
    assert "<td>sent</td>" in section and "<td>snoozed</td>" in section
    write_report(alert_store, tmp_path / "first.html", first=H1, last=H1)
    assert "1 alert raised for these hours" in (tmp_path / "first.html").read_text()


def test_a_damaged_alert_record_fails_alone(alert_store, webhook):
    from fleetscore.alerts.evaluate import Candidate
    from fleetscore.alerts.records import OPEN, alert_key, load_rules, raise_alerts

    _run(alert_store, H1)
    rules = load_rules(alert_store)
    [made] = raise_alerts(alert_store, rules, [Candidate(
        "sustained", "anomaly", "warning", "Z", "2024-03-01 01:05:00", "2024-03-01 01:09:00",
        device="Z", tags=("t",), windows=5)], hour="2024-03-01T01", run_id="x",
        now=datetime.now(UTC))
    assert made.key == alert_key("sustained", "Z", "2024-03-01 01:05:00")
    path = alert_store.get(f"{OPEN}/{made.id}").decode()
    alert_store.put(path, b"{not json")
    report = _deliver(alert_store, webhook)
    assert (report.sent, report.failed) == (1, 1)  # the sound alert went; the damaged one failed
    assert [p["device"] for p in webhook.posts] == ["A"]
