"""Schemathesis against the real stack's API process: its OpenAPI document (``/api``) drives a
bounded, seeded run over every operation, with an admin token, and no answer may be a 5xx,
carry a status the document does not declare, or break the schema it declares.

Each operation (one pytest test each) gets its own token, so the per-token request limit
(``requests_per_minute``) never answers 429 in the middle of the run. Path parameters are drawn
from the schema (free strings); no ingest is needed: search over an empty or a full catalog must
conform alike. ``POST /assets/{asset_id}/ask`` is kept: with generated ids it never reaches the
model, so it stays fast, and its refusals are checked like any other.

schemathesis' ``pytest.from_fixture`` does not run under pytest 9 (it sets ``Item._nodeid``,
which pytest 9 dropped), so the document is built at collection time by the application code
that serves it and the tests call the running process (``base_url``).
"""

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from skyeye.catalog import alerts as alert_store
from skyeye.catalog import tokens
from skyeye.services.api.app import create_app
from skyeye.settings import Settings

from .conftest import Pipeline

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

CONFIG = {
    "seed": 22,
    "generation": {
        "max-examples": 20,
        "no-shrink": True,
        "deterministic": True,
        "database": "none",
        # our own token goes in every request; schemathesis must not replace it with junk
        "with-security-parameters": False,
    },
    "phases": {"stateful": {"enabled": False}},
    # the live feed never ends by itself: each generated request reads it for 2 s at most
    "operations": [{"include-path": "/api/events", "request-timeout": 2}],
}


@pytest.fixture(scope="module")
def api_url(pipeline: Pipeline) -> str:
    return pipeline.api_url()


@pytest.fixture
def admin_token(pipeline: Pipeline) -> Iterator[str]:
    """A fresh admin token for each operation (each has its own request budget); revoked after.

    The rules a generated ``POST /rules`` made are deleted after, so that no later test's
    assets are asked their questions or fire them.
    """
    with pipeline.engine.begin() as conn:
        new = tokens.create_token(conn, ["admin"], name=f"schemathesis-{uuid.uuid4().hex[:8]}")
        before = {r.rule_id for r in alert_store.rules(conn)}
    yield new.token
    with pipeline.engine.begin() as conn:
        tokens.revoke_token(conn, str(new.record.token_id))
        for made in alert_store.rules(conn):
            if made.rule_id not in before:
                alert_store.delete_rule(conn, str(made.rule_id))


# The document the API serves at /api, made by the same application code without a catalog, so
# that pytest can make one test per operation when it collects this module (the stack starts
# later, in the session fixture); test_the_document_is_what_the_api_serves keeps the two equal.
DOCUMENT = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(CONFIG))


def test_the_document_is_what_the_api_serves(api_url: str) -> None:
    served = httpx.get(f"{api_url}/api", timeout=30)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(DOCUMENT))
    assert DOCUMENT["openapi"].startswith("3.1")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_response_conforms(
    case: Any, api_url: str, admin_token: str
) -> None:
    case.call_and_validate(
        base_url=api_url, headers={"Authorization": f"Bearer {admin_token}"}, checks=CHECKS
    )
