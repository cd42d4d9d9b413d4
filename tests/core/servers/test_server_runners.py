"""Finding the servers' runner processes in the real process table (psutil), with real processes that look
like them: a symlink named like the server's binary to the Python interpreter, so the kernel names the
process "ollama", "llama-server" or "llama-swap" as it names the real ones."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from app.core.servers.runners import (
    RunnerProcess,
    llama_server_instances,
    llama_swap_upstreams,
    ollama_runners,
)

SLEEP = "import time; time.sleep(60)\n"
SPAWN_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.argv[1], "sleeper.py", *sys.argv[2:]])
open("child.pid", "w").write(str(child.pid))
time.sleep(60)
"""


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    (tmp_path / "sleeper.py").write_text(SLEEP)
    (tmp_path / "spawner.py").write_text(SPAWN_CHILD)

    def start(binary: str, *args: str) -> subprocess.Popen[bytes]:
        link = tmp_path / binary
        if not link.exists():
            link.symlink_to(Path(sys.executable).resolve())
        process = subprocess.Popen([str(link), *args], cwd=tmp_path)
        processes.append(process)
        return process

    yield start
    for process in processes:  # the spawners' children first, then our own processes, each by its pid
        pid_file = tmp_path / "child.pid"
        if pid_file.exists():
            with contextlib.suppress(psutil.Error):
                psutil.Process(int(pid_file.read_text())).kill()
        process.kill()
        process.wait(5)


def wait_for(find: Callable[[], list[RunnerProcess]], pids: set[int]) -> list[RunnerProcess]:
    deadline = time.monotonic() + 5.0
    while True:
        found = [r for r in find() if r.pid in pids or not pids]
        if {r.pid for r in found} >= pids or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def child_pid(tmp_path: Path) -> int:
    deadline = time.monotonic() + 5.0
    while not (tmp_path / "child.pid").exists() or not (tmp_path / "child.pid").read_text():
        assert time.monotonic() < deadline, "the spawner did not start its child"
        time.sleep(0.05)
    return int((tmp_path / "child.pid").read_text())


def test_ollama_runners_are_found_and_ollama_serve_is_not(
    started: Callable[..., subprocess.Popen[bytes]],
) -> None:
    runner = started("ollama", "runner", "--ollama-engine", "--port", "40001")
    serve = started("ollama", "serve")
    found = {r.pid: r for r in wait_for(ollama_runners, {runner.pid})}
    assert runner.pid in found and serve.pid not in found
    assert found[runner.pid].name == "ollama" and found[runner.pid].has_argument("40001")


def test_llama_server_instances_are_the_routers_children(
    started: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    link = str(tmp_path / "llama-server")
    router = started("llama-server", "spawner.py", link, "--model", "/models/a.gguf")
    instance = child_pid(tmp_path)
    found = {r.pid: r for r in wait_for(llama_server_instances, {instance})}
    assert instance in found and router.pid not in found
    assert found[instance].has_argument("/models/a.gguf")


def test_llama_swap_upstreams_are_its_descendants(
    started: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    swap = started("llama-swap", "spawner.py", sys.executable, "--port", "10001")
    upstream = child_pid(tmp_path)
    found = {r.pid for r in wait_for(llama_swap_upstreams, {upstream})}
    assert upstream in found and swap.pid not in found
