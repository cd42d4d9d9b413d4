"""Holders never block the engine: a model server that trickles its answer, answers with 10 MB, redirects
elsewhere or never answers leaves the reaction to a game unchanged, and the API stays responsive, while the
engine runs its real loop (`Steward.run`) with the real API on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core import events as ev
from app.core.config import ServerConfig, Settings
from app.core.servers.ollama import OllamaHolder
from app.core.wiring import Runtime, build_runtime

MODEL = "chat-2b"
GAME_AT_S = 2.5  # scenario seconds (the engine's clock starts at 0 when the runtime is built)

SCENARIO = f"""
description = "a 2 GiB model on a 12 GiB card; GameMode registers a game at {GAME_AT_S} s"
duration_s = 600

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 3060"
uuid = "GPU-5e1a0c7e-0000-4000-8000-000000003060"
total = "12 GiB"
reserved = "256 MiB"

[[processes]]
pid = 1201
name = "Xorg"
used = "180 MiB"
kind = "graphics"

[[models]]
name = "{MODEL}"
size = "2 GiB"

[[timeline]]
at = {GAME_AT_S}
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242
"""


class HostileServer:
    """A raw TCP server that misbehaves the way a broken or hostile model server can."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if self.mode == "trickle":  # one byte every 0.5 s, forever
                    for byte in b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"models": []}':
                        if self.stop.wait(0.5):
                            return
                        conn.sendall(bytes([byte]))
                elif self.mode == "huge":  # 10 MB of JSON
                    body = b'{"models": [' + b'{"name": "x"},' * 700_000 + b'{"name": "x"}]}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                elif self.mode == "redirect":  # somewhere that never answers
                    conn.sendall(
                        b"HTTP/1.1 302 Found\r\nLocation: http://10.255.255.1:9/api/ps\r\n"
                        b"Content-Length: 0\r\n\r\n"
                    )
                elif self.mode == "silent":
                    self.stop.wait(30)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def runtime_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    made: list[tuple[Runtime, HostileServer]] = []

    def make(mode: str) -> tuple[Runtime, HostileServer, list[ev.Event]]:
        server = HostileServer(mode)
        settings = Settings(api_port=0, servers=(ServerConfig(kind="ollama", url=server.url),))
        runtime = build_runtime(settings, simulate=scenario, with_api=True, audit=False)
        holder = OllamaHolder(
            settings.servers[0], backend=runtime.backend, find_runners=list, clock=runtime.steward.clock
        )
        runtime.steward.holders.append(holder)  # a real server holder, its I/O on its own threads
        events: list[ev.Event] = []
        runtime.steward.subscribe(events.append)
        made.append((runtime, server))
        runtime.start_worker()  # the one loop, as the daemon and the tray run it
        return runtime, server, events

    yield make
    for runtime, server in made:
        runtime.stop()
        server.close()


def post(runtime: Runtime, path: str) -> tuple[int, float]:
    assert runtime.api is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{runtime.api.bound_port}{path}",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {runtime.api.token}", "Content-Type": "application/json"},
    )
    started = time.monotonic()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        json.loads(answer.read())
        return answer.status, time.monotonic() - started


@pytest.mark.parametrize("mode", ["trickle", "huge", "redirect", "silent"])
def test_a_hostile_server_never_delays_the_game_or_the_api(runtime_with: Any, mode: str) -> None:
    runtime, server, events = runtime_with(mode)
    steward = runtime.steward
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        snap = steward.snapshot
        if snap is not None and any(m.name == MODEL and m.state == "resident" for m in snap.models):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the built-in model never became resident")
    assert server.connections >= 1, "the holder must have asked the hostile server"

    # the API's commands go through the engine's door while the server misbehaves
    waits = [post(runtime, "/v1/show")[1] for _ in range(5)]
    assert max(waits) < 0.9, f"/v1/show waited {max(waits):.3f} s"  # the old engine: seconds

    # the game signal: the model leaves VRAM in the tick that sees it
    while steward.clock() < GAME_AT_S + 1.0:
        time.sleep(0.02)
    evicted = [e for e in events if isinstance(e, ev.ModelsEvicted) and e.reason == "game"]
    assert evicted, f"no eviction for the game; events: {[e.kind for e in events]}"
    assert evicted[0].at - GAME_AT_S < 0.3, f"reacted {evicted[0].at - GAME_AT_S:.3f} s after the signal"
    assert runtime.backend.our_bytes(0) == 0
    status, wait_s = post(runtime, "/v1/pause")
    assert status == 200 and wait_s < 0.9
    down = [e for e in events if isinstance(e, ev.ServerDown)]
    assert down and down[0].server == "ollama", "the misbehaving server is reported down, once"
    assert len(down) == 1


def test_a_trickling_answer_is_cut_off_at_the_whole_request_deadline() -> None:
    from app.core.servers.base import JsonHttpClient, ServerUnreachable

    server = HostileServer("trickle")
    try:
        client = JsonHttpClient(server.url, timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="no complete answer within 1 s"):
            client.get_json("/api/ps")
        assert time.monotonic() - started < 1.5  # the old per-read timeout let this run for minutes
    finally:
        server.close()


def test_a_huge_answer_is_refused_and_a_redirect_is_not_followed() -> None:
    from app.core.servers.base import JsonHttpClient, ServerBadAnswer

    huge, redirect = HostileServer("huge"), HostileServer("redirect")
    try:
        with pytest.raises(ServerBadAnswer, match="larger than"):
            JsonHttpClient(huge.url, timeout_s=5.0).get_json("/api/ps")
        started = time.monotonic()
        with pytest.raises(ServerBadAnswer, match=r"redirects to http://10\.255\.255\.1"):
            JsonHttpClient(redirect.url, timeout_s=5.0).get_json("/api/ps")
        assert time.monotonic() - started < 1.0
    finally:
        huge.close()
        redirect.close()
