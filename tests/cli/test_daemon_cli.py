"""`vram-steward daemon` as a user runs it: a real process, events printed live, and a clean stop on SIGINT
and SIGTERM that frees all VRAM first."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def start_daemon(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(
        os.environ,
        VRAM_STEWARD_CONFIG_DIR=str(tmp_path / "config"),
        VRAM_STEWARD_STATE_DIR=str(tmp_path / "state"),
        VRAM_STEWARD_LOG_DIR=str(tmp_path / "log"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "app", "daemon", "--simulate", "game-launch", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    assert proc.stdout is not None
    seen = ""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while needle not in seen and time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
    return seen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_daemon_prints_events_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    proc = start_daemon(tmp_path, "--port", "0")
    try:
        out = read_until(proc, "resident on GPU 0", 30)
        assert "SIMULATION" in out
        assert "API on http://127.0.0.1:" in out
        assert "resident on GPU 0" in out, out
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopping: releasing VRAM" in rest and "stopped." in rest
    assert not (tmp_path / "state" / "api-endpoint.json").exists(), "the endpoint file is removed on exit"
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert '"VramAllocated"' in audit and '"VramDeallocated"' in audit, "the model was freed before exit"
