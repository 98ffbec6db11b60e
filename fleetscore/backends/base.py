"""The ComputeBackend protocol: where units run.

A backend only has to submit units, report their states and cancel the ones a run gives up
on. A run (one hour, one attempt) is named by ``run_id``, so a rerun never mistakes the last
run's tasks for its own. The unit itself always runs ``fleetscore.runs.run_unit`` (load the
unit's sensor list, ``score_unit`` into the run's staging, write the unit result), whether in
a local process, in this process, or in a container on Azure Batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..hours import Hour
from ..planning import Unit
from ..scoring import UnitResult

PENDING, RUNNING, SUCCEEDED, PARTIAL, FAILED = "pending", "running", "succeeded", "partial", "failed"
TERMINAL = frozenset({SUCCEEDED, PARTIAL, FAILED})


@dataclass(frozen=True)
class UnitStatus:
    state: str
    result: UnitResult | None = None
    error_kind: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@runtime_checkable
class ComputeBackend(Protocol):
    name: str

    def submit(self, window: Hour, units: Sequence[Unit], *, run_id: str = "") -> None:
        """Start units. Submitting a unit again in the same run is harmless (same task)."""

    def poll(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "",
             timeout: float = 1.0) -> dict[str, UnitStatus]:
        """States of the units, waiting up to ``timeout`` seconds for one of them to change."""

    def cancel(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "") -> None:
        """Stop units the run gave up on (past the deadline). Whatever they still write stays
        in the run's staging and is never promoted."""

    def finish(self, window: Hour, *, run_id: str = "") -> None:
        """Every unit of the run is submitted and done: release what the run holds."""

    def close(self) -> None:
        """Stop workers and release clients. Idempotent."""
