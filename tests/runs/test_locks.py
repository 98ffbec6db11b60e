"""The hour lock: two takers interleaved at every step never both get in (on every store)."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from fleetscore.core.hours import Hour
from fleetscore.errors import AlreadyRunning, LockLost
from fleetscore.runs import locks

reliability = pytest.mark.reliability
HOUR = Hour.parse("2024-03-01T01")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(minutes=15)


class Interleaver:
    """A store that, just before its ``at``-th operation, runs ``other`` to its end: every
    point where a second taker can slip in between two steps of the first."""

    OPS = ("get", "get_versioned", "put", "delete", "exists")

    def __init__(self, store, at: int, other) -> None:
        self._store, self._at, self._other = store, at, other
        self.url = store.url
        self.calls = 0
        self.fired = False

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if name not in self.OPS:
            return target

        def call(*args, **kwargs):
            if self.calls == self._at and not self.fired:
                self.fired = True
                self._other()
            self.calls += 1
            return target(*args, **kwargs)

        return call


def _take(store, run_id: str, now: datetime) -> bool:
    try:
        locks.acquire(store, HOUR, run_id, now=now, ttl=TTL)
        return True
    except AlreadyRunning:
        return False


def _stale_lock(store) -> None:
    body = {"run_id": "dead", "started": "2025-12-31T00:00:00+00:00",
            "expires": (NOW - timedelta(minutes=1)).isoformat(), "host": "elsewhere", "pid": None}
    store.put(locks.lock_path(HOUR), json.dumps(body).encode())


@reliability("R18")
@pytest.mark.parametrize("start", ["free", "stale"])
def test_two_takers_interleaved_at_every_step_never_both_get_in(store, start):
    step = 0
    while True:
        store.delete(locks.lock_path(HOUR))
        if start == "stale":
            _stale_lock(store)
        inside = {}

        def second():
            inside["B"] = _take(store, "B", NOW)  # noqa: B023 - called in this iteration

        wrapped = Interleaver(store, step, second)
        inside["A"] = _take(wrapped, "A", NOW)
        if not wrapped.fired:
            break  # A finished in fewer steps: every interleaving was tried
        assert sum(inside.values()) == 1, (start, step, inside)
        holder = json.loads(store.get(locks.lock_path(HOUR)))["run_id"]
        assert inside[holder], (start, step, holder)
        step += 1
    # Free: one create. Stale: a create that fails, a read, a conditional replace.
    assert step == {"free": 1, "stale": 3}[start]


@reliability("R18")
def test_a_live_lock_is_not_taken_and_an_expired_one_is(local_store):
    locks.acquire(local_store, HOUR, "A", now=NOW, ttl=TTL)
    with pytest.raises(AlreadyRunning, match="run A"):
        locks.acquire(local_store, HOUR, "B", now=NOW + TTL - timedelta(seconds=1), ttl=TTL)
    locks.acquire(local_store, HOUR, "B", now=NOW + TTL + timedelta(seconds=1), ttl=TTL)
    assert locks.holds(local_store, HOUR, "B")


@reliability("R18")
def test_only_the_holder_renews_or_releases(store):
    locks.acquire(store, HOUR, "A", now=NOW, ttl=TTL)
    later = NOW + 2 * TTL  # A lapsed; B takes over
    locks.acquire(store, HOUR, "B", now=later, ttl=TTL)
    with pytest.raises(LockLost):
        locks.renew(store, HOUR, "A", now=later, ttl=TTL)
    locks.release(store, HOUR, "A")  # A's exit must not free B's hour
    assert locks.holds(store, HOUR, "B")
    locks.renew(store, HOUR, "B", now=later + TTL / 2, ttl=TTL)
    with pytest.raises(AlreadyRunning):  # renewed: still live past B's first expiry
        locks.acquire(store, HOUR, "C", now=later + TTL + timedelta(seconds=1), ttl=TTL)
    locks.release(store, HOUR, "B")
    assert not store.exists(locks.lock_path(HOUR))


def test_acquire_again_by_the_same_run_is_harmless(store):
    locks.acquire(store, HOUR, "A", now=NOW, ttl=TTL)
    locks.acquire(store, HOUR, "A", now=NOW + timedelta(minutes=1), ttl=TTL)
    assert locks.holds(store, HOUR, "A")


def test_a_lock_of_a_dead_local_process_is_stale_at_once(local_store):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    locks.acquire(local_store, HOUR, "A", now=NOW, ttl=TTL, pid=int(proc.stdout))
    locks.acquire(local_store, HOUR, "B", now=NOW, ttl=TTL)
    assert locks.holds(local_store, HOUR, "B")


def test_renewal_rewrites_the_lock_only_past_half_its_time(local_store):
    locks.acquire(local_store, HOUR, "A", now=NOW, ttl=TTL)
    first = local_store.get_versioned(locks.lock_path(HOUR))[1]
    locks.renew(local_store, HOUR, "A", now=NOW + TTL / 4, ttl=TTL)  # fresh: read only
    assert local_store.get_versioned(locks.lock_path(HOUR))[1] == first
    locks.renew(local_store, HOUR, "A", now=NOW + TTL * 3 / 4, ttl=TTL)  # due: rewritten
    assert local_store.get_versioned(locks.lock_path(HOUR))[1] != first
    with pytest.raises(AlreadyRunning):  # and now live until 3/4 + 1 TTL
        locks.acquire(local_store, HOUR, "B", now=NOW + TTL * 3 / 2, ttl=TTL)
