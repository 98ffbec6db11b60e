"""A directory on the local disk: the embedded default store.

Writes go to a temporary file beside the target and are renamed into place, so a reader (or a
run killed mid-write) never sees a torn file. Files are not fsynced one by one: a backfill
writes tens of thousands of small files, and a sync each made it crawl. A power cut (not a
crash of fleetscore) can therefore lose the last seconds of writes, leaving such files empty
or absent; `fleetscore verify` finds them by their recorded sha256, and rerunning or
re-ingesting repairs them. Create-if-absent is a hard link (``link`` fails on an existing name). The
version-conditional operations (``if_match``) compare and swap under an advisory ``flock`` on
one lock file per store: every fleetscore process that shares the directory takes the same
lock, so no two of them can both see the same version and both replace it. Plain replacements
and deletions take it too, around their one system call: otherwise one could land between a
compare-and-swap's check and its rename and be undone, which Blob storage (where the service
checks If-Match as it writes) never allows.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from fleetscore.errors import AlreadyExists, Conflict, NotFound, StoreError, UsageError
from fleetscore.storage.base import Store, check_path

_TMP_PREFIX = ".tmp-"
_CAS_LOCK = ".tmp-cas.lock"  # hidden from listings by its prefix
MARKER = "fleetscore-store.json"
BOOKKEEPING = frozenset({MARKER, _CAS_LOCK})  # the store's own files, not anybody's data
# What a store made by an earlier version holds: any of these makes a directory a store.
_KNOWN = ("windows", "models", "runs", "arrivals", "predictions")


def _umask() -> int:
    # Read once: os.umask can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
T = TypeVar("T")


def _read(path: str) -> bytes:
    """A whole file with plain system calls (no buffered file object: a backfill reads tens
    of thousands of small files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks = [os.read(fd, max(size, 1))]
        while chunks[-1]:  # to the end, should the first read come back short
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


# A delete prunes the folders it empties; a writer makes the folders it needs. The two can
# interleave: the writer's next level, or the entry it is about to create, finds its parent
# pruned. Folders are made again and the step retried, as git's raceproof_create_file does
# against its own pruning. Each retry needs another writer to empty and prune the folder in
# between, so a few suffice.
_FOLDER_ATTEMPTS = 32


def _in_folder(parent: str, make: Callable[[], T]) -> T:
    """``make()`` creates an entry in ``parent``; the folder is made on demand (not before
    every write: a backfill writes tens of thousands of files into existing folders).

    Another process deleting in a sibling folder prunes the shared ancestors it leaves empty,
    and in step with this one it can do so again and again between ``makedirs`` and
    ``make``: after a few tries each one waits a random moment first, so the two fall out of
    step (without it, 1 run in 8 of tests/storage/test_contract.py's sibling test failed)."""
    for attempt in range(_FOLDER_ATTEMPTS - 1):
        try:
            return make()
        except FileNotFoundError:
            if attempt >= 3:
                time.sleep(random.uniform(0, 0.0005 * attempt))
            with contextlib.suppress(FileNotFoundError):  # an ancestor pruned mid-way: again
                os.makedirs(parent, exist_ok=True)
    return make()


def _temp_name(parent: str) -> str:
    """A hidden name beside a target, for a file renamed into place (never listed)."""
    return os.path.join(parent, f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")


def version_of(data: bytes) -> str:
    """A local file's version tag: its content hash (the same bytes are the same version)."""
    return hashlib.sha256(data).hexdigest()[:32]


class LocalStore(Store):
    local = True  # reads are system calls, not requests: nothing to gain reading concurrently
    versioned_listing = True  # sizes and modification times
    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).resolve()
        self.url = self._root = str(self.root)
        if not create:
            if not self.root.is_dir() or not (
                    (self.root / MARKER).is_file() or any((self.root / k).is_dir() for k in _KNOWN)):
                raise UsageError(f"no fleetscore store at {self.root} (create one with "
                                 "`fleetscore ingest`, `fleetscore models import` or `fleetscore demo`)")
            return
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--store {self.root} is a file, not a store directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {self.root}: {exc.strerror}") from exc
        if not (self.root / MARKER).exists():
            self.put(MARKER, b'{"fleetscore": 1}\n')

    def _file(self, path: str) -> str:
        # Plain strings, not Path objects: a backfill makes tens of thousands of calls.
        return os.path.join(self._root, check_path(path))

    def get(self, path: str) -> bytes:
        try:
            return _read(self._file(path))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path} in store {self.url}: {exc.strerror}") from exc

    def get_versioned(self, path: str) -> tuple[bytes, str]:
        data = self.get(path)
        return data, version_of(data)

    @contextmanager
    def _cas(self) -> Iterator[None]:
        fd = os.open(os.path.join(self._root, _CAS_LOCK), os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _current(self, path: str) -> str | None:
        try:
            return version_of(_read(self._file(path)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _temp(self, parent: str) -> tuple[int, str]:
        """A new hidden file beside the target (O_EXCL: never one another writer uses)."""
        for _ in range(100):
            tmp = _temp_name(parent)
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE), tmp
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temporary name in {parent}")

    def put(self, path: str, data: bytes, *, overwrite: bool = True,
            if_match: str | None = None) -> None:
        target = self._file(path)
        parent = os.path.dirname(target)
        try:
            fd, tmp = _in_folder(parent, lambda: self._temp(parent))
            placed = False
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                if if_match is not None:
                    with self._cas():
                        if self._current(path) != if_match:
                            raise Conflict(f"{path} changed in store {self.url} since it was read")
                        os.replace(tmp, target)
                        placed = True
                elif overwrite:
                    with self._cas():
                        os.replace(tmp, target)
                    placed = True
                else:
                    # link() fails if the target exists: an atomic create-if-absent.
                    os.link(tmp, target)
            finally:
                if not placed:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
        except FileExistsError as exc:
            raise AlreadyExists(f"{path} already exists in store {self.url}") from exc
        except OSError as exc:
            raise StoreError(f"cannot write {path} in store {self.url}: {exc.strerror}") from exc

    def copy(self, source: str, target: str) -> None:
        """Make ``target`` the same bytes as ``source``, atomically, without copying them (a
        hard link, renamed into place)."""
        src, dst = self._file(source), self._file(target)
        parent = os.path.dirname(dst)

        def link() -> str:
            tmp = _temp_name(parent)
            try:
                os.link(src, tmp)
            except FileNotFoundError:
                if not os.path.isfile(src):
                    raise NotFound(f"{source} not found in store {self.url}") from None
                raise  # the target's folder is missing: made by _in_folder
            return tmp

        try:
            tmp = _in_folder(parent, link)
            try:
                with self._cas():  # a plain replacement, as put's
                    os.replace(tmp, dst)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise StoreError(f"cannot copy {source} to {target} in store {self.url}: "
                             f"{exc.strerror}") from exc

    def exists(self, path: str) -> bool:
        return os.path.isfile(self._file(path))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(path for path, _ in self._walk(prefix)))

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(store path, directory entry) of every file under ``prefix``, in no order."""
        rel = prefix.strip("/")
        if rel:
            check_path(rel)
        base = os.path.join(self._root, rel) if rel else self._root
        stack = [(base, f"{rel}/" if rel else "")]
        while stack:
            directory, shown = stack.pop()
            try:
                entries = os.scandir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, f"{shown}{entry.name}/"))
                    elif entry.is_symlink() and entry.is_dir():
                        continue  # as os.walk: a linked folder is not followed
                    elif not entry.name.startswith(_TMP_PREFIX):
                        yield f"{shown}{entry.name}", entry

    def list_info(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(path, size, version) of the files under ``prefix``, in no particular order (a
        generator: a fleet's models/ is never held as a list); the version is the
        modification time in nanoseconds (no file is read)."""
        for path, entry in self._walk(prefix):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            yield path, st.st_size, str(st.st_mtime_ns)

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        target = self._file(path)
        try:
            if if_match is None:
                try:
                    with self._cas():
                        os.unlink(target)
                except FileNotFoundError:
                    return
            else:
                with self._cas():
                    if self._current(path) != if_match:
                        raise Conflict(f"{path} changed in store {self.url} since it was read")
                    os.unlink(target)
        except OSError as exc:
            raise StoreError(f"cannot delete {path} in store {self.url}: {exc.strerror}") from exc
        self._prune(os.path.dirname(target))

    def _prune(self, directory: str) -> None:
        """Remove folders a delete left empty (a run's staging), up to the store's root, as a
        blob store has no empty folders: listings never walk thousands of them."""
        while directory != self._root and directory.startswith(self._root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:  # not empty (or in use): done
                return
            directory = os.path.dirname(directory)

    def open(self, path: str) -> BinaryIO:
        try:
            return open(self._file(path), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"
