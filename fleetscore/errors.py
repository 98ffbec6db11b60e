"""The one error hierarchy of fleetscore.

    FleetscoreError                 every error the product raises on purpose
    ├── UsageError                  bad arguments or settings; nothing was done (exit 2)
    ├── InputError                  an input file or value cannot be used (exit 2)
    │   └── InvalidIdError          a Device or Tag that is not a safe identifier
    ├── ModelError                  a sensor's model is missing, corrupt or refused (exit 2)
    │   ├── ModelNotFound
    │   └── UntrustedModelError     a pickle without --trust-pickle, a skops file with foreign types
    ├── StoreError                  the store failed (I/O, network, permissions) (exit 5)
    │   ├── NotFound                a path that does not exist
    │   └── Conflict                a conditional write or delete lost the race
    │       └── AlreadyExists       a create-if-absent found the path taken
    ├── BackendError                the compute backend failed to run a unit (exit 5)
    ├── AlreadyRunning              another run holds the hour's lock (exit 4)
    │   └── LockLost                the run's lock expired and was taken over (exit 4)
    └── ScoringError                a model could not score its points

SDK and library exceptions are converted where they are caught (``raise X from exc``), so
callers only ever handle these types. ``exit_code`` is what the CLI returns for each.
"""

from __future__ import annotations


class FleetscoreError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 1

    @property
    def kind(self) -> str:
        return type(self).__name__


class UsageError(FleetscoreError):
    exit_code = 2


class InputError(FleetscoreError):
    exit_code = 2


class InvalidIdError(InputError):
    pass


class ModelError(FleetscoreError):
    exit_code = 2  # when it stops a command; in a run it fails its sensor alone


class ModelNotFound(ModelError):
    pass


class UntrustedModelError(ModelError):
    pass


class StoreError(FleetscoreError):
    exit_code = 5


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class AlreadyExists(Conflict):
    pass


class BackendError(FleetscoreError):
    exit_code = 5


class AlreadyRunning(FleetscoreError):
    exit_code = 4


class LockLost(AlreadyRunning):
    pass


class ScoringError(FleetscoreError):
    pass


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (library errors can be multi-line HTTP dumps)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def error_class(kind: str) -> type[FleetscoreError]:
    """The error type named ``kind`` (an error reported across a process boundary by its
    kind), FleetscoreError when none is."""
    stack: list[type[FleetscoreError]] = [FleetscoreError]
    found: dict[str, type[FleetscoreError]] = {}
    while stack:
        cls = stack.pop()
        found.setdefault(cls.__name__, cls)
        stack.extend(cls.__subclasses__())
    return found.get(kind, FleetscoreError)
