"""Alert rules: a TOML file of rules and sinks, validated whole before it is stored.

```toml
[[rule]]
name = "sustained"
sensors = "*"          # or "D1/*", "*/temp", or a list of patterns
min_windows = 3        # at least 3 anomalous ...
of_last = 5            # ... of the last 5 windows (the previous hour's last windows count)
group_by = "device"    # or "sensor"
snooze = "6h"
severity = "warning"
sinks = ["ops"]

[sink.ops]
type = "webhook"       # or "app_insights"
url = "https://example.org/hook"
format = "json"        # or "slack", "teams"
timeout = "10s"
```

A rule's ``on`` says what it watches: ``anomaly`` (the default: K of the last N windows),
``run_failed`` (an hour that ended ``failed`` or ``partial``), ``run_late`` (an hour whose run
had not finished by the deadline) or ``sensor_silent`` (a sensor the previous hour's arrival
records expected that sent nothing this hour) or ``noisy_sensor`` (a sensor the runaway
guard marked noisy: one alert while it stays noisy, and its anomaly alerts held back). The
guard's thresholds are the optional ``[noisy]`` table (``hour_share``, ``day_share``,
``min_points``; fleetscore/alerts/noisy.py). A bad field is one line naming it; nothing of a
bad file is stored.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fleetscore.errors import InputError
from fleetscore.scoring.score import FLAG_FLOOR

RULES_PATH = "alerts/rules.toml"
WATCHES = ("anomaly", "run_failed", "run_late", "sensor_silent", "noisy_sensor")
GROUPS = ("sensor", "device")
SEVERITIES = ("info", "warning", "error", "critical")
SINK_TYPES = ("webhook", "app_insights")
FORMATS = ("json", "slack", "teams")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RulesError(InputError):
    """A rules file that cannot be applied: the message names the field."""


@dataclass(frozen=True)
class Sink:
    name: str
    type: str
    url: str = ""
    format: str = "json"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Rule:
    name: str
    sinks: tuple[str, ...]
    on: str = "anomaly"
    sensors: tuple[str, ...] = ("*",)
    min_windows: int = 1
    of_last: int = 1
    group_by: str = "sensor"
    snooze: timedelta = timedelta(0)
    severity: str = "warning"

    def selects(self, device: str, tag: str) -> bool:
        key = f"{device}/{tag}"
        return any(fnmatch.fnmatchcase(key, p) for p in self.sensors)

    def group_of(self, device: str, tag: str) -> str:
        return device if self.group_by == "device" else f"{device}/{tag}"


@dataclass(frozen=True)
class NoisySettings:
    """The runaway guard's thresholds (docs/operations.md, "Noisy sensors"). A model made to
    flag about 1% of points (contamination, nu = 0.01) that flags half of an hour's, or a fifth
    of a day's, no longer describes its sensor: its flags are noise, not incidents. Under
    ``min_points`` points (an hour of 5-minute windows is 12) a share says too little."""

    hour_share: float = 0.5
    day_share: float = 0.2
    min_points: int = 12


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    sinks: Mapping[str, Sink]
    noisy: NoisySettings = NoisySettings()

    def watching(self, on: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.on == on)

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise RulesError(f"no rule named {name!r} (rules: {', '.join(r.name for r in self.rules)})")


def parse_rules(text: str, source: str = "rules") -> Rules:
    """The rules of a TOML text; RulesError names the first bad field."""
    try:
        body = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not TOML: {exc}") from exc
    unknown = sorted(set(body) - {"rule", "sink", "noisy"})
    if unknown:
        raise RulesError(f"{source}: unknown table {unknown[0]!r} (expected [[rule]], "
                         "[sink.NAME] and [noisy])")
    sinks_body = body.get("sink", {})
    if not isinstance(sinks_body, dict):
        raise RulesError(f"{source}: sink must be tables [sink.NAME]")
    sinks = {name: _sink(name, spec, source) for name, spec in sinks_body.items()}
    rules_body = body.get("rule", [])
    if not isinstance(rules_body, list) or not rules_body:
        raise RulesError(f"{source}: no [[rule]]: a rules file needs at least one")
    rules = tuple(_rule(i, spec, sinks, source) for i, spec in enumerate(rules_body))
    names = [r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RulesError(f"{source}: rule name {twice[0]!r} is used twice")
    return Rules(rules, sinks, _noisy(body.get("noisy", {}), source))


def _noisy(spec: Any, source: str) -> NoisySettings:
    where = f"{source}: noisy"
    if not isinstance(spec, dict):
        raise RulesError(f"{where}: must be a table [noisy]")
    unknown = sorted(set(spec) - {"hour_share", "day_share", "min_points"})
    if unknown:
        raise RulesError(f"{where}.{unknown[0]}: unknown field")
    default = NoisySettings()
    shares = {}
    for key, fallback in (("hour_share", default.hour_share), ("day_share", default.day_share)):
        value = spec.get(key, fallback)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not FLAG_FLOOR <= value <= 1:
            # Units report only the sensors that flag at least FLAG_FLOOR of their points.
            raise RulesError(f"{where}.{key}: {value!r} must be a share from {FLAG_FLOOR} "
                             "to 1")
        shares[key] = float(value)
    min_points = _field(spec, "min_points", where, int, default.min_points)
    if min_points < 1:
        raise RulesError(f"{where}.min_points: {min_points} must be at least 1")
    return NoisySettings(min_points=min_points, **shares)


def parse_duration(value: object, field: str) -> timedelta:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value.strip())):
        return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    raise RulesError(f"{field}: {value!r} is not a duration such as \"30s\", \"15m\", \"6h\", \"1d\"")


def _field(spec: Mapping[str, Any], key: str, where: str, kind: type, default: Any) -> Any:
    value = spec.get(key, default)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise RulesError(f"{where}.{key}: {value!r} is not an integer")
    if kind is str and not isinstance(value, str):
        raise RulesError(f"{where}.{key}: {value!r} is not a string")
    return value


def _choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise RulesError(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _sink(name: str, spec: Any, source: str) -> Sink:
    where = f"{source}: sink.{name}"
    if not _NAME.match(name):
        raise RulesError(f"{where}: a sink's name is letters, digits, '_', '.', '-'")
    if not isinstance(spec, dict):
        raise RulesError(f"{where}: must be a table")
    unknown = sorted(set(spec) - {"type", "url", "format", "timeout"})
    if unknown:
        raise RulesError(f"{where}.{unknown[0]}: unknown field")
    kind = _choice(_field(spec, "type", where, str, ""), SINK_TYPES, f"{where}.type")
    url = _field(spec, "url", where, str, "")
    if kind == "webhook" and not re.match(r"^https?://[^\s/]+", url):
        raise RulesError(f"{where}.url: {url!r} is not an http(s) URL")
    timeout = parse_duration(spec.get("timeout", "10s"), f"{where}.timeout").total_seconds()
    if not 0 < timeout <= 120:
        raise RulesError(f"{where}.timeout: must be between 1s and 120s")
    fmt = _choice(_field(spec, "format", where, str, "json"), FORMATS, f"{where}.format")
    return Sink(name, kind, url, fmt, timeout)


def _rule(index: int, spec: Any, sinks: Mapping[str, Sink], source: str) -> Rule:
    where = f"{source}: rule[{index}]"
    if not isinstance(spec, dict):
        raise RulesError(f"{where}: must be a table")
    allowed = {"name", "on", "sensors", "min_windows", "of_last", "group_by", "snooze",
               "severity", "sinks"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RulesError(f"{where}.{unknown[0]}: unknown field")
    name = _field(spec, "name", where, str, "")
    if not _NAME.match(name):
        raise RulesError(f"{where}.name: {name!r}: a rule needs a name of letters, digits, "
                         "'_', '.', '-'")
    where = f"{source}: rule {name!r}"
    on = _choice(_field(spec, "on", where, str, "anomaly"), WATCHES, f"{where}.on")
    patterns = spec.get("sensors", "*")
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(patterns, list) or not patterns or not all(
            isinstance(p, str) and re.match(r"^[A-Za-z0-9_.*?\[\]!-]+/[A-Za-z0-9_.*?\[\]!-]+$|^\*$", p)
            for p in patterns):
        raise RulesError(f"{where}.sensors: {spec.get('sensors')!r}: patterns such as \"*\", "
                         "\"D1/*\", \"*/temp\"")
    of_last = _field(spec, "of_last", where, int, 1)
    min_windows = _field(spec, "min_windows", where, int, min(1, of_last))
    if not 1 <= of_last <= 60:
        raise RulesError(f"{where}.of_last: {of_last} must be between 1 and 60 windows")
    if not 1 <= min_windows <= of_last:
        raise RulesError(f"{where}.min_windows: {min_windows} must be between 1 and of_last "
                         f"({of_last})")
    rule_sinks = spec.get("sinks")
    if not isinstance(rule_sinks, list) or not rule_sinks or not all(
            isinstance(s, str) for s in rule_sinks):
        raise RulesError(f"{where}.sinks: a list of sink names is needed")
    missing = [s for s in rule_sinks if s not in sinks]
    if missing:
        raise RulesError(f"{where}.sinks: no [sink.{missing[0]}] in the file")
    return Rule(
        name=name, sinks=tuple(rule_sinks), on=on,
        sensors=tuple("*/*" if p == "*" else p for p in patterns),
        min_windows=min_windows, of_last=of_last,
        group_by=_choice(_field(spec, "group_by", where, str, "sensor"), GROUPS,
                         f"{where}.group_by"),
        snooze=parse_duration(spec.get("snooze", 0), f"{where}.snooze"),
        severity=_choice(_field(spec, "severity", where, str, "warning"), SEVERITIES,
                         f"{where}.severity"),
    )
