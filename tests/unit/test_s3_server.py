"""The embedded S3 server's conditional writes (the middleware alone; the storage is an
in-memory stand-in for nanio's, and the wrapped application records what reached it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nanio.errors import NoSuchKey

from skyeye.stack.s3_server import ConditionalWrites


class _Info:
    def __init__(self, etag: str) -> None:
        self.etag = etag


class _Storage:
    def __init__(self, objects: dict[str, str]) -> None:
        self.objects = objects

    def head_object(self, bucket: str, key: str) -> _Info:
        if f"{bucket}/{key}" not in self.objects:
            raise NoSuchKey(resource=f"{bucket}/{key}")
        return _Info(self.objects[f"{bucket}/{key}"])


def _put(headers: dict[str, str], objects: dict[str, str], path: str = "/log/wm.json") -> int:
    """The status a PUT gets; 200 when it reached nanio's application."""
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "PUT",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    middleware = ConditionalWrites(app, _Storage(objects))
    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    assert (status == 200) == bool(reached)
    return status


@pytest.mark.parametrize(
    ("headers", "objects", "status"),
    [
        ({}, {"log/wm.json": '"a"'}, 200),  # unconditional: nanio's own behaviour
        ({"If-None-Match": "*"}, {}, 200),
        ({"If-None-Match": "*"}, {"log/wm.json": '"a"'}, 412),  # tansu's "create" must fail
        ({"If-Match": '"a"'}, {"log/wm.json": '"a"'}, 200),
        ({"If-Match": '"a"'}, {"log/wm.json": '"b"'}, 412),  # someone else advanced it
        ({"If-Match": '"a"'}, {}, 412),
    ],
)
def test_preconditions_are_answered_as_s3_answers_them(
    headers: dict[str, str], objects: dict[str, str], status: int
) -> None:
    assert _put(headers, objects) == status
