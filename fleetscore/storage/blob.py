"""Azure Blob storage (Azurite locally): the cloud store.

Authentication is a connection string (``UseDevelopmentStorage=true`` for Azurite) or an
account URL with DefaultAzureCredential (managed identity in Azure). No key is ever needed
in the cloud.

Parquet reads go through pyarrow's ``AzureFileSystem`` (the Azure C++ SDK) only with a shared
key or a SAS, never with a token credential. A token the C++ SDK cannot get throws
``Azure::Core::Credentials::AuthenticationException`` through pyarrow uncaught, and the
process aborts (SIGABRT, exit 134): seen against a local managed-identity endpoint both with
the C++ default chain (no client id: an app with only a user-assigned identity answers 400) and
with ``client_id=`` the app's identity once the endpoint refuses (tests/stores/
test_blob_identity.py). On Azure Functions that takes the worker down with every run on it.
So with an account URL every read goes through the Python SDK and its DefaultAzureCredential
(``AZURE_CLIENT_ID`` names the user-assigned identity), whose failures are StoreErrors.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContainerClient, ExponentialRetry

from fleetscore.errors import AlreadyExists, Conflict, NotFound, StoreError, UsageError, first_line
from fleetscore.storage.base import Store, check_path, folder


class BlobStore(Store):
    versioned_listing = True  # sizes and ETags, from the listing itself

    def __init__(
        self,
        container: str,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        create: bool = True,
        retries: int = 5,
        arrow_reads: bool = True,
    ) -> None:
        # Backoff 1, 3, 5, 9, 17 s (+ jitter): rides out a restart or a throttling burst, then
        # gives up with a clear error instead of the SDK's default of minutes.
        policy = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=retries,
                                  random_jitter_range=1)
        if connection_string:
            self._client = ContainerClient.from_connection_string(
                connection_string, container, retry_policy=policy)
        elif account_url:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._client = ContainerClient(account_url, container, credential=self._credential,
                                           retry_policy=policy)
        else:
            raise StoreError(
                f"no credentials for blob container {container!r}: set "
                "FLEETSCORE_STORAGE_CONNECTION_STRING or FLEETSCORE_STORAGE_ACCOUNT_URL"
            )
        self.url = f"az://{container}"
        self._container = container
        self._closed = False
        # Window files are read through pyarrow's Azure filesystem when the client's account,
        # endpoint and credential map onto it (measured faster: docs/benchmarks.md).
        self._arrow = _arrow_filesystem(self._client, container) if arrow_reads else None
        self.created = False  # this client made the container (a failed import removes it)
        try:
            if create:
                try:
                    self._client.create_container()
                    self.created = True
                except ResourceExistsError:
                    pass
            elif not self._client.exists():
                raise UsageError(f"no fleetscore store at {self.url}: the container does not exist "
                                 "(create one with `fleetscore ingest` or `fleetscore models import`)")
        except AzureError as exc:
            raise StoreError(f"cannot open blob container {container!r}: {first_line(exc)}") from exc

    @contextmanager
    def _errors(self, action: str, path: str) -> Iterator[None]:
        """Convert SDK exceptions where the SDK is called: callers see only StoreError types."""
        try:
            yield
        except ResourceNotFoundError as exc:
            raise NotFound(f"{path} not found in store {self.url}") from exc
        except ResourceModifiedError as exc:
            # 412: an If-Match or If-None-Match condition failed.
            if getattr(exc, "error_code", None) == "BlobAlreadyExists":
                raise AlreadyExists(f"{path} already exists in store {self.url}") from exc
            raise Conflict(f"{path} changed in store {self.url} since it was read") from exc
        except ResourceExistsError as exc:
            raise AlreadyExists(f"{path} already exists in store {self.url}") from exc
        except AzureError as exc:
            raise StoreError(f"cannot {action} {path} in store {self.url}: {first_line(exc)}") from exc

    def get(self, path: str) -> bytes:
        with self._errors("read", path):
            return self._client.download_blob(check_path(path)).readall()

    def get_versioned(self, path: str) -> tuple[bytes, str]:
        with self._errors("read", path):
            downloader = self._client.download_blob(check_path(path))
            return downloader.readall(), downloader.properties.etag

    def put(self, path: str, data: bytes, *, overwrite: bool = True,
            if_match: str | None = None) -> None:
        # overwrite=False sends If-None-Match: *, if_match sends If-Match: ETAG, so each
        # condition is checked by the service in the same request as the write.
        with self._errors("write", path):
            if if_match is not None:
                try:
                    self._client.upload_blob(check_path(path), data, overwrite=True,
                                             etag=if_match,
                                             match_condition=MatchConditions.IfNotModified)
                except ResourceNotFoundError as exc:
                    raise Conflict(f"{path} is gone from store {self.url}") from exc
            else:
                self._client.upload_blob(check_path(path), data, overwrite=overwrite)

    def exists(self, path: str) -> bool:
        with self._errors("stat", path):
            return self._client.get_blob_client(check_path(path)).exists()

    def list(self, prefix: str = "") -> Iterator[str]:
        try:
            with self._errors("list", prefix or "/"):
                names = list(self._client.list_blob_names(name_starts_with=folder(prefix) or None))
        except NotFound:
            return iter(())
        return iter(sorted(names))

    def remove_if_empty(self) -> bool:
        """Delete the container if this client created it and it is still empty (a command
        that failed before writing anything). True if removed."""
        if not self.created:
            return False
        try:
            with self._errors("list", "/"):
                names = list(self._client.list_blob_names())
            if names:
                return False
            with self._errors("delete", "/"):
                self._client.delete_container()
        except NotFound:
            return False
        self.created = False
        return True

    def list_info(self, prefix: str = "") -> Iterator[tuple[str, int, str]]:
        """(path, size, ETag) of the blobs under ``prefix``, from the listing itself (no extra
        request per blob)."""
        try:
            with self._errors("list", prefix or "/"):
                blobs = [(b.name, b.size, b.etag) for b in
                         self._client.list_blobs(name_starts_with=folder(prefix) or None)]
        except NotFound:
            return iter(())
        return iter(sorted(blobs))

    def delete(self, path: str, *, if_match: str | None = None) -> None:
        if if_match is not None:
            try:
                with self._errors("delete", path):
                    self._client.delete_blob(check_path(path), etag=if_match,
                                             match_condition=MatchConditions.IfNotModified)
            except NotFound as exc:
                raise Conflict(f"{path} is gone from store {self.url}") from exc
            return
        try:
            with self._errors("delete", path):
                self._client.delete_blob(check_path(path))
        except NotFound:
            pass

    def open(self, path: str) -> BinaryIO:
        if self._arrow is not None:
            try:
                return cast(BinaryIO, self._arrow.open_input_file(
                    f"{self._container}/{check_path(path)}"))
            except FileNotFoundError as exc:
                raise NotFound(f"{path} not found in store {self.url}") from exc
            except OSError as exc:
                raise StoreError(f"cannot open {path} in store {self.url}: "
                                 f"{first_line(exc)}") from exc
        blob = self._client.get_blob_client(check_path(path))
        with self._errors("open", path):
            size = blob.get_blob_properties().size
        # Unbuffered: each read is one range request of exactly what the reader asked for.
        # Parquet readers ask for the footer (one read) and the row groups they need
        # (``pre_buffer`` coalesces their column chunks into one read per run of groups); a
        # buffer in between would turn every small read into a 1 MiB request.
        return cast(BinaryIO, _RangeReader(blob, size, path, self.url))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"


# The process that first made an AzureFileSystem. The Azure C++ SDK keeps one connection pool
# per process; a forked child (a worker of the local pool) inherits its open sockets, and
# reading through it there was seen to return corrupt Parquet pages (two processes on one
# connection). Forked children of that process read with the Python SDK instead.
_ARROW_PID: int | None = None


def _arrow_filesystem(client: ContainerClient, container: str) -> Any:
    """pyarrow's AzureFileSystem for the same account, endpoint and credential as ``client``,
    or None when they do not map onto it, or in a fork of a process that already used one
    (then the SDK's range reader below serves reads).

    Shared key and SAS credentials are passed on. A token credential (an account URL with
    DefaultAzureCredential) is not: the C++ SDK would get its own tokens, and a token it cannot
    get aborts the process (see the module docstring), whatever identity it is given."""
    import os
    from urllib.parse import urlsplit

    global _ARROW_PID
    if _ARROW_PID is not None and _ARROW_PID != os.getpid():
        return None

    try:
        from pyarrow.fs import AzureFileSystem
    except ImportError:  # pragma: no cover - pyarrow built without Azure
        return None
    account = client.account_name
    parts = urlsplit(client.primary_endpoint)
    path = [p for p in parts.path.split("/") if p]
    if not account or parts.scheme not in ("http", "https"):
        return None
    if parts.netloc.startswith(f"{account}.") and path == [container]:
        authority, dfs = parts.netloc[len(account):], None  # https://ACCOUNT.blob.core...
    elif path == [account, container]:
        authority = dfs = parts.netloc  # path style: an emulator such as Azurite
    else:
        return None
    options = {"blob_storage_authority": authority, "blob_storage_scheme": parts.scheme}
    if dfs:
        options.update(dfs_storage_authority=dfs, dfs_storage_scheme=parts.scheme)
    credential = client.credential
    key = getattr(credential, "account_key", None)
    sas = (getattr(client, "_query_str", "") or "").lstrip("?")
    if key:
        options["account_key"] = key
    elif sas:
        options["sas_token"] = sas
    else:
        return None  # a token credential, anonymous or unknown: the Python SDK reads
    try:
        filesystem = AzureFileSystem(account, **options)
    except (OSError, ValueError, TypeError):
        return None
    _ARROW_PID = os.getpid()
    return filesystem


class _RangeReader(io.RawIOBase):
    """Seekable reads of one blob by HTTP range, so Parquet readers fetch the footer and the
    row groups they need instead of the whole hour."""

    def __init__(self, blob: Any, size: int, path: str, url: str) -> None:
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

    def size(self) -> int:
        return self._size

    def readinto(self, buffer: Any) -> int:
        length = min(len(buffer), self._size - self._pos)
        if length <= 0:
            return 0
        try:
            data = self._blob.download_blob(offset=self._pos, length=length).readall()
        except AzureError as exc:
            raise StoreError(f"cannot read {self._path} in store {self._url}: {first_line(exc)}") from exc
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
