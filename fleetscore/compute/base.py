"""The ComputeBackend base class: where units run.

A backend only has to submit units, report their states and cancel the ones a run gives up
on. A run (one hour, one attempt) is named by ``run_id``, so a rerun never mistakes the last
run's tasks for its own. The unit itself always runs the engine's ``run_unit``
(``fleetscore.runs.lifecycle.run_unit``: load the unit's sensor list, ``score_unit`` into the run's
staging, write the unit result), whether in a local process, in this process, or in a
container on Azure Batch. A backend never imports the engine that drives it: it is handed the
engine's callables (``Engine``, built in ``fleetscore.runs.engine``), as concurrent.futures'
executors are handed the callables they run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fleetscore.contracts import FAILED, PARTIAL, PENDING, RUNNING, SUCCEEDED, TERMINAL  # noqa: F401
from fleetscore.core.hours import Hour
from fleetscore.errors import BackendError
from fleetscore.scoring.planning import Unit
from fleetscore.scoring.score import UnitResult
from fleetscore.storage import Store


@dataclass(frozen=True)
class UnitStatus:
    state: str
    result: UnitResult | None = None
    error_kind: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Engine:
    """What a backend runs, handed to it by whoever builds it (module-level functions, so a
    process pool pickles them by reference)."""

    run_unit: Callable[[Store, Hour, str, str], UnitResult]
    read_unit_result: Callable[[Store, Hour, str, str], UnitResult | None]
    run_span: Callable[[Store, Sequence[Hour], Any], list[dict]]  # a backfill's span


class ComputeBackend(ABC):
    """Submit, poll, cancel; every optional capability is declared here with its default."""

    name: str
    inline: bool = False  # submit runs the units before it returns
    waits: bool = False  # poll blocks until a unit ends (or its timeout): no sleep between polls
    workers: int = 1  # units (or spans) it runs at once
    spans: bool = False  # runs a backfill's spans (submit_span)
    trains: bool = False  # trains a refit's groups as tasks (submit_training): Batch

    @abstractmethod
    def submit(self, window: Hour, units: Sequence[Unit], *, run_id: str = "") -> None:
        """Start units. Submitting a unit again in the same run is harmless (same task)."""

    @abstractmethod
    def poll(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "",
             timeout: float = 1.0) -> dict[str, UnitStatus]:
        """States of the units, waiting up to ``timeout`` seconds for one of them to change."""

    @abstractmethod
    def cancel(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "") -> None:
        """Stop units the run gave up on (past the deadline). Whatever they still write stays
        in the run's staging and is never promoted."""

    @abstractmethod
    def finish(self, window: Hour, *, run_id: str = "") -> None:
        """Every unit of the run is submitted and done: release what the run holds."""

    @abstractmethod
    def close(self) -> None:
        """Stop workers and release clients. Idempotent."""

    def start(self) -> None:
        """Get ready (start workers) while the hour is planned; nothing by default."""

    def submit_span(self, hours: Sequence[Hour], job: Any) -> Future:
        """Run a backfill's span of hours (only where ``spans`` is declared)."""
        raise BackendError(f"the {self.name} backend runs no backfill spans")

    def reset_spans(self) -> None:
        """Stop every span (a broken pool, or spans past their deadline)."""

    def submit_training(self, refit_id: str, groups: Sequence[str]) -> None:
        """Start one task a group of refit ``refit_id`` (only where ``trains`` is declared;
        elsewhere the caller trains the groups itself). Submitting a group again is harmless."""
        raise BackendError(f"the {self.name} backend trains no refit groups")

    def poll_training(self, refit_id: str, groups: Sequence[str]) -> dict[str, UnitStatus]:
        """The groups' task states: pending, running, succeeded (the task recorded the
        group's result in the store) or failed with why."""
        raise BackendError(f"the {self.name} backend trains no refit groups")

    def finish_training(self, refit_id: str) -> None:
        """Every group of the refit is submitted and done: release what the refit holds."""
