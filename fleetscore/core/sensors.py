"""Sensor identity: a (Device, Tag) pair of safe identifiers.

Ids become parts of file and blob paths, so they are validated before any path is built.
"""

from __future__ import annotations

import functools
import itertools
import operator
import re
from collections.abc import Iterable, Sequence

from fleetscore.errors import InvalidIdError

ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_ID_RE = re.compile(rf"\A{ID_PATTERN}\Z")
# Matched by the regex but meaningful to every filesystem and to blob path normalisation.
_RESERVED = frozenset({".", ".."})


@functools.lru_cache(maxsize=1 << 18)
def _valid(value: str) -> bool:
    return bool(_ID_RE.match(value)) and value not in _RESERVED


def is_valid_id(value: str) -> bool:
    # Cached: a fleet's ids recur in every hour, plan and listing (a device has many tags).
    return isinstance(value, str) and _valid(value)


def validate_id(value: str, what: str = "id") -> str:
    if not is_valid_id(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidIdError(
            f"invalid {what} {shown!r}: expected 1-64 characters from A-Z a-z 0-9 _ . - "
            "(and not '.' or '..')"
        )
    return value


class Sensor(tuple[str, str]):
    """A (device, tag) pair. A tuple underneath: hashing, equality and ordering (by device,
    then tag) run in C, which sets and sorts of a whole fleet's sensors feel."""

    __slots__ = ()

    def __new__(cls, device: str, tag: str) -> Sensor:
        if not (is_valid_id(device) and is_valid_id(tag)):
            validate_id(device, "Device")
            validate_id(tag, "Tag")
        return tuple.__new__(cls, (device, tag))

    device = property(operator.itemgetter(0))
    tag = property(operator.itemgetter(1))

    def __getnewargs__(self) -> tuple[str, str]:
        return self[0], self[1]

    def __repr__(self) -> str:
        return f"Sensor(device={self[0]!r}, tag={self[1]!r})"

    def __str__(self) -> str:
        return f"{self.device}/{self.tag}"

    @property
    def path(self) -> str:
        """Relative path fragment: two components, so '_' in ids never makes names ambiguous."""
        return f"{self.device}/{self.tag}"

    @classmethod
    def unchecked(cls, device: str, tag: str) -> Sensor:
        """For ids already validated in bulk (a whole column at once): skips the per-object check."""
        return tuple.__new__(cls, (device, tag))

    @classmethod
    def parse(cls, text: str) -> Sensor:
        """Parse 'Device/Tag' (the form used in messages, plans and the HTTP API)."""
        device, sep, tag = text.partition("/")
        if not sep:
            raise InvalidIdError(f"invalid sensor {text!r}: expected Device/Tag")
        return cls(device, tag)

    def to_json(self) -> list[str]:
        return [self.device, self.tag]

    @classmethod
    def from_json(cls, value: list[str] | tuple[str, str]) -> Sensor:
        device, tag = value
        return cls(device, tag)


def sensors_of(pairs: Iterable[tuple[str, str]]) -> list[Sensor]:
    """Sensors of many (device, tag) pairs, each distinct id checked once (a fleet has far
    fewer devices and tags than sensors). Raises InvalidIdError like Sensor()."""
    pairs = list(pairs)
    if not pairs:
        return []
    devices, tags = zip(*pairs, strict=True)
    return sensor_columns(devices, tags)


def sensor_columns(devices: Sequence[str], tags: Sequence[str]) -> list[Sensor]:
    """``sensors_of`` for ids given as two columns."""
    for device in set(devices):
        if not is_valid_id(device):
            validate_id(device, "Device")
    for tag in set(tags):
        if not is_valid_id(tag):
            validate_id(tag, "Tag")
    return list(map(_new_sensor, zip(devices, tags, strict=True)))


def parse_sensors(texts: Iterable[str]) -> list[Sensor]:
    """``Sensor.parse`` of many 'Device/Tag' texts (a unit's list), checked in one pass over
    all of them; the first bad one raises as Sensor.parse would."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = list(texts)
    column = pa.array(texts, pa.string())
    shaped = pc.match_substring_regex(column, rf"^{ID_PATTERN}/{ID_PATTERN}$")
    reserved = pc.match_substring_regex(column, r"^\.\.?/|/\.\.?$")
    if not pc.all(pc.and_(shaped, pc.invert(reserved))).as_py():
        return [Sensor.parse(text) for text in texts]  # raises for the first bad one
    return list(map(_new_sensor, map(str.split, texts, itertools.repeat("/", len(texts)))))


def sorted_unique(sensors: Iterable[Sensor]) -> list[Sensor]:
    """Sorted, each once: linear for a list already so (a plan's units are)."""
    out = sorted(sensors)
    if len(set(out)) != len(out):
        out = sorted(set(out))
    return out


_new_sensor = functools.partial(tuple.__new__, Sensor)  # for ids already checked
