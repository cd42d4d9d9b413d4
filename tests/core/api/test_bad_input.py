"""Bad input never makes a 500: every malformed request gets a 4xx problem JSON that names what was wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.api_server import ApiHandle, start_api

PROBLEM_KEYS = {"error", "message", "details", "suggestions", "retry_after"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHandle]:
    """One server for the whole module: these requests change nothing."""
    patch = pytest.MonkeyPatch()
    handle = start_api(Path(tmp_path_factory.mktemp("bad-input")), patch)
    yield handle
    handle.stop()
    patch.undo()


def assert_problem(status: int, headers: dict[str, str], body: Any, expected_status: int) -> dict[str, Any]:
    assert status == expected_status, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert isinstance(body, dict) and set(body) >= PROBLEM_KEYS, body
    return body


GOOD = {"gpu": 0, "bytes": 1024, "holder": "test"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bytes": -1}, "bytes"),
        ({"bytes": 0}, "bytes"),
        ({"bytes": True}, "bytes"),
        ({"bytes": 1.5}, "bytes"),
        ({"bytes": 1e30}, "bytes"),
        ({"bytes": 2**70}, "bytes"),  # huge: can never fit on a 12 GiB card
        ({"bytes": "1 GiB"}, "bytes"),
        ({"bytes": None}, "bytes"),
        ({"gpu": 7}, "gpu"),  # unknown GPU
        ({"gpu": -1}, "gpu"),
        ({"gpu": True}, "gpu"),
        ({"gpu": "0"}, "gpu"),
        ({"holder": ""}, "holder"),
        ({"holder": 5}, "holder"),
        ({"holder": "x" * 500}, "holder"),
        ({"holder": "a\x00b"}, "holder"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": -5}, "ttl_s"),
        ({"ttl_s": "soon"}, "ttl_s"),
        ({"ttl_s": 1e9}, "ttl_s"),
        ({"ttl_s": False}, "ttl_s"),
        ({"wait_s": -1}, "wait_s"),
        ({"wait_s": 1e9}, "wait_s"),
        ({"nbytes": 5}, "nbytes"),  # unknown field: a typo must not pass silently
    ],
)
def test_bad_reservation_fields_are_400(api: ApiHandle, change: dict[str, Any], field: str) -> None:
    status, headers, body = api.call("/v1/reservations", method="POST", body={**GOOD, **change})
    problem = assert_problem(status, headers, body, 400)
    assert problem["error"] == "invalid_input"
    assert field in problem["message"] and problem["details"]["field"] == field


@pytest.mark.parametrize("missing", ["gpu", "bytes", "holder"])
def test_missing_fields_are_400(api: ApiHandle, missing: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != missing}
    status, headers, answer = api.call("/v1/reservations", method="POST", body=body)
    assert missing in assert_problem(status, headers, answer, 400)["message"]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b"null", b"\xff\xfe", b'{"gpu": 0, "bytes": NaN, "holder": "x"}', b'"text"'],
)
def test_malformed_bodies_are_400(api: ApiHandle, raw: bytes) -> None:
    status, headers, body = api.call("/v1/reservations", method="POST", body=raw)
    assert assert_problem(status, headers, body, 400)["error"] == "invalid_input"


def test_an_empty_body_where_one_is_required_is_400(api: ApiHandle) -> None:
    status, headers, body = api.call("/v1/reservations", method="POST", body=b"")
    assert "missing field" in assert_problem(status, headers, body, 400)["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "image/png"])
def test_json_sent_as_another_content_type_is_415(api: ApiHandle, content_type: str) -> None:
    status, headers, body = api.call(
        "/v1/reservations", method="POST", body=json.dumps(GOOD).encode(), content_type=content_type
    )
    problem = assert_problem(status, headers, body, 415)
    assert problem["error"] == "unsupported_media_type" and content_type in problem["message"]


def test_oversized_bodies_are_413(api: ApiHandle) -> None:
    status, headers, body = api.call("/v1/reservations", method="POST", body=b"{" + b" " * 100_000 + b"}")
    assert assert_problem(status, headers, body, 413)["error"] == "payload_too_large"


@pytest.mark.parametrize("wait_s", ["abc", "-1", "1e9", "nan", "inf", ""])
def test_bad_long_poll_waits_are_400(api: ApiHandle, wait_s: str) -> None:
    status, headers, body = api.call(f"/v1/reservations/anything?wait_s={wait_s}")
    assert "wait_s" in assert_problem(status, headers, body, 400)["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/reservations/0123456789abcdef"),
        ("DELETE", "/v1/reservations/0123456789abcdef"),
        ("POST", "/v1/reservations/0123456789abcdef/allocated"),
        ("GET", "/v1/nothing"),
    ],
)
def test_unknown_ids_and_paths_are_404(api: ApiHandle, method: str, path: str) -> None:
    status, headers, body = api.call(path, method=method, body={} if method == "POST" else None)
    assert assert_problem(status, headers, body, 404)["error"] == "not_found"


@pytest.mark.parametrize("name", ["nope", "..", "a%2Fb", "%00", "x" * 300])
def test_unknown_models_are_400_for_load_and_unload(api: ApiHandle, name: str) -> None:
    for action in ("load", "unload"):
        status, headers, body = api.call(f"/v1/models/{name}/{action}", method="POST", body={})
        if status == 404:  # a name the router cannot match ("..") is no path at all
            assert_problem(status, headers, body, 404)
            continue
        assert "unknown model" in assert_problem(status, headers, body, 400)["message"]


def test_a_wrong_method_is_405(api: ApiHandle) -> None:
    status, headers, body = api.call("/v1/reservations", method="PUT", body=GOOD)
    assert assert_problem(status, headers, body, 405)["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/reservations", "/v1/openapi.json", "/v1/reservations/x"])
def test_reservations_need_the_token(api: ApiHandle, path: str) -> None:
    for token in (False, "wrong"):
        status, headers, body = api.call(path, token=token)
        assert assert_problem(status, headers, body, 401)["error"] == "unauthorized"


def test_nothing_above_made_the_server_fail(api: ApiHandle) -> None:
    """After all of that the server still answers, and nothing was reserved by the bad requests."""
    assert api.call("/healthz")[0] == 200
    assert api.call("/v1/reservations")[2] == {"reservations": []}
