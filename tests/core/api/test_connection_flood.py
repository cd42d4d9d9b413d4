"""A real daemon process with a low open-file limit (128), flooded with 150 sockets that send nothing: the
API must stay reachable (an authenticated /v1/evict answers within the connection deadline), and repeated
errors must not flood the log."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.core.api.server import KEEPALIVE_S
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


def test_150_silent_sockets_do_not_make_the_api_unreachable(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VRAM_STEWARD_STATE_DIR": str(tmp_path / "state"),
        "VRAM_STEWARD_LOG_DIR": str(tmp_path / "log"),
        "VRAM_STEWARD_CONFIG_DIR": str(tmp_path / "config"),
    }
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    sockets: list[socket.socket] = []
    try:
        assert daemon.stdout is not None
        port = int(daemon.stdout.readline())
        token = (tmp_path / "state" / "api-token").read_text().strip()
        for _ in range(150):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # the daemon accepts what its descriptors allow; the rest wait in the backlog
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/evict", data=b"{}", method="POST")
        req.add_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/json")
        started = time.monotonic()
        with opener.open(req, timeout=KEEPALIVE_S + 10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["ok"] is True
        assert time.monotonic() - started < KEEPALIVE_S + 5
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
