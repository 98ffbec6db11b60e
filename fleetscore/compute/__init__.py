"""Compute backends, loaded by name so local mode never imports a cloud SDK."""

from __future__ import annotations

from fleetscore.compute.base import ComputeBackend, Engine, UnitStatus
from fleetscore.errors import UsageError
from fleetscore.settings import Settings
from fleetscore.storage import Store

__all__ = ["ComputeBackend", "Engine", "UnitStatus", "load_backend", "BACKENDS"]

BACKENDS = ("local", "sequential", "batch")


def load_backend(name: str, store: Store, *, store_spec: str, settings: Settings,
                 engine: Engine, workers: int | None = None) -> ComputeBackend:
    """The backend named ``name``, handed the ``engine`` it runs (``fleetscore.runs.engine``)."""
    if name == "local":
        from fleetscore.compute.local import LocalBackend

        return LocalBackend(store_spec, settings, workers, engine=engine)
    if name == "sequential":
        from fleetscore.compute.local import SequentialBackend

        return SequentialBackend(store, engine)
    if name == "batch":
        try:
            from fleetscore.compute.batch import BatchBackend
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UsageError("the batch backend needs azure-batch: "
                             "pip install 'fleetscore[functions]'") from exc
        return BatchBackend(store, store_spec, settings, engine=engine)
    raise UsageError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
