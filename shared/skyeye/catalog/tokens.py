"""API tokens: made here, kept in the catalog's ``api_tokens`` table by their SHA-256 only.

A token is ``skyeye_`` and 32 random bytes (URL-safe base64), shown once when it is made. The
catalog keeps its SHA-256, its first :data:`PREFIX_CHARS` characters (so ``skyeye token list``
shows which token is which) and its scopes: ``read`` (search and read), ``ask`` (questions about
stored assets; implies ``read``) and ``admin`` (implies both).

Why a fast hash and no salt: a slow, salted hash (bcrypt, argon2) protects *guessable* secrets
such as passwords from a dictionary attack on a stolen table. A token is 256 random bits: no
dictionary holds it and no brute force reaches it, so one SHA-256 is as safe, and it lets a
request find its token by an indexed equality lookup in a fraction of a millisecond instead of
spending tens of milliseconds of CPU on every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "MIN_ID_PREFIX",
    "PREFIX_CHARS",
    "SCOPES",
    "TOKEN_MARK",
    "NewToken",
    "TokenNotFound",
    "TokenRecord",
    "create_token",
    "find_token",
    "generate_token",
    "granted_scopes",
    "hash_token",
    "list_tokens",
    "revoke_token",
]

#: The scopes a token may hold, weakest first.
SCOPES = ("read", "ask", "admin")
# what each scope grants: itself and every weaker one
_GRANTS = {"read": {"read"}, "ask": {"ask", "read"}, "admin": {"admin", "ask", "read"}}
#: Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
TOKEN_MARK = "skyeye_"
#: How much of a token ``skyeye token list`` shows: the mark and 5 random characters.
PREFIX_CHARS = 12
# The shortest token id prefix accepted by revoke, as `skyeye token list` prints ids.
MIN_ID_PREFIX = 8
# A LIKE pattern matches an id prefix only when the selector could be one (hex digits, dashes).
_ID_PREFIX = re.compile(r"[0-9a-f-]+")
# A used token's last_used_at is written at most this often: a busy token would otherwise turn
# every read request into a row update.
_TOUCH_INTERVAL = "1 minute"


class TokenNotFound(LookupError):
    """A selector that names no token that could be revoked, or more than one."""


@dataclass(frozen=True)
class TokenRecord:
    """A stored token as ``skyeye token list`` shows it: never its hash, never the token."""

    token_id: uuid.UUID
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (ids and times as strings)."""
        return {
            "token_id": str(self.token_id),
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "last_used_at": None if self.last_used_at is None else self.last_used_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


@dataclass(frozen=True)
class NewToken:
    """A token just made: its record and the token itself, which nothing can show again."""

    record: TokenRecord
    token: str


def generate_token() -> str:
    """A new random token: :data:`TOKEN_MARK` and 256 bits from the OS's CSPRNG."""
    return TOKEN_MARK + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """The SHA-256 of ``token``: what the catalog stores and looks a token up by."""
    return hashlib.sha256(token.encode()).digest()


def granted_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Every scope that ``scopes`` grant: ``admin`` implies ``ask`` and ``read``, ``ask`` ``read``.

    Raises:
        ValueError: A scope is not one of :data:`SCOPES`.
    """
    granted: set[str] = set()
    for scope in scopes:
        if scope not in _GRANTS:
            raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")
        granted |= _GRANTS[scope]
    return frozenset(granted)


_COLUMNS = "token_id, name, prefix, scopes, created_at, last_used_at, revoked_at"


def _record(row: sa.Row[Any]) -> TokenRecord:
    m = row._mapping
    return TokenRecord(
        token_id=m["token_id"],
        name=m["name"],
        prefix=m["prefix"],
        scopes=tuple(m["scopes"]),
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
    )


def create_token(conn: Connection, scopes: Iterable[str], name: str | None = None) -> NewToken:
    """Make a token with ``scopes`` and store its hash; the caller commits.

    Args:
        conn: A connection in a transaction.
        scopes: One or more of :data:`SCOPES`; kept as given (in :data:`SCOPES` order).
        name: What the token is for; default ``token-`` and the first 8 characters of its id.

    Raises:
        ValueError: No scope, an unknown scope, or a blank name.
    """
    wanted = set(scopes)
    granted_scopes(wanted)  # refuses an unknown scope
    if not wanted:
        raise ValueError(f"a token needs at least one scope ({', '.join(SCOPES)})")
    token_id = uuid.uuid4()
    if name is None:
        name = f"token-{str(token_id)[:MIN_ID_PREFIX]}"
    elif not name.strip():
        raise ValueError("a token's name must not be blank")
    token = generate_token()
    row = conn.execute(
        sa.text(
            "INSERT INTO api_tokens (token_id, name, prefix, token_hash, scopes)"
            " VALUES (:id, :name, :prefix, :hash, :scopes)"
            f" RETURNING {_COLUMNS}"
        ),
        {
            "id": token_id,
            "name": name,
            "prefix": token[:PREFIX_CHARS],
            "hash": hash_token(token),
            "scopes": [s for s in SCOPES if s in wanted],
        },
    ).one()
    return NewToken(_record(row), token)


def find_token(conn: Connection, token: str) -> TokenRecord | None:
    """The live (not revoked) token ``token``, or None; notes its use. The caller commits.

    The record is as it was before this use. ``last_used_at`` is written only when it is unset
    or older than a minute, so a token in steady use costs one small update a minute, not one
    per request.
    """
    # one round trip: the lookup, and the touch of a token not noted within the interval
    row = conn.execute(
        sa.text(
            f"WITH hit AS (SELECT {_COLUMNS} FROM api_tokens"
            " WHERE token_hash = :hash AND revoked_at IS NULL),"
            " touched AS (UPDATE api_tokens SET last_used_at = now()"
            " WHERE token_id IN (SELECT token_id FROM hit) AND (last_used_at IS NULL"
            f" OR last_used_at < now() - interval '{_TOUCH_INTERVAL}'))"
            f" SELECT {_COLUMNS} FROM hit"
        ),
        {"hash": hash_token(token)},
    ).one_or_none()
    return None if row is None else _record(row)


def list_tokens(conn: Connection) -> list[TokenRecord]:
    """Every token, revoked ones included, oldest first."""
    rows = conn.execute(
        sa.text(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at, token_id")
    ).all()
    return [_record(r) for r in rows]


def revoke_token(conn: Connection, selector: str) -> TokenRecord:
    """Revoke the one live token that ``selector`` names; the caller commits.

    ``selector`` is a token id, the first 8 or more characters of one (as ``skyeye token list``
    prints them), or a token's name.

    Raises:
        TokenNotFound: It names no live token (saying so when it names only revoked ones), or
            several (listing them: names are not unique).
    """
    text = selector.strip()
    lowered = text.lower()
    as_prefix = len(lowered) >= MIN_ID_PREFIX and _ID_PREFIX.fullmatch(lowered) is not None
    rows = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE name = :name"
            " OR (:as_prefix AND token_id::text LIKE :prefix) ORDER BY created_at, token_id"
        ),
        {"name": text, "as_prefix": as_prefix, "prefix": lowered + "%"},
    ).all()
    matches = [_record(r) for r in rows]
    live = [m for m in matches if m.revoked_at is None]
    if not live:
        if matches:
            raise TokenNotFound(f"{selector!r} names only tokens revoked already")
        raise TokenNotFound(f"{selector!r} names no token (see `skyeye token list`)")
    if len(live) > 1:
        which = ", ".join(f"{str(m.token_id)[:MIN_ID_PREFIX]} ({m.name})" for m in live)
        raise TokenNotFound(
            f"{selector!r} names {len(live)} tokens: {which}; give the id of the one to revoke"
        )
    row = conn.execute(
        sa.text(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_id = :id"
            f" AND revoked_at IS NULL RETURNING {_COLUMNS}"
        ),
        {"id": live[0].token_id},
    ).one_or_none()
    if row is None:  # revoked by someone else between the two statements
        raise TokenNotFound(f"{selector!r} names only tokens revoked already")
    return _record(row)
