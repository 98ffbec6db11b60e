"""Compute backends, loaded by name so local mode never imports a cloud SDK."""

from __future__ import annotations

from ..errors import UsageError
from ..settings import Settings
from ..stores import Store
from .base import ComputeBackend, UnitStatus

__all__ = ["ComputeBackend", "UnitStatus", "load_backend", "BACKENDS"]

BACKENDS = ("local", "sequential", "batch")


def load_backend(name: str, store: Store, *, store_spec: str, settings: Settings,
                 workers: int | None = None) -> ComputeBackend:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(store_spec, settings, workers)
    if name == "sequential":
        from .local import SequentialBackend

        return SequentialBackend(store)
    if name == "batch":
        try:
            from .batch import BatchBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UsageError("the batch backend needs azure-batch: "
                             "pip install 'fleetscore[functions]'") from exc
        return BatchBackend(store, store_spec, settings)
    raise UsageError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
