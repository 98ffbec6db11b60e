"""Process-wide clients for the Functions app: settings read once, one store, one backend.

Activities and triggers run many times in one worker process; building clients once per
process (not once per call) keeps connections pooled and settings consistent.
"""

from __future__ import annotations

import functools

from fleetscore.compute.base import ComputeBackend
from fleetscore.runs.engine import ENGINE
from fleetscore.settings import Settings
from fleetscore.storage import Store, open_store


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def store() -> Store:
    return open_store(settings().store, settings(), create=True)  # the app owns its container


@functools.cache
def backend() -> ComputeBackend:
    """The `local` setting scores a unit inside its submit activity (the sequential backend)."""
    name = settings().backend
    if name in ("local", "sequential"):
        from fleetscore.compute.local import SequentialBackend

        return SequentialBackend(store(), ENGINE)
    from fleetscore.compute import load_backend

    return load_backend(name, store(), store_spec=settings().store, settings=settings(),
                        engine=ENGINE)


def reset() -> None:
    """Close and forget the clients (tests change the environment between cases)."""
    if backend.cache_info().currsize:
        backend().close()
    if store.cache_info().currsize:
        store().close()
    for cached in (backend, store, settings):
        cached.cache_clear()
