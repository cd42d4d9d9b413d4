"""One engine per user, with real processes: the engine lock (tray + daemon, daemon + daemon), the endpoint
file (stale, owned by its writer), the API port (taken, or 0 for any free one) and `status` asking the
running engine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.core.config import Settings
from tests.fixtures.engine_procs import (
    ROOT,
    engine_env,
    read_until,
    run_app,
    start_app,
    start_daemon,
    stop,
    wait_for_endpoint,
)

HOLD_LOCK = (
    "import sys\n"
    "from app.core.instance import acquire_engine_lock\n"
    "lock = acquire_engine_lock(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"  # hold it until the test closes our stdin (or kills us)
)


def hold_lock(tmp_path: Path, kind: str) -> subprocess.Popen[str]:
    """Another process holding the real engine lock, as the tray app (or a daemon) does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, kind],
        cwd=ROOT,
        env=engine_env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert read_until(proc, "locked", 30) == "locked\n"
    return proc


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Listener:
    """Some other program on a loopback port: records every request it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(65536))

    def close(self) -> None:
        self.sock.close()


def wait_for_log(tmp_path: Path, needle: str, timeout_s: float = 60.0) -> None:
    path = tmp_path / "log" / "vram-steward.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path} within {timeout_s} s")


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("schema_version = 2\n" + text)
    return path


# --- the engine lock ---------------------------------------------------------------------------------


@pytest.mark.parametrize("no_api", [False, True])
def test_a_daemon_refuses_while_the_tray_holds_the_lock(tmp_path: Path, no_api: bool) -> None:
    tray = hold_lock(tmp_path, "tray")
    try:
        extra = ["--no-api"] if no_api else ["--port", "0"]
        refused = run_app(tmp_path, "daemon", "--simulate", "game-launch", *extra)
    finally:
        tray.kill()
        tray.wait()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"already running for this user: the tray app, pid {tray.pid}" in refused.stderr
    assert "Quit the tray app" in refused.stderr and "Traceback" not in refused.stderr
    assert "resident" not in refused.stdout, "the refused daemon loaded nothing"
    # the holder was killed (SIGKILL): the kernel dropped its lock, so a daemon starts now
    daemon = start_daemon(tmp_path, "--no-api")
    try:
        assert "resident on GPU 0" in read_until(daemon, "resident on GPU 0", 30)
        record = json.loads((tmp_path / "run" / "vram-steward" / "engine.lock").read_text())
        assert (record["pid"], record["kind"]) == (daemon.pid, "daemon"), "the stale record was replaced"
    finally:
        stop(daemon)
    assert daemon.returncode == 0


def test_the_runtime_folder_is_private(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path, "daemon")
    try:
        folder = tmp_path / "run" / "vram-steward"
        assert folder.stat().st_mode & 0o777 == 0o700
        assert (folder / "engine.lock").stat().st_mode & 0o777 == 0o600
    finally:
        holder.kill()
        holder.wait()


def test_without_xdg_runtime_dir_the_lock_lives_in_a_private_folder_of_the_state_dir(tmp_path: Path) -> None:
    env = engine_env(tmp_path)
    env.pop("XDG_RUNTIME_DIR")
    first = start_daemon(tmp_path, "--no-api", env=env)
    try:
        assert "resident on GPU 0" in read_until(first, "resident on GPU 0", 30)
        folder = tmp_path / "state" / "run"
        assert folder.stat().st_mode & 0o777 == 0o700
        refused = run_app(tmp_path, "daemon", "--simulate", "game-launch", "--no-api", env=env)
        assert refused.returncode == 1 and f"pid {first.pid}" in refused.stderr
    finally:
        stop(first)


def test_a_second_daemon_refuses_and_leaves_the_first_ones_endpoint(tmp_path: Path) -> None:
    first = start_daemon(tmp_path, "--port", "0")
    try:
        assert "resident on GPU 0" in read_until(first, "resident on GPU 0", 30)
        endpoint = wait_for_endpoint(tmp_path / "state", first.pid)
        for extra in (["--port", "0"], ["--no-api"]):
            second = run_app(tmp_path, "daemon", "--simulate", "game-launch", *extra)
            assert second.returncode == 1, second.stdout + second.stderr
            assert f"the daemon (`vram-steward daemon`), pid {first.pid}" in second.stderr
            assert "systemctl --user stop vram-steward" in second.stderr
            assert f"kill -TERM {first.pid}" in second.stderr
            # the one that did not write the endpoint exited: the file is still the first one's
            assert json.loads((tmp_path / "state" / "api-endpoint.json").read_text()) == endpoint
        status = run_app(tmp_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["engine"]["pid"] == first.pid
        assert run_app(tmp_path, "pause").returncode == 0, "the CLI still reaches the first daemon"
    finally:
        rest = stop(first)
    assert first.returncode == 0 and "stopped." in rest
    assert not (tmp_path / "state" / "api-endpoint.json").exists()


def test_the_tray_app_says_why_it_cannot_run_while_a_daemon_runs(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--port", "0")
    try:
        assert "resident on GPU 0" in read_until(daemon, "resident on GPU 0", 30)
        env = engine_env(tmp_path, QT_QPA_PLATFORM="offscreen")
        tray = run_app(tmp_path, "gui", "--simulate", "game-launch", env=env)
        assert tray.returncode == 1, tray.stdout + tray.stderr
        assert f"already running for this user: the daemon (`vram-steward daemon`), pid {daemon.pid}" in (
            tray.stderr
        )
        assert "so the tray app does not start" in tray.stderr
        assert "systemctl --user stop vram-steward" in tray.stderr
        assert daemon.poll() is None, "the daemon runs on, untouched"
    finally:
        stop(daemon)


def test_a_daemon_refuses_while_the_real_tray_app_runs(tmp_path: Path) -> None:
    write_config(tmp_path, "api_port = 0\n")
    env = engine_env(tmp_path, QT_QPA_PLATFORM="offscreen")
    tray = start_app(tmp_path, "gui", "--simulate", "game-launch", env=env)
    try:
        endpoint = wait_for_endpoint(tmp_path / "state", tray.pid, timeout_s=60)
        wait_for_log(tmp_path, "tray app running")
        assert (tmp_path / "run" / "vram-steward" / "tray.sock").exists(), "the socket is not in /tmp"
        refused = run_app(tmp_path, "daemon", "--simulate", "game-launch", "--port", "0")
        assert refused.returncode == 1
        assert f"the tray app, pid {tray.pid}" in refused.stderr
        status = json.loads(run_app(tmp_path, "status", "--json").stdout)
        assert status["source"] == "engine"
        assert status["engine"] == {
            "pid": tray.pid,
            "kind": "tray",
            "url": f"http://127.0.0.1:{endpoint['port']}",
            "channel": "unix",  # the tray's API is on its Unix socket too
            "socket": str(tmp_path / "run" / "vram-steward" / "api.sock"),
            "tls_fingerprint": None,
        }
        tray.send_signal(signal.SIGHUP)  # the same ordered stop as SIGTERM
        tray.wait(30)
    finally:
        stop(tray)
    assert tray.returncode == 0
    assert not (tmp_path / "state" / "api-endpoint.json").exists()
    assert "VRAM Steward stopped; VRAM released" in (tmp_path / "log" / "vram-steward.log").read_text()


# --- the endpoint file -------------------------------------------------------------------------------


def test_a_stale_endpoint_file_gets_no_token_and_a_new_daemon_replaces_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "api-token").write_text("secret-token\n")
    other = Listener()  # whatever listens on the dead engine's port now
    try:
        leftover = {"host": "127.0.0.1", "port": other.port, "pid": dead_pid(), "written_at": time.time()}
        (state / "api-endpoint.json").write_text(json.dumps(leftover))
        paused = run_app(tmp_path, "pause")
        assert paused.returncode == 1
        assert f"leftover of pid {leftover['pid']}, which has exited" in paused.stderr
        status = run_app(tmp_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["engine"] is None
        time.sleep(0.2)
        assert other.received == [], "nothing was sent to the program on that port"
    finally:
        other.close()
    daemon = start_daemon(tmp_path, "--port", "0")
    try:
        endpoint = wait_for_endpoint(state, daemon.pid)
        assert endpoint["port"] != leftover["port"]
        assert run_app(tmp_path, "pause").returncode == 0
    finally:
        stop(daemon)
    assert not (state / "api-endpoint.json").exists()


def test_an_endpoint_naming_a_reused_pid_is_stale(tmp_path: Path) -> None:
    from app.core.api.endpoint import StaleEndpoint, read_live_endpoint

    path = tmp_path / "api-endpoint.json"
    # pid 1 runs, but started long after this file claims to have been written: the pid was reused
    path.write_text(json.dumps({"host": "127.0.0.1", "port": 9, "pid": 1, "written_at": 1000.0}))
    with pytest.raises(StaleEndpoint):
        read_live_endpoint(path)
    mine = {"host": "127.0.0.1", "port": 9, "pid": os.getpid(), "written_at": time.time()}
    path.write_text(json.dumps(mine))
    live = read_live_endpoint(path)
    assert live is not None and live.url == "http://127.0.0.1:9"


def test_an_api_server_removes_only_the_endpoint_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two engines in one process (same pid): the first to stop must leave the second one's file."""
    from app.core.wiring import build_runtime

    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    path = tmp_path / "state" / "api-endpoint.json"
    settings = Settings(api_port=0)
    first = build_runtime(settings, simulate="game-launch", audit=False)
    second = build_runtime(settings, simulate="game-launch", audit=False)
    try:
        assert first.api is not None and second.api is not None
        assert json.loads(path.read_text())["port"] == second.api.bound_port
        first.stop()
        assert json.loads(path.read_text())["port"] == second.api.bound_port, "not the first one's to remove"
    finally:
        first.stop()
        second.stop()
    assert not path.exists()


# --- the API port ------------------------------------------------------------------------------------


def test_a_taken_api_port_is_a_clear_problem(tmp_path: Path) -> None:
    other = Listener()
    try:
        config = write_config(tmp_path, f"api_port = {other.port}\n")
        result = run_app(tmp_path, "daemon", "--simulate", "game-launch")
    finally:
        other.close()
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert f"the port 127.0.0.1:{other.port} is already in use by another program" in err
    assert f"Set `api_port` to a free port in {config}" in err and "`api_port = 0`" in err
    assert "[Errno" not in err and "Traceback" not in err
    assert not (tmp_path / "state" / "api-endpoint.json").exists()
    # it exited and gave the lock back
    assert run_app(tmp_path, "daemon", "--simulate", "game-launch", "--no-api", "--help").returncode == 0


def test_the_tray_app_shows_a_taken_api_port_and_runs_on(tmp_path: Path) -> None:
    other = Listener()
    try:
        write_config(tmp_path, f"api_port = {other.port}\n")
        env = engine_env(tmp_path, QT_QPA_PLATFORM="offscreen")
        tray = start_app(tmp_path, "gui", "--simulate", "game-launch", env=env)
        try:
            out = read_until(tray, "api_port", 60)
            wait_for_log(tmp_path, "tray app running")  # its signal handlers are in place
            assert tray.poll() is None, out
        finally:
            rest = stop(tray)
    finally:
        other.close()
    text = out + rest
    assert f"the port 127.0.0.1:{other.port} is already in use by another program" in text
    assert "harmless" not in text and "works without it" not in text
    assert tray.returncode == 0


def test_api_port_0_takes_a_free_port_that_status_finds(tmp_path: Path) -> None:
    write_config(tmp_path, "api_port = 0\n")
    daemon = start_daemon(tmp_path)
    try:
        assert "resident on GPU 0" in read_until(daemon, "resident on GPU 0", 30)
        endpoint = wait_for_endpoint(tmp_path / "state", daemon.pid)
        assert isinstance(endpoint["port"], int) and endpoint["port"] > 0
        result = run_app(tmp_path, "status", "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        table = run_app(tmp_path, "status")
    finally:
        stop(daemon)
    assert status["source"] == "engine"
    sock = tmp_path / "run" / "vram-steward" / "api.sock"
    assert endpoint["socket"] == str(sock)
    assert status["engine"] == {
        "pid": daemon.pid,
        "kind": "daemon",
        "url": f"http://127.0.0.1:{endpoint['port']}",
        "channel": "unix",  # the CLI's default channel
        "socket": str(sock),
        "tls_fingerprint": None,
    }
    assert [(m["name"], m["state"]) for m in status["models"]] == [("llama-3.1-8b-instruct-q8_0", "resident")]
    roles = {p["name"]: p["role"] for g in status["gpus"] for p in g["processes"]}
    assert roles["vram-steward-host"] == "self" and roles["Xorg"] == "desktop"
    assert status["backend"] == "simulated" and status["state"] is not None
    url = f"http://127.0.0.1:{endpoint['port']}"
    assert f"From the running daemon, pid {daemon.pid} ({url}; asked through {sock})." in table.stdout
    assert "llama-3.1-8b-instruct-q8_0" in table.stdout


def test_status_without_an_engine_says_models_and_roles_are_unknown(tmp_path: Path) -> None:
    table = run_app(tmp_path, "status", "--simulate", "game-launch")
    assert table.returncode == 0, table.stderr
    assert "models and process roles are unknown" in table.stdout
    result = run_app(tmp_path, "status", "--simulate", "game-launch", "--json")
    status = json.loads(result.stdout)
    assert (status["source"], status["engine"], status["models"]) == ("simulated", None, [])


def test_status_names_a_daemon_that_runs_without_its_api(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--no-api")
    try:
        assert "resident on GPU 0" in read_until(daemon, "resident on GPU 0", 30)
        result = run_app(tmp_path, "status")
    finally:
        stop(daemon)
    assert result.returncode == 0, result.stderr
    if "No NVIDIA GPU found" not in result.stdout:
        assert f"the daemon, pid {daemon.pid} without its API" in result.stdout
