"""Settings, read once from the environment by the entry points and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fleetscore.errors import UsageError

DEFAULT_STORE = "./fleetscore-data"
DEFAULT_INTERVAL_S = 60
REFIT_SCHEDULE = "FLEETSCORE_REFIT_SCHEDULE"


def refit_schedule(env: Mapping[str, str] | None = None) -> str | None:
    """The refit timer's NCRONTAB schedule, or None: absent or empty, the timer is off. Read
    alone (not through Settings) by function_app.py, which registers the timer only when it is
    set: a timer whose %SETTING% schedule does not resolve fails the host's indexing."""
    env = os.environ if env is None else env
    return (env.get(REFIT_SCHEDULE) or "").strip() or None


@dataclass(frozen=True)
class BatchSettings:
    """Azure Batch: where units run when ``backend`` is ``batch``."""

    endpoint: str | None = None  # https://ACCOUNT.REGION.batch.azure.com
    account_name: str | None = None  # shared key, for development accounts only
    account_key: str | None = field(default=None, repr=False)  # never in logs
    pool_id: str = "fleetscore"
    vm_size: str = "Standard_D2s_v5"
    max_nodes: int = 10
    tasks_per_node: int = 2  # one single-threaded unit per core
    spot: bool = False
    image: str = "fleetscore-scoring:latest"  # REGISTRY/fleetscore-scoring:VERSION
    registry: str | None = None  # REGISTRY.azurecr.io, pulled with the identity below
    identity_resource_id: str | None = None  # the pool's user-assigned identity
    identity_client_id: str | None = None  # the same identity, for DefaultAzureCredential in tasks
    logs_container_url: str | None = None  # https://ACCOUNT.blob.core.windows.net/CONTAINER
    task_timeout_minutes: int = 60
    task_retries: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchSettings:
        def text(name: str) -> str | None:
            return env.get(f"FLEETSCORE_BATCH_{name}") or None

        return cls(
            endpoint=text("ENDPOINT"), account_name=text("ACCOUNT_NAME"),
            account_key=text("ACCOUNT_KEY"), pool_id=text("POOL_ID") or "fleetscore",
            vm_size=text("VM_SIZE") or "Standard_D2s_v5",
            max_nodes=_int(env, "FLEETSCORE_BATCH_MAX_NODES", 10),
            tasks_per_node=_int(env, "FLEETSCORE_BATCH_TASKS_PER_NODE", 2),
            spot=(text("SPOT") or "false").lower() in ("1", "true", "yes"),
            image=text("IMAGE") or "fleetscore-scoring:latest", registry=text("REGISTRY"),
            identity_resource_id=text("IDENTITY_RESOURCE_ID"),
            identity_client_id=text("IDENTITY_CLIENT_ID"),
            logs_container_url=text("LOGS_CONTAINER_URL"),
            task_timeout_minutes=_int(env, "FLEETSCORE_BATCH_TASK_TIMEOUT_MINUTES", 60),
            task_retries=_int(env, "FLEETSCORE_BATCH_TASK_RETRIES", 2),
        )


@dataclass(frozen=True)
class Settings:
    store: str = DEFAULT_STORE
    interval_s: int = DEFAULT_INTERVAL_S
    backend: str = "local"
    workers: int | None = None
    storage_connection_string: str | None = field(default=None, repr=False)  # may hold a key
    storage_account_url: str | None = None
    storage_retries: int = 5
    # The orchestration's knobs (the Functions app).
    unit_size: int | None = None
    fanout: int = 200
    poll_seconds: int = 30
    unit_deadline_minutes: int = 120
    lock_ttl_minutes: int = 15  # the hour lock lapses this long after its last renewal
    predictions_format: str = "csv"  # or parquet
    # More than this share of an hour's sensors failing fails the hour whole (None: no limit).
    max_failed_percent: float | None = None
    batch: BatchSettings = field(default_factory=BatchSettings)
    # The scheduled refit (the Functions app; fleetscore refit's options): off without a schedule.
    refit_schedule: str | None = None
    refit_days: int = 7
    refit_compare_hours: int = 24
    refit_max_anomaly_rate: float | None = None  # the promote gates (None: no gate)
    refit_min_agreement: float | None = None
    refit_review: bool = False  # train and compare, promote nothing
    refit_estimator: str = ""  # the challengers' estimator ("": the default) and features
    refit_features: str = ""

    @property
    def lock_ttl(self) -> timedelta:
        return timedelta(minutes=self.lock_ttl_minutes)

    @property
    def deadline(self) -> timedelta:
        return timedelta(minutes=self.unit_deadline_minutes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            store=env.get("FLEETSCORE_STORE", DEFAULT_STORE),
            interval_s=_int(env, "FLEETSCORE_INTERVAL_SECONDS", DEFAULT_INTERVAL_S),
            backend=env.get("FLEETSCORE_BACKEND", "local"),
            workers=_optional_int(env, "FLEETSCORE_WORKERS"),
            storage_connection_string=env.get("FLEETSCORE_STORAGE_CONNECTION_STRING") or None,
            storage_account_url=env.get("FLEETSCORE_STORAGE_ACCOUNT_URL") or None,
            storage_retries=_int(env, "FLEETSCORE_STORAGE_RETRIES", 5),
            unit_size=_optional_int(env, "FLEETSCORE_UNIT_SIZE"),
            fanout=_int(env, "FLEETSCORE_FANOUT", 200),
            poll_seconds=_int(env, "FLEETSCORE_POLL_SECONDS", 30),
            unit_deadline_minutes=_int(env, "FLEETSCORE_UNIT_DEADLINE_MINUTES", 120),
            lock_ttl_minutes=_int(env, "FLEETSCORE_LOCK_TTL_MINUTES", 15),
            predictions_format=env.get("FLEETSCORE_PREDICTIONS_FORMAT") or "csv",
            max_failed_percent=_percent(env, "FLEETSCORE_MAX_FAILED_PERCENT"),
            batch=BatchSettings.from_env(env),
            refit_schedule=refit_schedule(env),
            refit_days=_int(env, "FLEETSCORE_REFIT_DAYS", 7),
            refit_compare_hours=_int(env, "FLEETSCORE_REFIT_COMPARE_HOURS", 24),
            refit_max_anomaly_rate=_share(env, "FLEETSCORE_REFIT_MAX_ANOMALY_RATE"),
            refit_min_agreement=_share(env, "FLEETSCORE_REFIT_MIN_AGREEMENT"),
            refit_review=(env.get("FLEETSCORE_REFIT_REVIEW") or "false").lower()
            in ("1", "true", "yes"),
            refit_estimator=env.get("FLEETSCORE_REFIT_ESTIMATOR") or "",
            refit_features=env.get("FLEETSCORE_REFIT_FEATURES") or "",
        )
        if settings.lock_ttl_minutes * 60 < 4 * settings.poll_seconds:
            # Status polls renew the lock: it must outlive several of them.
            raise UsageError(f"FLEETSCORE_LOCK_TTL_MINUTES={settings.lock_ttl_minutes} is too "
                             f"short for polls every {settings.poll_seconds} s: give at least "
                             f"{-(-4 * settings.poll_seconds // 60)} minutes")
        return settings

    def orchestration_input(self, window: str, *, sensors: list[str] | None = None,
                            force: bool = False) -> dict[str, Any]:
        """What a starter hands the orchestrator: it reads no settings of its own."""
        return {"window": window, "sensors": sensors, "force": force, "backend": self.backend,
                "unit_size": self.unit_size, "fanout": self.fanout,
                # Batch takes up to 100 tasks a request; local units are scored one per activity.
                "submit_chunk": 100 if self.backend == "batch" else 1,
                "poll_seconds": self.poll_seconds,
                "unit_deadline_minutes": self.unit_deadline_minutes}


    def refit_input(self) -> dict[str, Any]:
        """What the refit timer hands the refit orchestrator (which reads no settings)."""
        return {"options": {"days": self.refit_days, "compare_hours": self.refit_compare_hours,
                            "max_anomaly_rate": self.refit_max_anomaly_rate,
                            "min_agreement": self.refit_min_agreement,
                            "review": self.refit_review, "features": self.refit_features,
                            **({"estimator": self.refit_estimator} if self.refit_estimator
                               else {})},
                "backend": self.backend, "poll_seconds": self.poll_seconds,
                "deadline_minutes": self.unit_deadline_minutes,
                # One group a task slot of the pool; trained inline, one group is enough.
                "max_groups": self.batch.max_nodes * self.batch.tasks_per_node
                if self.backend == "batch" else 1}


def _share(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise UsageError(f"setting {name}={raw!r} is not a share between 0 and 1")
    return value


def _percent(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise UsageError(f"setting {name}={raw!r} is not a percentage between 0 and 100")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    found = _optional_int(env, name)
    return default if found is None else found


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise UsageError(f"setting {name}={raw!r} is not a whole number") from exc
