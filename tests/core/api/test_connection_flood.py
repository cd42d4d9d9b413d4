"""A real daemon process with a low open-file limit (128), flooded with 150 TCP sockets that send nothing: the
TCP listener keeps at most its cap of connections and answers the rest at once with a 503 problem (so the
descriptors come back), the Unix socket (the CLI's channel) answers an /v1/evict at once during the flood,
TCP answers again once the silent sockets hit their deadline, and repeated errors do not flood the log."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from app.core.api.server import KEEPALIVE_S, connection_caps
from app.core.gpu.simulated import ManualClock
from app.core.logs import BURST, RepeatLimiter

REPO = Path(__file__).resolve().parents[3]

DAEMON = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
from app.core.logs import setup_logging
setup_logging()
from app.core.config import Settings
from app.core.wiring import build_runtime
runtime = build_runtime(Settings(api_port=0), simulate="game-launch", audit=False)
runtime.start_worker()
print(runtime.api.bound_port, flush=True)
sys.stdin.read()
runtime.stop()
"""


class UnixHttp(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(self.path))


def _answer(sock: socket.socket, within_s: float) -> bytes:
    sock.settimeout(within_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_a_tcp_flood_is_capped_and_the_unix_socket_stays_reachable(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VRAM_STEWARD_STATE_DIR": str(tmp_path / "state"),
        "VRAM_STEWARD_LOG_DIR": str(tmp_path / "log"),
        "VRAM_STEWARD_CONFIG_DIR": str(tmp_path / "config"),
        "VRAM_STEWARD_RUNTIME_DIR": str(tmp_path / "run"),
    }
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    tcp_cap, _ = connection_caps(128, with_unix=True)
    sockets: list[socket.socket] = []
    try:
        assert daemon.stdout is not None
        port = int(daemon.stdout.readline())
        token = (tmp_path / "state" / "api-token").read_text().strip()
        for _ in range(150):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        started = time.monotonic()
        refused = [a for a in (_answer(s, 0.05) for s in sockets) if a]
        # the connections over the cap were answered at once (not left to time out) with a problem
        assert len(refused) >= 150 - tcp_cap - 8, (len(refused), tcp_cap)
        assert all(a.startswith(b"HTTP/1.1 503") for a in refused), refused[0][:200]
        problem = json.loads(refused[0].partition(b"\r\n\r\n")[2])
        assert problem["error"] == "too_many_connections" and problem["retry_after"] == 1
        # the CLI's channel is not TCP: it answers during the flood, without the token
        unix = UnixHttp(tmp_path / "run" / "api.sock")
        unix.request("POST", "/v1/evict", body=b"{}", headers={"Content-Type": "application/json"})
        answer = unix.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["ok"] is True
        unix.close()
        assert time.monotonic() - started < KEEPALIVE_S, "the Unix socket waited for the TCP flood"
        # the silent TCP connections are closed at their deadline; then TCP serves again
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = started + KEEPALIVE_S + 10
        while True:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/evict", data=b"{}", method="POST")
            req.add_header("Authorization", f"Bearer {token}")
            req.add_header("Content-Type", "application/json")
            try:
                with opener.open(req, timeout=5) as resp:
                    assert resp.status == 200 and json.loads(resp.read())["ok"] is True
                break
            except urllib.error.HTTPError as exc:  # still full: told so, and when to retry
                assert exc.code == 503 and time.monotonic() < deadline, exc.code
                assert exc.headers["Retry-After"] == "1"
                time.sleep(0.5)
    finally:
        for sock in sockets:
            sock.close()
        if daemon.stdin is not None:
            daemon.stdin.close()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    log = (tmp_path / "log" / "vram-steward.log").read_text()
    assert len(log) < 200_000, f"{len(log)} bytes of log in a few seconds"
    assert log.count("refusing new ones") <= BURST + 1  # one line per refused connection, rate-limited
    assert log.count("out of system resource") <= BURST + 1  # asyncio's accept error, once per try


def test_repeated_errors_are_rate_limited_in_the_log_file(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "flood.log"
    handler = logging.FileHandler(path)
    handler.addFilter(RepeatLimiter(clock=clock))
    flood = logging.getLogger("test.flood")
    flood.propagate = False
    flood.addHandler(handler)

    def connection_error(peer: str) -> None:  # one source line, as in aiohttp's or asyncio's handler
        flood.error("Error handling request from %s", peer)

    try:
        for i in range(10_000):  # what a hostile client could make aiohttp or asyncio log in a second
            connection_error(f"127.0.0.1:{i}")
        flood.warning("something else")  # another kind of record is not held back
        clock.advance(61.0)
        connection_error("127.0.0.1:1")
    finally:
        flood.removeHandler(handler)
        handler.close()
    lines = path.read_text().splitlines()
    assert len(lines) == BURST + 2
    assert lines[-2] == "something else"
    assert lines[-1].startswith(f"[{10_000 - BURST} more like this were not logged]")
