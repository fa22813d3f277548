"""`skyeye token create/list/revoke` against the real catalog, and tokens as the API finds them."""

import hashlib
import json
import uuid

import pytest
import sqlalchemy as sa

from skyeye import catalog
from skyeye.cli import main as cli

from .conftest import Pipeline


def _skyeye(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what came before
    code = cli.main(["--home", str(pipeline.home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _create(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], name: str, *scopes: str) -> str:
    args = ["token", "create", "--name", name]
    for scope in scopes:
        args += ["--scope", scope]
    code, out, err = _skyeye(pipeline, capsys, *args)
    assert code == 0, err
    return out.splitlines()[-1]


def _lookup(pipeline: Pipeline, token: str) -> catalog.TokenRecord | None:
    with pipeline.engine.begin() as conn:
        return catalog.find_token(conn, token)


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_create_prints_the_token_last_and_stores_only_its_hash(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _name()
    code, out, err = _skyeye(
        pipeline, capsys, "token", "create", "--scope", "ask", "--scope", "read", "--name", name
    )
    assert code == 0, err
    *said, token = out.splitlines()
    assert token.startswith("skyeye_") and len(token) > 40
    assert name in said[0] and "only" in said[0]

    record = _lookup(pipeline, token)
    assert record is not None
    assert record.name == name
    assert record.scopes == ("read", "ask")  # kept in the order of SCOPES
    assert record.prefix == token[:12]

    with pipeline.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text("SELECT * FROM api_tokens WHERE token_id = :id"), {"id": record.token_id}
            )
            .one()
            ._mapping
        )
    assert bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert all(token not in str(value) for value in row.values())


def test_a_lookup_notes_the_use_at_most_once_a_minute(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _create(pipeline, capsys, _name(), "read")
    first = _lookup(pipeline, token)
    assert first is not None and first.last_used_at is None  # as it was before this use
    with pipeline.engine.connect() as conn:
        [noted] = [
            t.last_used_at for t in catalog.list_tokens(conn) if t.token_id == first.token_id
        ]
    assert noted is not None
    _lookup(pipeline, token)
    with pipeline.engine.connect() as conn:
        [again] = [
            t.last_used_at for t in catalog.list_tokens(conn) if t.token_id == first.token_id
        ]
    assert again == noted


def test_list_shows_tokens_but_never_a_token_or_hash(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _name()
    token = _create(pipeline, capsys, name, "admin")
    code, out, _ = _skyeye(pipeline, capsys, "token", "list", "--json")
    assert code == 0
    assert token not in out
    [listed] = [t for t in json.loads(out) if t["name"] == name]
    assert listed["scopes"] == ["admin"]
    assert listed["prefix"] == token[:12]
    assert listed["revoked_at"] is None
    assert "token" not in listed and "token_hash" not in listed

    code, out, _ = _skyeye(pipeline, capsys, "token", "list")
    assert code == 0
    assert token not in out
    [line] = [line for line in out.splitlines() if name in line]
    assert listed["token_id"][:8] in line and token[:12] in line and "admin" in line


def test_create_json_carries_the_token(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _skyeye(pipeline, capsys, "token", "create", "--scope", "read", "--json")
    assert code == 0
    made = json.loads(out)
    assert made["name"] == f"token-{made['token_id'][:8]}"
    record = _lookup(pipeline, made["token"])
    assert record is not None and str(record.token_id) == made["token_id"]


def test_a_revoked_token_no_longer_resolves(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _name()
    token = _create(pipeline, capsys, name, "read")
    assert _lookup(pipeline, token) is not None
    code, out, err = _skyeye(pipeline, capsys, "token", "revoke", name)
    assert code == 0, err
    assert name in out
    assert _lookup(pipeline, token) is None

    code, _, err = _skyeye(pipeline, capsys, "token", "revoke", name)
    assert code == 2
    assert "revoked already" in err


def test_an_ambiguous_or_unknown_selector_revokes_nothing(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _name()
    first = _create(pipeline, capsys, name, "read")
    second = _create(pipeline, capsys, name, "ask")
    code, _, err = _skyeye(pipeline, capsys, "token", "revoke", name)
    assert code == 2
    assert "2 tokens" in err
    assert _lookup(pipeline, first) is not None and _lookup(pipeline, second) is not None

    code, _, err = _skyeye(pipeline, capsys, "token", "revoke", "no-such-token")
    assert code == 2
    assert "names no token" in err

    record = _lookup(pipeline, second)
    assert record is not None
    code, _, err = _skyeye(pipeline, capsys, "token", "revoke", str(record.token_id)[:8])
    assert code == 0, err
    assert _lookup(pipeline, second) is None
    assert _lookup(pipeline, first) is not None


def test_an_unknown_scope_is_refused_by_the_parser(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--home", str(pipeline.home), "token", "create", "--scope", "write"])
    assert exited.value.code == 2
    assert "invalid choice: 'write'" in capsys.readouterr().err


def test_the_api_admits_a_live_token_and_refuses_a_revoked_one(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from skyeye.services.api import create_app

    name = _name()
    reader = _create(pipeline, capsys, name, "read")
    with TestClient(create_app(pipeline.settings)) as client:
        refused = client.get("/collections")
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
        assert client.get("/collections", headers={"Authorization": f"Bearer {reader}"}).is_success
        asked = client.post(
            f"/assets/{uuid.uuid4()}/ask",
            json={"task": "caption"},
            headers={"Authorization": f"Bearer {reader}"},
        )
        assert asked.status_code == 403
        assert "'ask'" in asked.json()["description"]
        code, _, err = _skyeye(pipeline, capsys, "token", "revoke", name)
        assert code == 0, err
        gone = client.get("/collections", headers={"Authorization": f"Bearer {reader}"})
        assert gone.status_code == 401
        assert "unknown or revoked" in gone.json()["description"]
