"""Azure Blob storage (Azurite locally): the cloud store.

Authentication is a connection string (``UseDevelopmentStorage=true`` for Azurite) or an
account URL with DefaultAzureCredential (managed identity in Azure). No key is ever needed
in the cloud.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContainerClient

from ..errors import AlreadyExists, NotFound, StoreError
from .base import check_path, folder


class BlobStore:
    def __init__(
        self,
        container: str,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        create: bool = True,
    ) -> None:
        if connection_string:
            self._client = ContainerClient.from_connection_string(connection_string, container)
        elif account_url:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._client = ContainerClient(account_url, container, credential=self._credential)
        else:
            raise StoreError(
                f"no credentials for blob container {container!r}: set "
                "FLEETSCORE_STORAGE_CONNECTION_STRING or FLEETSCORE_STORAGE_ACCOUNT_URL"
            )
        self.url = f"az://{container}"
        self._closed = False
        if create:
            try:
                self._client.create_container()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                raise StoreError(f"cannot open blob container {container!r}: {_brief(exc)}") from exc

    def get(self, path: str) -> bytes:
        try:
            return self._client.download_blob(check_path(path)).readall()
        except ResourceNotFoundError as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc
        except AzureError as exc:
            raise StoreError(f"cannot read {path} in store {self.url}: {_brief(exc)}") from exc

    def put(self, path: str, data: bytes, *, overwrite: bool = True) -> None:
        try:
            if overwrite:
                self._client.upload_blob(check_path(path), data, overwrite=True)
            else:
                # If-None-Match: * makes the create conditional on the server.
                self._client.upload_blob(check_path(path), data, overwrite=False)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise AlreadyExists(f"{path} already exists in store {self.url}") from exc
        except AzureError as exc:
            raise StoreError(f"cannot write {path} in store {self.url}: {_brief(exc)}") from exc

    def exists(self, path: str) -> bool:
        try:
            return self._client.get_blob_client(check_path(path)).exists()
        except AzureError as exc:
            raise StoreError(f"cannot stat {path} in store {self.url}: {_brief(exc)}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        try:
            names = list(self._client.list_blob_names(name_starts_with=folder(prefix) or None))
        except ResourceNotFoundError:
            return iter(())
        except AzureError as exc:
            raise StoreError(f"cannot list {prefix!r} in store {self.url}: {_brief(exc)}") from exc
        return iter(sorted(names))

    def delete(self, path: str) -> None:
        try:
            self._client.delete_blob(check_path(path))
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StoreError(f"cannot delete {path} in store {self.url}: {_brief(exc)}") from exc

    def open(self, path: str) -> BinaryIO:
        blob = self._client.get_blob_client(check_path(path))
        try:
            size = blob.get_blob_properties().size
        except ResourceNotFoundError as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc
        except AzureError as exc:
            raise StoreError(f"cannot open {path} in store {self.url}: {_brief(exc)}") from exc
        return io.BufferedReader(_RangeReader(blob, size, path, self.url), buffer_size=1 << 20)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"


class _RangeReader(io.RawIOBase):
    """Seekable reads of one blob by HTTP range, so Parquet readers fetch the footer and the
    row groups they need instead of the whole hour."""

    def __init__(self, blob, size: int, path: str, url: str) -> None:
        self._blob, self._size, self._pos = blob, size, 0
        self._path, self._url = path, url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        length = min(len(buffer), self._size - self._pos)
        if length <= 0:
            return 0
        try:
            data = self._blob.download_blob(offset=self._pos, length=length).readall()
        except AzureError as exc:
            raise StoreError(f"cannot read {self._path} in store {self._url}: {_brief(exc)}") from exc
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _brief(exc: Exception) -> str:
    """The first line of an SDK error: its full text is a multi-line HTTP dump."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
