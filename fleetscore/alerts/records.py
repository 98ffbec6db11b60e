"""Alerts in the store: one record a (rule, group, first window), created once.

``alerts/records/RULE/GROUP/FIRST.json`` is written create-if-absent: a rerun of the hour, a
concurrent run or a crash and a retry raise the same key and find it there, so an alert is
recorded once and delivered once. ``alerts/open/ID`` marks a record with a sink still to
reach; delivery lists only those. A record's state for each sink (pending, failed and when to
try again, sent) is changed only by a conditional write at the version read, so two
deliverers never both send it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from fleetscore.alerts.evaluate import Candidate
from fleetscore.alerts.rules import RULES_PATH, Rules, parse_rules
from fleetscore.errors import AlreadyExists, InputError, NotFound
from fleetscore.storage import Store

RECORDS = "alerts/records"
OPEN = "alerts/open"
STATES = ("pending", "failed", "sent", "snoozed")  # "open": pending or failed


@dataclass(frozen=True)
class Delivery:
    """One sink's side of an alert."""

    state: str = "pending"  # pending, failed (tried, will be tried again), sent
    attempts: int = 0
    next_attempt: str = ""  # ISO time: not before
    last_error: str = ""
    sent_at: str = ""


@dataclass(frozen=True)
class AlertRecord:
    key: str
    rule: str
    on: str
    severity: str
    group: str
    first_window: str
    last_window: str
    hour: str
    run_id: str
    created: str
    device: str = ""
    tags: tuple[str, ...] = ()
    windows: int = 0
    score: float | None = None
    detail: str = ""
    snoozed: bool = False
    deliveries: Mapping[str, Delivery] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]

    @property
    def state(self) -> str:
        if self.snoozed:
            return "snoozed"
        states = {d.state for d in self.deliveries.values()}
        if states <= {"sent"}:
            return "sent"
        return "failed" if "failed" in states else "pending"

    def to_json(self) -> dict[str, Any]:
        """The record as stored, and its state (derived: ignored when read back)."""
        body = asdict(self)
        body["tags"] = list(self.tags)
        body["deliveries"] = {k: asdict(v) for k, v in self.deliveries.items()}
        body["state"] = self.state
        return body

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    @classmethod
    def decode(cls, data: bytes, path: str) -> AlertRecord:
        try:
            body = json.loads(data)
            body.pop("state", None)
            body["tags"] = tuple(body.get("tags", ()))
            body["deliveries"] = {k: Delivery(**v) for k, v in body.get("deliveries", {}).items()}
            return cls(**body)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"alert record {path} is damaged: {type(exc).__name__}") from exc


def record_path(rule: str, group: str, first_window: str) -> str:
    # Ids are [A-Za-z0-9_.-], so "~" cannot be part of one: Device~Tag names a sensor group.
    stamp = first_window.replace("-", "").replace(":", "").replace(" ", "T")
    return f"{RECORDS}/{rule}/{group.replace('/', '~')}/{stamp}.json"


def alert_key(rule: str, group: str, first_window: str) -> str:
    return f"{rule}|{group}|{first_window}"


def apply_rules(store: Store, text: str, source: str) -> Rules:
    """Validate a rules file whole, then store it (RulesError, and nothing stored, if any
    field is bad)."""
    rules = parse_rules(text, source)
    store.put(RULES_PATH, text.encode())
    return rules


def load_rules(store: Store) -> Rules | None:
    """The rules ``fleetscore alerts apply`` stored, or None when there are none."""
    try:
        text = store.get(RULES_PATH).decode()
    except NotFound:
        return None
    return parse_rules(text, RULES_PATH)


def raise_alerts(store: Store, rules: Rules, candidates: list[Candidate], *, hour: str,
                 run_id: str, now: datetime) -> list[AlertRecord]:
    """Record each candidate once (an existing key is left as it is); a candidate within its
    rule's snooze of the group's last alert is recorded as snoozed and not delivered.
    Returns the records this call created."""
    made = []
    for c in candidates:
        rule = rules.rule(c.rule)
        path = record_path(c.rule, c.group, c.first_window)
        if store.exists(path):
            _reopen(store, path)
            continue
        record = AlertRecord(
            key=alert_key(c.rule, c.group, c.first_window), rule=c.rule, on=c.on,
            severity=c.severity, group=c.group, first_window=c.first_window,
            last_window=c.last_window, hour=hour, run_id=run_id, created=now.isoformat(),
            device=c.device, tags=c.tags, windows=c.windows, score=c.score, detail=c.detail,
            snoozed=_snoozed(store, rule.snooze, c),
            deliveries={s: Delivery() for s in rule.sinks})
        try:
            store.put(path, record.encode(), overwrite=False)
        except AlreadyExists:
            _reopen(store, path)  # a concurrent close of the same hour recorded it first
            continue
        if not record.snoozed:
            store.put(f"{OPEN}/{record.id}", path.encode())
        made.append(record)
    return made


def _reopen(store: Store, path: str) -> None:
    """Put an existing record's open marker again while a sink is still owed it: a write that
    failed between the record and its marker (a store error, a crash) must not leave the
    alert pending forever, never delivered. The marker is the same bytes each time."""
    try:
        record = AlertRecord.decode(store.get(path), path)
    except (NotFound, InputError):
        return
    if record.state in ("pending", "failed"):
        store.put(f"{OPEN}/{record.id}", path.encode())


def _snoozed(store: Store, snooze: timedelta, c: Candidate) -> bool:
    """The group's last alert that was not itself snoozed began less than ``snooze`` before."""
    if not snooze:
        return False
    folder = record_path(c.rule, c.group, c.first_window).rsplit("/", 1)[0]
    here = _when(c.first_window)
    for path in sorted(store.list(folder), reverse=True):
        try:
            earlier = AlertRecord.decode(store.get(path), path)
        except (NotFound, InputError):
            continue
        if earlier.snoozed or _when(earlier.first_window) >= here:
            continue
        return here - _when(earlier.first_window) < snooze
    return False


def _when(window: str) -> datetime:
    text = window if len(window) > 13 else f"{window}:00:00".replace("T", " ")
    return datetime.fromisoformat(text)


def open_records(store: Store) -> Iterator[tuple[str, AlertRecord | InputError, str]]:
    """(path, record, version) of every record with a sink still to reach; a damaged record
    comes as the InputError naming it, so it fails alone and the others are delivered."""
    for marker in store.list(OPEN):
        try:
            path = store.get(marker).decode(errors="replace")
            data, version = store.get_versioned(path)
        except NotFound:
            store.delete(marker)
            continue
        try:
            yield path, AlertRecord.decode(data, path), version
        except InputError as exc:
            yield path, exc, version


def all_records(store: Store) -> Iterator[AlertRecord]:
    for path in store.list(RECORDS):
        try:
            yield AlertRecord.decode(store.get(path), path)
        except NotFound:
            continue


def settle(store: Store, path: str, record: AlertRecord, version: str) -> None:
    """Write a record's new delivery states at the version it was read (Conflict otherwise:
    another deliverer got there first); drop its open marker once every sink is reached."""
    store.put(path, record.encode(), if_match=version)
    if record.state == "sent":
        store.delete(f"{OPEN}/{record.id}")


def with_delivery(record: AlertRecord, sink: str, delivery: Delivery) -> AlertRecord:
    return replace(record, deliveries={**record.deliveries, sink: delivery})


def backoff(attempts: int, now: datetime) -> str:
    """When to try a failed sink again: 30 s, doubling, at most an hour."""
    return (now + timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))).isoformat()
