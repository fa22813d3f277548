"""Every error the API returns, in the OGC API / STAC API exception shape, and the body limit.

An error body is ``{"code": ..., "description": ...}`` (OGC API - Features, exception.yaml; the
STAC API uses the same). Handlers raise :func:`problem` for every 4xx they decide on;
:func:`install_error_handlers` renders those, FastAPI's validation errors (as 400, naming each
bad parameter, as the STAC API asks for a malformed parameter), Starlette's own HTTP errors
(404 for an unknown path, 405, ...), an unavailable catalog (503), and anything unexpected (500,
with a generic message; the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skyeye.adapters import postgres

__all__ = [
    "ApiError",
    "BodyLimit",
    "ErrorBody",
    "error_body",
    "finish_document",
    "install_error_handlers",
    "problem",
    "responses",
]

log = logging.getLogger(__name__)

# how long a client is told to wait when the catalog is unreachable
_UNAVAILABLE_RETRY_S = 5


class ApiError(StarletteHTTPException):
    """An HTTP error with an OGC/STAC exception ``code`` and a ``description`` for people."""

    def __init__(
        self,
        status: int,
        code: str,
        description: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=description, headers=dict(headers or {}))
        self.code = code
        self.description = description


def problem(
    status: int, code: str, description: str, headers: Mapping[str, str] | None = None
) -> ApiError:
    """The error to raise when a request is refused, in the OGC/STAC exception shape.

    Args:
        status: The HTTP status (4xx, or 5xx for a dependency that is down).
        code: A short machine-readable code in snake case, such as ``invalid_parameter``.
        description: One sentence for people that says what was wrong, naming the parameter.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """
    return ApiError(status, code, description, headers)


class ErrorBody(BaseModel):
    """The body of every error response (OGC API - Features' exception shape)."""

    code: str = Field(description="what went wrong, for programs: invalid_parameter, not_found…")
    description: str = Field(description="what went wrong, for people, naming the parameter")


# what each status means on this API, as the OpenAPI document says it
_MEANINGS = {
    400: "a parameter or the body is malformed; the description names it",
    401: "no API token, or not a valid one",
    403: "the token lacks the scope this operation needs",
    404: "no such collection, item or asset",
    409: "the asset is not done yet, cannot be read, or is gone from the store",
    413: "the request body is over settings.api.max_body_bytes",
    422: "the body is well formed but cannot be done (its text, box or tile)",
    429: "the token's requests per minute are spent; Retry-After says when to come back",
    500: "the server failed; the failure is logged",
    503: "the catalog, object store or model is unavailable; Retry-After says when to retry",
    504: "the model did not answer within settings.api.ask_timeout_s",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each an :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}


def finish_document(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the API answers: every error a JSON :class:`ErrorBody`.

    FastAPI declares an operation's error answers in the operation's own media type (GeoJSON
    for the features), and a FastAPI 422 ``HTTPValidationError`` for every operation with
    parameters; this API answers every error with an :class:`ErrorBody` in ``application/json``
    and a malformed request with 400 (:func:`install_error_handlers`).
    """
    default_422 = "#/components/schemas/HTTPValidationError"
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            for status, answer in list(answers.items()):
                if not status.isdigit() or int(status) < 400 or "content" not in answer:
                    continue
                [media] = answer["content"].values()
                if media.get("schema", {}).get("$ref") == default_422:
                    del answers[status]
                else:
                    answer["content"] = {"application/json": media}
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return document


def error_body(code: str, description: str) -> dict[str, str]:
    """The JSON body of every error response."""
    return {"code": code, "description": description}


def _response(
    status: int, code: str, description: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, description), status_code=status, headers=headers)


def _code_for(status: int) -> str:
    """A snake-case code from the status's reason phrase: 404 -> ``not_found``."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        return _response(exc.status_code, exc.code, exc.description, exc.headers)
    # Starlette's own: an unknown path (404), a method the path lacks (405), ...
    description = str(exc.detail)
    if exc.status_code == 404 and description == HTTPStatus.NOT_FOUND.phrase:
        description = f"no such path: {request.url.path} (the landing page / lists the API)"
    elif exc.status_code == 405:
        description = f"{request.method} is not allowed on {request.url.path}"
    return _response(exc.status_code, _code_for(exc.status_code), description, exc.headers)


_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header"}


def _where(loc: Sequence[Any]) -> str:
    """Where a validation error is, in words: ``query parameter 'limit'``, ``body field 'a[0]'``."""
    if not loc:
        return "the request"
    place, *names = loc
    if place == "body":
        if not names:
            return "the request body"
        if len(names) == 1 and isinstance(names[0], int):
            return "the request body"  # a JSON decode error: loc is ("body", position)
        dotted = ""
        for name in names:
            dotted += f"[{name}]" if isinstance(name, int) else f".{name}" if dotted else str(name)
        return f"body field '{dotted}'"
    where = _PLACES.get(str(place), str(place))
    name = ".".join(str(n) for n in names)
    return f"{where} '{name}'" if name else where


def _shown(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= width else text[: width - 1] + "…")


# pydantic's error types whose message reads better said our way
_BOUNDS = {
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
}


def _what(error: Mapping[str, Any]) -> str:
    """What is wrong, in a few words, from one pydantic error."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        return f"must be {sign} {ctx.get(key)}, got {_shown(error.get('input'))}"
    if kind == "json_invalid":
        return f"is not valid JSON ({ctx.get('error', 'decode error')})"
    message = str(error.get("msg", "is not valid"))
    message = message[:1].lower() + message[1:]
    if "input" in error and kind not in {"extra_forbidden"}:
        return f"{message}, got {_shown(error['input'])}"
    return message


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line naming each bad parameter and what is wrong with it."""
    parts = [f"{_where(e.get('loc', ()))}: {_what(e)}" for e in errors]
    return "; ".join(dict.fromkeys(parts)) or "the request is not valid"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _response(400, "invalid_parameter", describe_validation(exc.errors()))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, postgres.DatabaseError)
    if exc.reason is None:
        return await _unexpected(request, exc)
    log.warning("%s %s: %s", request.method, request.url.path, exc.reason)
    return _response(
        503,
        "unavailable",
        f"{exc.reason}; try again shortly",
        {"Retry-After": str(_UNAVAILABLE_RETRY_S)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _response(
        500, "internal_error", "the server failed to answer this request; the failure is logged"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response of ``app`` an OGC/STAC exception body.

    A handler for ``Exception`` runs in Starlette's outermost middleware: the 500 is sent (and
    the exception is still raised to the server, which logs it again; a test client re-raises
    it unless made with ``raise_server_exceptions=False``).
    """
    app.add_exception_handler(StarletteHTTPException, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(postgres.DatabaseError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


class _BodyTooLarge(ApiError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            "body_too_large",
            f"the request body is larger than the limit of {max_bytes} bytes",
        )


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 and the limit.

    A declared ``Content-Length`` over the limit is refused before the application runs; a body
    without one (chunked) is counted as it streams, and reading past the limit raises the 413
    into the handler that reads it (rendered by :func:`install_error_handlers`, or here when it
    escapes before a response started). Add it with
    ``app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse or count the request's body, then run the application."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            response = _response(
                400, "invalid_header", "header 'Content-Length': must be a whole number >= 0"
            )
            await response(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await _response(413, "body_too_large", _BodyTooLarge(self.max_bytes).description)(
                scope, receive, send
            )
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge as exc:
            if started:
                raise
            await _response(exc.status_code, exc.code, exc.description)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when undeclared, -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None
