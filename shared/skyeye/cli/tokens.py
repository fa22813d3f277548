"""``skyeye token create/list/revoke``: the API tokens of the results API.

A token is shown once, when it is made (on the last line of ``create``'s output, so
``skyeye token create --scope read | tail -n 1`` is the token); the catalog keeps only its hash
(:mod:`skyeye.catalog.tokens`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from skyeye.adapters import postgres
from skyeye.adapters.postgres import Engine
from skyeye.catalog import tokens
from skyeye.cli.output import table
from skyeye.settings import Settings
from skyeye.stack import resolve

__all__ = ["add_parser", "cmd_create", "cmd_list", "cmd_revoke"]


def add_parser(commands: Any) -> None:
    """Add ``token`` and its ``create``, ``list`` and ``revoke`` commands to the CLI."""
    p = commands.add_parser(
        "token",
        help="create, list and revoke the results API's tokens",
        description="API tokens for the results API, with scopes: read (search and read), ask "
        "(questions about stored assets; implies read), admin (implies both).",
    )
    token_commands = p.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = token_commands.add_parser(
        "create", help="make a token; it is printed once, on the last line"
    )
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=tokens.SCOPES,
        help="a scope the token grants (repeat for several); admin implies ask, ask implies read",
    )
    p.add_argument(
        "--name", type=_name, help="what the token is for (default: token-<first 8 of its id>)"
    )
    p.add_argument("--json", action="store_true", help="the record and the token, as JSON")
    p.set_defaults(func=cmd_create)
    p = token_commands.add_parser("list", help="every token: id, name, prefix, scopes, use")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = token_commands.add_parser("revoke", help="revoke one token, by id (or prefix) or name")
    p.add_argument(
        "selector",
        metavar="ID_OR_NAME",
        help=f"a token id, its first {tokens.MIN_ID_PREFIX}+ characters "
        "(`skyeye token list`), or its name",
    )
    p.set_defaults(func=cmd_revoke)


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a token's name must not be blank")
    return text


def _engine(args: argparse.Namespace) -> Engine:
    settings = resolve(Settings(home=args.home) if args.home else Settings())
    assert settings.database_url is not None
    return postgres.create_engine(settings.database_url)


def cmd_create(args: argparse.Namespace) -> int:
    """``skyeye token create``: make a token and print it, once, on the last line."""
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            made = tokens.create_token(conn, args.scope, args.name)
    finally:
        engine.dispose()
    record = made.record
    if args.json:
        print(json.dumps({**record.as_json(), "token": made.token}, indent=2))
        return 0
    print(
        f"created token {record.name!r} (id {_short_id(record)}, scopes "
        f"{', '.join(record.scopes)}); it is shown only this once, on the next line: keep it now"
    )
    print(made.token)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``skyeye token list``: every token, oldest first; never a hash, never a token."""
    engine = _engine(args)
    try:
        with engine.connect() as conn:
            records = tokens.list_tokens(conn)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([r.as_json() for r in records], indent=2))
        return 0
    if not records:
        print("no API tokens (create one with `skyeye token create --scope read`)")
        return 0
    rows = [
        (
            _short_id(r),
            r.name,
            r.prefix + "…",
            ",".join(r.scopes),
            _when(r.created_at),
            _when(r.last_used_at),
            _when(r.revoked_at),
        )
        for r in records
    ]
    header = ("id", "name", "prefix", "scopes", "created (UTC)", "last used", "revoked")
    print(table(rows, header))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """``skyeye token revoke``: revoke one token; exit 2 when the selector names none or several."""
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            record = tokens.revoke_token(conn, args.selector)
    except tokens.TokenNotFound as exc:
        print(f"[skyeye] error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        engine.dispose()
    print(f"revoked token {record.name!r} (id {_short_id(record)})")
    return 0


def _short_id(record: tokens.TokenRecord) -> str:
    return str(record.token_id)[: tokens.MIN_ID_PREFIX]


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
