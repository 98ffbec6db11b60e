"""The Store protocol: a flat namespace of immutable-looking files addressed by posix paths.

Every pipeline step reads and writes through a Store, so the same code runs on a local
directory and on Azure Blob storage. Writes are whole-object and atomic (a reader sees the old
file or the new one, never a torn one); ``overwrite=False`` is the conditional put that
makes races safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol, runtime_checkable

from ..errors import StoreError


@runtime_checkable
class Store(Protocol):
    url: str

    def get(self, path: str) -> bytes:
        """The whole file. Raises NotFound."""

    def put(self, path: str, data: bytes, *, overwrite: bool = True) -> None:
        """Write atomically. With ``overwrite=False`` raise AlreadyExists if the path exists."""

    def exists(self, path: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Paths under ``prefix`` (a folder, with or without the trailing '/'), sorted."""

    def delete(self, path: str) -> None:
        """Remove a file; a missing file is not an error."""

    def open(self, path: str) -> BinaryIO:
        """A seekable reader, so columnar readers fetch only the byte ranges they need."""

    def close(self) -> None:
        """Release connections. Idempotent."""


def check_path(path: str) -> str:
    """Refuse paths that could escape the store's root, whatever the backend."""
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise StoreError(f"invalid store path {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise StoreError(f"invalid store path {path!r}")
    return path


def folder(prefix: str) -> str:
    """Normalise a listing prefix to a folder ('' for the root)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""
