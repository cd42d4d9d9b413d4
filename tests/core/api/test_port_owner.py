"""The client sends the token over TCP only to a port this user's program listens on: an endpoint file whose
port another user holds now (the engine was killed, someone took its port) is refused with a clear error,
before a byte is sent.

The other user's listener is real: as root, a child process drops to `nobody` (uid 65534) and listens; the
kernel's /proc/net/tcp then names uid 65534 as the socket's owner. Not root: skipped, and says so."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import StewardClient
from app.core.api.port_owner import PortNotOurs, check_port_is_ours, listening_uids
from tests.fixtures.engine_procs import engine_env, run_app

NOBODY = 65534

LISTEN_AS_NOBODY = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
server.settimeout(float(sys.argv[1]))
received = b""
try:
    while True:
        conn, _ = server.accept()
        conn.settimeout(1)
        try:
            received += conn.recv(65536) or b""
        except OSError:
            pass
        conn.close()
except OSError:
    pass
print(len(received), flush=True)
"""


@pytest.fixture
def nobody_listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    if not hasattr(os, "getuid") or os.getuid() != 0:
        pytest.skip("needs root to listen as another user (nobody): the port-owner check was NOT tried")
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTEN_AS_NOBODY, "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc, port
    proc.kill()
    proc.wait()


def received_bytes(proc: subprocess.Popen[str]) -> int:
    out, _ = proc.communicate(timeout=20)
    return int(out.strip().splitlines()[-1])


def test_the_kernel_names_the_owner_of_a_listening_port(nobody_listener: tuple) -> None:
    _, port = nobody_listener
    assert listening_uids(port, "127.0.0.1") == {NOBODY}
    with pytest.raises(PortNotOurs, match=r"held by user nobody \(uid 65534\), not by you"):
        check_port_is_ours("127.0.0.1", port)
    with socket.create_server(("127.0.0.1", 0)) as mine:
        own_port = mine.getsockname()[1]
        assert listening_uids(own_port, "127.0.0.1") == {os.getuid()}
        check_port_is_ours("127.0.0.1", own_port)  # ours: passes
    assert listening_uids(own_port) == set()  # nobody listens now


def test_an_endpoint_whose_port_another_user_holds_gets_no_token(
    tmp_path: Path, nobody_listener: tuple
) -> None:
    proc, port = nobody_listener
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "api-token").write_text("secret-token\n")
    os.chmod(state / "api-token", 0o600)
    # a live pid and a fresh time: what the pid check alone would let through (the pid could be reused)
    record = {
        "host": "127.0.0.1",
        "port": port,
        "pid": os.getpid(),
        "written_at": time.time(),
        "socket": None,
    }
    (state / "api-endpoint.json").write_text(json.dumps(record))
    client = StewardClient(state_dir=state)
    assert client.channel == "tcp"
    with pytest.raises(PortNotOurs) as caught:
        client.pause()
    assert caught.value.details["owner_uids"] == [NOBODY]
    assert str(state / "api-endpoint.json") in caught.value.message
    # the CLI says the same, plainly (a live pid in the endpoint file: the listener's own)
    record["pid"] = proc.pid
    (state / "api-endpoint.json").write_text(json.dumps(record))
    paused = run_app(tmp_path, "pause", env=engine_env(tmp_path))
    assert paused.returncode == 1, paused.stdout + paused.stderr
    assert f"the API port 127.0.0.1:{port}" in paused.stderr and "not by you" in paused.stderr
    assert "Traceback" not in paused.stderr
    assert received_bytes(proc) == 0, "the other user's program received nothing"


def test_proc_net_addresses_are_read_in_the_kernel_s_byte_order(tmp_path: Path) -> None:
    """The format as the kernel writes it: 127.0.0.1:8765 LISTEN (uid 1000), [::]:8765 LISTEN (uid 0),
    and an established (not listening) socket of uid 33 on the same port."""
    (tmp_path / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:223D 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1\n"
        "   1: 0100007F:223D 0100007F:9C40 01 00000000:00000000 00:00000000 00000000    33        0 2\n"
    )
    (tmp_path / "tcp6").write_text(
        "  sl  local_address                         remote_address                        st tx_queue "
        "rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000000000000:223D 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 3\n"
    )
    assert listening_uids(8765, "127.0.0.1", proc_net=tmp_path) == {1000, 0}
    assert listening_uids(8765, "127.0.0.2", proc_net=tmp_path) == {0}  # only the wildcard one
    assert listening_uids(8766, proc_net=tmp_path) == set()
    assert listening_uids(8765, proc_net=tmp_path / "missing") is None  # no /proc/net: not checked
