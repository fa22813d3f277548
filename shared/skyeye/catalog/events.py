"""The live feed's reads (``/api/events``): events in an order no later commit can break.

An event's id is taken when it is inserted, not when its transaction commits, so ids alone do
not make a safe cursor: a transaction that started writing earlier (a lower ``xid``) may insert
and commit a higher id while one with a lower id is still running. A reader therefore

- shows only events whose transaction is older than every one still running (``xid`` below
  the snapshot's ``xmin``): no transaction can add to that set any more;
- orders them by ``(xid, event_id)``, so every event that becomes visible later sorts after
  every event shown before;

and a client resumes after an event id: the reader continues after that event's
``(xid, event_id)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["START", "Event", "EventKind", "Position", "events_after", "latest", "position_of"]

# the events no running transaction can add to, in the order a reader shows them
_SETTLED = "e.xid < pg_snapshot_xmin(pg_current_snapshot())"


class EventKind(StrEnum):
    """What an event reports (``events.kind``)."""

    ASSET_REGISTERED = "asset.registered"
    ASSET_FINISHED = "asset.finished"
    ALERT = "alert"


@dataclass(frozen=True, order=True)
class Position:
    """A place in the feed: after the event of this transaction and id (``(0, 0)``: the start)."""

    xid: int
    event_id: int


START = Position(0, 0)


@dataclass(frozen=True)
class Event:
    """One event of the feed."""

    event_id: int
    xid: int
    kind: str
    asset_id: uuid.UUID | None
    payload: dict[str, Any]
    created_at: datetime

    @property
    def position(self) -> Position:
        """The feed's position just after this event."""
        return Position(self.xid, self.event_id)


def position_of(conn: Connection, event_id: int) -> Position | None:
    """The position just after the event ``event_id``; None when there is no such event."""
    row = conn.execute(
        sa.text("SELECT xid::text::bigint AS xid FROM events WHERE event_id = :id"),
        {"id": event_id},
    ).one_or_none()
    return None if row is None else Position(row.xid, event_id)


def latest(conn: Connection) -> Position:
    """The position after the last event a reader may show now (the start when there is none)."""
    row = conn.execute(
        sa.text(
            "SELECT e.xid::text::bigint AS xid, e.event_id FROM events e"
            f" WHERE {_SETTLED} ORDER BY e.xid DESC, e.event_id DESC LIMIT 1"
        )
    ).one_or_none()
    return START if row is None else Position(row.xid, row.event_id)


def events_after(
    conn: Connection,
    after: Position,
    kinds: Sequence[EventKind] | None = None,
    limit: int = 500,
) -> list[Event]:
    """The settled events after ``after`` (of these kinds), in feed order, at most ``limit``."""
    rows = conn.execute(
        sa.text(
            "SELECT e.event_id, e.xid::text::bigint AS xid, e.kind, e.asset_id, e.payload,"
            " e.created_at FROM events e"
            f" WHERE {_SETTLED}"
            " AND (e.xid, e.event_id) > (CAST(CAST(:xid AS text) AS xid8), :event_id)"
            " AND (CAST(:kinds AS text[]) IS NULL OR e.kind = ANY(CAST(:kinds AS text[])))"
            " ORDER BY e.xid, e.event_id LIMIT :limit"
        ),
        {
            "xid": after.xid,
            "event_id": after.event_id,
            "kinds": None if not kinds else [k.value for k in kinds],
            "limit": limit,
        },
    )
    return [Event(**row._mapping) for row in rows]
