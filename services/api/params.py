"""Query parameters and bodies -> :class:`skyeye.catalog.search.Filters`, or a 400 naming them.

The API's parameters are the catalog's filters; parsing lives in the catalog
(:func:`~skyeye.catalog.search.parse_bbox`, :func:`~skyeye.catalog.search.parse_interval`) so
that ``skyeye search`` and the API accept exactly the same values.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from pydantic import ValidationError

from skyeye.catalog import search
from skyeye.settings import ApiSettings

from .errors import problem


def bad_parameter(name: str, reason: str) -> Exception:
    """A 400 that names the parameter and says what is wrong with it."""
    return problem(400, "invalid_parameter", f"parameter '{name}': {reason}")


def known_parameters(request: Request) -> None:
    """Refuse a query parameter the operation does not define (400 naming it).

    OGC API - Features (/req/core/query-param-unknown) asks for it, and it saves a user from a
    typo silently ignored: ``?lable=ship`` would otherwise list everything.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    unknown = sorted(set(request.query_params) - _query_names(dependant))
    if unknown:
        known = ", ".join(sorted(_query_names(dependant))) or "none"
        raise bad_parameter(unknown[0], f"this operation has no such parameter (it takes: {known})")


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters an operation takes, its dependencies' included."""
    names = {field.alias for field in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def page_limit(limit: int | None, api: ApiSettings) -> int:
    """The page size: the request's, cut to ``max_limit``; the default when it names none.

    A limit over the maximum is served at the maximum, not refused: OGC API - Features asks
    for that (/req/core/fc-limit-response-1), and a client learns the size from the page.
    """
    if limit is None:
        return api.default_limit
    if limit < 1:
        raise bad_parameter("limit", f"must be at least 1, got {limit}")
    return min(limit, api.max_limit)


def bbox(text: str | None) -> search.LonLatBox | None:
    """A ``bbox`` parameter ``W,S,E,N``, checked."""
    if text is None:
        return None
    try:
        return search.parse_bbox(text)
    except ValueError as exc:
        raise bad_parameter("bbox", str(exc)) from None


def interval(text: str | None) -> dict[str, Any]:
    """A ``datetime`` parameter as the ``start``/``end`` of :class:`search.Filters`."""
    if text is None:
        return {}
    try:
        start, end = search.parse_interval(text)
    except ValueError as exc:
        raise bad_parameter("datetime", str(exc)) from None
    return {"start": start, "end": end}


def filters(**fields: Any) -> search.Filters:
    """The filters, or a 400 naming every field that is wrong (as the API calls it)."""
    try:
        return search.Filters(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> Exception:
    """A 400 naming every parameter the validation error is about, and what is wrong with it."""
    reasons = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"])
        reasons.append(f"parameter '{where}': {message}" if where else message)
    return problem(400, "invalid_parameter", "; ".join(reasons))
