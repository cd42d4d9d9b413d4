"""The API on its Unix socket: 0600 in the 0700 runtime folder, named in the endpoint file, answered without
the token for this user only (the kernel's word, SO_PEERCRED), and the client's default channel.

The other user is real: this suite runs as root, so a child process drops to `nobody` (uid 65534) before it
connects; where the suite does not run as root, those cases are skipped and say so."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import StewardClient
from app.core.api.listeners import bind_unix_socket, remove_unix_socket_if_ours
from tests.fixtures.api_server import ApiHandle, start_api

NOBODY = 65534
as_root = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0,
    reason="needs root to run a client as another user (nobody): the SO_PEERCRED check was NOT tried",
)

AS_NOBODY = """
import json, os, socket, sys
os.setgid(65534); os.setuid(65534)
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(10)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": exc.strerror}))
    raise SystemExit(0)
sock.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n")
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
print(json.dumps({"answer": answer.decode(errors="replace")}))
"""


class UnixHttp(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))


def unix_call(path: Path, route: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple:
    conn = UnixHttp(path)
    try:
        conn.request(method, route, body=b"{}" if method == "POST" else None, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHandle]:
    monkeypatch.setenv("VRAM_STEWARD_RUNTIME_DIR", str(tmp_path / "run"))
    handle = start_api(tmp_path, monkeypatch)
    yield handle
    handle.stop()


def socket_of(api: ApiHandle) -> Path:
    return api.state_dir.parent / "run" / "api.sock"


def test_the_socket_is_private_and_named_in_the_endpoint_file(api: ApiHandle) -> None:
    path = socket_of(api)
    info = path.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    endpoint = json.loads((api.state_dir / "api-endpoint.json").read_text())
    assert endpoint["socket"] == str(path) and endpoint["tls_fingerprint"] is None


def test_this_user_needs_no_token_and_no_host_check_on_the_socket(api: ApiHandle) -> None:
    path = socket_of(api)
    status, body = unix_call(path, "/v1/status")
    assert status == 200 and body["backend"] == "simulated"
    status, body = unix_call(path, "/v1/pause", method="POST", headers={"Content-Type": "application/json"})
    assert status == 200 and body["ok"] is True
    # a wrong token or a foreign Host header changes nothing: the kernel said who this is
    status, _ = unix_call(
        path, "/v1/status", headers={"Authorization": "Bearer wrong", "Host": "evil.example"}
    )
    assert status == 200
    assert api.call("/v1/status", token=False)[0] == 401, "TCP still needs the token"


def test_the_client_uses_the_socket_by_default_and_tcp_when_asked(api: ApiHandle) -> None:
    (api.state_dir / "api-token").unlink()  # the Unix socket needs none
    client = StewardClient(state_dir=api.state_dir)
    assert client.channel == "unix" and client.where == f"unix socket {socket_of(api)}"
    assert client.status()["backend"] == "simulated"
    assert client.token is None
    with pytest.raises(Exception, match="no token file"):
        StewardClient(state_dir=api.state_dir, channel="tcp")


def test_the_client_falls_back_to_tcp_when_the_socket_is_gone(api: ApiHandle) -> None:
    client = StewardClient(state_dir=api.state_dir)
    socket_of(api).unlink()
    assert client.pause()["ok"] is True
    assert client.channel == "tcp" and client.token == api.token


def test_reservations_count_the_unix_peer_s_pid_as_its_client(api: ApiHandle) -> None:
    client = StewardClient(state_dir=api.state_dir)
    made = client.reserve(0, 1024, "me", ttl_s=60)
    assert made["client"] == f"unix:pid={os.getpid()}"
    tcp = StewardClient(state_dir=api.state_dir, channel="tcp")
    assert tcp.request("POST", "/v1/reservations", {"gpu": 0, "bytes": 1, "holder": "h", "client": "srv"})[
        "client"
    ] == ("tcp:127.0.0.1/srv")


@as_root
def test_another_user_cannot_reach_the_socket_and_is_refused_by_the_kernel_check(api: ApiHandle) -> None:
    path = socket_of(api)

    def as_nobody(target: Path) -> dict[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, str(target)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    # the folder (0700) keeps them out first
    assert as_nobody(path) == {"connect_error": "Permission denied"}
    # a socket opened up by mistake and reachable from a shared folder (a hard link in /tmp): the kernel
    # still says who connects, and that is not us
    link = Path(tempfile.gettempdir()) / f"vram-steward-test-{os.getpid()}.sock"
    os.link(path, link)
    os.chmod(link, 0o666)
    try:
        answer = as_nobody(link)["answer"]
    finally:
        link.unlink()
        os.chmod(path, 0o600)
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 403"), answer[:300]
    problem = json.loads(body)
    assert problem["error"] == "peer_not_allowed" and problem["details"]["uid"] == NOBODY


def test_a_leftover_socket_is_replaced_and_only_ours_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))  # a killed engine's socket
    leftover.close()
    sock, identity = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        other, other_identity = bind_unix_socket(path)  # another engine's, bound since
        assert not remove_unix_socket_if_ours(path, identity), "not ours any more"
        assert path.exists()
        assert remove_unix_socket_if_ours(path, other_identity) and not path.exists()
        other.close()
    finally:
        sock.close()
    assert list(tmp_path.iterdir()) == [], "no temporary names left behind"
