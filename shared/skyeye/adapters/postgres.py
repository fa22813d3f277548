"""PostgreSQL: engine creation and ordered, idempotent schema migrations."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process migrating one database.
_MIGRATION_LOCK_KEY = 0x5C7E_0001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def transient_reason(exc: BaseException) -> str | None:
    """Why the database is unreachable when ``exc`` says so (worth a retry), else None."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return "the database connection was lost"
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return "the database is unavailable"
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return "no database connection was free in time"
    return None


def create_engine(url: str) -> Engine:
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
