"""A Store wrapper that counts what its caller asks of the store: calls, requests and bytes.

Used by ``fleetscore bench --stream-analytics`` and by tests that prove a unit reads only its
own sensors' files and row groups. Every call goes to the wrapped store unchanged. Counts are
kept per *area* (the first component of the path: ``windows``, ``compacted``, ``bank``, ...),
so the window read path can be told apart from models and outputs.

What is a request: one ``get``, ``get_versioned``, ``put``, ``exists``, ``list``, ``delete``;
``open`` (a Blob store asks for the blob's properties) and then every read the file handle
serves from the store. For a Blob store whose handle is a buffer over a raw range reader, the
raw reads are counted (each is one HTTP range request); otherwise each read of the handle is.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from fleetscore.storage.base import Store


def area_of(path: str) -> str:
    return path.strip("/").split("/", 1)[0] or "/"


class Counts:
    """requests[area][op] and bytes_read[area]."""

    def __init__(self) -> None:
        self.requests: dict[str, Counter[str]] = {}
        self.bytes_read: Counter[str] = Counter()
        self.opened: Counter[str] = Counter()  # path -> times opened
        self.read_paths: Counter[str] = Counter()  # path -> bytes read (get or ranges)

    def add(self, path: str, op: str, nbytes: int = 0) -> None:
        area = area_of(path)
        self.requests.setdefault(area, Counter())[op] += 1
        if nbytes:
            self.bytes_read[area] += nbytes
            self.read_paths[path] += nbytes

    def total_requests(self, *areas: str) -> int:
        return sum(sum(c.values()) for a, c in self.requests.items() if not areas or a in areas)

    def total_bytes(self, *areas: str) -> int:
        return sum(n for a, n in self.bytes_read.items() if not areas or a in areas)

    def to_json(self) -> dict[str, Any]:
        return {"requests": {a: dict(c) for a, c in sorted(self.requests.items())},
                "bytes_read": dict(sorted(self.bytes_read.items()))}


class CountingStore(Store):
    """Forwards every Store call to ``inner`` and counts it in ``counts``; declares what the
    inner store declares."""

    def __init__(self, inner: Store, counts: Counts | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.counts = counts or Counts()
        self.local = inner.local
        self.versioned_listing = inner.versioned_listing

    def reset(self) -> Counts:
        """Start new counts; returns the old ones."""
        old, self.counts = self.counts, Counts()
        return old

    def get(self, path: str) -> bytes:
        data = self.inner.get(path)
        self.counts.add(path, "get", len(data))
        return data

    def get_versioned(self, path: str) -> tuple[bytes, str]:
        data, version = self.inner.get_versioned(path)
        self.counts.add(path, "get", len(data))
        return data, version

    def put(self, path: str, data: bytes, *, overwrite: bool = True,
            if_match: str | None = None) -> None:
        self.counts.add(path, "put")
        self.inner.put(path, data, overwrite=overwrite, if_match=if_match)

    def exists(self, path: str) -> bool:
        self.counts.add(path, "exists")
        return self.inner.exists(path)

    def list(self, prefix: str = "") -> Iterator[str]:
        self.counts.add(prefix, "list")
        return self.inner.list(prefix)

    def list_info(self, prefix: str = "") -> Iterator[tuple[str, int | None, str | None]]:
        self.counts.add(prefix, "list")
        return self.inner.list_info(prefix)

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        self.counts.add(path, "delete")
        self.inner.delete(path, if_match=if_match)

    def open(self, path: str) -> BinaryIO:
        handle = self.inner.open(path)
        self.counts.add(path, "open")
        self.counts.opened[path] += 1
        return cast(BinaryIO, _CountingHandle(handle, path, self.counts))

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"CountingStore({self.inner!r})"


class _CountingHandle(io.RawIOBase):
    """Counts the reads a file handle serves from the store (see the module's docstring)."""

    def __init__(self, handle: BinaryIO, path: str, counts: Counts) -> None:
        super().__init__()
        self._inner, self._path, self._counts = handle, path, counts
        raw = getattr(handle, "raw", None)
        self._raw_counted = False
        if raw is not None and type(raw).__module__.startswith("fleetscore."):
            # A buffer over our own range reader: count the range requests it makes.
            original = raw.readinto

            def counted(buffer: Any, _original: Any = original) -> int:
                n: int = _original(buffer)
                if n:
                    self._counts.add(self._path, "range", n)
                return n

            raw.readinto = counted
            self._raw_counted = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def size(self) -> int:
        return self._inner.seek(0, io.SEEK_END)

    def readinto(self, buffer: Any) -> int:
        n: int | None = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        if n and not self._raw_counted:
            self._counts.add(self._path, "range", n)
        return n or 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data and not self._raw_counted:
            self._counts.add(self._path, "range", len(data))
        return data

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()
