"""Steam games from the real process table: a process whose command line is `reaper SteamLaunch AppId=N --
<game>` (a shell script named `reaper`, as Steam's wrapper is) with a real child process as the game."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.core.signals.process_scan import ProcessInfo, ProcessScanner, ProcessTable
from app.core.signals.steam import (
    SteamGames,
    find_game_process,
    name_from_cmdline,
    read_manifest_name,
    steam_app_id,
)
from tests.fixtures.dbus_session import wait_until

REAPER = """#!/bin/sh
# stands in for Steam's reaper: reaper SteamLaunch AppId=N -- GAME ARGS...
while [ "$1" != "--" ]; do shift; done; shift
"$@" &
wait
"""


@pytest.fixture
def launch(tmp_path: Path) -> Iterator:
    """launch(app_id, game_name) -> (reaper Popen, game pid): a Steam launch with a real game child."""
    reaper = tmp_path / "reaper"
    reaper.write_text(REAPER)
    reaper.chmod(0o755)
    started: list[subprocess.Popen[bytes]] = []

    def _launch(app_id: str, game_name: str) -> tuple[subprocess.Popen[bytes], int]:
        game = tmp_path / game_name
        if not game.exists():
            game.write_bytes(Path("/bin/sleep").read_bytes())
            game.chmod(0o755)
        proc = subprocess.Popen([str(reaper), "SteamLaunch", f"AppId={app_id}", "--", str(game), "60"])
        started.append(proc)
        assert wait_until(lambda: bool(psutil.Process(proc.pid).children())), "the game child never started"
        return proc, psutil.Process(proc.pid).children()[0].pid

    yield _launch
    for proc in started:
        for child in psutil.Process(proc.pid).children() if proc.poll() is None else []:
            child.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_a_running_steam_game_is_a_signal_with_its_app_id_and_the_games_own_process(
    launch, clock, tmp_path: Path
) -> None:
    scanner = ProcessScanner(interval_s=1.0, clock=clock)
    steam = SteamGames(scanner, steamapps_dirs=[tmp_path / "no-library"])
    reaper, game_pid = launch("1091500", "Cyberpunk2077")

    (signal,) = steam.active()
    assert (signal.source, signal.app_id, signal.pid) == ("steam", "1091500", game_pid)
    assert signal.name == "Cyberpunk2077"
    assert signal.exe == str(tmp_path / "Cyberpunk2077")
    assert signal.started_at == clock.now_s

    psutil.Process(game_pid).kill()  # the game exits; the reaper follows
    reaper.wait(5)
    clock.advance(1.0)
    assert steam.active() == ()


def test_the_name_comes_from_the_libraries_appmanifest_when_there_is_one(
    launch, clock, tmp_path: Path
) -> None:
    library = tmp_path / "steamapps"
    library.mkdir()
    (library / "appmanifest_1091500.acf").write_text(
        '"AppState"\n{\n\t"appid"\t\t"1091500"\n\t"name"\t\t"Cyberpunk 2077"\n\t"StateFlags"\t\t"4"\n}\n'
    )
    steam = SteamGames(ProcessScanner(interval_s=1.0, clock=clock), steamapps_dirs=[library])
    _reaper, game_pid = launch("1091500", "Cyberpunk2077")
    (signal,) = steam.active()
    assert (signal.name, signal.app_id, signal.pid) == ("Cyberpunk 2077", "1091500", game_pid)


def test_no_rescan_before_the_interval_and_a_rescan_once_it_has_passed(launch, clock, tmp_path: Path) -> None:
    scanner = ProcessScanner(interval_s=1.0, clock=clock)
    steam = SteamGames(scanner, steamapps_dirs=[tmp_path])
    assert steam.active() == ()
    first = scanner.table().generation

    _reaper, game_pid = launch("570", "dota2")
    clock.advance(0.5)
    assert steam.active() == ()  # the game runs, but the table is only half an interval old
    assert scanner.table().generation == first
    clock.advance(0.5)
    assert [s.pid for s in steam.active()] == [game_pid]
    assert scanner.table().generation == first + 1
    assert steam.active()[0].started_at == clock.now_s  # first seen now
    clock.advance(5.0)
    assert steam.active()[0].started_at == clock.now_s - 5.0  # still the first sighting


def test_refresh_scans_at_once_whatever_the_interval(launch, clock, tmp_path: Path) -> None:
    scanner = ProcessScanner(interval_s=60.0, clock=clock)
    steam = SteamGames(scanner, steamapps_dirs=[tmp_path])
    assert steam.active() == ()
    launch("570", "dota2")
    scanner.refresh()
    assert [s.app_id for s in steam.active()] == ["570"]


# --- the pieces, on made-up process tables ---------------------------------------------------------


def _proc(
    pid: int, ppid: int, name: str, created: float, cmdline: tuple[str, ...] | None = None
) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=ppid, name=name, exe=f"/x/{name}", create_time=created, cmdline=cmdline)


def test_the_game_process_is_found_below_protons_launcher_layers() -> None:
    reaper = _proc(100, 1, "reaper", 1.0, ("reaper", "SteamLaunch", "AppId=1091500", "--", "x"))
    table = ProcessTable(
        processes=(
            reaper,
            _proc(101, 100, "_v2-entry-point", 2.0),
            _proc(102, 101, "pv-bwrap", 3.0),
            _proc(103, 102, "python3", 4.0),
            _proc(104, 103, "wineserver", 5.0),
            _proc(105, 103, "Cyberpunk2077.exe", 6.0),
            _proc(106, 103, "steam.exe", 5.5),
            _proc(200, 1, "firefox", 0.5),
        ),
        scanned_at=0.0,
        generation=1,
        duration_s=0.0,
    )
    game = find_game_process(table, reaper)
    assert game is not None and (game.pid, game.name) == (105, "Cyberpunk2077.exe")
    lonely = ProcessTable(processes=(reaper,), scanned_at=0.0, generation=1, duration_s=0.0)
    assert find_game_process(lonely, reaper) is None


@pytest.mark.parametrize(
    ("cmdline", "app_id"),
    [
        (["/home/u/.steam/ubuntu12_32/reaper", "SteamLaunch", "AppId=1091500", "--", "/g/game"], "1091500"),
        (["/bin/sh", "./reaper", "SteamLaunch", "AppId=570", "--", "./dota2"], "570"),
        (["reaper", "SteamLaunch", "AppId=abc", "--", "x"], None),
        (["reaper", "AppId=570", "--", "x"], None),
        (["game", "--", "SteamLaunch", "AppId=570"], None),  # only before the first "--"
        ([], None),
    ],
)
def test_steam_app_id(cmdline: list[str], app_id: str | None) -> None:
    assert steam_app_id(cmdline) == app_id


def test_name_from_cmdline_prefers_the_windows_exe_then_the_program_after_the_last_separator() -> None:
    proton = [
        "reaper", "SteamLaunch", "AppId=1", "--", "/s/_v2-entry-point", "--verb=waitforexitandrun", "--",
        "/s/Proton 8.0/proton", "waitforexitandrun", "/s/common/Cyberpunk 2077/bin/x64/Cyberpunk2077.exe",
    ]  # fmt: skip
    assert name_from_cmdline(proton) == "Cyberpunk2077.exe"
    assert (
        name_from_cmdline(["reaper", "SteamLaunch", "AppId=2", "--", "/g/factorio/bin/factorio"])
        == "factorio"
    )
    assert name_from_cmdline(["reaper", "SteamLaunch", "AppId=2"]) is None


def test_read_manifest_name_takes_the_first_library_that_knows_the_app(tmp_path: Path) -> None:
    empty, lib = tmp_path / "a", tmp_path / "b"
    empty.mkdir()
    lib.mkdir()
    (lib / "appmanifest_570.acf").write_text('"AppState"\n{\n\t"appid"\t"570"\n\t"name"\t"Dota 2"\n}\n')
    assert read_manifest_name("570", [empty, lib]) == "Dota 2"
    assert read_manifest_name("571", [empty, lib]) is None
