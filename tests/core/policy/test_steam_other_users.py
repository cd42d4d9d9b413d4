"""Another user's `reaper SteamLaunch AppId=N` is not a Steam game of ours: anyone can start a process with
that name and command line, and it must not evict our models. Run as root, the test starts the reaper as
another user for real (the process table is read from /proc as in production); otherwise a made-up table
with another uid stands in."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.core.gpu.simulated import ManualClock
from app.core.signals.process_scan import ProcessInfo, ProcessScanner, ProcessTable, read_proc_directly
from app.core.signals.steam import SteamGames
from tests.fixtures.dbus_session import wait_until

REAPER = """#!/bin/sh
# stands in for Steam's reaper: reaper SteamLaunch AppId=N -- GAME ARGS...
while [ "$1" != "--" ]; do shift; done; shift
"$@" &
wait
"""
OTHER_UID = 65534  # nobody


@pytest.fixture
def launch_as() -> Iterator:
    """launch_as(uid, app_id) -> the game's pid: a Steam launch (reaper + game child) run as `uid`."""
    folder = Path(tempfile.mkdtemp(prefix="steam-other-user-"))
    folder.chmod(0o755)  # the other user must be able to run what is in it
    reaper = folder / "reaper"
    reaper.write_text(REAPER)
    reaper.chmod(0o755)
    game = folder / "game"
    game.write_bytes(Path("/bin/sleep").read_bytes())
    game.chmod(0o755)
    started: list[subprocess.Popen[bytes]] = []

    def _launch(uid: int, app_id: str) -> int:
        as_user = {"user": uid, "group": uid} if uid != os.getuid() else {}
        proc = subprocess.Popen(
            [str(reaper), "SteamLaunch", f"AppId={app_id}", "--", str(game), "60"], **as_user
        )
        started.append(proc)
        assert wait_until(lambda: bool(psutil.Process(proc.pid).children())), "the game child never started"
        return psutil.Process(proc.pid).children()[0].pid

    yield _launch
    for proc in started:
        for child in psutil.Process(proc.pid).children() if proc.poll() is None else []:
            child.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="starting a process as another user needs root")
def test_another_users_steam_launch_on_the_real_process_table_is_not_our_game(
    launch_as, tmp_path: Path
) -> None:
    clock = ManualClock()
    steam = SteamGames(
        ProcessScanner(interval_s=0.0, clock=clock, read=read_proc_directly), steamapps_dirs=[tmp_path]
    )
    theirs = launch_as(OTHER_UID, "1091500")
    assert psutil.Process(theirs).uids().real == OTHER_UID
    assert steam.active() == ()  # before: a signal, and our models evicted for their game
    ours = launch_as(os.getuid(), "570")
    clock.advance(1.0)
    assert [(s.app_id, s.pid) for s in steam.active()] == [("570", ours)]


def _reaper(pid: int, uid: int | None, app_id: str) -> ProcessInfo:
    cmdline = ("/bin/sh", "reaper", "SteamLaunch", f"AppId={app_id}", "--", "game")
    return ProcessInfo(
        pid=pid, ppid=1, name="reaper", exe="/bin/sh", create_time=1.0, cmdline=cmdline, uid=uid
    )


def test_on_a_made_up_table_only_our_reapers_count() -> None:
    table = ProcessTable(
        processes=(
            _reaper(100, os.getuid() + 1, "1091500"),  # another user's
            ProcessInfo(pid=101, ppid=100, name="game", exe=None, create_time=2.0, uid=os.getuid() + 1),
            _reaper(200, os.getuid(), "570"),  # ours
        ),
        scanned_at=0.0,
        generation=1,
        duration_s=0.0,
    )
    steam = SteamGames(
        ProcessScanner(interval_s=60.0, clock=ManualClock(), read=lambda names: table.processes)
    )
    assert [s.app_id for s in steam.active()] == ["570"]
