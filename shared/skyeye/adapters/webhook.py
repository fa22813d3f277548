"""Webhook receivers: Standard Webhooks signatures, and one delivery attempt at a time.

A delivery is a POST of the JSON body with the three headers of the Standard Webhooks
specification: ``webhook-id`` (the message id: a receiver drops a repeat by it),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,`` and the base64
HMAC-SHA256 of ``id.timestamp.body`` under the endpoint's secret, ``whsec_`` and base64).
The signing is the ``standardwebhooks`` package's own, so receivers verify it with any
implementation of the specification.

Callers get a project-level :class:`Attempt` (the status code, or why there was none, in
words); no type or exception of the HTTP client escapes this module.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

__all__ = ["Attempt", "Sender", "encode", "new_secret", "signed_headers"]

SECRET_PREFIX = "whsec_"
# The specification asks for 24 to 64 random bytes.
_SECRET_BYTES = 32
_USER_AGENT = "skyeye-stream-webhooks"


def new_secret() -> str:
    """A new endpoint secret, ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def signed_headers(
    secret: str, message_id: str, body: bytes, timestamp: datetime | None = None
) -> dict[str, str]:
    """The headers of a delivery of ``body``: content type, id, timestamp and signature.

    ``timestamp`` (UTC; default: now) is what the signature covers, in whole seconds.
    """
    at = datetime.fromtimestamp(int(time.time()), UTC) if timestamp is None else timestamp
    at = at.astimezone(UTC)
    signature = Webhook(secret).sign(message_id, at, body.decode())
    return {
        "content-type": "application/json",
        "user-agent": _USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def encode(payload: object) -> bytes:
    """A payload as the body a delivery carries (compact JSON, UTF-8)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt got: the receiver's status code, or why there was none."""

    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        """Whether the receiver took it: any 2xx answer (a redirect is not followed)."""
        return self.status_code is not None and 200 <= self.status_code < 300

    def describe(self) -> str:
        """The outcome in words, for logs and error rows."""
        if self.status_code is not None:
            return f"HTTP {self.status_code}"
        return self.error or "no answer"


class Sender:
    """POSTs signed deliveries over one pooled HTTP client; safe to use from several threads.

    Redirects are never followed (a receiver could point one at the pipeline's own network)
    and the answer's body is never read, so a receiver costs at most the timeout per phase
    (connect, write, wait for the answer's headers), whatever it sends back.
    """

    def __init__(self, timeout_s: float, max_connections: int = 16) -> None:
        self._timeout_s = timeout_s
        self._client = httpx.Client(
            timeout=timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections),
            # straight to the receiver, never through a proxy from the environment: the address
            # a URL was checked against (skyeye.alerts.webhooks) is the one connected to
            trust_env=False,
        )

    def post(self, url: str, secret: str, message_id: str, body: bytes) -> Attempt:
        """One attempt to deliver ``body`` to ``url``; never raises for the receiver's sake."""
        headers = signed_headers(secret, message_id, body)
        began = time.monotonic()
        try:
            with self._client.stream("POST", url, content=body, headers=headers) as response:
                status: int | None = response.status_code
            error = None
        except httpx.TimeoutException:
            status, error = None, f"no answer within {self._timeout_s:g} s"
        except httpx.ConnectError as exc:
            status, error = None, f"could not connect ({_reason(exc)})"
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
            status, error = None, f"{type(exc).__name__}: {_reason(exc)}"
        return Attempt(status, error, round((time.monotonic() - began) * 1000, 1))

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
