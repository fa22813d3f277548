"""Each tile's image embeddings in the object store, so that a later question skips the encoder.

An entry is the vision encoder's output for one work item (``(frames, 256, LLM width)``, the
LLM-ready tokens of a tile or of a clip's frames) serialised with safetensors, its dtype kept,
under ``<prefix><work item id>.safetensors`` in the derived bucket. Its header records when it
was written and by which model, so an entry that is older than ``ttl_s`` or that another model
wrote is a miss.

The cache is bounded: :meth:`EmbeddingCache.trim` deletes expired entries, then the oldest
ones, until the prefix holds at most ``max_bytes``; writers call it every few puts and every
few minutes, never per request.

The cache only ever speeds an answer up: any failure of the object store is logged and the
caller goes on as if the entry were missing (:meth:`~EmbeddingCache.get` returns None,
:meth:`~EmbeddingCache.put` returns False).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from skyeye.adapters.s3 import ListedObject, ObjectMissing, ObjectStore, ObjectStoreError
from skyeye.settings import Settings

__all__ = ["EmbeddingCache"]

log = logging.getLogger(__name__)

_TENSOR = "embeds"
# A cache key becomes part of an object key: a work item id, nothing that could leave the prefix.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIX = ".safetensors"
# Writes waiting for the background writer; beyond this they are dropped, never queued forever.
_MAX_PENDING = 64


class CacheStore(Protocol):
    """What the cache needs of the object store (:class:`~skyeye.adapters.s3.ObjectStore`)."""

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str) -> None:
        """Write an object."""

    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """Read a whole object."""
        ...

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ListedObject]:
        """Each object under a prefix, with its size and when it was written."""
        ...

    def remove(self, bucket: str, key: str) -> None:
        """Delete an object."""


class EmbeddingCache:
    """Image embeddings by cache key (a work item id) in one bucket, bounded in age and size."""

    def __init__(
        self,
        store: CacheStore,
        bucket: str,
        prefix: str,
        *,
        max_bytes: int,
        ttl_s: float,
        model: str = "",
        trim_every: int = 64,
        trim_interval_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store, self._bucket, self._prefix = store, bucket, prefix
        self._max_bytes, self._ttl_s, self._model = max_bytes, ttl_s, model
        self._trim_every, self._trim_interval_s = trim_every, trim_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._puts_since_trim = 0
        self._last_trim = -float("inf")
        self._pending: queue.Queue[tuple[str, torch.Tensor]] = queue.Queue(_MAX_PENDING)
        self._writer: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, model: str) -> EmbeddingCache | None:
        """The cache ``settings.embedding_cache`` describes, in the derived bucket; None if off."""
        cfg = settings.embedding_cache
        if not cfg.enabled:
            return None
        return cls(
            ObjectStore(settings),
            settings.derived_bucket,
            cfg.prefix,
            max_bytes=cfg.max_bytes,
            ttl_s=cfg.ttl_s,
            model=model,
        )

    def object_key(self, key: str) -> str:
        """Where the entry of cache key ``key`` is stored; ValueError for a key that is no id."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"a cache key is a plain id (letters, digits, . _ -), not {key!r}")
        return f"{self._prefix}{key}{_SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        """The embeddings stored under ``key``.

        None when missing, expired, another model's, or when the store cannot be read.
        """
        try:
            data = self._store.read(self._bucket, self.object_key(key), max_bytes=self._max_bytes)
        except ObjectMissing:
            return None
        except ObjectStoreError as exc:
            log.warning("embedding cache: reading %s failed, going on without it: %s", key, exc)
            return None
        try:
            header, tensor = _decode(data)
        except (SafetensorError, ValueError, KeyError) as exc:
            log.warning("embedding cache: entry %s is unreadable, ignored: %s", key, exc)
            return None
        if header.get("model", "") != self._model:
            return None
        if self._clock() - float(header.get("created", "0")) > self._ttl_s:
            return None
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` under ``key`` (and trim now and then); False when it was not stored."""
        data = save_tensors(
            {_TENSOR: tensor.detach().cpu().contiguous()},
            metadata={"created": repr(self._clock()), "model": self._model},
        )
        if len(data) > self._max_bytes:
            log.warning("embedding cache: entry %s (%d bytes) exceeds max_bytes", key, len(data))
            return False
        try:
            self._store.put_bytes(
                data, self._bucket, self.object_key(key), "application/octet-stream"
            )
        except ObjectStoreError as exc:
            log.warning("embedding cache: writing %s failed, going on without it: %s", key, exc)
            return False
        if self._trim_due():
            self.trim()
        return True

    def put_in_background(self, key: str, tensor: torch.Tensor) -> bool:
        """Queue a :meth:`put` for a writer thread, so the caller never waits on the store.

        The tensor is copied first (the caller may reuse its memory). False, with a warning,
        when the entry is dropped: the queue is full (the store is slow or down) or the key is
        no plain id. It never raises: the caller's batch holds other requests.
        """
        try:
            self.object_key(key)
        except ValueError as exc:
            log.warning("embedding cache: entry not kept: %s", exc)
            return False
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="embedding-cache-writer", daemon=True
                )
                self._writer.start()
        try:
            self._pending.put_nowait((key, tensor.detach().cpu().clone()))
        except queue.Full:
            log.warning("embedding cache: %d writes pending; entry %s dropped", _MAX_PENDING, key)
            return False
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued write is done; False if some were still pending at the end."""
        deadline = time.monotonic() + timeout_s
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._pending.unfinished_tasks

    def trim(self) -> int:
        """Delete expired entries, then the oldest, until the cache holds at most ``max_bytes``.

        Returns the number of entries deleted; a store that fails ends the trim early (logged).
        """
        with self._lock:
            self._puts_since_trim = 0
            self._last_trim = time.monotonic()
        removed = total = 0
        try:
            entries = sorted(
                (o for o in self._store.list_objects(self._bucket, self._prefix)),
                key=lambda o: (o.last_modified, o.key),
            )
            now = self._clock()
            total = sum(o.size for o in entries)
            for entry in entries:
                expired = now - entry.last_modified.timestamp() > self._ttl_s
                if not expired and total <= self._max_bytes:
                    continue
                self._store.remove(self._bucket, entry.key)
                total -= entry.size
                removed += 1
        except ObjectStoreError as exc:
            log.warning("embedding cache: trimming failed, retried later: %s", exc)
        if removed:
            log.info("embedding cache: %d entries deleted, %d bytes kept", removed, total)
        return removed

    def _trim_due(self) -> bool:
        with self._lock:
            self._puts_since_trim += 1
            return (
                self._puts_since_trim >= self._trim_every
                or time.monotonic() - self._last_trim >= self._trim_interval_s
            )

    def _write_forever(self) -> None:
        while True:
            key, tensor = self._pending.get()
            try:
                self.put(key, tensor)
            except Exception:  # the writer must outlive any one bad entry
                log.exception("embedding cache: writing %s failed", key)
            finally:
                self._pending.task_done()


def _decode(data: bytes) -> tuple[dict[str, str], torch.Tensor]:
    """An entry's header metadata and its tensor."""
    tensor = load_tensors(data)[_TENSOR]
    # the header: an 8-byte little-endian length, then JSON with the metadata under __metadata__
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    return {str(k): str(v) for k, v in header.items()}, tensor
