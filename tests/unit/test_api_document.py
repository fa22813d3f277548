"""The API's OpenAPI document and its browsable page, from the application without a catalog.

No request here reaches a handler that needs the catalog, so no stack is started (the app's
lifespan, which opens the clients, is not entered).
"""

import re

import pytest
from fastapi.testclient import TestClient

from skyeye.services.api import create_app
from skyeye.settings import Settings


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()))


def test_the_browsable_page_loads_swagger_ui_from_the_api_itself(client: TestClient) -> None:
    page = client.get("/api.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sources and not [s for s in sources if "//" in s], sources  # nothing off-site
    assert "url: 'api'" in page.text
    for source in sources:
        served = client.get(f"/{source}")
        assert served.status_code == 200, source
    script = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert "javascript" in script.headers["content-type"] and len(script.content) > 100_000


def test_every_error_answer_is_a_json_error_body_and_none_is_fastapis_422(
    client: TestClient,
) -> None:
    document = client.get("/api").json()
    assert document["openapi"].startswith("3.1")
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert "400" in answers and "500" in answers, (method, path)
            for status, answer in answers.items():
                if int(status) < 400:
                    continue
                assert answer["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                }, (method, path, status)
    ask = document["paths"]["/assets/{asset_id}/ask"]["post"]["responses"]
    assert {"401", "403", "404", "409", "413", "422", "429", "503", "504"} <= set(ask)


def test_an_unknown_query_parameter_is_refused_before_any_handler_runs(client: TestClient) -> None:
    response = client.get("/conformance", params={"colour": "red"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"
    assert "'colour'" in response.json()["description"]
