"""Delivery: each open alert to each of its rule's sinks, once, with retries later.

A sink that answers anything but 2xx, refuses the connection or does not answer within its
timeout is marked failed with the time of the next attempt (backing off from 30 s to an
hour); the next run or ``fleetscore alerts deliver`` tries again, until it is reached. A
failing sink never fails the run that raised the alert. Every message carries the alert's
key (``Idempotency-Key`` header and ``key`` field), so a receiver can drop the one resend a
crash between a sink's answer and its record's update could cause.

Sinks: a webhook (JSON, or a Slack- or Teams-shaped message) and, in Azure, Application
Insights custom events (a log record with the ``microsoft.custom_event.name`` attribute,
which azure-monitor-opentelemetry-exporter's log exporter sends as a customEvents item:
``export/logs/_exporter.py``, ``_MICROSOFT_CUSTOM_EVENT_NAME``), which infra's scheduled
query rule turns into an Action Group's e-mails and webhooks.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fleetscore.alerts.records import (
    AlertRecord,
    backoff,
    open_records,
    settle,
    with_delivery,
)
from fleetscore.alerts.rules import Rules, Sink
from fleetscore.errors import Conflict, InputError, first_line
from fleetscore.storage import Store

log = logging.getLogger("fleetscore.alerts")
EVENT_NAME = "FleetscoreAlert"

# (sink, message) -> None, or raises: the transport, replaceable in tests of the policy.
Send = Callable[[Sink, dict[str, Any]], None]


@dataclass(frozen=True)
class DeliveryReport:
    sent: int = 0
    failed: int = 0
    waiting: int = 0  # failed before, not yet due for another attempt

    def __add__(self, other: DeliveryReport) -> DeliveryReport:
        return DeliveryReport(self.sent + other.sent, self.failed + other.failed,
                              self.waiting + other.waiting)


def message(record: AlertRecord, store_url: str) -> dict[str, Any]:
    """The JSON body of a webhook: what fired, where, when, how badly, and where to look."""
    return {
        "key": record.key, "rule": record.rule, "on": record.on, "severity": record.severity,
        "group": record.group, "device": record.device, "tags": list(record.tags),
        "first_window": record.first_window, "last_window": record.last_window,
        "windows": record.windows, "score": record.score, "detail": record.detail,
        "hour": record.hour, "run_id": record.run_id,
        "manifest": f"{store_url}/runs/{record.hour}.json",
        "report": f"fleetscore report --store {store_url} --from {record.hour} --to {record.hour}",
    }


def text_of(body: dict[str, Any]) -> str:
    what = (f"{body['windows']} anomalous windows" if body["on"] == "anomaly"
            else body["detail"] or body["on"])
    where = body["device"] + (f" ({', '.join(body['tags'])})" if body["tags"] else "")
    return (f"[{body['severity']}] {body['rule']}: {where or body['group']}: {what}, "
            f"{body['first_window']} .. {body['last_window']} UTC (hour {body['hour']})")


def shaped(sink: Sink, body: dict[str, Any]) -> dict[str, Any]:
    """The body in the shape the sink's receiver reads."""
    if sink.format == "slack":  # Slack incoming webhooks: {"text": ...}
        return {"text": text_of(body), "key": body["key"]}
    if sink.format == "teams":  # Teams incoming webhooks: a MessageCard
        return {"@type": "MessageCard", "@context": "https://schema.org/extensions",
                "summary": f"{body['rule']}: {body['group']}", "title": body["rule"],
                "text": text_of(body), "key": body["key"]}
    return body


def http_send(sink: Sink, body: dict[str, Any]) -> None:
    """POST the message; anything but a 2xx answer within the sink's timeout raises."""
    if sink.type == "app_insights":
        log.warning(text_of(body), extra={"microsoft.custom_event.name": EVENT_NAME,
                                          **{f"alert_{k}": v for k, v in body.items()
                                             if isinstance(v, str | int | float)}})
        return
    request = urllib.request.Request(
        sink.url, data=json.dumps(shaped(sink, body)).encode(), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": body["key"],
                 "User-Agent": "fleetscore-alerts"})
    with urllib.request.urlopen(request, timeout=sink.timeout_s) as answer:  # noqa: S310
        if not 200 <= answer.status < 300:
            raise OSError(f"HTTP {answer.status}")


def deliver(store: Store, rules: Rules, *, now: datetime, send: Send = http_send,
            store_url: str = "") -> DeliveryReport:
    """Every open alert's due sinks, once each. Never raises for a sink's failure."""
    report = DeliveryReport()
    for path, record, version in open_records(store):
        if isinstance(record, InputError):
            log.warning("alert not delivered: %s", record, extra={"alert": path})
            report += DeliveryReport(failed=1)
            continue
        report += _deliver_one(store, rules, path, record, version, now=now, send=send,
                               store_url=store_url)
    return report


def _deliver_one(store: Store, rules: Rules, path: str, record: AlertRecord, version: str, *,
                 now: datetime, send: Send, store_url: str) -> DeliveryReport:
    due = [name for name, d in record.deliveries.items() if d.state != "sent"
           and (not d.next_attempt or datetime.fromisoformat(d.next_attempt) <= now)]
    waiting = sum(1 for d in record.deliveries.values() if d.state == "failed") - \
        sum(1 for name in due if record.deliveries[name].state == "failed")
    if not due:
        return DeliveryReport(waiting=waiting)
    # Claim the due sinks first (a conditional write): a concurrent deliverer that read the
    # same version loses here and sends nothing.
    claimed = record
    for name in due:
        d = record.deliveries[name]
        claimed = with_delivery(claimed, name, replace(
            d, attempts=d.attempts + 1, next_attempt=backoff(d.attempts + 1, now)))
    try:
        store.put(path, claimed.encode(), if_match=version)
        _, version = store.get_versioned(path)
    except Conflict:
        return DeliveryReport()
    sent = failed = 0
    body = message(record, store_url)
    for name in due:
        d = claimed.deliveries[name]
        sink = rules.sinks.get(name)
        try:
            if sink is None:
                raise LookupError(f"no [sink.{name}] in the rules applied now")
            send(sink, body)
            claimed = with_delivery(claimed, name, replace(d, state="sent", next_attempt="",
                                                           last_error="",
                                                           sent_at=now.isoformat()))
            sent += 1
        except Exception as exc:  # noqa: BLE001 - a sink's failure is recorded, never raised
            claimed = with_delivery(claimed, name, replace(
                d, state="failed", last_error=f"{type(exc).__name__}: {first_line(exc)}"[:500]))
            failed += 1
    try:
        settle(store, path, claimed, version)
    except Conflict:
        pass  # the claim's attempt count and next time stand; sent sinks may be resent once
    return DeliveryReport(sent, failed, waiting)
