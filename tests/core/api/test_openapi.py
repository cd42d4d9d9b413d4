"""The OpenAPI document: served, kept in docs/, and describing exactly the routes the server has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.core.api.schema import openapi_document, render
from tests.fixtures.api_server import ApiHandle

DOCS = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def test_docs_copy_is_current() -> None:
    assert DOCS.read_text() == render(), (
        'docs/openapi.json is stale: run  python -c "from app.core.api.schema import write; write()"'
    )


def test_served_document_is_the_same(api: ApiHandle) -> None:
    status, headers, body = api.call("/v1/openapi.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body == json.loads(json.dumps(openapi_document()))
    assert body["openapi"].startswith("3.")


def test_every_route_is_documented_and_every_documented_route_exists(api: ApiHandle) -> None:
    served = set()
    for route in api.runtime.api.app.router.routes():
        if route.method == "HEAD":
            continue
        path = re.sub(r"\{(\w+)\}", r"{\1}", route.resource.canonical)
        served.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in ("get", "post", "delete", "put", "patch")
    }
    assert served == documented


def test_every_error_response_is_problem_json() -> None:
    doc = openapi_document()
    for name, response in doc["components"]["responses"].items():
        assert "application/problem+json" in response["content"], name
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"error", "message", "details", "suggestions", "retry_after"}
