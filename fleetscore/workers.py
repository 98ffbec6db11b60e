"""What every worker process of a local pool starts with: one-threaded BLAS and its own store.

A worker fits or scores many small models, one after another: BLAS threads would only fight
the other workers for the cores. Each worker opens its own store client (clients are not
shared across processes)."""

from __future__ import annotations

import os

from .settings import Settings
from .stores import Store, open_store

_store: Store | None = None


def init_worker(spec: str, settings: Settings) -> None:
    global _store
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _store = open_store(spec, settings)


def worker_store() -> Store:
    assert _store is not None, "init_worker did not run in this process"
    return _store
