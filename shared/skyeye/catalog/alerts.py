"""Rules and alerts in the catalog: storing rules, and firing them when an asset is finished.

:func:`fire_rules` runs in the transaction that finishes an asset: for each live rule that the
asset meets it writes the alert (unique per rule and asset, so a finish that runs again fires
nothing new), the outbox row the relay publishes to ``skyeye.alerts``, one pending delivery per
enabled webhook endpoint, and the live feed's event. Either all of it is written or none.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from skyeye.alerts.rules import (
    AskCondition,
    DetectionCondition,
    RuleKind,
    RuleSpec,
    TextCondition,
)
from skyeye.catalog import search
from skyeye.catalog.queries import bounds_sql, record_event
from skyeye.contracts import AlertData, AlertEvidence, AlertMessage

__all__ = [
    "DEFAULT_TESTED",
    "MAX_TESTED",
    "Endpoint",
    "RuleExists",
    "RuleTrial",
    "StoredRule",
    "alerts",
    "create_rule",
    "delete_rule",
    "evaluate",
    "fire_rules",
    "rule",
    "rules",
    "trial",
]

# alert ids are a function of (rule, asset): a finish that runs again finds the same alert
_ALERT_NAMESPACE = uuid.UUID("8d3c1f6e-2f8b-4a55-9e0c-7b1d2a6f4c21")
# an alert carries at most this many pieces of evidence (the count is always exact)
_MAX_EVIDENCE = 100
_ASSET_TIME = "COALESCE(a.start_time, a.event_time, a.created_at)"
# a trial evaluates this many of the newest assets a rule may meet unless told otherwise, and
# never more than MAX_TESTED (each costs a few queries)
DEFAULT_TESTED = 50
MAX_TESTED = 500


class RuleExists(ValueError):
    """A live rule already has this name."""


@dataclass(frozen=True)
class Endpoint:
    """A rule's webhook endpoint; ``secret`` is set only when the endpoint was just made."""

    endpoint_id: uuid.UUID
    url: str
    failures: int = 0
    disabled_at: datetime | None = None
    disabled_why: str | None = None
    secret: str | None = None


@dataclass(frozen=True)
class StoredRule:
    """A rule as stored: its id, its spec and its webhook endpoints."""

    rule_id: uuid.UUID
    spec: RuleSpec
    created_at: datetime
    endpoints: list[Endpoint] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The rule's name."""
        return self.spec.name

    def as_json(self) -> dict[str, Any]:
        """The rule for people and programs; an endpoint's secret only when it was just made."""
        body = self.spec.model_dump(mode="json", exclude_none=True, exclude={"webhooks"})
        body["webhooks"] = [
            {
                "endpoint_id": str(e.endpoint_id),
                "url": e.url,
                "failures": e.failures,
                "disabled": e.disabled_at is not None,
                **({"disabled_why": e.disabled_why} if e.disabled_why else {}),
                **({"secret": e.secret} if e.secret else {}),
            }
            for e in self.endpoints
        ]
        return {
            "rule_id": str(self.rule_id),
            "kind": self.spec.kind.value,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            **body,
        }


def create_rule(conn: Connection, spec: RuleSpec, secrets: Sequence[str]) -> StoredRule:
    """Store a new rule with one endpoint per webhook URL (``secrets`` in the same order).

    Raises :class:`RuleExists` when a live rule has the name already.
    """
    if len(secrets) != len(spec.webhooks):
        raise ValueError("one secret per webhook URL")
    rule_id = uuid.uuid4()
    created = conn.execute(
        sa.text(
            "INSERT INTO rules (rule_id, name, bbox, area, start_time, end_time, asset_kind,"
            " condition, kind) VALUES (:id, :name, :bbox, CAST(:area AS jsonb), :start, :end,"
            " :asset_kind, CAST(:condition AS jsonb), :kind)"
            " ON CONFLICT (name) WHERE deleted_at IS NULL DO NOTHING RETURNING created_at"
        ),
        {
            "id": rule_id,
            "name": spec.name,
            "bbox": None if spec.bounds() is None else list(spec.bounds() or ()),
            "area": None if spec.area is None else spec.area.model_dump_json(exclude_none=True),
            "start": spec.start,
            "end": spec.end,
            "asset_kind": None if spec.asset_kind is None else spec.asset_kind.value,
            "condition": spec.condition.model_dump_json(),
            "kind": spec.kind.value,
        },
    ).scalar_one_or_none()
    if created is None:
        raise RuleExists(f"a rule named {spec.name!r} exists already")
    endpoints = []
    for url, secret in zip(spec.webhooks, secrets, strict=True):
        endpoint_id = uuid.uuid4()
        conn.execute(
            sa.text(
                "INSERT INTO webhook_endpoints (endpoint_id, rule_id, url, secret)"
                " VALUES (:id, :rule, :url, :secret)"
            ),
            {"id": endpoint_id, "rule": rule_id, "url": url, "secret": secret},
        )
        endpoints.append(Endpoint(endpoint_id, url, secret=secret))
    return StoredRule(rule_id, spec, created, endpoints)


def rules(conn: Connection, kind: RuleKind | None = None) -> list[StoredRule]:
    """Every live rule (of one kind), by name."""
    return _rules(
        conn,
        "r.deleted_at IS NULL AND (CAST(:kind AS text) IS NULL OR r.kind = :kind)",
        {"kind": None if kind is None else kind.value},
    )


def rule(conn: Connection, name_or_id: str) -> StoredRule | None:
    """The live rule with this name or id; None when there is none."""
    found = _rules(
        conn,
        "r.deleted_at IS NULL AND (r.name = :key OR r.rule_id::text = :key)",
        {"key": name_or_id},
    )
    return found[0] if found else None


def delete_rule(conn: Connection, name_or_id: str) -> StoredRule | None:
    """Delete a rule (it fires no more; its alerts stay); the rule, or None if there is none."""
    found = rule(conn, name_or_id)
    if found is None:
        return None
    conn.execute(
        sa.text("UPDATE rules SET deleted_at = now() WHERE rule_id = :id"), {"id": found.rule_id}
    )
    return found


def _rules(conn: Connection, where: str, params: dict[str, Any]) -> list[StoredRule]:
    rows = conn.execute(
        sa.text(
            "SELECT r.rule_id, r.name, r.bbox, r.area, r.start_time, r.end_time, r.asset_kind,"
            " r.condition, r.created_at, r.area IS NOT NULL AS has_area,"
            " COALESCE(json_agg(json_build_object('endpoint_id', e.endpoint_id, 'url', e.url,"
            "  'failures', e.failures, 'disabled_at', e.disabled_at,"
            "  'disabled_why', e.disabled_why) ORDER BY e.created_at)"
            "  FILTER (WHERE e.endpoint_id IS NOT NULL), '[]') AS endpoints"
            f" FROM rules r LEFT JOIN webhook_endpoints e USING (rule_id) WHERE {where}"
            " GROUP BY r.rule_id ORDER BY r.name"
        ),
        params,
    )
    found = []
    for row in rows:
        endpoints = [
            Endpoint(
                endpoint_id=uuid.UUID(e["endpoint_id"]),
                url=e["url"],
                failures=e["failures"],
                disabled_at=None
                if e["disabled_at"] is None
                else datetime.fromisoformat(e["disabled_at"]),
                disabled_why=e["disabled_why"],
            )
            for e in row.endpoints
        ]
        spec = RuleSpec(
            name=row.name,
            bbox=None if row.has_area or row.bbox is None else tuple(row.bbox),
            area=row.area,
            start=row.start_time,
            end=row.end_time,
            asset_kind=row.asset_kind,
            condition=row.condition,
            webhooks=[e.url for e in endpoints],
        )
        found.append(StoredRule(row.rule_id, spec, row.created_at, endpoints))
    return found


@dataclass(frozen=True)
class _Asset:
    asset_id: uuid.UUID
    bucket: str
    object_key: str
    kind: str
    seen_at: datetime
    bounds: list[float] | None


def _asset(conn: Connection, asset_id: uuid.UUID) -> _Asset | None:
    row = conn.execute(
        sa.text(
            f"SELECT a.asset_id, a.bucket, a.object_key, a.kind, {_ASSET_TIME} AS seen_at,"
            f" {bounds_sql('a')} AS bounds FROM assets a WHERE a.asset_id = :id"
        ),
        {"id": asset_id},
    ).one_or_none()
    return None if row is None else _Asset(**row._mapping)


def evaluate(conn: Connection, stored: StoredRule, asset_id: uuid.UUID) -> list[AlertEvidence]:
    """What makes the rule fire on the asset; empty when it does not fire (or no such asset).

    Reads only: ``skyeye rules test`` calls it on stored assets without firing anything.
    """
    asset = _asset(conn, asset_id)
    if asset is None or not stored.spec.admits(asset.kind, asset.seen_at):
        return []
    if not stored.spec.meets(asset.bounds):
        return []
    condition = stored.spec.condition
    if isinstance(condition, DetectionCondition):
        return _detections(conn, stored.spec, condition, asset)
    if isinstance(condition, TextCondition):
        return _texts(conn, condition, asset)
    return _answers(conn, condition, asset)


@dataclass(frozen=True)
class RuleTrial:
    """What a rule would fire on among stored assets (``skyeye rules test``, ``/rules/{}/test``).

    ``fires_on`` holds (asset id, object key, evidence) per asset it fires on; ``unknown`` the
    asked-for ids the catalog lacks.
    """

    assets: int
    fires_on: list[tuple[uuid.UUID, str, list[AlertEvidence]]]
    unknown: list[uuid.UUID]


def trial(
    conn: Connection,
    stored: StoredRule,
    asset_ids: Sequence[uuid.UUID] | None = None,
    limit: int = DEFAULT_TESTED,
) -> RuleTrial:
    """Evaluate the rule against these assets, or the newest finished ones it may meet.

    Without ids, those are the ``limit`` newest finished assets that the rule's area, time
    window and asset kind admit. Writes nothing.
    """
    if not 1 <= limit <= MAX_TESTED:
        raise ValueError(f"a trial evaluates 1 to {MAX_TESTED} assets, not {limit}")
    spec = stored.spec
    if asset_ids is not None:
        ids = tuple(dict.fromkeys(asset_ids))[:MAX_TESTED]
        chosen = search.Filters(ids=ids, limit=len(ids)) if ids else None
    else:
        ids = ()
        chosen = search.Filters(
            bbox=spec.bounds(),
            start=spec.start,
            end=spec.end,
            asset_kind=spec.asset_kind,
            status=search.AssetStatus.DONE,
            limit=limit,
        )
    rows = [] if chosen is None else search.search_assets(conn, chosen).rows
    fires = []
    for row in rows:
        evidence = evaluate(conn, stored, row["asset_id"])
        if evidence:
            fires.append((row["asset_id"], row["object_key"], evidence))
    seen = {row["asset_id"] for row in rows}
    return RuleTrial(len(rows), fires, [i for i in ids if i not in seen])


_EVIDENCE_COLUMNS = (
    "r.result_id, r.task_kind, w.tile_index, w.kind AS item_kind, w.bbox AS item_bbox"
    " FROM results r JOIN work_items w ON w.work_item_id = r.work_item_id"
)


def _detections(
    conn: Connection, spec: RuleSpec, condition: DetectionCondition, asset: _Asset
) -> list[AlertEvidence]:
    """The asset's detections of the phrase (duplicates left out), within the area if placed."""
    rows = conn.execute(
        sa.text(
            "SELECT d.label, d.x1, d.y1, d.x2, d.y2,"
            f" {bounds_sql('d')} AS bbox, {_EVIDENCE_COLUMNS}"
            " JOIN detections d ON d.result_id = r.result_id"
            " WHERE d.asset_id = :id AND NOT d.duplicate AND lower(d.label) = lower(:phrase)"
            " ORDER BY w.tile_index, d.detection_id"
        ),
        {"id": asset.asset_id, "phrase": condition.phrase},
    ).all()
    # a placed detection counts only inside the area; an unplaced one where its asset is
    found = [r for r in rows if r.bbox is None or spec.meets(r.bbox)]
    if len(found) < condition.min_count:
        return []
    return [
        _evidence(r, r.label, pixel_box=[r.x1, r.y1, r.x2, r.y2], lon_lat_bbox=r.bbox)
        for r in found[:_MAX_EVIDENCE]
    ]


def _evidence(row: Any, text: str, **where: Any) -> AlertEvidence:
    """One piece of evidence from a row with the ``_EVIDENCE_COLUMNS``."""
    return AlertEvidence(
        tile_index=row.tile_index,
        item_kind=row.item_kind,
        result_id=row.result_id,
        task_kind=row.task_kind,
        text=text,
        **where,
    )


def _texts(conn: Connection, condition: TextCondition, asset: _Asset) -> list[AlertEvidence]:
    """The asset's captions, descriptions and answers that match the query."""
    rows = conn.execute(
        sa.text(
            f"SELECT r.raw_text, {_EVIDENCE_COLUMNS}"
            " WHERE r.asset_id = :id AND r.search @@ websearch_to_tsquery('english', :q)"
            " ORDER BY w.tile_index, r.result_id LIMIT :most"
        ),
        {"id": asset.asset_id, "q": condition.query, "most": _MAX_EVIDENCE},
    ).all()
    return [_evidence(r, r.raw_text, lon_lat_bbox=r.item_bbox) for r in rows]


def _answers(conn: Connection, condition: AskCondition, asset: _Asset) -> list[AlertEvidence]:
    """The asset's answers to the standing question that fire it."""
    test = condition.test
    rows = conn.execute(
        sa.text(
            f"SELECT r.raw_text, r.answer, {_EVIDENCE_COLUMNS}"
            " WHERE r.asset_id = :id AND r.task_key = :key ORDER BY w.tile_index, r.result_id"
        ),
        {"id": asset.asset_id, "key": condition.task.key},
    ).all()
    fired = [r for r in rows if test.fires(r.answer)]
    return [_evidence(r, r.raw_text, lon_lat_bbox=r.item_bbox) for r in fired[:_MAX_EVIDENCE]]


def fire_rules(conn: Connection, asset_id: uuid.UUID, topic: str) -> list[AlertMessage]:
    """Fire every live rule the finished asset meets; the alerts written now (not before).

    Each alert is written with its outbox row (for ``topic``), a pending delivery per enabled
    webhook endpoint and a live-feed event, in the caller's transaction.
    """
    asset = _asset(conn, asset_id)
    if asset is None:
        return []
    fired = []
    for stored in rules(conn):
        evidence = evaluate(conn, stored, asset_id)
        if evidence:
            message = _write_alert(conn, stored, asset, evidence, topic)
            if message is not None:
                fired.append(message)
    return fired


def _write_alert(
    conn: Connection,
    stored: StoredRule,
    asset: _Asset,
    evidence: list[AlertEvidence],
    topic: str,
) -> AlertMessage | None:
    alert_id = uuid.uuid5(_ALERT_NAMESPACE, f"{stored.rule_id}/{asset.asset_id}")
    message = AlertMessage(
        timestamp=datetime.now(UTC),
        data=AlertData(
            alert_id=alert_id,
            rule_id=stored.rule_id,
            rule_name=stored.name,
            asset_id=asset.asset_id,
            bucket=asset.bucket,
            object_key=asset.object_key,
            asset_bbox=asset.bounds,
            evidence=evidence,
        ),
    )
    inserted = conn.execute(
        sa.text(
            "INSERT INTO alerts (alert_id, rule_id, rule_name, asset_id, evidence)"
            " VALUES (:id, :rule, :name, :asset, CAST(:evidence AS jsonb))"
            " ON CONFLICT DO NOTHING RETURNING alert_id"
        ),
        {
            "id": alert_id,
            "rule": stored.rule_id,
            "name": stored.name,
            "asset": asset.asset_id,
            "evidence": json.dumps([e.model_dump(mode="json") for e in evidence]),
        },
    ).scalar_one_or_none()
    if inserted is None:
        return None
    payload = message.model_dump_json()
    conn.execute(
        sa.text(
            "INSERT INTO outbox (message_id, topic, message_key, payload)"
            " VALUES (:id, :topic, :key, CAST(:payload AS jsonb))"
        ),
        {"id": alert_id, "topic": topic, "key": str(stored.rule_id), "payload": payload},
    )
    conn.execute(
        sa.text(
            "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, alert_id)"
            " SELECT gen_random_uuid(), endpoint_id, :alert FROM webhook_endpoints"
            " WHERE rule_id = :rule AND disabled_at IS NULL"
        ),
        {"alert": alert_id, "rule": stored.rule_id},
    )
    record_event(conn, "alert", asset.asset_id, json.loads(payload))
    return message


def alerts(
    conn: Connection,
    rule_name: str | None = None,
    asset_id: uuid.UUID | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first (of one rule, by name; of one asset), with their evidence."""
    rows = conn.execute(
        sa.text(
            "SELECT al.alert_id, al.rule_id, al.rule_name, al.asset_id, a.object_key,"
            " al.evidence, al.created_at,"
            " (SELECT count(*) FROM webhook_deliveries d WHERE d.alert_id = al.alert_id"
            "  AND d.status = 'delivered') AS delivered,"
            " (SELECT count(*) FROM webhook_deliveries d WHERE d.alert_id = al.alert_id)"
            "  AS deliveries"
            " FROM alerts al JOIN assets a ON a.asset_id = al.asset_id"
            " WHERE (CAST(:rule AS text) IS NULL OR al.rule_name = :rule)"
            " AND (CAST(:asset AS uuid) IS NULL OR al.asset_id = :asset)"
            " ORDER BY al.created_at DESC, al.alert_id LIMIT :limit"
        ),
        {"rule": rule_name, "asset": asset_id, "limit": limit},
    )
    return [dict(row._mapping) for row in rows]
