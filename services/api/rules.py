"""Alert rules and their alerts: ``/rules`` (create, list, show, delete, test) and ``/alerts``.

A rule's body is :class:`skyeye.alerts.RuleSpec`, the contract ``skyeye rules create`` builds
too. A body that is not a JSON object is a 400, as everywhere in this API; a JSON object that is
not a valid rule (a bad geometry, an empty question, an answer condition that does not parse, a
webhook URL that may not be used) is a 422 naming each field. Webhook URLs are vetted by
:func:`skyeye.alerts.registry.register`, the path ``skyeye rules create`` takes too (http(s)
only, never the API itself, no private or loopback address unless
``settings.alerts.allow_private_webhooks``), and each endpoint gets a signing secret that only
the answer to ``POST /rules`` shows.

``POST /rules/{name}/test`` evaluates the rule against stored assets with the code that fires
it (:func:`skyeye.catalog.alerts.evaluate`), writing nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from geojson_pydantic import MultiPolygon, Polygon
from pydantic import BaseModel, ConfigDict, Field

from skyeye.alerts import AssetKind, Condition, RuleKind, RuleSpec, registry, rule_name_problem
from skyeye.catalog import alerts as alert_store
from skyeye.catalog import delivery, jsonable
from skyeye.contracts import AlertEvidence

from . import params
from .auth import Principal, require
from .errors import ErrorBody, describe_validation, problem, responses
from .features import Limit, Reader, State
from .links import base_url, href
from .state import ApiState

__all__ = ["router"]

Admin = Annotated[Principal, Depends(require("admin"))]

# a rule's time window lies within these, whatever the time zone it is read back in
# the kinds of pydantic error that say the body as a whole is not a JSON object
_NOT_AN_OBJECT = {"missing", "model_type", "model_attributes_type", "dict_type", "json_invalid"}
# names pydantic puts in an error's location for the member of a union, not for a field
_KINDS = {k.value for k in RuleKind}
_UNION_TAGS = {*_KINDS, "Polygon", "MultiPolygon"}


def _unprocessable(description: str) -> Exception:
    return problem(422, "invalid_rule", description)


def _is_body_field_error(error: Mapping[str, Any]) -> bool:
    """Whether a validation error is about the content of a JSON object body, not its form."""
    loc = tuple(error.get("loc", ()))
    if not loc or loc[0] != "body" or error.get("type") == "json_invalid":
        return False
    return len(loc) > 1 or error.get("type") not in _NOT_AN_OBJECT


def _field_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The errors as a user wrote the fields.

    No union member names in a field's path, one error per field whose value matched no member
    of a union (pydantic reports every member's failure), no echo of a whole object or list.
    """
    cleaned: list[dict[str, Any]] = []
    unions: set[Any] = set()
    for error in errors:
        loc = tuple(error.get("loc", ()))
        tags = {p for p in loc if isinstance(p, str) and _is_union_tag(p)}
        path = tuple(p for p in loc if p not in tags)
        # the condition's union is tagged by its kind: pydantic reports only that member's
        if tags - _KINDS:
            if path[:2] in unions:
                continue
            unions.add(path[:2])
        error = {**error, "loc": path}
        error["msg"] = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
        if isinstance(error.get("input"), dict | list):
            del error["input"]
        cleaned.append(error)
    return cleaned


def _is_union_tag(part: str) -> bool:
    """Whether a part of an error's location names a union's member rather than a field."""
    return part in _UNION_TAGS or "[" in part or part.startswith("Position")


class _RuleRoute(APIRoute):
    """A route whose body, well-formed JSON but not valid, is a 422 naming each bad field.

    The application's handler answers FastAPI's validation errors with a 400 (a malformed
    request); a rule that is well formed but cannot be made is a 422, as for an ask.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, with body field errors turned into a 422."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                errors = exc.errors()
                if errors and all(_is_body_field_error(e) for e in errors):
                    raise _unprocessable(describe_validation(_field_errors(errors))) from None
                raise

        return route


def _answer(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": description}}


router = APIRouter(
    tags=["Alerts"],
    responses={**responses(401, 403, 429, 503), **_answer(404, "no such rule")},
    route_class=_RuleRoute,
)
# a rule's body: a JSON object that is no valid rule
_INVALID = _answer(422, "the body is no valid rule (or test); the description names each field")


class Webhook(BaseModel):
    """A rule's webhook endpoint."""

    endpoint_id: uuid.UUID
    url: str
    failures: int = Field(description="deliveries failed in a row")
    disabled: bool = Field(description="disabled after failing settings.alerts.disable_after")
    disabled_why: str | None = None
    secret: str | None = Field(
        None,
        description="the Standard Webhooks signing secret (whsec_...): only in the answer to "
        "POST /rules, never shown again",
    )


class Rule(BaseModel):
    """A stored rule: the spec it was made with, its id, kind, creation time and webhooks."""

    rule_id: uuid.UUID
    name: str
    kind: RuleKind
    created_at: datetime
    bbox: tuple[float, float, float, float] | None = None
    area: Polygon | MultiPolygon | None = None
    start: datetime | None = None
    end: datetime | None = None
    asset_kind: AssetKind | None = None
    condition: Condition
    webhooks: list[Webhook]


class RuleList(BaseModel):
    """Every live rule, by name."""

    rules: list[Rule]


class RuleTest(BaseModel):
    """Which stored assets to evaluate a rule against."""

    model_config = ConfigDict(extra="forbid")

    asset_ids: list[uuid.UUID] | None = Field(
        None,
        max_length=alert_store.MAX_TESTED,
        description="these assets; default: the newest finished assets the rule's area, time "
        "window and asset kind admit",
    )
    limit: int = Field(
        alert_store.DEFAULT_TESTED,
        ge=1,
        le=alert_store.MAX_TESTED,
        description="how many newest assets, at most",
    )


class WouldFire(BaseModel):
    """An asset the rule fires on, and why."""

    asset_id: uuid.UUID
    object_key: str
    evidence: list[AlertEvidence]


class RuleTestAnswer(BaseModel):
    """What a rule would fire on among the assets evaluated; nothing is written."""

    rule: str
    assets: int = Field(description="how many assets were evaluated")
    fires_on: list[WouldFire]
    unknown: list[uuid.UUID] = Field(description="asset ids given that the catalog lacks")


class Alert(BaseModel):
    """A rule fired for an asset, with its evidence and its webhook deliveries."""

    alert_id: uuid.UUID
    rule_id: uuid.UUID | None = Field(description="null once the rule is gone from the catalog")
    rule_name: str
    asset_id: uuid.UUID
    object_key: str
    evidence: list[AlertEvidence]
    created_at: datetime
    deliveries: int = Field(description="webhook deliveries made for it")
    delivered: int = Field(description="of those, the ones a receiver took")


class Attempt(BaseModel):
    """One try at delivering: what the receiver answered, or why it could not be reached."""

    attempted_at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null: no answer")
    error: str | None = Field(description="why the try failed, in words; null when it worked")
    duration_ms: float | None


class Delivery(BaseModel):
    """An alert sent (or being sent) to one webhook endpoint, with every try."""

    delivery_id: uuid.UUID
    alert_id: uuid.UUID
    rule_name: str
    endpoint_id: uuid.UUID
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="when it is tried again, while pending")
    created_at: datetime
    finished_at: datetime | None = Field(description="when it was delivered or given up")
    disabled_at: datetime | None = Field(description="when its endpoint was disabled, if it was")
    disabled_why: str | None
    attempt_log: list[Attempt]


class DeliveryList(BaseModel):
    """Webhook deliveries, newest first: the delivery log."""

    deliveries: list[Delivery]
    numberReturned: int


class AlertList(BaseModel):
    """Alerts, newest first."""

    alerts: list[Alert]
    numberReturned: int  # the name OGC API pages use


def _found(state: ApiState, name: str) -> alert_store.StoredRule:
    """The live rule named ``name`` (or with that id); 404 when there is none."""
    if rule_name_problem(name) is None or _is_uuid(name):
        with state.engine.connect() as conn:
            stored = alert_store.rule(conn, name)
        if stored is not None:
            return stored
    raise problem(404, "not_found", f"no rule {name!r} (`GET /rules` lists them)")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@router.post(
    "/rules",
    summary="Create an alert rule (each webhook's signing secret is shown only here)",
    status_code=201,
    response_model=Rule,
    response_class=JSONResponse,
    responses={
        **responses(413),
        **_answer(409, "a live rule has this name"),
        **_INVALID,
        201: {"description": "the rule, with its webhooks' secrets"},
    },
)
def create_rule(request: Request, spec: RuleSpec, _: Admin, state: State) -> JSONResponse:
    """Store a rule; it applies to assets finished (a standing question: planned) from now on."""
    with state.engine.begin() as conn:
        try:
            stored = registry.register(conn, spec, state.settings, base_url(request))
        except registry.InvalidRule as exc:
            raise _unprocessable(f"body field '{exc.field}': {exc.reason}") from None
        except alert_store.RuleExists as exc:
            raise problem(409, "rule_exists", f"body field 'name': {exc}") from None
    return JSONResponse(
        jsonable(stored.as_json()),
        status_code=201,
        headers={"Location": href(request, f"/rules/{stored.name}")},
    )


@router.get("/rules", summary="Every alert rule", response_model=RuleList)
def list_rules(_: Reader, state: State) -> JSONResponse:
    """Every live rule, by name; webhook secrets are never shown."""
    with state.engine.connect() as conn:
        stored = alert_store.rules(conn)
    return JSONResponse(jsonable({"rules": [s.as_json() for s in stored]}))


@router.get("/rules/{name}", summary="One alert rule, by name or id", response_model=Rule)
def show_rule(name: str, _: Reader, state: State) -> JSONResponse:
    """The rule; webhook secrets are never shown."""
    return JSONResponse(jsonable(_found(state, name).as_json()))


@router.delete(
    "/rules/{name}",
    summary="Delete an alert rule (its alerts stay)",
    status_code=204,
    response_class=Response,
)
def delete_rule(name: str, _: Admin, state: State) -> Response:
    """The rule fires no more and its webhooks are told nothing more; its alerts are kept."""
    stored = _found(state, name)
    with state.engine.begin() as conn:
        deleted = alert_store.delete_rule(conn, str(stored.rule_id))
    if deleted is None:  # deleted by someone else in between
        raise problem(404, "not_found", f"no rule {name!r} (`GET /rules` lists them)")
    return Response(status_code=204)


@router.post(
    "/rules/{name}/test",
    summary="What a rule would fire on among stored assets, without firing",
    response_model=RuleTestAnswer,
    responses={**responses(413), **_INVALID},
)
def evaluate_rule(
    name: str, _: Reader, state: State, body: RuleTest | None = None
) -> RuleTestAnswer:
    """Evaluate the rule against the assets given, or the newest finished ones it may meet.

    A standing question finds answers only on assets planned while a rule asked it.
    """
    stored = _found(state, name)
    asked = body or RuleTest()
    with state.engine.connect() as conn:
        tried = alert_store.trial(conn, stored, asked.asset_ids, asked.limit)
    return RuleTestAnswer(
        rule=stored.name,
        assets=tried.assets,
        fires_on=[
            WouldFire(asset_id=a, object_key=key, evidence=evidence)
            for a, key, evidence in tried.fires_on
        ],
        unknown=tried.unknown,
    )


@router.get("/alerts", summary="Alerts, newest first", response_model=AlertList)
def list_alerts(
    _: Reader,
    state: State,
    rule: Annotated[str | None, Query(description="only this rule's, by name")] = None,
    asset_id: Annotated[uuid.UUID | None, Query(description="only this asset's")] = None,
    limit: Limit = None,
) -> JSONResponse:
    """Alerts with their evidence and how many webhook deliveries each has, and delivered."""
    if rule is not None and (reason := rule_name_problem(rule)) is not None:
        raise params.bad_parameter("rule", reason)
    size = params.page_limit(limit, state.settings.api)
    with state.engine.connect() as conn:
        rows = alert_store.alerts(conn, rule_name=rule, asset_id=asset_id, limit=size)
    return JSONResponse(jsonable({"alerts": rows, "numberReturned": len(rows)}))


@router.get(
    "/rules/{name}/deliveries",
    summary="The delivery log of a rule's webhooks, newest first",
    response_model=DeliveryList,
)
def list_deliveries(
    name: str,
    _: Reader,
    state: State,
    alert_id: Annotated[uuid.UUID | None, Query(description="only this alert's")] = None,
    limit: Limit = None,
) -> JSONResponse:
    """Each delivery of the rule's alerts: its status, every attempt's answer, its endpoint's state.

    A delivery is pending while it is retried (``next_attempt_at``), delivered once a receiver
    answered 2xx, failed once retries ran out or its endpoint was disabled.
    """
    stored = _found(state, name)
    size = params.page_limit(limit, state.settings.api)
    with state.engine.connect() as conn:
        rows = delivery.delivery_log(conn, rule_id=stored.rule_id, alert_id=alert_id, limit=size)
    return JSONResponse(jsonable({"deliveries": rows, "numberReturned": len(rows)}))
