"""The exclusive-app list matches only this user's processes: another user can start a process named
`blender` (or name any program so), and it must not evict our models. Run as root, the tests start the
other user's process for real and read it back from /proc (directly, incrementally and through psutil), as
in production; otherwise a made-up table with another uid stands in. A scenario's processes have no owner
(simulation) and keep matching."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from app.core.gpu.simulated import ManualClock
from app.core.signals.exclusive_apps import ExclusiveApps
from app.core.signals.process_scan import (
    IncrementalProcReader,
    ProcessInfo,
    ProcessScanner,
    read_proc_directly,
    read_with_psutil,
)
from tests.fixtures.dbus_session import wait_until

OTHER_UID = 65534  # nobody
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
Walk = Callable[[frozenset[str]], list[ProcessInfo]]


@pytest.fixture
def start_as() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """start_as(uid, name, *argv_after_binary): a copy of `binary` (default /bin/sleep) named `name`, run as
    `uid` from a folder that user can read. Ended after the test."""
    folder = Path(tempfile.mkdtemp(prefix="exclusive-other-user-"))
    folder.chmod(0o755)  # the other user must be able to run what is in it
    started: list[subprocess.Popen[bytes]] = []

    def _start(uid: int, name: str, *args: str, binary: str = "/bin/sleep") -> subprocess.Popen[bytes]:
        copy = folder / name
        if not copy.exists():
            shutil.copy2(binary, copy)
            copy.chmod(0o755)
        as_user = {"user": uid, "group": uid} if uid != os.getuid() else {}
        proc = subprocess.Popen([str(copy), *(args or ("60",))], **as_user)  # type: ignore[call-overload]
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    shutil.rmtree(folder)


@pytest.mark.skipif(not AS_ROOT, reason="starting a process as another user needs root")
@pytest.mark.parametrize(
    "walk",
    [read_proc_directly, IncrementalProcReader(), read_with_psutil],
    ids=["direct", "incremental", "psutil"],
)
def test_another_users_process_on_the_list_is_not_a_signal_on_the_real_process_table(
    start_as, walk: Walk
) -> None:
    theirs = start_as(OTHER_UID, "blender")
    ours = start_as(os.getuid(), "blender")
    assert wait_until(lambda: psutil.Process(theirs.pid).uids().real == OTHER_UID)
    clock = ManualClock()
    apps = ExclusiveApps(ProcessScanner(interval_s=0.0, clock=clock, read=walk), ["Blender"])
    table = {p.pid: p for p in apps.scanner.table().processes}
    assert (table[theirs.pid].uid, table[ours.pid].uid) == (OTHER_UID, os.getuid())
    clock.advance(1.0)
    assert [s.pid for s in apps.active()] == [ours.pid]  # before: both, and theirs evicted our models


_NOT_DUMPABLE = (
    "import ctypes, time; libc = ctypes.CDLL(None); "
    "libc.prctl(15, b'nodump-app', 0, 0, 0); "  # PR_SET_NAME
    "assert libc.prctl(4, 0, 0, 0, 0) == 0; "  # PR_SET_DUMPABLE 0: /proc/PID shows as root's
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux's")
def test_a_process_that_is_not_dumpable_is_still_known_as_its_users(start_as) -> None:
    """The kernel shows the files of a non-dumpable process's /proc entry as root's; the reader takes the
    owner of the /proc/PID folder, which stays the process's, so a user's own non-dumpable program
    (anti-cheat, sandboxes do this) is not taken for root's."""
    uid = OTHER_UID if AS_ROOT else os.getuid()
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = start_as(uid, "python3", "-c", _NOT_DUMPABLE, binary=python)
    assert wait_until(lambda: _comm(proc.pid) == "nodump-app"), "the non-dumpable process never got ready"
    assert wait_until(lambda: os.stat(f"/proc/{proc.pid}/status").st_uid == 0)  # the files say root
    direct = {p.pid: p for p in read_proc_directly(frozenset())}
    assert direct[proc.pid].name == "nodump-app"
    assert direct[proc.pid].uid == uid
    portable = {p.pid: p for p in read_with_psutil(frozenset())}
    assert portable[proc.pid].uid == uid


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_on_a_made_up_table_only_our_processes_and_ownerless_ones_match() -> None:
    processes = (
        ProcessInfo(pid=100, ppid=1, name="blender", exe=None, create_time=1.0, uid=os.getuid() + 1),
        ProcessInfo(
            pid=200, ppid=1, name="blender", exe="/opt/blender/blender", create_time=2.0, uid=os.getuid()
        ),
        ProcessInfo(pid=300, ppid=1, name="Blender.exe", exe=None, create_time=3.0),  # no owner: a scenario's
    )
    apps = ExclusiveApps(
        ProcessScanner(interval_s=60.0, clock=ManualClock(), read=lambda names: list(processes)), ["blender"]
    )
    assert [s.pid for s in apps.active()] == [200, 300]


def test_the_scenario_processes_still_match_in_simulation() -> None:
    """The exclusive-app scenario's `blender` (pid 5150, from 10 s to 60 s) has no owner and is a signal."""
    from app.core.gpu.scenario import resolve_scenario
    from app.core.gpu.simulated import SimulatedBackend
    from app.core.settings import Settings
    from app.core.signals.scenario import ScenarioProcessTable, simulated_signals

    clock = ManualClock()
    backend = SimulatedBackend.from_file(resolve_scenario("exclusive-app"), clock=clock)
    signals = simulated_signals(Settings(exclusive_apps=("blender",)), backend, clock)
    clock.advance(20.0)
    assert all(p.uid is None for p in ScenarioProcessTable(backend)(frozenset()))
    assert 5150 in {s.pid for s in signals.active() if s.source == "exclusive_app"}
