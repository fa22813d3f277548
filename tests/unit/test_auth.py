"""The API's token check, scopes, request limit, error bodies and body limit, in isolation.

A tiny FastAPI app uses the real dependencies of services/api/auth.py and the real handlers of
services/api/errors.py; the database is stubbed: ``token_lookup`` is overridden with a dict of
tokens, and ``app.state.api`` holds only the settings (no engine, no object store).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import BaseModel

from skyeye.catalog import tokens
from skyeye.catalog.tokens import TokenRecord
from skyeye.services.api import auth
from skyeye.services.api.auth import Principal, RateLimiter, require
from skyeye.services.api.errors import BodyLimit, install_error_handlers, problem
from skyeye.settings import ApiSettings, Settings


@dataclass
class _State:
    """Stands in for ApiState: the dependencies read only ``settings`` once lookup is stubbed."""

    settings: Settings


@dataclass
class _Tokens:
    """Stands in for the catalog's api_tokens table: live tokens by their text."""

    live: dict[str, TokenRecord] = field(default_factory=dict)
    looked_up: list[str] = field(default_factory=list)

    def add(self, *scopes: str, name: str = "t") -> str:
        token = tokens.generate_token()
        self.live[token] = TokenRecord(
            uuid.uuid4(), name, token[:12], tuple(scopes), datetime.now(UTC), None, None
        )
        return token

    def lookup(self, token: str) -> TokenRecord | None:
        self.looked_up.append(token)
        return self.live.get(token)


class _Body(BaseModel):
    bbox: list[float]


def _app(table: _Tokens, **api: Any) -> FastAPI:
    app = FastAPI()
    app.state.api = _State(Settings(api=ApiSettings(**api)))
    app.dependency_overrides[auth.token_lookup] = lambda: table.lookup
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=1024)

    def who(p: Principal) -> dict[str, Any]:
        return {"name": p.name, "anonymous": p.anonymous, "scopes": sorted(p.scopes)}

    @app.get("/read")
    def read(p: Annotated[Principal, Depends(require("read"))]) -> dict[str, Any]:
        return who(p)

    @app.post("/ask")
    def ask(p: Annotated[Principal, Depends(require("ask"))]) -> dict[str, Any]:
        return who(p)

    @app.get("/admin")
    def admin(p: Annotated[Principal, Depends(require("admin"))]) -> dict[str, Any]:
        return who(p)

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, int]:
        return {"limit": limit}

    @app.post("/search")
    def search(body: _Body) -> dict[str, int]:
        return {"n": len(body.bbox)}

    @app.get("/gone")
    def gone() -> None:
        raise problem(404, "not_found", "no asset 42")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    return app


@pytest.fixture
def table() -> _Tokens:
    return _Tokens()


@pytest.fixture
def client(table: _Tokens) -> Iterator[TestClient]:
    with TestClient(_app(table)) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_is_401_saying_how_to_send_one(client: TestClient) -> None:
    r = client.get("/read")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    body = r.json()
    assert set(body) == {"code", "description"}
    assert body["code"] == "unauthorized"
    assert "Authorization: Bearer <token>" in body["description"]
    assert "skyeye token create --scope read" in body["description"]


def test_a_token_with_the_scope_is_admitted(client: TestClient, table: _Tokens) -> None:
    token = table.add("read", name="dashboard")
    r = client.get("/read", headers=_bearer(token))
    assert r.status_code == 200
    assert r.json() == {"name": "dashboard", "anonymous": False, "scopes": ["read"]}


def test_unknown_or_revoked_token_is_401(client: TestClient, table: _Tokens) -> None:
    token = table.add("admin")
    del table.live[token]  # revoked: the lookup no longer finds it
    r = client.get("/read", headers=_bearer(token))
    assert r.status_code == 401
    assert "unknown or revoked" in r.json()["description"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("Basic dXNlcjpwdw==", "'Basic'"),
        ("Bearer", "no token after 'Bearer'"),
        ("Bearer   ", "no token after 'Bearer'"),
        ("Bearer skyeye_a skyeye_b", "one token"),
        ("Bearer ghp_notours", "not a SkyEye API token"),
    ],
)
def test_a_malformed_header_is_401_saying_what_is_wrong(
    client: TestClient, table: _Tokens, header: str, says: str
) -> None:
    r = client.get("/read", headers={"Authorization": header})
    assert r.status_code == 401
    assert says in r.json()["description"]
    assert table.looked_up == []  # nothing malformed reaches the database


def test_the_scheme_is_case_insensitive(client: TestClient, table: _Tokens) -> None:
    token = table.add("read")
    assert client.get("/read", headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_a_token_without_the_scope_is_403_naming_both(client: TestClient, table: _Tokens) -> None:
    token = table.add("read", name="viewer")
    r = client.post("/ask", headers=_bearer(token))
    assert r.status_code == 403
    description = r.json()["description"]
    assert "'ask'" in description and "viewer" in description and "read" in description
    assert r.json()["code"] == "forbidden"
    assert 'scope="ask"' in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("held", "allowed"),
    [
        ("read", {"/read"}),
        ("ask", {"/read", "/ask"}),
        ("admin", {"/read", "/ask", "/admin"}),
    ],
)
def test_stronger_scopes_imply_weaker_ones(
    client: TestClient, table: _Tokens, held: str, allowed: set[str]
) -> None:
    token = table.add(held)
    for path, method in (("/read", "GET"), ("/ask", "POST"), ("/admin", "GET")):
        r = client.request(method, path, headers=_bearer(token))
        assert r.status_code == (200 if path in allowed else 403), (held, path, r.text)


def test_anonymous_reads_only_when_the_setting_allows(table: _Tokens) -> None:
    with TestClient(_app(table, anonymous_read=True)) as client:
        r = client.get("/read")
        assert r.status_code == 200
        assert r.json() == {"name": "anonymous", "anonymous": True, "scopes": ["read"]}
        # asks still need a token, and a bad token is not quietly read as anonymous
        assert client.post("/ask").status_code == 401
        assert "--scope ask" in client.post("/ask").json()["description"]
        assert client.get("/read", headers=_bearer("skyeye_nope")).status_code == 401
    with TestClient(_app(table, anonymous_read=False)) as client:
        assert client.get("/read").status_code == 401


def test_over_the_limit_is_429_with_retry_after(table: _Tokens) -> None:
    token, other = table.add("read"), table.add("read")
    with TestClient(_app(table, requests_per_minute=3)) as client:
        for _ in range(3):
            assert client.get("/read", headers=_bearer(token)).status_code == 200
        r = client.get("/read", headers=_bearer(token))
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["code"] == "too_many_requests"
        assert "3 requests in a minute" in r.json()["description"]
        # the limit is per token
        assert client.get("/read", headers=_bearer(other)).status_code == 200


def test_anonymous_callers_are_limited_per_address(table: _Tokens) -> None:
    with TestClient(_app(table, anonymous_read=True, requests_per_minute=2)) as client:
        assert [client.get("/read").status_code for _ in range(3)] == [200, 200, 429]
    with TestClient(
        _app(table, anonymous_read=True, requests_per_minute=2), client=("10.0.0.9", 5000)
    ) as elsewhere:
        assert elsewhere.get("/read").status_code == 200


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_slides() -> None:
    clock = _Clock()
    limiter = RateLimiter(2, clock=clock)
    assert limiter.acquire("k") == 0.0
    clock.now += 20
    assert limiter.acquire("k") == 0.0
    clock.now += 10
    assert limiter.acquire("k") == pytest.approx(30.0)  # the first request leaves at t=60
    clock.now += 30
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == pytest.approx(20.0)  # now the second's turn, at t=80
    assert limiter.acquire("other") == 0.0


def test_idle_keys_are_forgotten() -> None:
    clock = _Clock()
    limiter = RateLimiter(1, clock=clock)
    for n in range(100):
        limiter.acquire(f"client:{n}")
    clock.now += 61
    limiter.acquire("client:new")
    assert set(limiter._seen) == {"client:new"}


def test_a_request_counts_once_however_many_checks_it_passes(table: _Tokens) -> None:
    app = _app(table, requests_per_minute=2)

    @app.get("/twice", dependencies=[Depends(require("read"))])
    def twice(p: Annotated[Principal, Depends(require("ask"))]) -> str:
        return p.name

    token = table.add("ask")
    with TestClient(app) as client:
        codes = [client.get("/twice", headers=_bearer(token)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_require_refuses_an_unknown_scope() -> None:
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        require("write")


def test_bad_query_parameter_is_400_naming_it(client: TestClient) -> None:
    r = client.get("/items", params={"limit": 5000})
    assert r.status_code == 400
    assert r.json() == {
        "code": "invalid_parameter",
        "description": "query parameter 'limit': must be <= 1000, got '5000'",
    }
    r = client.get("/items", params={"limit": "ten"})
    assert r.status_code == 400
    assert r.json()["description"].startswith("query parameter 'limit': ")
    assert "'ten'" in r.json()["description"]


def test_bad_body_is_400_naming_the_field(client: TestClient) -> None:
    r = client.post("/search", json={"bbox": [1, "x"]})
    assert r.status_code == 400
    assert "body field 'bbox[1]'" in r.json()["description"]
    r = client.post("/search", json={})
    assert r.json()["description"] == "body field 'bbox': is required"
    r = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["description"]


def test_http_errors_have_the_exception_shape(client: TestClient) -> None:
    assert client.get("/gone").json() == {"code": "not_found", "description": "no asset 42"}
    r = client.get("/no/such/path")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert "/no/such/path" in r.json()["description"]
    r = client.delete("/items")
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"


def test_an_unexpected_failure_is_a_generic_500(
    table: _Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(_app(table), raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error"
    assert "secret internals" not in r.text
    assert any(
        rec.exc_info and "secret internals" in str(rec.exc_info[1]) for rec in caplog.records
    )


def test_a_declared_body_over_the_limit_is_413(client: TestClient) -> None:
    r = client.post("/search", json={"bbox": [0.5] * 400})
    assert r.status_code == 413
    assert r.json()["code"] == "body_too_large"
    assert "1024 bytes" in r.json()["description"]


def test_a_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"bbox": ['
        for _ in range(300):  # 1.5 kB in all
            yield b"0.5, "
        yield b"0.5]}"

    r = client.post("/search", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413
    assert "1024 bytes" in r.json()["description"]
    # under the limit, a streamed body goes through
    small = iter([b'{"bbox": [', b"1, 2]}"])
    r = client.post("/search", content=small, headers={"Content-Type": "application/json"})
    assert r.json() == {"n": 2}


def test_a_bad_content_length_is_400() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("the application ran")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"x")]}
    anyio.run(BodyLimit(app, 1024), scope, receive, send)
    assert sent[0]["status"] == 400
    assert b"Content-Length" in sent[1]["body"]


def test_tokens_are_random_and_hashed() -> None:
    a, b = tokens.generate_token(), tokens.generate_token()
    assert a != b and a.startswith("skyeye_") and len(a) >= len("skyeye_") + 43
    assert tokens.hash_token(a) != tokens.hash_token(b)
    assert len(tokens.hash_token(a)) == 32
    assert tokens.granted_scopes(["admin"]) == {"admin", "ask", "read"}
    assert tokens.granted_scopes(["ask"]) == {"ask", "read"}
    with pytest.raises(ValueError, match="unknown scope"):
        tokens.granted_scopes(["write"])
