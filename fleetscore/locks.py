"""A run lock per hour in the store, so two runs of the same hour never interleave.

The lock is a conditional create (``put(overwrite=False)``: an atomic link locally,
``If-None-Match: *`` on Blob storage). It names its holder (host, pid) and an expiry. A lock
whose holder is gone is stale and taken over: on the same host when the holder's process no
longer exists (a run killed with SIGKILL), anywhere once it has expired.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from .errors import AlreadyExists, AlreadyRunning, NotFound
from .hours import Hour
from .stores import Store

LOCK_TTL = timedelta(hours=2)


def lock_path(hour: Hour) -> str:
    return f"runs/{hour}.lock"


def _holder_alive(body: dict, now: datetime) -> bool:
    try:
        expires = datetime.fromisoformat(body["expires"])
    except (KeyError, TypeError, ValueError):
        return False
    if expires <= now:
        return False
    if body.get("host") == socket.gethostname():
        try:
            os.kill(int(body["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, TypeError, ValueError):
            return True
    return True


@contextmanager
def hour_lock(store: Store, hour: Hour, *, ttl: timedelta = LOCK_TTL) -> Iterator[None]:
    path = lock_path(hour)
    now = datetime.now(UTC)
    body = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": now.isoformat(timespec="seconds"),
            "expires": (now + ttl).isoformat(timespec="seconds")}
    data = json.dumps(body).encode()
    for _ in range(2):
        try:
            store.put(path, data, overwrite=False)
            break
        except AlreadyExists:
            try:
                held = json.loads(store.get(path))
            except NotFound:
                continue  # released meanwhile: try again
            except ValueError:
                held = {}
            if _holder_alive(held, now):
                raise AlreadyRunning(
                    f"{hour} is already being scored by {held.get('host')} (pid {held.get('pid')}, "
                    f"since {held.get('started')}); try again when it ends") from None
            store.delete(path)  # stale: its holder died or it expired
    else:
        raise AlreadyRunning(f"{hour}: another run took the lock at the same moment")
    try:
        yield
    finally:
        store.delete(path)
