"""Who is asking, what they may do, and how often: API tokens, scopes and the request limit.

A route states the scope it needs with a dependency, ``Depends(require("read"))`` (or
``"ask"``, ``"admin"``), which returns the caller's :class:`Principal` or refuses the request:

* 401 with no token (unless the route needs only ``read`` and ``settings.api.anonymous_read``
  is on), a malformed ``Authorization`` header, or a token the catalog does not know or that
  was revoked;
* 429 with ``Retry-After`` past ``settings.api.requests_per_minute`` requests in any minute,
  per token (an anonymous caller: per client address);
* 403 when the token lacks the scope (``admin`` implies ``ask`` and ``read``, ``ask``
  implies ``read``), naming the scope needed and the scopes the token has.

Tokens are sent as ``Authorization: Bearer <token>`` (RFC 6750) and looked up by their SHA-256
(:mod:`skyeye.catalog.tokens`).
"""

from __future__ import annotations

import functools
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from skyeye.adapters import postgres
from skyeye.catalog import tokens
from skyeye.catalog.tokens import TokenRecord

from .errors import ApiError, problem
from .state import ApiState, api_state

__all__ = [
    "Principal",
    "RateLimiter",
    "TokenLookup",
    "rate_limiter",
    "require",
    "token_lookup",
]

#: Finds a live token by its text; None when unknown or revoked.
TokenLookup = Callable[[str], TokenRecord | None]

# Only declares the scheme in the OpenAPI document (so clients and schemathesis know to send a
# token); the header itself is read below, to say precisely what is wrong with it.
_bearer = HTTPBearer(auto_error=False, description="an API token from `skyeye token create`")
_REALM = 'Bearer realm="skyeye"'


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a token (its id and name) or an anonymous reader.

    ``scopes`` holds every scope granted, implied ones included: an ``admin`` token's are
    ``{"admin", "ask", "read"}``.
    """

    token_id: uuid.UUID | None
    name: str
    scopes: frozenset[str]
    anonymous: bool

    @classmethod
    def of(cls, record: TokenRecord) -> Principal:
        """The principal of a stored token."""
        return cls(record.token_id, record.name, tokens.granted_scopes(record.scopes), False)


ANONYMOUS = Principal(None, "anonymous", frozenset({"read"}), True)


class RateLimiter:
    """At most ``per_minute`` requests per key in any sliding window of ``window_s``; thread-safe.

    It keeps each key's admitted request times (at most ``per_minute`` of them) and forgets keys
    idle for a whole window. The counts live in this process: an API run as several processes
    (``uvicorn --workers N``, replicas behind a balancer) lets each key up to N times the limit.
    """

    def __init__(
        self,
        per_minute: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.per_minute = per_minute
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}
        self._swept = clock()

    def acquire(self, key: str) -> float:
        """Admit one request of ``key``: 0.0 when admitted, else the seconds until it would be."""
        with self._lock:
            now = self._clock()
            if now - self._swept >= self.window_s:
                self._sweep(now)
            times = self._seen.setdefault(key, deque())
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) < self.per_minute:
                times.append(now)
                return 0.0
            return times[0] + self.window_s - now

    def _sweep(self, now: float) -> None:
        """Forget the keys with no request in the last window (anonymous addresses come and go)."""
        idle = [k for k, t in self._seen.items() if not t or t[-1] <= now - self.window_s]
        for key in idle:
            del self._seen[key]
        self._swept = now


_limiter_lock = threading.Lock()


def rate_limiter(request: Request, state: Annotated[ApiState, Depends(api_state)]) -> RateLimiter:
    """The application's one :class:`RateLimiter`, made on first use from the settings."""
    app_state = request.app.state
    with _limiter_lock:
        limiter: RateLimiter | None = getattr(app_state, "rate_limiter", None)
        if limiter is None:
            limiter = RateLimiter(state.settings.api.requests_per_minute)
            app_state.rate_limiter = limiter
    return limiter


def token_lookup(state: Annotated[ApiState, Depends(api_state)]) -> TokenLookup:
    """Finds tokens in the catalog (noting their use); a dependency tests may override."""

    def lookup(token: str) -> TokenRecord | None:
        with postgres.connection(state.engine) as conn:
            record = tokens.find_token(conn, token)
            conn.commit()
        return record

    return lookup


def _unauthorized(description: str, error: str | None = None) -> ApiError:
    challenge = _REALM if error is None else f'{_REALM}, error="{error}"'
    return problem(401, "unauthorized", description, {"WWW-Authenticate": challenge})


def _bearer_token(header: str) -> str:
    """The token of an ``Authorization`` header's value; raises 401 saying what is wrong."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _unauthorized(
            f"the Authorization header must be 'Bearer <token>', not the {scheme or 'empty'!r} "
            "scheme",
            "invalid_request",
        )
    token = rest.strip()
    if not token:
        raise _unauthorized(
            "the Authorization header has no token after 'Bearer'", "invalid_request"
        )
    if len(token.split()) > 1:
        raise _unauthorized(
            "the Authorization header must hold one token after 'Bearer', with no spaces",
            "invalid_request",
        )
    if not token.startswith(tokens.TOKEN_MARK):
        raise _unauthorized(
            f"the bearer token is not a SkyEye API token (those start with "
            f"{tokens.TOKEN_MARK!r}; create one with `skyeye token create`)",
            "invalid_token",
        )
    return token


def _authenticate(
    request: Request, scope: str, anonymous_read: bool, lookup: TokenLookup
) -> Principal:
    header = request.headers.get("authorization")
    if header is None:
        if scope == "read" and anonymous_read:
            return ANONYMOUS
        raise _unauthorized(
            "this endpoint needs an API token: send 'Authorization: Bearer <token>' "
            f"(create one with `skyeye token create --scope {scope}`)"
        )
    record = lookup(_bearer_token(header))
    if record is None:
        raise _unauthorized(
            "the API token is unknown or revoked (`skyeye token list` shows the live ones)",
            "invalid_token",
        )
    return Principal.of(record)


def _limit(limiter: RateLimiter, principal: Principal, request: Request) -> None:
    if principal.anonymous:
        key = f"client:{request.client.host if request.client else 'unknown'}"
        who = "this client address"
    else:
        key, who = f"token:{principal.token_id}", f"token {principal.name!r}"
    wait = limiter.acquire(key)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise problem(
            429,
            "too_many_requests",
            f"{who} made more than {limiter.per_minute} requests in a minute; retry in {seconds} s",
            {"Retry-After": str(seconds)},
        )


def _authorise(principal: Principal, scope: str) -> None:
    if scope in principal.scopes:
        return
    has = ", ".join(s for s in tokens.SCOPES if s in principal.scopes) or "none"
    raise problem(
        403,
        "forbidden",
        f"this endpoint needs scope {scope!r}; token {principal.name!r} has scopes: {has} "
        f"(create one with `skyeye token create --scope {scope}`)",
        {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{scope}"'},
    )


@functools.cache
def require(scope: str) -> Callable[..., Principal]:
    """A FastAPI dependency admitting a caller with ``scope``, returning its :class:`Principal`.

    The same callable for the same scope (FastAPI then runs it once per request however many
    routes or routers declare it); a request counts once against the limit even when it passes
    several of these checks.

    Raises:
        ValueError: ``scope`` is not one of :data:`skyeye.catalog.tokens.SCOPES`.
    """
    if scope not in tokens.SCOPES:
        raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(tokens.SCOPES)}")

    def dependency(
        request: Request,
        state: Annotated[ApiState, Depends(api_state)],
        lookup: Annotated[TokenLookup, Depends(token_lookup)],
        limiter: Annotated[RateLimiter, Depends(rate_limiter)],
        _credentials: Annotated[object, Depends(_bearer)],
    ) -> Principal:
        principal = _authenticate(request, scope, state.settings.api.anonymous_read, lookup)
        if not getattr(request.state, "rate_counted", False):
            request.state.rate_counted = True
            _limit(limiter, principal, request)
        _authorise(principal, scope)
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency
