"""``GET /results``: captions, descriptions and answers by text, meaning, place, time and class.

The same :func:`skyeye.catalog.search.search_results` that ``skyeye search`` calls; a semantic
or hybrid query's embedding comes from the Serve app's TextEmbedder, the model that embedded
the stored answers.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from skyeye.adapters import serve as serve_adapter
from skyeye.catalog import jsonable, search
from skyeye.catalog.search import AssetKind, AssetStatus, SearchMode
from skyeye.contracts import TaskKind

from . import params
from .errors import problem, responses
from .features import Bbox, Cursor, Datetime, Limit, Reader, State
from .links import JSON, href, link, next_link
from .state import ApiState

router = APIRouter(tags=["Search"], responses=responses(401, 403, 429, 503))


def embed_query(state: ApiState, text: str) -> list[float]:
    """The query's sentence embedding, from the Serve app; 503 when the model is unavailable."""
    try:
        response = state.serve_app().embed.remote([text])
        [vector] = response.result(timeout_s=state.settings.api.ask_timeout_s)
    except Exception as exc:
        reason = serve_adapter.transient_reason(exc)
        if reason is None:
            raise
        raise problem(503, "model_unavailable", f"semantic search needs {reason[4:]}") from None
    return [float(v) for v in vector]


@router.get(
    "/results",
    summary="Search results by text or meaning, place, time, class, kinds and status",
    response_class=JSONResponse,
)
def results(
    request: Request,
    _: Reader,
    state: State,
    q: Annotated[str | None, Query(description="words (websearch syntax) or a sentence")] = None,
    mode: Annotated[SearchMode, Query(description="text, semantic or hybrid")] = SearchMode.TEXT,
    bbox: Bbox = None,
    datetime_: Annotated[Datetime, Query(alias="datetime")] = None,
    label: Annotated[str | None, Query(description="a detection's phrase or class")] = None,
    asset_kind: AssetKind | None = None,
    task_kind: TaskKind | None = None,
    status: AssetStatus | None = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> JSONResponse:
    """Results, best match first with ``q``, else newest first, in keyset pages."""
    f = params.filters(
        q=q,
        mode=mode,
        bbox=params.bbox(bbox),
        **params.interval(datetime_),
        label=label,
        asset_kind=asset_kind,
        task_kind=task_kind,
        status=status,
        limit=params.page_limit(limit, state.settings.api),
        cursor=cursor,
    )
    vector = None
    if f.mode is not SearchMode.TEXT and f.q is not None:
        vector = embed_query(state, f.q)
    with state.engine.begin() as conn:
        try:
            page = search.search_results(conn, f, vector)
        except search.InvalidCursor as exc:
            raise params.bad_parameter("cursor", str(exc)) from None
    body = {
        "results": [result_json(request, row) for row in page.rows],
        "numberReturned": len(page.rows),
        "links": [link("self", str(request.url)), *next_link(request, page.next_cursor, JSON)],
    }
    return JSONResponse(jsonable(body))


def result_json(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """One result row for clients: what was asked, the answer, where, and links to its asset."""
    out = {
        key: row[key]
        for key in (
            "result_id",
            "asset_id",
            "object_key",
            "asset_kind",
            "asset_status",
            "item_kind",
            "tile_index",
            "frame_index",
            "task_kind",
            "task_text",
            "raw_text",
            "parsed",
            "answer",
            "model",
            "origin",
            "created_at",
            "score",
        )
    }
    out["bbox"] = None if row["lon_lat_bounds"] is None else list(row["lon_lat_bounds"])
    out["datetime"] = row["seen_at"]
    out["links"] = [link("asset", href(request, f"/assets/{row['asset_id']}"))]
    return out
