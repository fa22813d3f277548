"""``GET /api/events``: the live feed as Server-Sent Events (new assets, finished ones, alerts).

It is what the dashboard and ``skyeye alerts watch`` follow.

Each event's ``id`` is its ``event_id``, its ``event`` its kind and its ``data`` the payload the
pipeline recorded (JSON). A client resumes with ``Last-Event-ID`` (or ``?after=``) and gets
exactly the events after that one: the catalog shows an event only once no running transaction
can add one before it (:mod:`skyeye.catalog.events`). Without either the feed starts now.

The table is polled every :data:`POLL_S`; FastAPI sends a ``: ping`` comment after 15 s of
silence, so proxies keep the connection open. The stream ends when the client disconnects
(Starlette cancels it at its next wait), when the catalog becomes unreachable (the client
reconnects and resumes), or when the server starts to stop (:func:`stop_feeds`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from skyeye.adapters import postgres
from skyeye.catalog import events as feed
from skyeye.catalog.events import EventKind, Position

from .errors import problem, responses
from .features import Reader, State
from .state import ApiState

__all__ = ["POLL_S", "router", "stop_feeds"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["Live feed"], responses=responses(401, 403, 429, 503))

#: Seconds between two reads of the events table while the feed is quiet.
POLL_S = 0.25
# events read at once; a full page is followed by the next without waiting
_PAGE = 500
# what an EventSource waits before reconnecting, in ms (sent once, at the start)
_RETRY_MS = 1000
_KINDS = ", ".join(k.value for k in EventKind)
_stopping_lock = threading.Lock()


@dataclass(frozen=True)
class _Start:
    """Where a connection's feed starts, and which kinds it shows (None: all)."""

    after: Position
    kinds: tuple[EventKind, ...] | None


def _event_id(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise problem(
            400, "invalid_parameter", f"{where}: must be an event id the feed sent, got {text!r}"
        )
    return value


def _kinds(text: str | None) -> tuple[EventKind, ...] | None:
    if text is None:
        return None
    kinds = []
    for word in (w.strip() for w in text.split(",")):
        try:
            kinds.append(EventKind(word))
        except ValueError:
            raise problem(
                400,
                "invalid_parameter",
                f"parameter 'kinds': {word!r} is not a kind of event (they are: {_KINDS})",
            ) from None
    return tuple(dict.fromkeys(kinds))


def _start(
    state: State,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="resume after this event (an EventSource sends it when it reconnects)",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, description="resume after this event id (0: from the first event)"),
    ] = None,
    kinds: Annotated[
        str | None,
        Query(description=f"only these kinds, comma-separated: {_KINDS}"),
    ] = None,
) -> _Start:
    """The connection's start, checked before the stream opens (a 400 names what is wrong)."""
    shown = _kinds(kinds)
    # an EventSource keeps the URL it was opened with: the header it sends on reconnecting wins
    if last_event_id is not None:
        resume: int | None = _event_id(last_event_id.strip(), "header 'Last-Event-ID'")
        where = "header 'Last-Event-ID'"
    else:
        resume, where = after, "parameter 'after'"
    with postgres.connection(state.engine) as conn:
        if resume is None:
            return _Start(feed.latest(conn), shown)
        if resume == 0:
            return _Start(feed.START, shown)
        position = feed.position_of(conn, resume)
    if position is None:
        raise problem(400, "invalid_parameter", f"{where}: no event {resume} in the feed")
    return _Start(position, shown)


def stop_feeds(app: FastAPI) -> None:
    """End every open feed of ``app`` within a poll; call it when the server starts to stop.

    A feed never ends by itself, and uvicorn waits for open responses before it stops: without
    this, one connected client holds the shutdown until its grace time runs out.
    """
    _stopping(app).set()


def _stopping(app: FastAPI) -> threading.Event:
    with _stopping_lock:
        event: threading.Event | None = getattr(app.state, "feeds_stopping", None)
        if event is None:
            event = app.state.feeds_stopping = threading.Event()
    return event


def _read(
    state: ApiState, after: Position, kinds: tuple[EventKind, ...] | None
) -> list[feed.Event]:
    with postgres.connection(state.engine) as conn:
        return feed.events_after(conn, after, kinds, _PAGE)


@router.get(
    "/api/events",
    summary="The live feed: assets registered and finished, alerts (Server-Sent Events)",
    response_class=EventSourceResponse,
)
async def events(
    request: Request, _: Reader, state: State, start: Annotated[_Start, Depends(_start)]
) -> AsyncIterator[ServerSentEvent]:
    """Each event after the start, as it settles; ``id`` is what ``Last-Event-ID`` takes."""
    stopping = _stopping(request.app)
    position = start.after
    yield ServerSentEvent(retry=_RETRY_MS)
    while not stopping.is_set():
        try:
            batch = await anyio.to_thread.run_sync(_read, state, position, start.kinds)
        except postgres.DatabaseError as exc:
            # the client reconnects with the last id it got and misses nothing
            log.warning("the live feed stops: %s", exc)
            return
        for event in batch:
            yield ServerSentEvent(
                id=str(event.event_id),
                event=event.kind,
                raw_data=json.dumps(event.payload, separators=(",", ":")),
            )
        if batch:
            position = batch[-1].position
        if len(batch) < _PAGE:
            await anyio.sleep(POLL_S)
