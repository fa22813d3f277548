"""S3 API (MinIO in production, nanio embedded): the only module that talks to the object store."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minio import Minio
from minio.error import S3Error

from skyeye.settings import Settings


class ObjectTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    etag: str
    version_id: str | None
    size: int
    content_type: str
    metadata: dict[str, str]


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

    def open(self, bucket: str, key: str, *, block_size: int = 256 * 1024) -> io.BufferedReader:
        """A seekable file over HTTP range reads: header parsers fetch only what they touch."""
        raw = _RangeReader(self._client, bucket, key, self.size(bucket, key))
        return io.BufferedReader(raw, buffer_size=block_size)

    def opener(self, bucket: str, key: str) -> Callable[..., io.BufferedReader]:
        """A rasterio ``opener``: GDAL reads the object through HTTP range requests."""

        def open_(path: str, mode: str = "rb") -> io.BufferedReader:
            return self.open(bucket, key)

        return open_


class _RangeReader(io.RawIOBase):
    def __init__(self, client: Minio, bucket: str, key: str, size: int) -> None:
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._pos = 0

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
        response = self._client.get_object(self._bucket, self._key, offset=self._pos, length=length)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
