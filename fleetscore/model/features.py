"""Derived features: what a model sees besides a window's value (``train --features diff,hour``).

A model trained with features is fitted on a matrix whose first column is the window's value
and whose next columns are the named features, in the order named. The names are stored with
the model version (``Version.features``, the champion's manifest, the challenger's pointer),
so scoring builds the same matrix for the same model, whatever it is scored by.

- ``diff``: the value minus the sensor's previous window's value, when that window ended at
  most ``DIFF_GAP_MS`` before this one; 0 otherwise (the first point of a history, or after a
  gap). Because the gap is at most an hour, a point's previous window is in its own hour or
  the hour before: scoring an hour reads the previous hour's last point of each featured
  sensor (``previous``) and gets exactly what training computed on the whole history.
- ``hour``: the hour of day (UTC, 0..23) the window belongs to (``(End - 1 ms) // 1 h``, the
  hour its points are filed under).

Pure functions of ends, values and the previous point: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetscore.core.hours import MS_PER_HOUR
from fleetscore.errors import UsageError

NAMES = ("diff", "hour")
DIFF_GAP_MS = MS_PER_HOUR
Previous = tuple[int, float] | None  # the window end (ms) and value just before the points


@dataclass(frozen=True, eq=False)
class Detector:
    """A fitted estimator and the derived features it was fitted on (after the value)."""

    estimator: Any
    features: tuple[str, ...] = ()

    def inputs(self, ends_ms: np.ndarray, values: np.ndarray,
               previous: Previous = None) -> np.ndarray:
        return matrix(self.features, ends_ms, values, previous)


def parse(text: str | None) -> tuple[str, ...]:
    """``"diff,hour"`` -> ("diff", "hour"); "" or None -> (); an unknown or repeated name is
    a UsageError naming it."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in NAMES:
            raise UsageError(f"--features {text}: unknown feature {name!r} (expected some of "
                             f"{', '.join(NAMES)})")
    if len(set(names)) != len(names):
        raise UsageError(f"--features {text}: a feature is named twice")
    return names


def width(names: Sequence[str]) -> int:
    """How many columns a model with these features is fitted on."""
    return 1 + len(names)


def matrix(names: Sequence[str], ends_ms: np.ndarray, values: np.ndarray,
           previous: Previous = None) -> np.ndarray:
    """The model's input for a sensor's points (``ends_ms`` ascending): the values, then
    each named feature; ``previous``: the sensor's last point before these, if any."""
    values = np.asarray(values, dtype=np.float64)
    columns = [values]
    for name in names:
        if name == "diff":
            columns.append(diff(ends_ms, values, previous))
        elif name == "hour":
            columns.append(hour_of_day(ends_ms))
        else:
            raise ValueError(f"unknown feature {name!r}")
    return np.column_stack(columns) if names else values.reshape(-1, 1)


def diff(ends_ms: np.ndarray, values: np.ndarray, previous: Previous = None) -> np.ndarray:
    ends = np.asarray(ends_ms, dtype=np.int64)
    if not len(ends):
        return np.zeros(0)
    before_end = np.empty(len(ends), np.int64)
    before_value = np.empty(len(ends))
    before_end[1:], before_value[1:] = ends[:-1], values[:-1]
    if previous is None:
        # No point before: the first point's difference is 0, as after a gap.
        before_end[0], before_value[0] = ends[0] - DIFF_GAP_MS - 1, values[0]
    else:
        before_end[0], before_value[0] = previous
    near = (ends - before_end) <= DIFF_GAP_MS
    return np.where(near, values - before_value, 0.0)


def hour_of_day(ends_ms: np.ndarray) -> np.ndarray:
    return ((np.asarray(ends_ms, dtype=np.int64) - 1) // MS_PER_HOUR % 24).astype(np.float64)


def label(names: Sequence[str]) -> str:
    """How commands print a model's features: ``value+diff+hour``, or ``value``."""
    return "+".join(("value", *names))


def described(estimator: str, names: Sequence[str]) -> str:
    """An estimator's description with the features it sees, when it sees more than the value."""
    return f"{estimator} on {label(names)}" if names else estimator
