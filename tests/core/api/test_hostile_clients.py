"""Hostile clients on loopback, against the real server: web pages that rebind their DNS name to 127.0.0.1,
input crafted to crash the handlers, and sockets that connect and send nothing (or trickle)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.api import server as api_server
from tests.fixtures.api_server import ApiHandle, start_api


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHandle]:
    patch = pytest.MonkeyPatch()
    handle = start_api(Path(tmp_path_factory.mktemp("hostile")), patch)
    yield handle
    handle.stop()
    patch.undo()


def port_of(api: ApiHandle) -> int:
    assert api.runtime.api is not None and api.runtime.api.bound_port is not None
    return api.runtime.api.bound_port


def request(
    api: ApiHandle,
    path: str,
    *,
    host: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    token: str | None = None,
    address: str = "127.0.0.1",
) -> tuple[int, dict[str, Any] | str]:
    """One request with a Host header of our choosing (None: the correct one)."""
    conn = http.client.HTTPConnection(address, port_of(api), timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host if host is not None else f"127.0.0.1:{port_of(api)}")
    if token is not None:
        conn.putheader("Authorization", f"Bearer {token}")
    if body is not None:
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


def raw_exchange(port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


# --- DNS rebinding: the Host header ---------------------------------------------------------------

PATHS = ["/healthz", "/metrics", "/v1/status", "/v1/openapi.json", "/v1/reservations"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("host", ["attacker.example:{port}", "127.0.0.1.nip.io:{port}", "localhost:1", ""])
def test_a_foreign_host_header_reads_nothing(shared: ApiHandle, path: str, host: str) -> None:
    status, body = request(shared, path, host=host.format(port=port_of(shared)), token=shared.token)
    assert status == 421, body
    assert isinstance(body, dict) and body["error"] == "host_not_allowed"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_the_server_s_own_names_are_answered(shared: ApiHandle, host: str) -> None:
    assert request(shared, "/healthz", host=host.format(port=port_of(shared)))[0] == 200
    assert request(shared, "/v1/status", host=host.format(port=port_of(shared)), token=shared.token)[0] == 200


# --- hostile input: never a 500 -------------------------------------------------------------------


def test_a_non_ascii_bearer_token_is_a_401_not_a_500(shared: ApiHandle) -> None:
    port = port_of(shared)
    answer = raw_exchange(
        port,
        f"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xc3\xa9t\xc3\xa9\xff\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"Traceback" not in answer


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
        b'{"gpu": 0, "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
    ids=["array-1000-deep", "object-1000-deep", "field-40-deep"],
)
def test_deeply_nested_json_is_a_400(shared: ApiHandle, body: bytes) -> None:
    status, problem = request(shared, "/v1/reservations", method="POST", body=body, token=shared.token)
    assert status == 400, problem
    assert isinstance(problem, dict) and problem["error"] == "invalid_input"


@pytest.mark.parametrize("digits", [400, 4000, 5000, 20000])
@pytest.mark.parametrize("field", ["bytes", "gpu", "ttl_s", "wait_s"])
def test_huge_numbers_are_a_400_naming_the_field(shared: ApiHandle, field: str, digits: int) -> None:
    fields = {"gpu": b"0", "bytes": b"1024", "holder": b'"h"', field: b"9" * digits}
    body = b"{" + b", ".join(b'"%s": %s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    status, problem = request(shared, "/v1/reservations", method="POST", body=body, token=shared.token)
    assert status == 400, problem
    assert isinstance(problem, dict) and problem["details"]["field"] == field
    assert f"{digits} digits" in problem["message"]
    assert len(json.dumps(problem)) < 2000  # the number is not echoed back


# --- connections that send nothing -------------------------------------------------------------------


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_and_trickling_connections_are_closed(shared: ApiHandle) -> None:
    port = port_of(shared)
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    trickler = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    deadline = started + api_server.KEEPALIVE_S + 4.0
    try:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ":
            trickler.sendall(bytes([byte]))  # a header that never ends (slowloris)
            time.sleep(0.05)
        while time.monotonic() < deadline:
            try:
                trickler.sendall(b"a")
            except OSError:
                break
            time.sleep(0.25)
        assert _closed_by_server(trickler, max(deadline - time.monotonic(), 0.1))
        for sock in silent:
            assert _closed_by_server(sock, max(deadline - time.monotonic(), 0.1))
        assert time.monotonic() - started < api_server.KEEPALIVE_S + 4.0
    finally:
        for sock in [*silent, trickler]:
            sock.close()


def test_a_body_that_never_arrives_is_a_408(shared: ApiHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_server, "BODY_TIMEOUT_S", 1.0)
    port = port_of(shared)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/pause HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {shared.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{".encode()
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
