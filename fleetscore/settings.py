"""Settings, read once from the environment by the entry points and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError

DEFAULT_STORE = "./fleetscore-data"
DEFAULT_INTERVAL_S = 60


@dataclass(frozen=True)
class Settings:
    store: str = DEFAULT_STORE
    interval_s: int = DEFAULT_INTERVAL_S
    backend: str = "local"
    workers: int | None = None
    storage_connection_string: str | None = None
    storage_account_url: str | None = None
    # The orchestration's knobs (the Functions app).
    unit_size: int | None = None
    fanout: int = 200
    poll_seconds: int = 30
    unit_deadline_minutes: int = 120

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            store=env.get("FLEETSCORE_STORE", DEFAULT_STORE),
            interval_s=_int(env, "FLEETSCORE_INTERVAL_SECONDS", DEFAULT_INTERVAL_S),
            backend=env.get("FLEETSCORE_BACKEND", "local"),
            workers=_int(env, "FLEETSCORE_WORKERS", None),
            storage_connection_string=env.get("FLEETSCORE_STORAGE_CONNECTION_STRING") or None,
            storage_account_url=env.get("FLEETSCORE_STORAGE_ACCOUNT_URL") or None,
            unit_size=_int(env, "FLEETSCORE_UNIT_SIZE", None),
            fanout=_int(env, "FLEETSCORE_FANOUT", 200),
            poll_seconds=_int(env, "FLEETSCORE_POLL_SECONDS", 30),
            unit_deadline_minutes=_int(env, "FLEETSCORE_UNIT_DEADLINE_MINUTES", 120),
        )

    def orchestration_input(self, window: str, *, sensors: list[str] | None = None,
                            force: bool = False) -> dict:
        """What a starter hands the orchestrator: it reads no settings of its own."""
        return {"window": window, "sensors": sensors, "force": force, "backend": self.backend,
                "unit_size": self.unit_size, "fanout": self.fanout,
                # Batch takes up to 100 tasks a request; local units are scored one per activity.
                "submit_chunk": 100 if self.backend == "batch" else 1,
                "poll_seconds": self.poll_seconds,
                "unit_deadline_minutes": self.unit_deadline_minutes}


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise UsageError(f"setting {name}={raw!r} is not a whole number") from exc
