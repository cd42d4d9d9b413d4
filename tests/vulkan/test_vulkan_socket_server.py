"""The engine's socket on its own: peers of another user are refused, and no client (silent, slow, too
long, malformed, or one of very many) can hold the others or the caller."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.vulkan.report import MAX_LINE_BYTES, LayerReport, PeerCredentials, may_report
from app.core.vulkan.server import READ_TIMEOUT_S, LayerSocketServer

REPORT = {"v": 1, "pid": 1, "timeout_ms": 750, "exe": "/bin/game", "device": "GPU", "cmdline": ["game"]}


class Recorder:
    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.reports: list[tuple[LayerReport, PeerCredentials]] = []

    def __call__(self, report: LayerReport, peer: PeerCredentials) -> None:
        self.reports.append((report, peer))
        time.sleep(self.hold_s)


@pytest.fixture
def served(private_runtime_dir: Path) -> Iterator[tuple[LayerSocketServer, Recorder]]:
    recorder = Recorder()
    server = LayerSocketServer(private_runtime_dir / "vulkan.sock", recorder)
    server.start()
    yield server, recorder
    server.close()


def ask(path: Path, payload: bytes, timeout_s: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        client.connect(str(path))
        client.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(256)
            if not chunk:
                break
            data += chunk
        return data


def test_answers_a_report_with_the_kernels_pid(served: tuple[LayerSocketServer, Recorder]) -> None:
    server, recorder = served
    answer = ask(server.path, json.dumps(REPORT).encode() + b"\n")
    assert json.loads(answer)["go"] is True
    [(report, peer)] = recorder.reports
    assert report.exe == "/bin/game" and peer.pid == os.getpid() and peer.uid == os.getuid()
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700


def test_malformed_and_oversized_reports_get_no_answer_and_hold_nothing(
    served: tuple[LayerSocketServer, Recorder],
) -> None:
    server, recorder = served
    assert ask(server.path, b"this is not json\n") == b""
    assert ask(server.path, json.dumps({**REPORT, "v": 2}).encode() + b"\n") == b""
    assert ask(server.path, b"x" * (MAX_LINE_BYTES + 10)) == b""
    assert recorder.reports == []
    assert server.counts["bad_report"] == 2
    assert json.loads(ask(server.path, json.dumps(REPORT).encode() + b"\n"))["go"]


def test_a_silent_client_holds_only_itself(served: tuple[LayerSocketServer, Recorder]) -> None:
    server, _ = served
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(10)]
    for client in silent:
        client.connect(str(server.path))  # connect, send nothing
    try:
        started = time.monotonic()
        assert json.loads(ask(server.path, json.dumps(REPORT).encode() + b"\n"))["go"]
        assert time.monotonic() - started < 0.5, "the report waited behind silent clients"
        for client in silent:  # each is dropped after the read deadline
            client.settimeout(READ_TIMEOUT_S + 5)
            assert client.recv(16) == b""
    finally:
        for client in silent:
            client.close()


def test_many_reports_wait_at_the_same_time(served: tuple[LayerSocketServer, Recorder]) -> None:
    server, recorder = served
    recorder.hold_s = 0.5
    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: answers.append(ask(server.path, json.dumps(REPORT).encode() + b"\n")))
        for _ in range(20)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 20 and all(json.loads(a)["go"] for a in answers)
    assert time.monotonic() - started < 3.0, "reports were answered one after another"


def test_peer_check() -> None:
    me = os.getuid()
    assert may_report(PeerCredentials(pid=42, uid=me, gid=0), me)
    assert not may_report(PeerCredentials(pid=42, uid=me + 1, gid=0), me)
    assert not may_report(PeerCredentials(pid=0, uid=me, gid=0), me), "no pid: not a process we can know"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a client as another user (nobody)")
def test_another_user_is_refused() -> None:
    """A real process of another uid (nobody) connects: closed without an answer, never handled."""
    python = shutil.which("python3", path="/usr/bin:/bin")  # nobody cannot run the venv's (under /root)
    if python is None:
        pytest.skip("no system python3 for the other user's client")
    folder = Path(tempfile.mkdtemp(prefix="vs-other-"))
    os.chmod(folder, 0o755)  # for this test only: nobody must reach the socket to be refused by it
    recorder = Recorder()
    server = LayerSocketServer(folder / "run" / "vulkan.sock", recorder)
    server.start()
    os.chmod(folder / "run", 0o755)
    os.chmod(server.path, 0o777)
    client = (
        "import json, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
        "try:\n"
        f"    s.sendall({json.dumps(json.dumps(REPORT))}.encode() + b'\\n')\n"
        "    print(repr(s.recv(64)))\n"
        "except (BrokenPipeError, ConnectionResetError):  # closed before or after the report: no answer\n"
        "    print(repr(b''))\n"
    )
    try:
        result = subprocess.run(
            [python, "-c", client, str(server.path)],
            user=65534, group=65534, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b''"
    assert recorder.reports == [] and server.counts["refused_peer"] == 1


def test_close_removes_only_our_socket(private_runtime_dir: Path) -> None:
    server = LayerSocketServer(private_runtime_dir / "vulkan.sock", Recorder())
    server.start()
    server.close()
    assert not server.path.exists()
    server.path.write_text("someone else's file")
    with pytest.raises(FileExistsError):
        LayerSocketServer(server.path, Recorder()).start()
    assert server.path.read_text() == "someone else's file"
