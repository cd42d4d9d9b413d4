"""Who waits while we free VRAM: games and Wine/Proton programs; not the desktop, not ignored apps; unknown
apps as `vulkan_unknown_apps` says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.core.settings import AppRule, Settings
from app.core.vulkan.verdict import Ancestor, Kind, ProcessFacts, classify_process, read_process, waits


def facts(
    exe: str, *cmdline: str, name: str = "", env: dict[str, str] | None = None, **kw: object
) -> ProcessFacts:
    return ProcessFacts(
        pid=500,
        name=name or os.path.basename(exe)[:15],
        exe=exe,
        cmdline=cmdline or (exe,),
        environment=env or {},
        **kw,  # type: ignore[arg-type]
    )


DEFAULT = Settings()


@pytest.mark.parametrize(
    ("process", "kind"),
    [
        (facts("/usr/lib/firefox/firefox"), Kind.DESKTOP),
        (facts("/usr/bin/mpv", "mpv", "--vo=gpu-next", "film.mkv"), Kind.DESKTOP),
        (facts("/usr/bin/gnome-shell"), Kind.DESKTOP),
        (facts("/usr/bin/vkcube"), Kind.UNKNOWN),
        (facts("/opt/wine/bin/wine64-preloader", "C:\\Games\\Cyberpunk2077.exe"), Kind.WINE),
        (facts("/usr/bin/wine64", "start.exe"), Kind.WINE),
        (facts("/games/game.bin", env={"STEAM_COMPAT_DATA_PATH": "/x/compatdata/1"}), Kind.WINE),
        (facts("/games/game.bin", env={"WINEPREFIX": "/home/u/.wine"}), Kind.WINE),
        (facts("/games/native", env={"SteamAppId": "1091500"}), Kind.GAME),
        (facts("/games/native", env={"LUTRIS_GAME_UUID": "abc", "GAME_NAME": "Celeste"}), Kind.GAME),
        (
            facts("/games/native", ancestors=(Ancestor(7, "reaper", ("reaper", "SteamLaunch", "AppId=70")),)),
            Kind.GAME,
        ),
    ],
)
def test_kinds(process: ProcessFacts, kind: Kind) -> None:
    assert classify_process(process, DEFAULT).kind == kind


def test_names_for_people() -> None:
    wine = facts("/opt/wine/bin/wine64-preloader", "C:\\Games\\Cyberpunk2077.exe", "--launcher-skip")
    assert classify_process(wine, DEFAULT).name == "Cyberpunk2077.exe"
    lutris = facts("/games/native", env={"LUTRIS_GAME_UUID": "abc", "GAME_NAME": "Celeste"})
    assert classify_process(lutris, DEFAULT).name == "Celeste"
    assert classify_process(facts("/usr/bin/vkcube"), DEFAULT).name == "vkcube"


def test_a_running_game_signal_names_the_process_or_an_ancestor() -> None:
    child = facts("/games/engine", ancestors=(Ancestor(77, "launcher"), Ancestor(1, "systemd")))
    assert classify_process(child, DEFAULT).kind == Kind.UNKNOWN
    assert classify_process(child, DEFAULT, game_pids={77}).kind == Kind.GAME
    assert classify_process(child, DEFAULT, game_pids={500}).kind == Kind.GAME


def test_rules_and_the_exclusive_list_come_first() -> None:
    blender = facts("/usr/bin/blender")
    exclusive = Settings(exclusive_apps=("Blender",))
    assert classify_process(blender, exclusive).kind == Kind.GAME
    ignored = Settings(app_rules=(AppRule(match="cyberpunk2077.exe", action="ignore"),))
    wine = facts("/usr/bin/wine64", "C:\\Games\\Cyberpunk2077.exe")
    assert classify_process(wine, ignored).kind == Kind.IGNORED
    evict_browser = Settings(app_rules=(AppRule(match="firefox", action="evict"),))
    verdict = classify_process(facts("/usr/lib/firefox/firefox"), evict_browser)
    assert verdict.kind == Kind.GAME and waits(verdict, Settings(auto_pause_for_gaming=False))
    steam_rule = Settings(app_rules=(AppRule(match="steam:1091500", action="ignore"),))
    steam_game = facts("/games/native", env={"SteamAppId": "1091500"})
    assert classify_process(steam_game, steam_rule).kind == Kind.IGNORED


def test_who_waits() -> None:
    wine = classify_process(facts("/usr/bin/wine64", "game.exe"), DEFAULT)
    unknown = classify_process(facts("/usr/bin/vkcube"), DEFAULT)
    desktop = classify_process(facts("/usr/bin/firefox"), DEFAULT)
    assert waits(wine, DEFAULT) and not waits(desktop, DEFAULT)
    assert not waits(unknown, DEFAULT), "unknown apps are answered at once by default"
    assert waits(unknown, Settings(vulkan_unknown_apps="wait"))
    assert not waits(desktop, Settings(vulkan_unknown_apps="wait"))
    assert not waits(wine, Settings(auto_pause_for_gaming=False)), "nothing would be freed: no wait"


def test_read_process_reads_environment_and_ancestors() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "C:\\x\\Game.exe"],
        stdin=subprocess.PIPE,
        env={**os.environ, "WINEPREFIX": "/tmp/prefix", "UNRELATED": "secret"},
    )
    try:
        got = read_process(child.pid)
    finally:
        child.communicate(b"")
    assert got.environment == {"WINEPREFIX": "/tmp/prefix"}, "only the keys we look at are kept"
    assert got.ancestors[0].pid == os.getpid()
    assert classify_process(got, DEFAULT).kind == Kind.WINE
    gone = read_process(child.pid, exe="/bin/game", cmdline=("game",))
    assert gone.exe == "/bin/game" and gone.cmdline == ("game",), "a process that exited: the report's facts"
