"""The real HTTP server on loopback, driving a real engine on a simulated GPU."""

from __future__ import annotations

import json
import os
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.client import ApiError, StewardClient
from app.core.api.server import ApiServer
from app.core.api.token import issue_token
from app.core.config import Settings
from app.core.errors import InvalidInput
from app.core.wiring import build_runtime


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    settings = Settings(api_port=0)
    runtime = build_runtime(settings, simulate="game-launch", with_api=True, audit=False)
    runtime.start_worker()
    api = runtime.api
    assert api is not None
    base = f"http://127.0.0.1:{api.bound_port}"  # type: ignore[attr-defined]
    token = (tmp_path / "state" / "api-token").read_text().strip()
    # wait for the first tick
    client = StewardClient(base, token)
    for _ in range(100):
        try:
            client.status()
            break
        except ApiError:
            threading.Event().wait(0.05)
    yield {"base": base, "token": token, "runtime": runtime, "client": client, "state": tmp_path / "state"}
    runtime.stop()


def call(base: str, path: str, *, method: str = "GET", token: str | None = None, body: bytes | None = None):
    req = urllib.request.Request(base + path, data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_healthz_needs_no_token(server: dict[str, Any]) -> None:
    status, _, body = call(server["base"], "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_status_requires_the_token(server: dict[str, Any], token: str | None) -> None:
    status, ctype, body = call(server["base"], "/v1/status", token=token)
    assert status == 401
    assert ctype.startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["error"] == "unauthorized" and problem["suggestions"]


def test_token_file_is_private_and_new_at_every_start(server: dict[str, Any]) -> None:
    path = server["state"] / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert issue_token(path) != server["token"]  # the next start rotates it


def test_loose_token_file_is_replaced_not_just_fixed(tmp_path: Path) -> None:
    path = tmp_path / "api-token"
    token = issue_token(path)
    os.chmod(path, 0o644)
    assert issue_token(path) != token  # others may have read the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_status_json_over_the_api(server: dict[str, Any]) -> None:
    status = server["client"].status()
    assert status["backend"] == "simulated"
    assert status["schema_version"] >= 1
    assert status["gpus"][0]["total_bytes"] == 12 * 1024**3
    roles = {p["name"]: p["role"] for p in status["gpus"][0]["processes"]}
    assert roles["Xorg"] == "desktop"


def test_pause_resume_evict_round_trip(server: dict[str, Any]) -> None:
    client = server["client"]
    assert client.pause()["state"] == "paused"
    assert client.status()["state"] == "paused"
    assert client.resume()["state"] != "paused"
    assert client.evict()["ok"] is True


def test_unknown_model_is_a_400_problem(server: dict[str, Any]) -> None:
    status, ctype, body = call(
        server["base"], "/v1/models/nope/load", method="POST", token=server["token"], body=b"{}"
    )
    assert status == 400 and ctype.startswith("application/problem+json")
    assert "unknown model" in json.loads(body)["message"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_bodies_are_400_never_500(server: dict[str, Any], body: bytes) -> None:
    status, _, raw = call(server["base"], "/v1/pause", method="POST", token=server["token"], body=body)
    assert status == 400, raw
    assert json.loads(raw)["error"] == "invalid_input"


def test_oversized_body_is_413(server: dict[str, Any]) -> None:
    status, _, raw = call(
        server["base"], "/v1/pause", method="POST", token=server["token"], body=b"{" + b" " * 200_000 + b"}"
    )
    assert status == 413
    assert json.loads(raw)["error"] == "payload_too_large"


def test_unknown_path_is_a_404_problem(server: dict[str, Any]) -> None:
    status, ctype, _ = call(server["base"], "/v1/nothing", token=server["token"])
    assert status == 404 and ctype.startswith("application/problem+json")


def test_models_unload_and_load(server: dict[str, Any]) -> None:
    client = server["client"]
    name = client.models()[0]["name"]
    client.unload(name)
    assert next(m for m in client.models() if m["name"] == name)["state"] == "unloaded"
    result = client.load(name)
    assert result["model"]["name"] == name


def test_refuses_to_bind_a_non_loopback_address_without_the_flag() -> None:
    with pytest.raises(InvalidInput, match="only loopback"):
        ApiServer(object(), host="0.0.0.0", port=0, token="x")  # type: ignore[arg-type]


def test_cli_control_commands_reach_the_running_instance(server: dict[str, Any]) -> None:
    import subprocess
    import sys

    env = dict(os.environ, VRAM_STEWARD_STATE_DIR=str(server["state"]))
    out = subprocess.run(
        [sys.executable, "-m", "app", "pause"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "paused" in out.stdout
    assert server["client"].status()["state"] == "paused"
    out = subprocess.run(
        [sys.executable, "-m", "app", "resume"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_cli_control_without_a_running_instance_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = dict(os.environ, VRAM_STEWARD_STATE_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "app", "evict"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "not running" in out.stderr
