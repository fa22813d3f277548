"""The outbox and the webhook deliveries: what the relay and the deliverer claim and record.

Outbox: the relay claims unsent rows in id order (``FOR UPDATE SKIP LOCKED``: a second relay
takes other rows), publishes them and marks them sent in the same transaction, so a crash
before the commit leaves them unsent and they are published again, with the same message id.

Deliveries: the deliverer claims due ones with a *lease*: the claiming transaction moves
``next_attempt_at`` ahead by the lease and commits, so the HTTP call runs outside any
transaction, and a delivery whose deliverer died is due again once the lease has run out.
:func:`record_attempt` then logs the attempt and settles the delivery; deliveries to a disabled
endpoint are never claimed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from skyeye.catalog.queries import record_error

__all__ = [
    "DueDelivery",
    "OutboxMessage",
    "claim_deliveries",
    "claim_outbox",
    "count_failure",
    "delivery_log",
    "disable_endpoint",
    "mark_sent",
    "record_attempt",
    "reset_failures",
]


@dataclass(frozen=True)
class OutboxMessage:
    """An unsent outbox row: where it goes, under which key and id, and what it says."""

    outbox_id: int
    message_id: uuid.UUID
    topic: str
    message_key: str
    payload: Any


def claim_outbox(conn: Connection, limit: int) -> list[OutboxMessage]:
    """Lock and return up to ``limit`` unsent rows, oldest first.

    Rows locked by another relay are skipped; these stay locked until the caller's
    transaction ends.
    """
    rows = conn.execute(
        sa.text(
            "SELECT outbox_id, message_id, topic, message_key, payload FROM outbox"
            " WHERE sent_at IS NULL ORDER BY outbox_id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"limit": limit},
    )
    return [OutboxMessage(**row._mapping) for row in rows]


def mark_sent(conn: Connection, outbox_ids: list[int]) -> None:
    """Mark these rows published."""
    conn.execute(
        sa.text("UPDATE outbox SET sent_at = now() WHERE outbox_id = ANY(:ids)"),
        {"ids": outbox_ids},
    )


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery: where it goes, how it is signed, what it carries, how far it got."""

    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    alert_id: uuid.UUID
    url: str
    secret: str
    payload: Any
    # attempts made before this one
    attempts: int
    created_at: datetime


def claim_deliveries(
    conn: Connection, limit: int, lease_s: float, busy: Collection[uuid.UUID] = ()
) -> list[DueDelivery]:
    """Claim up to ``limit`` due deliveries, the longest due first, for ``lease_s`` seconds.

    At most one per endpoint, and none to the ``busy`` endpoints (the caller's in flight).

    Commit right after: the claim is the moved ``next_attempt_at``, so no other deliverer
    takes them until the lease runs out. One at a time per endpoint, a slow receiver holds
    one of the deliverer's threads, never all of them. The payload is the alert's outbox
    message.
    """
    rows = conn.execute(
        sa.text(
            "WITH ranked AS ("
            " SELECT d.delivery_id, row_number() OVER (PARTITION BY d.endpoint_id"
            "  ORDER BY d.next_attempt_at, d.delivery_id) AS n"
            " FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id)"
            " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
            " AND e.disabled_at IS NULL AND d.endpoint_id <> ALL(CAST(:busy AS uuid[]))),"
            " due AS ("
            " SELECT d.delivery_id FROM webhook_deliveries d JOIN ranked USING (delivery_id)"
            " WHERE ranked.n = 1 AND d.status = 'pending' AND d.next_attempt_at <= now()"
            " ORDER BY d.next_attempt_at LIMIT :limit FOR UPDATE OF d SKIP LOCKED)"
            " UPDATE webhook_deliveries d"
            " SET next_attempt_at = now() + make_interval(secs => :lease)"
            " FROM due, webhook_endpoints e, outbox o"
            " WHERE d.delivery_id = due.delivery_id AND e.endpoint_id = d.endpoint_id"
            " AND o.message_id = d.alert_id"
            " RETURNING d.delivery_id, d.endpoint_id, d.alert_id, e.url, e.secret, o.payload,"
            " d.attempts, d.created_at"
        ),
        {"limit": limit, "lease": lease_s, "busy": [str(e) for e in busy]},
    )
    return [DueDelivery(**row._mapping) for row in rows]


def record_attempt(
    conn: Connection,
    delivery_id: uuid.UUID,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    status: str,
    next_attempt_at: datetime | None,
) -> bool:
    """Log an attempt and settle its delivery.

    ``status``: pending, delivered or failed; ``next_attempt_at``: when pending, the next
    attempt's time.

    False when the delivery was no longer pending (a deliverer whose lease ran out raced
    another one that settled it): the attempt is logged, the delivery left as it is.
    """
    conn.execute(
        sa.text(
            "INSERT INTO webhook_attempts (delivery_id, status_code, error, duration_ms)"
            " VALUES (:id, :code, :error, :ms)"
        ),
        {"id": delivery_id, "code": status_code, "error": error, "ms": duration_ms},
    )
    settled = conn.execute(
        sa.text(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = :status,"
            " next_attempt_at = COALESCE(CAST(:next AS timestamptz), next_attempt_at),"
            " finished_at = CASE WHEN :status = 'pending' THEN NULL ELSE now() END"
            " WHERE delivery_id = :id AND status = 'pending' RETURNING delivery_id"
        ),
        {"id": delivery_id, "status": status, "next": next_attempt_at},
    ).scalar_one_or_none()
    return settled is not None


def reset_failures(conn: Connection, endpoint_id: uuid.UUID) -> None:
    """The endpoint took a delivery: its run of failed deliveries is over."""
    conn.execute(
        sa.text(
            "UPDATE webhook_endpoints SET failures = 0 WHERE endpoint_id = :id AND failures > 0"
        ),
        {"id": endpoint_id},
    )


def count_failure(conn: Connection, endpoint_id: uuid.UUID) -> int:
    """Count one more failed delivery of the endpoint; its failed deliveries in a row."""
    failures = conn.execute(
        sa.text(
            "UPDATE webhook_endpoints SET failures = failures + 1 WHERE endpoint_id = :id"
            " RETURNING failures"
        ),
        {"id": endpoint_id},
    ).scalar_one_or_none()
    return failures or 0


def disable_endpoint(conn: Connection, endpoint_id: uuid.UUID, why: str) -> bool:
    """Disable the endpoint and report it in an error row (stage ``webhooks``).

    False when it was disabled already (or is gone).
    """
    row = conn.execute(
        sa.text(
            "UPDATE webhook_endpoints e SET disabled_at = now(), disabled_why = :why"
            " FROM rules r WHERE e.endpoint_id = :id AND e.disabled_at IS NULL"
            " AND r.rule_id = e.rule_id RETURNING e.url, e.rule_id, r.name"
        ),
        {"id": endpoint_id, "why": why},
    ).one_or_none()
    if row is None:
        return False
    record_error(
        conn,
        source=f"webhook:{endpoint_id}",
        stage="webhooks",
        kind="endpoint_disabled",
        message=f"the webhook {row.url} of rule {row.name!r} was disabled: {why}",
        detail={"endpoint_id": endpoint_id, "rule_id": row.rule_id, "url": row.url},
    )
    return True


def delivery_log(
    conn: Connection,
    *,
    rule_id: uuid.UUID | None = None,
    alert_id: uuid.UUID | None = None,
    endpoint_id: uuid.UUID | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Deliveries (of one rule's alerts, of one alert, to one endpoint), newest first.

    Each with its endpoint's URL and state, its attempts in order (``attempt_log``: time,
    status code or error, duration), the last attempt's ``last_status_code`` and
    ``last_error``, and ``next_attempt_at`` only while it is pending.
    """
    rows = conn.execute(
        sa.text(
            "SELECT d.delivery_id, d.alert_id, al.rule_name, d.endpoint_id, e.url, d.status,"
            " d.attempts, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END"
            " AS next_attempt_at, d.created_at, d.finished_at, e.disabled_at, e.disabled_why,"
            " COALESCE((SELECT json_agg(json_build_object('attempted_at', a.attempted_at,"
            "  'status_code', a.status_code, 'error', a.error, 'duration_ms', a.duration_ms)"
            "  ORDER BY a.attempt_id) FROM webhook_attempts a"
            "  WHERE a.delivery_id = d.delivery_id), '[]') AS attempt_log"
            " FROM webhook_deliveries d JOIN webhook_endpoints e USING (endpoint_id)"
            " JOIN alerts al USING (alert_id)"
            " WHERE (CAST(:rule AS uuid) IS NULL OR e.rule_id = :rule)"
            " AND (CAST(:alert AS uuid) IS NULL OR d.alert_id = :alert)"
            " AND (CAST(:endpoint AS uuid) IS NULL OR d.endpoint_id = :endpoint)"
            " ORDER BY d.created_at DESC, d.delivery_id LIMIT :limit"
        ),
        {"rule": rule_id, "alert": alert_id, "endpoint": endpoint_id, "limit": limit},
    )
    found = []
    for row in rows:
        entry = dict(row._mapping)
        last = entry["attempt_log"][-1] if entry["attempt_log"] else {}
        entry["last_status_code"] = last.get("status_code")
        entry["last_error"] = last.get("error")
        found.append(entry)
    return found
