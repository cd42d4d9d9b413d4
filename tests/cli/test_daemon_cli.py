"""`vram-steward daemon` as a user runs it: a real process, events printed live, and a clean stop on SIGINT,
SIGTERM and SIGHUP that frees all VRAM first."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.fixtures.engine_procs import read_until, start_daemon


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_daemon_prints_events_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    proc = start_daemon(tmp_path, "--port", "0")
    try:
        out = read_until(proc, "resident on GPU 0", 30)
        assert "SIMULATION" in out
        assert "API on http://127.0.0.1:" in out
        assert "resident on GPU 0" in out, out
        assert (tmp_path / "state" / "api-endpoint.json").exists()
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "stopping: releasing VRAM" in rest and "stopped." in rest
    assert rest.index("freed from GPU 0") < rest.index("stopped."), "VRAM released before the exit"
    assert not (tmp_path / "state" / "api-endpoint.json").exists(), "the endpoint file is removed on exit"
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert '"VramAllocated"' in audit and '"VramDeallocated"' in audit, "the model was freed before exit"
