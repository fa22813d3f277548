"""The schema as ordered, idempotent migrations, checked against a golden description."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from skyeye.adapters import postgres

from .conftest import Pipeline

GOLDEN = Path(__file__).parent.parent / "golden" / "schema.txt"


@pytest.fixture
def fresh_database(pipeline: Pipeline) -> Iterator[sa.Engine]:
    admin = sa.create_engine(pipeline.settings.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS schema_test"))
        conn.execute(sa.text("CREATE DATABASE schema_test"))
    url = sa.make_url(pipeline.settings.database_url).set(database="schema_test")
    engine = postgres.create_engine(url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE schema_test"))
    admin.dispose()


def describe(engine: sa.Engine) -> str:
    """Tables, columns, constraints and indexes of the public schema, one per line, sorted."""
    queries = [
        "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type"
        " || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END"
        " || CASE WHEN is_generated = 'ALWAYS' THEN ' generated' ELSE '' END"
        " FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'",
    ]
    with engine.connect() as conn:
        lines = [row[0] for q in queries for row in conn.execute(sa.text(q))]
    return "\n".join(sorted(lines)) + "\n"


def test_migrations_apply_in_order_once_and_match_golden(fresh_database: sa.Engine) -> None:
    versions = [m.version for m in postgres.migrations()]
    assert versions == sorted(versions) and versions[0] == 1
    assert postgres.migrate(fresh_database) == versions
    assert postgres.migrate(fresh_database) == []
    schema = describe(fresh_database)
    if os.environ.get("SKYEYE_UPDATE_GOLDEN"):
        GOLDEN.write_text(schema)
    assert schema == GOLDEN.read_text()


def test_an_edited_applied_migration_is_refused(fresh_database: sa.Engine) -> None:
    postgres.migrate(fresh_database)
    with fresh_database.begin() as conn:
        conn.execute(sa.text("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1"))
    with pytest.raises(postgres.MigrationError, match="changed after it was applied"):
        postgres.migrate(fresh_database)


def test_skyeye_db_migrate_brings_a_database_up_to_date_and_then_has_nothing_to_do(
    fresh_database: sa.Engine,
) -> None:
    """The deployment's migration job, as it runs: only SKYEYE_DATABASE_URL is set."""
    url = fresh_database.url.render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYEYE_")}
    env["SKYEYE_DATABASE_URL"] = url
    command = [sys.executable, "-m", "skyeye.cli", "db", "migrate"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    versions = [m.version for m in postgres.migrations()]
    assert first.stdout.strip() == f"applied migrations {', '.join(map(str, versions))}"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "the schema is up to date: nothing to apply"
