"""Stores: where windows, models, predictions, runs, arrivals and logs live.

``open_store(spec)`` builds one from a spec string: a directory path (the default), or
``az://CONTAINER`` for Azure Blob storage with credentials from the settings. The Azure SDK is
imported only when a blob store is asked for.
"""

from __future__ import annotations

from fleetscore.errors import UsageError
from fleetscore.settings import Settings
from fleetscore.storage.base import Store, check_path
from fleetscore.storage.local import LocalStore

__all__ = ["Store", "LocalStore", "open_store", "check_path"]

BLOB_SCHEME = "az://"


def open_store(spec: str, settings: Settings | None = None, *, create: bool = False) -> Store:
    """Open the store at ``spec``. Without ``create`` a store that does not exist is refused
    (UsageError: a mistyped path must never look like an empty store)."""
    if spec.startswith(BLOB_SCHEME):
        settings = settings or Settings.from_env()
        container = spec[len(BLOB_SCHEME) :].strip("/")
        if not container or "/" in container:
            raise UsageError(f"invalid blob store {spec!r}: expected az://CONTAINER")
        try:
            from fleetscore.storage.blob import BlobStore
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise UsageError(
                "the Azure Blob store needs the azure extra: pip install 'fleetscore[azure]'"
            ) from exc
        return BlobStore(
            container,
            connection_string=settings.storage_connection_string,
            account_url=settings.storage_account_url,
            retries=settings.storage_retries,
            create=create,
        )
    if "://" in spec:
        raise UsageError(f"unknown store {spec!r}: use a directory or az://CONTAINER")
    return LocalStore(spec, create=create)
