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
        )


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise UsageError(f"setting {name}={raw!r} is not a whole number") from exc
