"""Webhook policy: which URLs a rule may send to, and what happens after each attempt.

- :func:`check_webhook_url` vets a URL when a rule is made (and before each attempt, as a
  host's addresses can change): http(s) only, a host, no credentials, no address on the
  pipeline's own network (loopback, private, link-local, multicast, reserved, unspecified)
  unless ``settings.alerts.allow_private_webhooks``, never the API itself. A host that does
  not resolve (:class:`UnresolvedHost`) may resolve later; any other refusal is policy.
- :func:`backoff_s`: exponential backoff with full jitter, so receivers that fail together
  are not retried together.
- :func:`decide`: after an attempt, the delivery is delivered, retried at a time, or failed
  once ``retry_for_s`` since the alert is spent; :func:`disable_reason` says when the
  endpoint must be disabled (``disable_after`` failed deliveries in a row).

Pure apart from name resolution (which tests may replace): the catalog stores the outcome
(:mod:`skyeye.catalog.delivery`), the adapter sends (:mod:`skyeye.adapters.webhook`).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from skyeye.settings import AlertSettings

__all__ = [
    "Decision",
    "DeliveryStatus",
    "UnresolvedHost",
    "backoff_s",
    "check_webhook_url",
    "decide",
    "disable_reason",
]

MAX_URL_CHARS = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
# an address is refused when any of these is true of it, and named by the first
_ADDRESS_KINDS = (
    ("unspecified", "is_unspecified"),
    ("loopback", "is_loopback"),
    ("link-local", "is_link_local"),
    ("multicast", "is_multicast"),
    ("reserved", "is_reserved"),
    ("private", "is_private"),
)

Resolver = Callable[[str, int], list[str]]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnresolvedHost(ValueError):
    """The webhook's host resolves to no address now (a DNS outage or a name not yet made)."""


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (a literal address: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_webhook_url(
    url: str,
    *,
    allow_private: bool,
    api_base_url: str | None,
    resolver: Resolver = _resolve,
) -> str:
    """The URL normalised, or ValueError saying why a webhook may not be sent there.

    Normalised: scheme and host in lower case, no fragment, ``/`` for an empty path.

    ``api_base_url``: the results API's own base URL, refused as a target (by host name or
    address, and port). ``resolver``: host and port to addresses (default: the system's).
    """
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"a webhook URL is at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("a webhook URL must not contain spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{url!r} is not an http or https URL")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "a webhook URL must not hold credentials (user:password@); deliveries are signed "
            "with the endpoint's secret instead"
        )
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    addresses = _addresses(host, port, resolver)
    if api_base_url is not None and _is_api(host, port, addresses, api_base_url, resolver):
        raise ValueError(f"{url!r} points at the SkyEye API itself")
    if not allow_private:
        for address in addresses:
            if (kind := _private_kind(address)) is not None:
                raise ValueError(
                    f"{host} resolves to {address}, a {kind} address: webhooks to the "
                    "pipeline's own network are refused (SKYEYE_ALERTS__ALLOW_PRIVATE_WEBHOOKS="
                    "true allows them)"
                )
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _addresses(host: str, port: int, resolver: Resolver) -> list[_Address]:
    try:
        found = resolver(host, port)
    except (OSError, UnicodeError):
        raise UnresolvedHost(f"the host {host!r} does not resolve to an address") from None
    if not found:
        raise UnresolvedHost(f"the host {host!r} does not resolve to an address")
    # an IPv6 address may carry its interface ("fe80::1%eth0")
    return [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]


def _private_kind(address: _Address) -> str | None:
    """Which kind of non-public address this is; None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    for kind, test in _ADDRESS_KINDS:
        if getattr(address, test):
            return kind
    return None


def _is_api(
    host: str,
    port: int,
    addresses: list[_Address],
    api_base_url: str,
    resolver: Resolver,
) -> bool:
    """Whether ``host:port`` is the API's.

    The same port, and the same name or an address in common (``localhost`` and
    ``127.0.0.1`` are one host).
    """
    api = urlsplit(api_base_url)
    api_host = (api.hostname or "").lower()
    api_port = api.port or _DEFAULT_PORTS.get(api.scheme.lower())
    if not api_host or api_port != port:
        return False
    if api_host == host.lower():
        return True
    try:
        api_addresses = _addresses(api_host, api_port, resolver)
    except ValueError:
        return False
    return not set(api_addresses).isdisjoint(addresses)


def backoff_s(
    attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait after failed attempt number ``attempt`` (1: the first).

    Full jitter: uniform over an exponential window, ``initial_s`` up to
    ``initial_s * 2**attempt`` capped at ``max_s``, so that receivers which fail together
    (one outage) are not all retried at the same moment.
    """
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 64))
    floor = min(initial_s, ceiling)
    return floor + (ceiling - floor) * rand()


class DeliveryStatus(StrEnum):
    """A delivery's state (``webhook_deliveries.status``)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    """What becomes of a delivery after an attempt; ``next_attempt_at`` only when pending."""

    status: DeliveryStatus
    next_attempt_at: datetime | None = None


def decide(
    *,
    delivered: bool,
    attempts: int,
    created_at: datetime,
    now: datetime,
    settings: AlertSettings,
    refused: bool = False,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """The delivery's fate after its attempt number ``attempts`` (this one included).

    Retried with :func:`backoff_s` until ``settings.retry_for_s`` after ``created_at`` (the
    last retry falls at that moment, not after it); an attempt that fails later fails it.
    ``refused``: the policy refused the target (not sent): it fails at once, as no retry
    could change that.
    """
    if delivered:
        return Decision(DeliveryStatus.DELIVERED)
    deadline = created_at + timedelta(seconds=settings.retry_for_s)
    if refused or now >= deadline:
        return Decision(DeliveryStatus.FAILED)
    wait = backoff_s(attempts, settings.initial_backoff_s, settings.max_backoff_s, rand)
    return Decision(DeliveryStatus.PENDING, min(now + timedelta(seconds=wait), deadline))


def disable_reason(failures: int, settings: AlertSettings, last: str) -> str | None:
    """Why the endpoint must be disabled, or None while it stays enabled.

    ``failures``: its failed deliveries in a row, this one included; ``last``: the outcome of
    the last attempt, in words.
    """
    if failures < settings.disable_after:
        return None
    return (
        f"{failures} deliveries in a row failed, each retried for {settings.retry_for_s:g} s "
        f"(the last attempt: {last})"
    )
