"""The hour lock: at most one run of an hour is inside at any moment, and nobody can steal it.

The lock is one small file, ``runs/HOUR.lock``, naming its holder (the run id, and for a CLI
run the host and pid) and an expiry. Each step is one atomic conditional operation on the
store, so two takers can interleave anywhere and never both get in:

- acquire: create-if-absent (``put(overwrite=False)``);
- take over a stale lock (expired, or its holder's process is gone): replace it *only at the
  version that was read* (``put(if_match=etag)``), so of two takers that both saw it stale,
  one wins and the other sees a fresh lock;
- renew (while the run lives: every status poll) and release: the same version-conditional
  put and delete, and only when the lock names this run, so an expired run never extends or
  deletes the lock of the run that took over.

The holder is a run id, not a process: the Durable orchestration takes the lock in its plan
activity and releases it in its finalize activity, whichever workers run them.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleetscore.core.hours import Hour
from fleetscore.errors import AlreadyExists, AlreadyRunning, Conflict, LockLost, NotFound
from fleetscore.storage import Store

LOCK_TTL = timedelta(minutes=15)
_ATTEMPTS = 4


def lock_path(hour: Hour) -> str:
    return f"runs/{hour}.lock"


@dataclass(frozen=True)
class Holder:
    run_id: str
    expires: datetime | None
    started: str = ""
    host: str | None = None
    pid: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> Holder:
        try:
            body = json.loads(data)
            expires = datetime.fromisoformat(body["expires"])
        except (ValueError, KeyError, TypeError):
            return cls(run_id="", expires=None)  # unreadable: stale
        pid = body.get("pid")
        return cls(run_id=str(body.get("run_id", "")), expires=expires,
                   started=str(body.get("started", "")), host=body.get("host"),
                   pid=int(pid) if isinstance(pid, int) else None)

    def alive(self, now: datetime) -> bool:
        if self.expires is None or self.expires <= now:
            return False
        if self.pid is not None and self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False  # a CLI run killed with SIGKILL: its lock is stale at once
            except PermissionError:
                return True
        return True

    def describe(self) -> str:
        who = f"{self.host} (pid {self.pid})" if self.pid is not None else f"run {self.run_id}"
        return f"{who}, since {self.started}"


def _body(run_id: str, now: datetime, ttl: timedelta, pid: int | None, started: str) -> bytes:
    body = {"run_id": run_id, "started": started or now.isoformat(timespec="seconds"),
            "expires": (now + ttl).isoformat(timespec="microseconds"),
            "host": socket.gethostname(), "pid": pid}
    return json.dumps(body).encode()


def acquire(store: Store, hour: Hour, run_id: str, *, now: datetime, ttl: timedelta = LOCK_TTL,
            pid: int | None = None) -> None:
    """Take the hour for ``run_id`` (again, harmlessly, if it already holds it).

    ``pid``: the holding process, for a run tied to one process (the CLI), so a lock left by a
    killed process is taken over at once rather than at its expiry."""
    path = lock_path(hour)
    body = _body(run_id, now, ttl, pid, "")
    for _ in range(_ATTEMPTS):
        try:
            store.put(path, body, overwrite=False)
            return
        except AlreadyExists:
            pass
        try:
            data, etag = store.get_versioned(path)
        except NotFound:
            continue  # released meanwhile: try to create it again
        held = Holder.parse(data)
        if held.run_id == run_id:
            renew(store, hour, run_id, now=now, ttl=ttl)
            return
        if held.alive(now):
            raise AlreadyRunning(f"{hour} is already being scored by {held.describe()}; "
                                 "try again when it ends")
        try:
            store.put(path, body, if_match=etag)  # take over the stale lock at the version seen
            return
        except Conflict:
            continue  # another taker changed it first: look again
    raise AlreadyRunning(f"{hour}: another run took the lock at the same moment")


def renew(store: Store, hour: Hour, run_id: str, *, now: datetime,
          ttl: timedelta = LOCK_TTL) -> None:
    """Check that this run holds the lock and extend it; LockLost if another run holds it now
    (this run must stop). A lock with more than half its time left is only read: hundreds of
    sub-orchestrations polling the same hour must not all rewrite one blob."""
    path = lock_path(hour)
    for _ in range(_ATTEMPTS):
        try:
            data, etag = store.get_versioned(path)
        except NotFound as exc:
            raise LockLost(f"{hour}: run {run_id} no longer holds the hour's lock "
                           "(it was released or removed)") from exc
        held = Holder.parse(data)
        if held.run_id != run_id:
            raise LockLost(f"{hour}: run {run_id} lost the hour's lock to {held.describe()}")
        if held.expires is not None and held.expires - now > ttl / 2:
            return
        try:
            store.put(path, _body(run_id, now, ttl, held.pid, held.started), if_match=etag)
            return
        except Conflict:
            continue  # a sibling status poll of the same run renewed it: read it again
    raise LockLost(f"{hour}: run {run_id} could not renew the hour's lock")


def release(store: Store, hour: Hour, run_id: str) -> None:
    """Remove this run's lock; a lock held by another run is left alone."""
    path = lock_path(hour)
    for _ in range(_ATTEMPTS):
        try:
            data, etag = store.get_versioned(path)
        except NotFound:
            return
        if Holder.parse(data).run_id != run_id:
            return
        try:
            store.delete(path, if_match=etag)
            return
        except Conflict:
            continue


def holds(store: Store, hour: Hour, run_id: str) -> bool:
    try:
        return Holder.parse(store.get(lock_path(hour))).run_id == run_id
    except NotFound:
        return False
