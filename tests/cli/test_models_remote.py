"""`vram-steward models ...` talks to the running instance through the local API when there is one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.wiring import Runtime, build_runtime

MODEL = "llama-3.1-8b-instruct-q8_0"  # the game-launch scenario's model


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runtime, dict[str, str]]]:
    state = tmp_path / "state"
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(state))
    runtime = build_runtime(Settings(api_port=0), simulate="game-launch", with_api=True, audit=False)
    runtime.start_worker()
    env = dict(
        os.environ,
        VRAM_STEWARD_STATE_DIR=str(state),
        VRAM_STEWARD_CONFIG_DIR=str(tmp_path / "config"),
        VRAM_STEWARD_LOG_DIR=str(tmp_path / "log"),
    )
    yield runtime, env
    runtime.stop()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "models", *args], env=env, capture_output=True, text=True, timeout=60
    )


def wait_state(runtime: Runtime, state: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = runtime.steward.snapshot
        if snap and any(m.name == MODEL and m.state == state for m in snap.models):
            return
        time.sleep(0.05)
    pytest.fail(f"{MODEL} never became {state}")


def test_models_commands_reach_the_running_instance(running: tuple[Runtime, dict[str, str]]) -> None:
    runtime, env = running
    wait_state(runtime, "resident")
    listed = cli(env, "list")
    assert listed.returncode == 0, listed.stderr
    assert MODEL in listed.stdout and "resident" in listed.stdout

    unloaded = cli(env, "unload", MODEL)
    assert unloaded.returncode == 0, unloaded.stderr
    wait_state(runtime, "unloaded")

    loaded = cli(env, "load", MODEL)
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    assert "resident" in loaded.stdout and "running instance" in loaded.stdout
    snap = runtime.steward.snapshot
    assert snap is not None and any(m.name == MODEL and m.state == "resident" for m in snap.models)

    # the simulated holder does not seal files, so there is nothing to verify: a clear error, exit 1
    verified = cli(env, "verify", MODEL)
    assert verified.returncode == 1
    assert "cannot be verified" in verified.stderr


def test_unknown_model_is_a_clear_error(running: tuple[Runtime, dict[str, str]]) -> None:
    _, env = running
    result = cli(env, "load", "no-such-model")
    assert result.returncode == 1
    assert "unknown model" in result.stderr
