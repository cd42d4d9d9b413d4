"""`vram-steward` / `vram-steward gui`: display detection before Qt, and the headless fallback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli.gui import display_problem

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_display_detection_without_touching_qt(tmp_path: Path) -> None:
    assert display_problem({}) == "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    socket = tmp_path / "wayland-0"
    socket.touch()
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0", "XDG_RUNTIME_DIR": str(tmp_path)}) is None
    problem = display_problem(
        {"WAYLAND_DISPLAY": "wayland-9", "XDG_RUNTIME_DIR": str(tmp_path), "QT_QPA_PLATFORM": "wayland"}
    )
    assert problem is not None and "wayland-9" in problem
    problem = display_problem({"DISPLAY": ":93"})  # no X server there
    assert problem == "cannot connect to the X display :93"


@pytest.mark.parametrize("argv", [[], ["gui", "--no-api"]])
def test_no_display_falls_back_to_the_daemon_in_simulation(private_dirs: Path, argv: list[str]) -> None:
    config = private_dirs / "config.toml"
    config.write_text(f"schema_version = 2\napi_port = {free_port()}\n")  # tests run side by side
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--config", str(config), *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        lines: list[str] = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "resident on GPU 0" in line:  # a simulated event, printed live
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "No display: no display (neither DISPLAY nor WAYLAND_DISPLAY is set)" in output
    assert "Running the headless daemon instead" in output
    assert "No NVIDIA GPU found: running a simulation (scenario game-launch)" in output
    assert "llama-3.1-8b-instruct-q8_0 resident on GPU 0" in output
    assert "stopped." in output


def test_the_binding_check_matches_what_the_binding_does(qapp: object) -> None:
    """binding_problem() must be None exactly when Qt calls keep None's reference count."""
    from PySide6.QtCore import QObject

    from app.ui.qt_compat import binding_problem

    problem = binding_problem()
    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(200):
        probe.setObjectName("x")
    lost = before - sys.getrefcount(None)
    if problem is None:
        assert lost < 200
    else:
        assert lost >= 200
        assert "PySide6-Essentials>=6.6,!=6.12.0" in problem
        import ctypes

        for _ in range(lost):  # leave the test process as healthy as we found it
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))
