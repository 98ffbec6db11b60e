"""A directory on the local disk: the embedded default store."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import AlreadyExists, NotFound, StoreError
from .base import check_path, folder

_TMP_PREFIX = ".tmp-"


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {self.root}: {exc.strerror}") from exc

    def _file(self, path: str) -> Path:
        return self.root / check_path(path)

    def get(self, path: str) -> bytes:
        try:
            return self._file(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path} in store {self.url}: {exc.strerror}") from exc

    def put(self, path: str, data: bytes, *, overwrite: bool = True) -> None:
        target = self._file(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename: readers never see a torn file.
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                if overwrite:
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

    def delete(self, path: str) -> None:
        try:
            self._file(path).unlink()
        except FileNotFoundError:
            pass
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
