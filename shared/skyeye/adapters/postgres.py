"""PostgreSQL: engine creation, ordered and idempotent schema migrations, failures in our terms.

Callers name SQLAlchemy's connection types by this module's names (:data:`Engine`,
:data:`Connection`) and never import the client themselves; a database call whose failure the
caller handles runs in :func:`connection`, which raises :class:`DatabaseError`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TypeAlias

import sqlalchemy as sa
import sqlalchemy.exc

#: A pool of connections to one database, made by :func:`create_engine`.
Engine: TypeAlias = sa.Engine
#: One connection of an :data:`Engine`, in or out of a transaction.
Connection: TypeAlias = sa.Connection

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process migrating one database.
_MIGRATION_LOCK_KEY = 0x5C7E_0001


@dataclass(frozen=True)
class Migration:
    """One packaged schema migration: its number, its name and its SQL."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """A hash of the SQL, recorded when applied: an edited applied migration is refused."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """The packaged migrations cannot be applied as they stand (a duplicate or edited one)."""


class DatabaseError(Exception):
    """A database call failed (SQLAlchemy's exception is the cause).

    ``reason`` says why in a user's words when the database was unavailable (worth a retry),
    and is None for any other failure.
    """

    def __init__(self, reason: str | None, detail: str) -> None:
        super().__init__(reason or detail)
        self.reason = reason


def probe(engine: Engine) -> None:
    """Ask the engine's database a trivial question (a readiness probe); raises if it cannot."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def transient_reason(exc: BaseException) -> str | None:
    """Why the database is unreachable when ``exc`` says so (worth a retry), else None."""
    if isinstance(exc, DatabaseError):
        return exc.reason
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return "the database connection was lost"
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return "the database is unavailable"
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return "no database connection was free in time"
    return None


@contextmanager
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection of ``engine``; a database failure in the block raises :class:`DatabaseError`."""
    try:
        with engine.connect() as conn:
            yield conn
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise DatabaseError(transient_reason(exc), str(exc).splitlines()[0]) from exc


def ping(url: str) -> None:
    """Raise unless the database at ``url`` accepts a connection and answers a query in time."""
    # no pool: the caller polls a server that is starting, each try on a fresh connection
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.select(1)).scalar_one()
    finally:
        engine.dispose()


def create_engine(url: str) -> Engine:
    """An engine with a small pool whose connections are checked before each use."""
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def migrations() -> list[Migration]:
    """The packaged migrations, ordered by the number that starts each file name."""
    found = []
    for entry in (resources.files("skyeye.catalog") / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if len({m.version for m in found}) != len(found):
        raise MigrationError("two migrations share a version number")
    return found


def migrate(engine: Engine) -> list[int]:
    """Apply every pending migration in order; returns the versions applied now.

    An advisory lock serialises concurrent callers (several services start together), and a
    changed file whose version is already applied is refused rather than silently skipped.
    """
    applied_now = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        done = {
            row.version: row.checksum
            for row in conn.execute(sa.text("SELECT version, checksum FROM schema_migrations"))
        }
        for migration in migrations():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} ({migration.name}) changed after it was "
                        "applied; add a new migration instead of editing an applied one"
                    )
                continue
            conn.exec_driver_sql(migration.sql)
            conn.execute(
                sa.text(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)"
                ),
                {"v": migration.version, "n": migration.name, "c": migration.checksum},
            )
            applied_now.append(migration.version)
            log.info("applied migration %04d %s", migration.version, migration.name)
    return applied_now
