"""``fleetscore alerts``: apply rules, list what fired, deliver what is owed, test a sink."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from fleetscore.cli.common import StoreOpt, load_settings, open_store, out
from fleetscore.core.hours import Hour
from fleetscore.core.text import count
from fleetscore.errors import UsageError

STATE_CHOICES = ("open", "pending", "failed", "sent", "snoozed")


def alerts_apply(
    rules_file: Annotated[Path, typer.Argument(metavar="RULES.toml", help="The rules file.")],
    store: StoreOpt = None,
) -> None:
    """Validate a rules file and store it: every later run evaluates it (a bad field is
    named, exit 2, and nothing is stored)."""
    from fleetscore.alerts.records import apply_rules

    try:
        text = rules_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{rules_file}: cannot read: {getattr(exc, 'strerror', None) or exc}"
                         ) from exc
    st = open_store(store, load_settings())
    try:
        rules = apply_rules(st, text, str(rules_file))
    finally:
        st.close()
    out.print(f"applied {count(len(rules.rules), 'rule')} and {count(len(rules.sinks), 'sink')}"
              f" from {rules_file}: {', '.join(r.name for r in rules.rules)}")


def alerts_list(
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour (inclusive).")] = None,
    state: Annotated[str | None, typer.Option(
        metavar="|".join(STATE_CHOICES), help="Only alerts in this state (open: not yet "
        "delivered to every sink).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the alerts as JSON.")] = False,
) -> None:
    """The alerts the runs raised, oldest first."""
    from fleetscore.alerts.records import all_records

    if state is not None and state not in STATE_CHOICES:
        raise UsageError(f"--state {state!r}: one of {', '.join(STATE_CHOICES)}")
    first, last = (Hour.parse(from_) if from_ else None), (Hour.parse(to) if to else None)
    st = open_store(store, load_settings())
    try:
        records = sorted(all_records(st), key=lambda r: (r.first_window, r.rule, r.group))
    finally:
        st.close()
    records = [r for r in records
               if (first is None or Hour.parse(r.hour) >= first)
               and (last is None or Hour.parse(r.hour) <= last)
               and (state is None or r.state == state
                    or (state == "open" and r.state in ("pending", "failed")))]
    if as_json:
        sys.stdout.write(json.dumps([r.to_json() for r in records], indent=1) + "\n")
        return
    if not records:
        out.print("no alerts")
        return
    for r in records:
        where = r.device + (f" ({', '.join(r.tags)})" if r.tags else "") or r.group
        errors = "; ".join(f"{s}: {d.last_error}" for s, d in r.deliveries.items()
                           if d.state == "failed")
        out.print(f"{r.state:8} {r.severity:8} {r.rule}: {where}: {r.first_window} .. "
                  f"{r.last_window}" + (f" ({r.windows} windows)" if r.windows else "")
                  + (f" [{errors}]" if errors else ""), markup=False)


def alerts_deliver(store: StoreOpt = None) -> None:
    """Send every alert still owed to a sink whose next attempt is due, and raise run_late
    alerts for hours of the last day with data and no run (runs do this after they close an
    hour; this is for a sink that was down, or a schedule that stopped)."""
    report = _deliver_now(store)
    out.print(f"alerts: {report.sent} sent, {report.failed} failed (tried again later), "
              f"{report.waiting} waiting for their next attempt")
    if report.failed:
        raise typer.Exit(3)


def _deliver_now(store: str | None):
    from fleetscore.alerts.records import load_rules
    from fleetscore.runs.alerting import deliver_owed

    settings = load_settings()
    st = open_store(store, settings)
    try:
        rules = load_rules(st)
        if rules is None:
            raise UsageError("no alert rules in this store: fleetscore alerts apply RULES.toml")
        return deliver_owed(st, rules, now=datetime.now(UTC), deadline=settings.deadline,
                            store_url=st.url)
    finally:
        st.close()


def alerts_test(
    rule: Annotated[str, typer.Option("--rule", help="The rule whose sinks get a test message.")],
    store: StoreOpt = None,
) -> None:
    """Send one test message to each of a rule's sinks, now; nothing is recorded."""
    from fleetscore.alerts.deliver import http_send
    from fleetscore.alerts.records import load_rules

    st = open_store(store, load_settings())
    try:
        rules = load_rules(st)
    finally:
        st.close()
    if rules is None:
        raise UsageError("no alert rules in this store: fleetscore alerts apply RULES.toml")
    chosen = rules.rule(rule)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    body = {"key": f"test|{rule}|{now}", "rule": rule, "on": chosen.on,
            "severity": chosen.severity, "group": "test", "device": "test", "tags": [],
            "first_window": now, "last_window": now, "windows": 0, "score": None,
            "detail": "a test message from fleetscore alerts test", "hour": now[:13].replace(" ", "T"),
            "run_id": "", "report": ""}
    failed = 0
    for name in chosen.sinks:
        try:
            http_send(rules.sinks[name], body)
            out.print(f"sink {name}: sent")
        except Exception as exc:  # noqa: BLE001 - each sink's answer is reported
            failed += 1
            out.print(f"sink {name}: failed: {type(exc).__name__}: {exc}", markup=False)
    if failed:
        raise typer.Exit(3)
