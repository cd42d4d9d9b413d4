"""The API token: new at every engine start, replaced (not chmod-ed and reused) when its file was open to
others, never read or written through a symlink, and never sent to an HTTP proxy by the client."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from app.client import StewardClient
from app.core.api.token import TokenFileUnsafe, issue_token, read_token
from tests.fixtures.api_server import start_api


def test_each_engine_start_has_a_new_token_and_the_old_one_stops_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = start_api(tmp_path, monkeypatch)
    old_token = first.token
    first.stop()
    second = start_api(tmp_path, monkeypatch)
    try:
        assert second.token != old_token
        assert second.call("/v1/status", token=old_token)[0] == 401
        assert second.call("/v1/status")[0] == 200
        token_file = second.state_dir / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(second.state_dir.stat().st_mode) == 0o700
    finally:
        second.stop()


def test_a_token_file_open_to_others_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "api-token"
    old = issue_token(path)
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    caplog.set_level(logging.WARNING)
    new = issue_token(path)
    assert new != old and read_token(path) == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "replaced by a new one" in caplog.text and "tightened" in caplog.text


def test_a_symlinked_token_file_is_refused_by_the_engine_and_the_client(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("not a token\n")
    os.chmod(victim, 0o644)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "api-token").symlink_to(victim)
    with pytest.raises(TokenFileUnsafe, match="symlink"):
        issue_token(state / "api-token")
    assert victim.read_text() == "not a token\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    with pytest.raises(TokenFileUnsafe, match="symlink"):
        read_token(state / "api-token")
    with pytest.raises(TokenFileUnsafe):
        StewardClient("http://127.0.0.1:9", state_dir=state)


class FakeProxy:
    """A listener on loopback that records whatever a client sends it as a proxy."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(5)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                self.received += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(6)


def test_the_client_never_sends_the_token_to_an_http_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = start_api(tmp_path, monkeypatch)
    proxy = FakeProxy()
    try:
        for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        client = StewardClient(state_dir=api.state_dir)
        assert client.status()["backend"] == "simulated"
    finally:
        proxy.close()
        api.stop()
    assert proxy.received == b"", proxy.received[:200]
