"""The embedded S3 server: nanio, with the conditional writes S3 has and nanio lacks.

tansu keeps its Kafka log in S3 and allocates offsets with conditional writes: it creates a
partition's watermark with ``If-None-Match: *`` and advances it with ``If-Match: <etag>``.
nanio ignores both headers, so a restarted broker "creates" every watermark afresh, starts its
partitions at offset 0 again and overwrites the batches already there: the log loses messages
and the consumer groups, whose committed offsets lie past the new end, see nothing new. This
server runs nanio's own application with one more middleware that answers those preconditions
as S3 does (412 PreconditionFailed), so the broker survives a restart with its log.

Run as ``python -m skyeye.stack.s3_server --host H --port P --data-dir D --region R``, with
``NANIO_ACCESS_KEY`` and ``NANIO_SECRET_KEY`` in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn
from nanio.app import build_app as build_nanio_app
from nanio.errors import PreconditionFailed, S3Error
from starlette.applications import Starlette
from starlette.middleware import Middleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _unquoted(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


class ConditionalWrites:
    """ASGI middleware answering S3's write preconditions, which nanio ignores, with 412.

    A PUT with ``If-None-Match: *`` is refused when the object exists, one with ``If-Match`` when
    it does not exist with that ETag.

    Conditional PUTs are serialised by one lock, so two of them on one key cannot both pass
    their check; tansu's writes are few and small, so one lock costs nothing here.
    """

    def __init__(self, app: ASGIApp, storage: Any) -> None:
        self._app = app
        self._storage = storage
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass every request to nanio, except a conditional PUT whose precondition fails."""
        if scope["type"] != "http" or scope["method"] != "PUT":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        none_match, match = headers.get("if-none-match"), headers.get("if-match")
        bucket, _, key = scope["path"].lstrip("/").partition("/")
        if (none_match is None and match is None) or not key:
            await self._app(scope, receive, send)
            return
        async with self._lock:
            try:
                current: str | None = _unquoted(self._storage.head_object(bucket, key).etag)
            except S3Error:
                current = None
            exists_refused = none_match is not None and none_match.strip() == "*" and current
            match_refused = match is not None and (
                current is None or (match.strip() != "*" and current != _unquoted(match))
            )
            if exists_refused or match_refused:
                await _respond(send, PreconditionFailed(resource=f"{bucket}/{key}"))
                return
            await self._app(scope, receive, send)


async def _respond(send: Send, error: S3Error) -> None:
    body = error.to_xml()
    body = body if isinstance(body, bytes) else body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.http_status,
            "headers": [
                (b"content-type", b"application/xml"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_app() -> Starlette:
    """Nanio's application with :class:`ConditionalWrites` inside its authentication.

    Its settings come from the ``NANIO_*`` environment, as nanio's own factory reads them.
    """
    app = build_nanio_app()
    app.user_middleware.append(Middleware(ConditionalWrites, storage=app.state.storage))
    return app


def main() -> None:
    """Serve the embedded S3 on one host and port until stopped (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    os.environ["NANIO_DATA_DIR"] = str(args.data_dir.resolve())
    os.environ["NANIO_REGION"] = args.region
    uvicorn.run(
        "skyeye.stack.s3_server:build_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,
        # tansu keeps its log in S3: per-request lines would drown everything else
        access_log=False,
        log_level="info",
    )


if __name__ == "__main__":
    main()
