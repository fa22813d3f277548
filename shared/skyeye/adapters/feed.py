"""The results API's live feed (``/api/events``, Server-Sent Events), as a client follows it.

It alone speaks HTTP for the CLI: events come out as plain dicts, a dropped or refused
connection as :class:`ConnectionError` or :class:`FeedRefused`, never an httpx type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

__all__ = ["FeedRefused", "follow"]

# no read timeout: the feed is quiet between events (the server sends a comment now and then)
_TIMEOUT = httpx.Timeout(10.0, read=None)


class FeedRefused(RuntimeError):
    """The API refused the feed (no or a bad token, a missing scope): reconnecting won't help."""


def follow(
    base_url: str, token: str | None, kinds: Sequence[str] | None, last_id: str | None
) -> Iterator[dict[str, Any]]:
    """Each event after ``last_id`` as ``{"id", "event", "data"}`` (data parsed from JSON).

    Ends when the server closes the stream; raises ConnectionError when the connection fails
    or drops, :class:`FeedRefused` on a 4xx answer.
    """
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    params = {"kinds": ",".join(kinds)} if kinds else {}
    try:
        with (
            httpx.Client(timeout=_TIMEOUT) as client,
            client.stream(
                "GET", f"{base_url}/api/events", headers=headers, params=params
            ) as response,
        ):
            if 400 <= response.status_code < 500:
                response.read()
                raise FeedRefused(_reason(response))
            if response.status_code != 200:
                raise ConnectionError(f"the API answered {response.status_code}")
            yield from _events(response.iter_lines())
    except httpx.TransportError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["description"])
    except (ValueError, KeyError, TypeError):
        return f"the API answered {response.status_code}"


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse the event stream: fields until a blank line; comments and retries skipped."""
    event: dict[str, Any] = {}
    data: list[str] = []
    for line in lines:
        if not line:
            if data and "id" in event:
                text = "\n".join(data)
                try:
                    parsed: Any = json.loads(text)
                except ValueError:
                    parsed = text
                yield {"id": event["id"], "event": event.get("event", "message"), "data": parsed}
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            event[name] = value
