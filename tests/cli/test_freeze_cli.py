"""`vram-steward freeze|thaw NAME` against a running engine: a name that is not an app to freeze is refused
with what to use instead, and nothing happens to the model of that name."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.engine_procs import engine_env, run_app, start_daemon, stop, wait_for_endpoint

MODEL = "llama-3.1-8b-instruct-q8_0"


def test_freeze_refuses_a_model_and_an_unknown_name(tmp_path: Path) -> None:
    env = engine_env(tmp_path)
    daemon = start_daemon(tmp_path, "--port", "0", env=env)
    try:
        wait_for_endpoint(tmp_path / "state", daemon.pid)
        for name, says in ((MODEL, "is a model, not an app VRAM Steward freezes"), ("nope", "is not known")):
            for command in ("freeze", "thaw"):
                result = run_app(tmp_path, command, name, env=env)
                assert result.returncode == 1, result
                assert says in result.stderr and "models unload|load" in result.stderr
        status = json.loads(run_app(tmp_path, "status", "--json", env=env).stdout)
        assert [m["state"] for m in status["models"] if m["name"] == MODEL] != ["unloaded"]
    finally:
        stop(daemon)
