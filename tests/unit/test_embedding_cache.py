"""The embedding cache's logic: round trips, expiry, model changes, trimming, store failures.

Unit tests start no server: ``_MemoryStore`` below is a small in-memory stand-in for
:class:`skyeye.adapters.s3.ObjectStore` (the four methods the cache uses, with the store's own
errors); the real object store is exercised by tests/integration/test_ask.py.
"""

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import torch

from skyeye.adapters.s3 import (
    ListedObject,
    ObjectMissing,
    ObjectStoreUnavailable,
    ObjectTooLarge,
)
from skyeye.model.embedding_cache import EmbeddingCache

BUCKET, PREFIX = "derived", "embeddings/"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class _MemoryStore:
    """Objects in a dict, each with the clock's time as its last-modified; ``down`` fails all."""

    def __init__(self, clock: _Clock) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, float]] = {}
        self.clock = clock
        self.down = False
        self.reads = 0

    def _check(self) -> None:
        if self.down:
            raise ObjectStoreUnavailable("the object store did not answer")

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str) -> None:
        self._check()
        self.objects[bucket, key] = (data, self.clock())

    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        self._check()
        self.reads += 1
        if (bucket, key) not in self.objects:
            raise ObjectMissing("NoSuchKey", "no such key")
        data = self.objects[bucket, key][0]
        if len(data) > max_bytes:
            raise ObjectTooLarge("too large")
        return data

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ListedObject]:
        self._check()
        for (b, key), (data, written) in sorted(self.objects.items()):
            if b == bucket and key.startswith(prefix):
                yield ListedObject(
                    key, "etag", None, len(data), datetime.fromtimestamp(written, UTC)
                )

    def remove(self, bucket: str, key: str) -> None:
        self._check()
        self.objects.pop((bucket, key), None)

    def keys(self) -> list[str]:
        return sorted(k for _, k in self.objects)


def _cache(store: _MemoryStore, **kw: object) -> EmbeddingCache:
    options: dict = {"max_bytes": 10**9, "ttl_s": 3600.0, "model": "tiny", "clock": store.clock}
    options.update(kw)
    return EmbeddingCache(store, BUCKET, PREFIX, **options)


def _embeds(value: float, frames: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full((frames, 256, 8), value, dtype=dtype)


@pytest.fixture
def store() -> _MemoryStore:
    return _MemoryStore(_Clock())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_an_entry_comes_back_as_stored_dtype_and_all(
    store: _MemoryStore, dtype: torch.dtype
) -> None:
    cache = _cache(store)
    embeds = torch.randn(3, 256, 8).to(dtype)
    assert cache.put("item-1", embeds)
    assert store.keys() == ["embeddings/item-1.safetensors"]
    got = cache.get("item-1")
    assert got is not None and got.dtype == dtype and torch.equal(got, embeds)


def test_a_missing_entry_is_none(store: _MemoryStore) -> None:
    assert _cache(store).get("nothing") is None


def test_an_entry_older_than_the_ttl_is_missing(store: _MemoryStore) -> None:
    cache = _cache(store, ttl_s=60.0)
    cache.put("a", _embeds(1))
    store.clock.now += 59
    assert cache.get("a") is not None
    store.clock.now += 2
    assert cache.get("a") is None


def test_another_models_entry_is_missing(store: _MemoryStore) -> None:
    _cache(store, model="old").put("a", _embeds(1))
    assert _cache(store, model="new").get("a") is None
    assert _cache(store, model="old").get("a") is not None


def test_an_unreadable_entry_is_missing(store: _MemoryStore) -> None:
    store.put_bytes(b"not safetensors at all", BUCKET, "embeddings/a.safetensors", "x")
    assert _cache(store).get("a") is None


def test_a_store_that_is_down_never_fails_the_caller(store: _MemoryStore) -> None:
    cache = _cache(store)
    cache.put("a", _embeds(1))
    store.down = True
    assert cache.get("a") is None
    assert cache.put("b", _embeds(2)) is False
    assert cache.trim() == 0
    store.down = False
    assert cache.get("a") is not None


def test_keys_that_could_leave_the_prefix_are_refused(store: _MemoryStore) -> None:
    cache = _cache(store)
    for key in ["../x", "a/b", "", ".hidden"]:
        with pytest.raises(ValueError):
            cache.object_key(key)
        # the encoder's batch holds other requests: a background put drops, never raises
        assert cache.put_in_background(key, _embeds(1)) is False
    assert cache.flush(timeout_s=10) and store.keys() == []


def test_trim_deletes_expired_entries_then_the_oldest_until_under_the_bound(
    store: _MemoryStore,
) -> None:
    writer = _cache(store, trim_every=10**6, trim_interval_s=10**9)
    for n in range(5):
        writer.put(f"e{n}", _embeds(n))
        store.clock.now += 10
    size = len(store.objects[BUCKET, "embeddings/e0.safetensors"][0])
    store.put_bytes(b"other", BUCKET, "previews/x.png", "image/png")  # outside the prefix
    # e0 is 50 s old, past the ttl; of the rest, room for two: e1 and e2 go, oldest first
    cache = _cache(store, ttl_s=45.0, max_bytes=2 * size + size // 2)
    assert cache.trim() == 3
    assert store.keys() == [
        "embeddings/e3.safetensors",
        "embeddings/e4.safetensors",
        "previews/x.png",
    ]
    assert cache.trim() == 0


def _entry_size(embeds: torch.Tensor) -> int:
    scratch = _MemoryStore(_Clock())
    _cache(scratch).put("probe", embeds)
    return len(scratch.objects[BUCKET, "embeddings/probe.safetensors"][0])


def test_puts_trim_every_few_puts_not_every_time(store: _MemoryStore) -> None:
    cache = _cache(store, max_bytes=2 * _entry_size(_embeds(0)), trim_every=3, trim_interval_s=1e9)
    cache.put("a", _embeds(1))  # the first put trims: nothing trimmed since start
    store.clock.now += 1
    cache.put("b", _embeds(2))
    store.clock.now += 1
    cache.put("c", _embeds(3))
    assert len(store.keys()) == 3  # over the bound until the third put since the last trim
    store.clock.now += 1
    cache.put("d", _embeds(4))
    assert store.keys() == ["embeddings/c.safetensors", "embeddings/d.safetensors"]


class _SlowStore(_MemoryStore):
    """Writes wait until ``gate`` opens: a store that stopped answering."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__(clock)
        self.gate = threading.Event()

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str) -> None:
        self.gate.wait(timeout=30)
        super().put_bytes(data, bucket, key, content_type)


def test_background_puts_land_with_their_own_copy(store: _MemoryStore) -> None:
    cache = _cache(store)
    embeds = _embeds(7, frames=2)
    assert cache.put_in_background("bg", embeds)
    embeds.zero_()  # the caller reuses its memory: the cache holds its own copy
    assert cache.flush(timeout_s=10)
    got = cache.get("bg")
    assert got is not None and float(got[1, 0, 0]) == 7.0


def test_a_stuck_store_makes_background_puts_drop_not_block() -> None:
    store = _SlowStore(_Clock())
    cache = _cache(store)
    accepted = 0
    for n in range(200):
        if not cache.put_in_background(f"k{n}", _embeds(n)):
            break
        accepted += 1
    assert 0 < accepted < 200  # the queue is bounded
    store.gate.set()
    assert cache.flush(timeout_s=30)
    assert len(store.keys()) == accepted
