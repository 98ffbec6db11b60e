"""The Store protocol: a flat namespace of immutable-looking files addressed by posix paths.

Every pipeline step reads and writes through a Store, so the same code runs on a local
directory and on Azure Blob storage. Writes are whole-object and atomic (a reader sees the old
file or the new one, never a torn one). Races are made safe by conditional operations, each one
atomic on the store's side: ``put(overwrite=False)`` creates only if absent, and
``put(if_match=etag)`` / ``delete(if_match=etag)`` act only if the file is still the version
``get_versioned`` returned (Blob storage: ``If-None-Match: *`` and ``If-Match: <ETag>``; a
directory: a hard link, and a compare-and-swap under an advisory lock).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from fleetscore.errors import NotFound, StoreError

READERS = 16  # concurrent reads on a remote store (each read is a request)


class Store(ABC):
    """What every store does, and the optional capabilities each declares (with defaults that
    work on any store): callers never probe a store for a method."""

    url: str
    # Reads are system calls, not requests: concurrent reads gain nothing (get_many).
    local: bool = False
    # ``list_info`` gives each file's size and a version that changes whenever the file does
    # (an ETag, a modification time); otherwise it gives None for both.
    versioned_listing: bool = False

    @abstractmethod
    def get(self, path: str) -> bytes:
        """The whole file. Raises NotFound."""

    @abstractmethod
    def get_versioned(self, path: str) -> tuple[bytes, str]:
        """The whole file and its version tag (an ETag). Raises NotFound."""

    @abstractmethod
    def put(self, path: str, data: bytes, *, overwrite: bool = True,
            if_match: str | None = None) -> None:
        """Write atomically. With ``overwrite=False`` raise AlreadyExists if the path exists;
        with ``if_match`` raise Conflict unless the file exists at that version."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Paths under ``prefix`` (a folder, with or without the trailing '/'), sorted."""

    @abstractmethod
    def delete(self, path: str, *, if_match: str | None = None) -> None:
        """Remove a file; a missing file is not an error. With ``if_match`` remove it only
        at that version, else raise Conflict (a missing file too)."""

    @abstractmethod
    def open(self, path: str) -> BinaryIO:
        """A seekable reader, so columnar readers fetch only the byte ranges they need."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""

    def list_info(self, prefix: str = "") -> Iterator[tuple[str, int | None, str | None]]:
        """(path, size, version) of the files under ``prefix``, in no particular order;
        size and version are None unless the store declares ``versioned_listing``."""
        for path in self.list(prefix):
            yield path, None, None

    def copy(self, source: str, target: str) -> None:
        """Make ``target`` the same bytes as ``source`` (a store may do it without moving the
        bytes: a hard link on a directory)."""
        self.put(target, self.get(source))

    def remove_if_empty(self) -> bool:
        """Remove the store itself if it holds nothing but its own bookkeeping (a store a
        failed command created); True if it was removed."""
        return False


def get_many(store: Store, paths: Sequence[str], *,
             missing_ok: bool = False) -> list[bytes | None]:
    """The files' contents, in order: one after the other on a directory (reads there are
    CPU-bound under the GIL), READERS at a time elsewhere (each read is a request). A missing
    file raises NotFound, or is None with ``missing_ok``."""
    def get(path: str) -> bytes | None:
        try:
            return store.get(path)
        except NotFound:
            if missing_ok:
                return None
            raise

    if store.local or len(paths) <= 1:
        return [get(p) for p in paths]
    with ThreadPoolExecutor(min(READERS, len(paths))) as pool:
        return list(pool.map(get, paths))


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
