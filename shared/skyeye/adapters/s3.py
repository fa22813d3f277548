"""S3 API (MinIO in production, nanio embedded): the only module that talks to the object store.

What the store's client raises never leaves this module: a request that fails raises an
:class:`ObjectStoreError`, as :class:`ObjectStoreUnavailable` (down or overloaded: worth a
retry), :class:`ObjectStoreRefused` (an S3 error code, e.g. AccessDenied) or its
:class:`ObjectMissing` (the object is not there); the client's own exception is its cause.
"""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from skyeye.contracts import minio_created_event
from skyeye.settings import Settings


class ObjectTooLarge(ValueError):
    """An object over the size the caller may download; refused before any byte is read."""


class ObjectStoreError(Exception):
    """The object store did not carry out a request; the client's exception is the cause."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The store is down, overloaded or answered nonsense: worth a retry.

    ``reason`` says what is unavailable in a user's words (it is also the message).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ObjectStoreRefused(ObjectStoreError):
    """The store refused the request with an S3 error ``code`` (AccessDenied, NoSuchBucket, ...).

    ``message`` is the store's own explanation, when it gave one.
    """

    def __init__(self, code: str | None, message: str | None) -> None:
        super().__init__(f"the object store refused the request ({code}: {message})")
        self.code = code
        self.message = message


class ObjectMissing(ObjectStoreRefused):
    """The object (or the version asked for) is not in the bucket: deleted, replaced, never put."""


# S3 error codes that say "try again later", not "this request is wrong".
_RETRY_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "XMinioServerNotInitialized",
    }
)
# S3 error codes that say the object (version) is not there.
_GONE_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion", "ResourceNotFound"})


def transient_reason(exc: BaseException) -> str | None:
    """What is unavailable when ``exc`` says the object store is down or overloaded, else None.

    A transient failure is worth a retry; anything else would fail the same way again.
    """
    return exc.reason if isinstance(exc, ObjectStoreUnavailable) else None


def _translated(exc: Exception) -> Exception:
    """The project's error for an exception of the client or of its HTTP library.

    Any other exception is returned as it is.
    """
    if isinstance(exc, S3Error):
        if exc.code in _RETRY_CODES:
            return ObjectStoreUnavailable(f"the object store answered {exc.code}")
        if exc.code in _GONE_CODES:
            return ObjectMissing(exc.code, exc.message)
        return ObjectStoreRefused(exc.code, exc.message)
    if isinstance(exc, ServerError) and exc.status_code >= 500:
        return ObjectStoreUnavailable(f"the object store answered HTTP {exc.status_code}")
    if isinstance(exc, InvalidResponseError):
        return ObjectStoreUnavailable("the object store sent an invalid response")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return ObjectStoreUnavailable("the object store did not answer")
    if isinstance(exc, MinioException):
        return ObjectStoreError(str(exc))
    return exc


@contextmanager
def _requests() -> Iterator[None]:
    """Raise what the client raises inside the block as the project's :class:`ObjectStoreError`."""
    try:
        yield
    except (MinioException, urllib3.exceptions.HTTPError) as exc:
        raise _translated(exc) from exc


def probe(settings: Settings, endpoint: str) -> None:
    """Raise :class:`ObjectStoreError` unless the store at ``endpoint`` answers a bucket listing.

    No retries and short timeouts: the caller (the stack's supervisor) polls, and a retrying
    client would hide an early exit of the server behind its backoff.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=1.0, read=10.0), retries=urllib3.Retry(total=0)
    )
    client = _client(settings, endpoint, http)
    try:
        with _requests():
            client.list_buckets()
    finally:
        http.clear()


def _client(settings: Settings, endpoint: str, http: urllib3.PoolManager | None = None) -> Minio:
    return Minio(
        endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=http,
    )


@dataclass(frozen=True)
class StoredObject:
    """One object version as the store holds it: what an object-created notification carries."""

    bucket: str
    key: str
    etag: str  # without the quotes S3 puts around it
    version_id: str | None
    size: int
    content_type: str
    metadata: dict[str, str]  # user metadata, names without the x-amz-meta- prefix

    def created_event(self, principal: str = "skyeye-ingest") -> dict[str, object]:
        """The ``s3:ObjectCreated:Put`` notification MinIO's Kafka target sends for this version."""
        return minio_created_event(
            bucket=self.bucket,
            key=self.key,
            size=self.size,
            etag=self.etag,
            content_type=self.content_type,
            metadata=self.metadata,
            version_id=self.version_id,
            principal=principal,
        )


@dataclass(frozen=True)
class ListedObject:
    """One object as a bucket listing shows it (the current version where there are several)."""

    key: str
    etag: str  # without the quotes S3 puts around it
    version_id: str | None
    size: int
    last_modified: datetime  # the store's clock, UTC


class ObjectStore:
    """The buckets of one S3 endpoint (``settings.s3_endpoint``): upload, read, list, stat."""

    def __init__(self, settings: Settings) -> None:
        if settings.s3_endpoint is None:
            raise ValueError("s3_endpoint is unset; resolve the settings against a running stack")
        self._settings = settings
        self._client = _client(settings, settings.s3_endpoint)

    def ensure_bucket(self, bucket: str) -> bool:
        """Create the bucket if missing; True if this call created it."""
        with _requests():
            if self._client.bucket_exists(bucket):
                return False
            try:
                self._client.make_bucket(bucket)
            except S3Error as exc:
                # another process may have created it between the two calls
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
                return False
        return True

    def put_file(
        self, path: Path, bucket: str, key: str, metadata: dict[str, str] | None = None
    ) -> StoredObject:
        """Upload a local file with user ``metadata``, its content type guessed from its name."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers: dict[str, str | list[str] | tuple[str]] = dict(metadata or {})
        with _requests():
            result = self._client.fput_object(
                bucket, key, str(path), content_type=content_type, metadata=headers
            )
        return StoredObject(
            bucket=bucket,
            key=key,
            etag=(result.etag or "").strip('"'),
            version_id=result.version_id,
            size=path.stat().st_size,
            content_type=content_type,
            metadata=dict(metadata or {}),
        )

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str) -> None:
        """Write ``data`` as the object ``key`` (a derived file: a clip frame, a preview)."""
        with _requests():
            self._client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )

    def content_type(self, bucket: str, key: str) -> str | None:
        """The Content-Type the object was stored with."""
        with _requests():
            return self._client.stat_object(bucket, key).content_type

    def size(self, bucket: str, key: str) -> int:
        """The object's length in bytes; :class:`ObjectMissing` when there is no such object."""
        with _requests():
            return self._client.stat_object(bucket, key).size or 0

    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The whole object, refused before download when it is over ``max_bytes``."""
        size = self.size(bucket, key)
        if size > max_bytes:
            raise ObjectTooLarge(f"object of {size} bytes exceeds the {max_bytes}-byte limit")
        with _requests():
            response = self._client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def open(
        self,
        bucket: str,
        key: str,
        *,
        block_size: int = 256 * 1024,
        failures: list[BaseException] | None = None,
    ) -> io.BufferedReader:
        """A seekable file over HTTP range reads: header parsers fetch only what they touch.

        ``failures`` collects what made a read fail, for callers whose parser swallows the
        exception (GDAL turns it into "read failed").
        """
        raw = _RangeReader(self._client, bucket, key, self.size(bucket, key), failures)
        return io.BufferedReader(raw, buffer_size=block_size)

    def opener(self, bucket: str, key: str) -> RasterOpener:
        """A rasterio ``opener``: GDAL reads the object through HTTP range requests."""
        return RasterOpener(self, bucket, key)

    def versioned(self, bucket: str) -> bool:
        """Whether the bucket gives its objects version ids (versioning enabled or suspended)."""
        try:
            with _requests():
                status = self._client.get_bucket_versioning(bucket).status
        except ElementTree.ParseError:
            # a store without versioning (nanio) answers with a listing of raw keys instead,
            # which is not XML when a key holds a control character
            return False
        return status in {"Enabled", "Suspended"}

    def list_objects(
        self, bucket: str, prefix: str = "", *, versions: bool = False
    ) -> Iterator[ListedObject]:
        """Every object whose key starts with ``prefix``, in key order, a page at a time.

        Pages (1,000 keys) are fetched as the caller iterates, so a bucket of any size streams
        through in constant memory. ``versions`` (for a :meth:`versioned` bucket) lists each
        key's current version with its version id, never older versions or delete markers.
        """
        with _requests():
            for obj in self._client.list_objects(
                bucket, prefix=prefix or None, recursive=True, include_version=versions
            ):
                if obj.is_dir or obj.is_delete_marker or obj.object_name is None:
                    continue
                if versions and obj.is_latest != "true":
                    continue
                yield ListedObject(
                    key=obj.object_name,
                    etag=(obj.etag or "").strip('"'),
                    version_id=_version_id(obj.version_id),
                    size=obj.size or 0,
                    last_modified=obj.last_modified or datetime.min.replace(tzinfo=UTC),
                )

    def stat(self, bucket: str, key: str, version_id: str | None = None) -> StoredObject | None:
        """The object's (or that version's) size, eTag, content type and user metadata.

        None when it no longer exists.
        """
        try:
            with _requests():
                info = self._client.stat_object(bucket, key, version_id=version_id)
        except ObjectMissing:
            return None
        metadata = {
            name.lower().removeprefix(_USER_META): value
            for name, value in (info.metadata or {}).items()
            if name.lower().startswith(_USER_META)
        }
        return StoredObject(
            bucket=bucket,
            key=key,
            etag=(info.etag or "").strip('"'),
            version_id=_version_id(info.version_id),
            size=info.size or 0,
            content_type=info.content_type or "",
            metadata=metadata,
        )

    def remove(self, bucket: str, key: str) -> None:
        """Delete the object ``key`` (a derived file the product wrote); no error if it is gone."""
        with _requests():
            self._client.remove_object(bucket, key)


_USER_META = "x-amz-meta-"


def _version_id(raw: str | None) -> str | None:
    """A version id as MinIO's notifications give it.

    Objects written while versioning was off or suspended are listed as version "null", and
    their events carry no version id.
    """
    return None if raw in (None, "", "null") else raw


class RasterOpener:
    """A rasterio ``opener`` over one object that remembers why a read failed.

    GDAL reports any failed read as a corrupt file, and :meth:`raise_failure` tells an object
    store outage (worth a retry) from a file that really is corrupt.
    """

    def __init__(self, store: ObjectStore, bucket: str, key: str) -> None:
        self._store, self._bucket, self._key = store, bucket, key
        self.failures: list[BaseException] = []

    def __call__(self, path: str, mode: str = "rb") -> io.BufferedReader:
        """The object as a file (rasterio passes the name it opens, which is this object)."""
        try:
            return self._store.open(self._bucket, self._key, failures=self.failures)
        except Exception as exc:
            self.failures.append(exc)
            raise

    def raise_failure(self) -> None:
        """Raise the first read failure of the object store, if there was one."""
        if self.failures:
            raise self.failures[0]


class _RangeReader(io.RawIOBase):
    def __init__(
        self,
        client: Minio,
        bucket: str,
        key: str,
        size: int,
        failures: list[BaseException] | None = None,
    ) -> None:
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._pos = 0
        self._failures = failures

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

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        length = min(len(buffer), self._size - self._pos)
        if length <= 0:
            return 0
        try:
            with _requests():
                response = self._client.get_object(
                    self._bucket, self._key, offset=self._pos, length=length
                )
                try:
                    data = response.read()
                finally:
                    response.close()
                    response.release_conn()
        except Exception as exc:
            if self._failures is not None:
                self._failures.append(exc)
            raise
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
