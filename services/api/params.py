"""Query parameters and bodies -> :class:`skyeye.catalog.search.Filters`, or a 400 naming them.

The API's parameters are the catalog's filters; parsing lives in the catalog
(:func:`~skyeye.catalog.search.parse_bbox`, :func:`~skyeye.catalog.search.parse_interval`) so
that ``skyeye search`` and the API accept exactly the same values.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from skyeye.catalog import search
from skyeye.settings import ApiSettings

from .errors import problem


def bad_parameter(name: str, reason: str) -> Exception:
    """A 400 that names the parameter and says what is wrong with it."""
    return problem(400, "invalid_parameter", f"parameter '{name}': {reason}")


def page_limit(limit: int | None, api: ApiSettings) -> int:
    """The page size: the request's, within ``max_limit``; the default when it names none."""
    if limit is None:
        return api.default_limit
    if not 1 <= limit <= api.max_limit:
        raise bad_parameter("limit", f"must be between 1 and {api.max_limit}, got {limit}")
    return limit


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
