"""A directory on the local disk: the embedded default store.

Writes go to a temporary file beside the target and are renamed into place, so a reader (or a
run killed mid-write) never sees a torn file. Files are not fsynced one by one: a backfill
writes tens of thousands of small files, and a sync each made it crawl. A power cut (not a
crash of fleetscore) can therefore lose the last seconds of writes, leaving such files empty
or absent; `fleetscore verify` finds them by their recorded sha256, and rerunning or
re-ingesting repairs them. Create-if-absent is a hard link (``link`` fails on an existing name). The
version-conditional operations (``if_match``) compare and swap under an advisory ``flock`` on
one lock file per store: every fleetscore process that shares the directory takes the same
lock, so no two of them can both see the same version and both replace it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import AlreadyExists, Conflict, NotFound, StoreError, UsageError
from .base import check_path, folder

_TMP_PREFIX = ".tmp-"
_CAS_LOCK = ".tmp-cas.lock"  # hidden from listings by its prefix
MARKER = "fleetscore-store.json"
# What a store made by an earlier version holds: any of these makes a directory a store.
_KNOWN = ("windows", "models", "runs", "arrivals", "predictions")


def _umask() -> int:
    # Read once: os.umask can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def version_of(data: bytes) -> str:
    """A local file's version tag: its content hash (the same bytes are the same version)."""
    return hashlib.sha256(data).hexdigest()[:32]


class LocalStore:
    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)
        if not create:
            if not self.root.is_dir() or not (
                    (self.root / MARKER).is_file() or any((self.root / k).is_dir() for k in _KNOWN)):
                raise UsageError(f"no fleetscore store at {self.root} (create one with "
                                 "`fleetscore ingest`, `fleetscore models import` or `fleetscore demo`)")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {self.root}: {exc.strerror}") from exc
        if not (self.root / MARKER).exists():
            self.put(MARKER, b'{"fleetscore": 1}\n')

    def _file(self, path: str) -> Path:
        return self.root / check_path(path)

    def get(self, path: str) -> bytes:
        try:
            return self._file(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path} in store {self.url}: {exc.strerror}") from exc

    def get_versioned(self, path: str) -> tuple[bytes, str]:
        data = self.get(path)
        return data, version_of(data)

    @contextmanager
    def _cas(self) -> Iterator[None]:
        fd = os.open(self.root / _CAS_LOCK, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _current(self, path: str) -> str | None:
        try:
            return version_of(self._file(path).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put(self, path: str, data: bytes, *, overwrite: bool = True,
            if_match: str | None = None) -> None:
        target = self._file(path)
        try:
            try:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
            except FileNotFoundError:  # a new folder: made on demand, not checked on every write
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    os.fchmod(handle.fileno(), _FILE_MODE)  # mkstemp makes 0600: honour the umask
                    handle.write(data)
                if if_match is not None:
                    with self._cas():
                        if self._current(path) != if_match:
                            raise Conflict(f"{path} changed in store {self.url} since it was read")
                        os.replace(tmp, target)
                elif overwrite:
                    os.replace(tmp, target)
                else:
                    # link() fails if the target exists: an atomic create-if-absent.
                    os.link(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except FileExistsError as exc:
            raise AlreadyExists(f"{path} already exists in store {self.url}") from exc
        except OSError as exc:
            raise StoreError(f"cannot write {path} in store {self.url}: {exc.strerror}") from exc

    def exists(self, path: str) -> bool:
        return self._file(path).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / folder(prefix) if prefix.strip("/") else self.root
        if prefix.strip("/"):
            check_path(prefix.strip("/"))
        if not base.is_dir():
            return iter(())
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    found.append(name if rel == "." else f"{rel}/{name}")
        return iter(sorted(found))

    def list_info(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(path, size, version) of the files under ``prefix``; the version is the
        modification time in nanoseconds (cheap: no file is read). Optional in the protocol."""
        out = []
        for path in self.list(prefix):
            try:
                st = self._file(path).stat()
            except FileNotFoundError:
                continue
            out.append((path, st.st_size, str(st.st_mtime_ns)))
        return iter(out)

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        target = self._file(path)
        try:
            if if_match is None:
                target.unlink(missing_ok=True)
                return
            with self._cas():
                if self._current(path) != if_match:
                    raise Conflict(f"{path} changed in store {self.url} since it was read")
                target.unlink()
        except OSError as exc:
            raise StoreError(f"cannot delete {path} in store {self.url}: {exc.strerror}") from exc

    def open(self, path: str) -> BinaryIO:
        try:
            return open(self._file(path), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"
