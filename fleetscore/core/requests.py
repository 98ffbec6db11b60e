"""Validation of run requests (the HTTP API's body), pure and strict.

Everything that is not exactly right is refused with a message that names the field, before
anything is started: unknown fields, bad hours, reversed or too long ranges, hours that have
not ended, bad sensor ids, too many sensors, a body that is too large, nested too deeply
or not a JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensors import Sensor
from fleetscore.errors import InputError, UsageError

MAX_BODY_BYTES = 256 * 1024
MAX_RANGE_HOURS = 168
MAX_SENSORS = 10_000
FIELDS = frozenset({"window", "from", "to", "sensors", "force"})


class RequestError(InputError):
    """A malformed run request (HTTP 400)."""


@dataclass(frozen=True)
class RunRequest:
    hours: tuple[Hour, ...]
    sensors: tuple[Sensor, ...] | None = None
    force: bool = False


def parse_run_request(body: bytes, now: datetime) -> RunRequest:
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"the body is larger than {MAX_BODY_BYTES // 1024} KiB")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not JSON: {exc}") from exc
    except RecursionError as exc:
        # json.loads recurses once per array or object level: '[' * 200000 exhausts the
        # interpreter's recursion limit. A request never nests more than two levels.
        raise RequestError("the body is nested too deeply to be a run request") from exc
    if not isinstance(data, dict):
        raise RequestError('expected a JSON object such as {"window": "2024-03-01T13"}')
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise RequestError(f"unknown fields {unknown}: expected {sorted(FIELDS)}")
    hours = _hours(data, now)
    sensors = _sensors(data.get("sensors"))
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise RequestError('"force" must be true or false')
    return RunRequest(tuple(hours), sensors, force)


def _hour(value: object, field: str) -> Hour:
    if not isinstance(value, str):
        raise RequestError(f'"{field}" must be a string YYYY-MM-DDTHH')
    try:
        return Hour.parse(value)
    except UsageError as exc:
        raise RequestError(f'"{field}": {exc}') from exc


def _hours(data: dict[str, object], now: datetime) -> list[Hour]:
    has_window = "window" in data
    has_range = "from" in data or "to" in data
    if has_window == has_range:
        raise RequestError('give either "window" or both "from" and "to"')
    if has_window:
        hours = [_hour(data["window"], "window")]
    else:
        if "from" not in data or "to" not in data:
            raise RequestError('"from" and "to" go together')
        first, last = _hour(data["from"], "from"), _hour(data["to"], "to")
        if last < first:
            raise RequestError(f'the range {first} .. {last} is reversed')
        if last.index - first.index + 1 > MAX_RANGE_HOURS:
            raise RequestError(f"the range is longer than {MAX_RANGE_HOURS} hours")
        hours = hour_range(first, last)
    current = Hour.from_datetime(now)
    late = [h for h in hours if h >= current]
    if late:
        raise RequestError(f"hour {late[0]} has not ended yet (now is {now:%Y-%m-%dT%H:%M}Z)")
    return hours


def _sensors(value: object) -> tuple[Sensor, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise RequestError('"sensors" must be a non-empty list of "Device/Tag" strings')
    if len(value) > MAX_SENSORS:
        raise RequestError(f'"sensors" has {len(value)} entries; at most {MAX_SENSORS}')
    out = []
    for item in value:
        if not isinstance(item, str):
            raise RequestError('"sensors" must hold "Device/Tag" strings')
        try:
            out.append(Sensor.parse(item))
        except InputError as exc:
            raise RequestError(f'"sensors": {exc}') from exc
    return tuple(sorted(set(out)))
