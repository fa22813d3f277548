"""``skyeye search`` (the API's query code on the command line) and ``skyeye api`` (serve it).

``search`` builds the same :class:`skyeye.catalog.search.Filters` the API builds from its query
parameters and runs the same search function: what one finds, the other finds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from skyeye.adapters import postgres
from skyeye.catalog import jsonable, search
from skyeye.catalog.search import AssetKind, AssetStatus, SearchMode
from skyeye.cli.arguments import bounded
from skyeye.contracts import TaskKind
from skyeye.settings import Settings
from skyeye.stack import resolve

__all__ = ["add_parsers", "cmd_api", "cmd_search"]


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ValueError with the reason."""

    def run(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return run


def add_parsers(commands: Any) -> None:
    """Add ``search`` and ``api`` to the CLI's commands."""
    p = commands.add_parser(
        "search",
        help="search results (or assets, detections) by text, meaning, place, time and class",
        description="The results API's search on the command line: every option is one of "
        "its query parameters, and filters combine with AND.",
        epilog="examples: skyeye search 'ships harbour'; skyeye search 'boats near a pier' "
        "--mode semantic; skyeye search --label vehicle --bbox 8.5,47.3,8.6,47.4 "
        "--datetime 2026-01-01T00:00:00Z/..",
    )
    p.add_argument("q", nargs="?", help='words (web search syntax: "quoted", -not, or)')
    p.add_argument(
        "--mode",
        choices=[m.value for m in SearchMode],
        default="text",
        help="text: words, ranked; semantic: meaning (embeddings); hybrid: both fused",
    )
    p.add_argument(
        "--what",
        choices=["results", "assets", "detections"],
        default="results",
        help="what to list (default results: captions, descriptions, answers)",
    )
    p.add_argument("--bbox", type=_checked(search.parse_bbox), help="lon/lat W,S,E,N")
    p.add_argument(
        "--datetime",
        type=_checked(search.parse_interval),
        help="RFC 3339 instant or START/END ('..' for an open end)",
    )
    p.add_argument("--label", help="a detection's phrase or class, any case")
    p.add_argument("--asset-kind", choices=[k.value for k in AssetKind])
    p.add_argument("--task-kind", choices=[k.value for k in TaskKind])
    p.add_argument("--status", choices=[s.value for s in AssetStatus])
    p.add_argument("--limit", type=bounded(int, 1, 10_000), default=20, help="page size (20)")
    p.add_argument("--cursor", help="the next page, as the previous page printed it")
    p.add_argument("--json", action="store_true", help="rows and next cursor as JSON")
    p.set_defaults(func=cmd_search)

    p = commands.add_parser(
        "api",
        help="serve the results API in the foreground (skyeye up already runs one)",
        description="Serve the results API with uvicorn against the running stack (or the "
        "external services the SKYEYE_* settings name). Settings: SKYEYE_API__*.",
    )
    p.add_argument("--host", help="address to bind (default settings.api.host, 127.0.0.1)")
    p.add_argument("--port", type=bounded(int, 1, 65535), help="port (default settings.api.port)")
    p.set_defaults(func=cmd_api)


def cmd_api(args: argparse.Namespace) -> int:
    """``skyeye api``: replace this process with the API server (``skyeye.services.api``)."""
    env = dict(os.environ)
    if args.home is not None:
        env["SKYEYE_HOME"] = str(args.home)
    if args.host:
        env["SKYEYE_API__HOST"] = args.host
    if args.port:
        env["SKYEYE_API__PORT"] = str(args.port)
    # a resolved stack is checked first, so a stopped stack is one line, not a traceback
    resolve(Settings(**({"home": args.home} if args.home else {})))
    sys.stdout.flush()
    os.execvpe(sys.executable, [sys.executable, "-m", "skyeye.services.api"], env)


def _filters(args: argparse.Namespace) -> search.Filters:
    start, end = args.datetime or (None, None)
    fields = {
        "q": args.q,
        "mode": args.mode,
        "bbox": args.bbox,
        "start": start,
        "end": end,
        "label": args.label,
        "asset_kind": args.asset_kind,
        "task_kind": args.task_kind,
        "status": args.status,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    try:
        return search.Filters(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        reasons = [
            (f"--{'-'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise SystemExit(_fail("; ".join(reasons))) from None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_search(args: argparse.Namespace) -> int:
    """``skyeye search``: one page of matches, best (or newest) first, and the next cursor."""
    f = _filters(args)
    settings = resolve(Settings(**({"home": args.home} if args.home else {})))
    if args.what != "results" and f.mode is not SearchMode.TEXT:
        return _fail(f"--mode {f.mode.value} searches results only, not {args.what}")
    vector = None
    if f.mode is not SearchMode.TEXT and f.q is not None:
        # the model the pipeline embeds with, run here: a CLI that joined the Ray cluster as a
        # driver would need its network and its exact Ray version, and could hang on it.
        # Imported here: torch and transformers cost seconds no other command should pay.
        from skyeye.model.sentences import SentenceEncoder

        [vector] = SentenceEncoder().encode([f.q]).tolist()
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            page = _run(args.what, conn, f, vector)
    except search.InvalidCursor as exc:
        return _fail(f"--cursor: {exc}")
    finally:
        engine.dispose()
    if args.json:
        body = {args.what: page.rows, "next_cursor": page.next_cursor}
        print(json.dumps(body, default=jsonable))
        return 0
    _print(args.what, page.rows)
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def _run(
    what: str, conn: postgres.Connection, f: search.Filters, vector: Sequence[float] | None
) -> search.Page:
    if what == "assets":
        return search.search_assets(conn, f)
    if what == "detections":
        return search.search_detections(conn, f)
    return search.search_results(conn, f, vector)


def _print(what: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        print(f"no {what} match")
        return
    if what == "assets":
        lines = [
            (str(r["asset_id"]), r["kind"], r["status"], str(r["seen_at"])[:19], r["object_key"])
            for r in rows
        ]
        header: tuple[str, ...] = ("asset", "kind", "status", "time", "key")
    elif what == "detections":
        lines = [
            (str(r["detection_id"]), str(r["asset_id"]), r["label"], _place(r), r["object_key"])
            for r in rows
        ]
        header = ("detection", "asset", "label", "lon/lat", "key")
    else:
        lines = [
            (
                "" if r["score"] is None else f"{r['score']:.3f}",
                str(r["asset_id"])[:8],
                r["task_kind"],
                _short(r["task_text"], 30),
                _short(r["raw_text"], 50),
            )
            for r in rows
        ]
        header = ("score", "asset", "task", "asked", "answer")
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    for line in [header, *lines]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _place(row: dict[str, Any]) -> str:
    bounds = row.get("lon_lat_bounds")
    if not bounds:
        return "-"
    return f"{(bounds[0] + bounds[2]) / 2:.4f},{(bounds[1] + bounds[3]) / 2:.4f}"


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
