"""S3 API (MinIO in production, nanio embedded): the only module that talks to the object store."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import urllib3.exceptions
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from skyeye.settings import Settings


class ObjectTooLarge(ValueError):
    pass


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


def transient_reason(exc: BaseException) -> str | None:
    """What is unavailable when ``exc`` says the object store is down or overloaded (worth a
    retry), else None."""
    if isinstance(exc, S3Error) and exc.code in _RETRY_CODES:
        return f"the object store answered {exc.code}"
    if isinstance(exc, ServerError) and exc.status_code >= 500:
        return f"the object store answered HTTP {exc.status_code}"
    if isinstance(exc, InvalidResponseError):
        return "the object store sent an invalid response"
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return "the object store did not answer"
    return None


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    etag: str
    version_id: str | None
    size: int
    content_type: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class ListedObject:
    """One object as a bucket listing shows it (the current version where there are several)."""

    key: str
    etag: str  # without the quotes S3 puts around it
    version_id: str | None
    size: int
    last_modified: datetime  # the store's clock, UTC


class ObjectStore:
    def __init__(self, settings: Settings) -> None:
        if settings.s3_endpoint is None:
            raise ValueError("s3_endpoint is unset; resolve the settings against a running stack")
        self._settings = settings
        self._client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
        )

    def ensure_bucket(self, bucket: str) -> bool:
        """Create the bucket if missing; True if this call created it."""
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
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        result = self._client.fput_object(
            bucket, key, str(path), content_type=content_type, metadata=metadata or {}
        )
        return StoredObject(
            bucket=bucket,
            key=key,
            etag=result.etag.strip('"'),
            version_id=result.version_id,
            size=path.stat().st_size,
            content_type=content_type,
            metadata=dict(metadata or {}),
        )

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str) -> None:
        self._client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def content_type(self, bucket: str, key: str) -> str | None:
        return self._client.stat_object(bucket, key).content_type

    def size(self, bucket: str, key: str) -> int:
        return self._client.stat_object(bucket, key).size or 0

    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """The whole object, refused before download when it is over ``max_bytes``."""
        size = self.size(bucket, key)
        if size > max_bytes:
            raise ObjectTooLarge(f"object of {size} bytes exceeds the {max_bytes}-byte limit")
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
        exception (GDAL turns it into "read failed")."""
        raw = _RangeReader(self._client, bucket, key, self.size(bucket, key), failures)
        return io.BufferedReader(raw, buffer_size=block_size)

    def opener(self, bucket: str, key: str) -> RasterOpener:
        """A rasterio ``opener``: GDAL reads the object through HTTP range requests."""
        return RasterOpener(self, bucket, key)

    def versioned(self, bucket: str) -> bool:
        """Whether the bucket gives its objects version ids (versioning enabled or suspended)."""
        try:
            status = self._client.get_bucket_versioning(bucket).status
        except ElementTree.ParseError:
            # a store without versioning (nanio) answers with a listing of raw keys instead,
            # which is not XML when a key holds a control character
            return False
        return status in {"Enabled", "Suspended"}

    def list_objects(
        self, bucket: str, prefix: str = "", *, versions: bool = False
    ) -> Iterator[ListedObject]:
        """Every object whose key starts with ``prefix``, in key order, fetched a page (1,000
        keys) at a time as the caller iterates, so a bucket of any size streams through in
        constant memory. ``versions`` (for a :meth:`versioned` bucket) lists each key's current
        version with its version id, never older versions or delete markers."""
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
        """The object's (or that version's) size, eTag, content type and user metadata; None
        when it no longer exists."""
        try:
            info = self._client.stat_object(bucket, key, version_id=version_id)
        except S3Error as exc:
            if exc.code in _GONE_CODES:
                return None
            raise
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


# S3 error codes that say the object (version) is not there.
_GONE_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion", "ResourceNotFound"})
_USER_META = "x-amz-meta-"


def _version_id(raw: str | None) -> str | None:
    """A version id as MinIO's notifications give it: objects written while versioning was
    off or suspended are listed as version "null", and their events carry no version id."""
    return None if raw in (None, "", "null") else raw


class RasterOpener:
    """A rasterio ``opener`` over one object that remembers why a read failed: GDAL reports
    any failed read as a corrupt file, and :meth:`raise_failure` tells an object store outage
    (worth a retry) from a file that really is corrupt."""

    def __init__(self, store: ObjectStore, bucket: str, key: str) -> None:
        self._store, self._bucket, self._key = store, bucket, key
        self.failures: list[BaseException] = []

    def __call__(self, path: str, mode: str = "rb") -> io.BufferedReader:
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
