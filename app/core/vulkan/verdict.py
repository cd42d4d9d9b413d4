"""Who is creating a Vulkan device, and whether we make it wait while we free VRAM (docs/vulkan-layer.md).

Answered at once, never a game: desktop programs (the display server, compositors, browsers, Electron apps,
video players: they create Vulkan devices all day) and applications under a per-app "ignore" rule.
Made to wait while we evict: known games (a running game signal names the process or one of its ancestors,
Steam's `reaper SteamLaunch` is an ancestor, the exclusive-app list or a per-app "evict" rule names it),
launched games (Lutris sets LUTRIS_GAME_UUID) and Windows programs under Wine or Proton (their executable is
wine*/proton, a `.exe` is on the command line, or their environment has STEAM_COMPAT_DATA_PATH or
WINEPREFIX). Everything else follows `vulkan_unknown_apps`."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import psutil

from app.core.policy.classify import DESKTOP_PROCESS_NAMES, executable_name, match_app_rule
from app.core.settings import Settings

logger = logging.getLogger(__name__)

# Video players and media tools that render through Vulkan (mpv's gpu-next, VLC's Vulkan output): desktop.
VIDEO_PLAYER_NAMES: frozenset[str] = frozenset(
    {"mpv", "vlc", "celluloid", "haruna", "totem", "showtime", "clapper", "smplayer", "kodi", "obs"}
)
# Environment variables that say "a game launcher started this" (read from /proc/<pid>/environ).
WINE_ENVIRONMENT = ("STEAM_COMPAT_DATA_PATH", "WINEPREFIX")
STEAM_GAME_ENVIRONMENT = ("SteamGameId", "SteamAppId")
LAUNCHER_ENVIRONMENT = ("LUTRIS_GAME_UUID",)
_ENVIRONMENT_KEYS = (*WINE_ENVIRONMENT, *STEAM_GAME_ENVIRONMENT, *LAUNCHER_ENVIRONMENT, "GAME_NAME")
_MAX_ANCESTORS = 16
_T = TypeVar("_T")


class Kind(enum.StrEnum):
    DESKTOP = "desktop"  # answered at once
    IGNORED = "ignored"  # a per-app "ignore" rule: answered at once
    GAME = "game"  # a known or launched game: wait while we free VRAM
    WINE = "wine"  # a Windows program under Wine / Proton: wait
    UNKNOWN = "unknown"  # the vulkan_unknown_apps setting decides


@dataclass(frozen=True)
class Ancestor:
    pid: int
    name: str
    cmdline: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessFacts:
    """What the verdict is made from; read from /proc (`read_process`) or made by a test."""

    pid: int
    name: str  # the kernel's process name (comm)
    exe: str
    cmdline: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)  # only the keys in _ENVIRONMENT_KEYS
    ancestors: tuple[Ancestor, ...] = ()  # parent first


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    name: str  # for people: "Cyberpunk2077.exe", "vkcube"
    why: str  # "a Steam game", "runs under Wine or Proton", "a desktop program"
    app_id: str | None = None  # the Steam AppId when the environment names one


def windows_program(cmdline: Sequence[str]) -> str | None:
    """The first `.exe` on a command line, as its base name ("C:\\Games\\Foo.exe" -> "Foo.exe")."""
    for arg in cmdline:
        if arg.lower().endswith(".exe"):
            return arg.replace("\\", "/").rsplit("/", 1)[-1]
    return None


def display_name(facts: ProcessFacts) -> str:
    game_name = facts.environment.get("GAME_NAME", "").strip()  # Lutris names its games so
    if game_name:
        return game_name
    return windows_program(facts.cmdline) or os.path.basename(facts.exe) or facts.name or f"pid {facts.pid}"


def steam_app_id(facts: ProcessFacts) -> str | None:
    for key in STEAM_GAME_ENVIRONMENT:
        value = facts.environment.get(key, "")
        if value.isdigit() and value != "0":
            return value
    return None


def _is_steam_launch(ancestor: Ancestor) -> bool:
    return ancestor.name.lower() == "reaper" and "SteamLaunch" in ancestor.cmdline


def _is_wine(facts: ProcessFacts) -> bool:
    exe = os.path.basename(facts.exe).lower()
    if exe.startswith("wine") or "proton" in exe or facts.name.lower().startswith("wine"):
        return True
    if windows_program(facts.cmdline) is not None:
        return True
    return any(facts.environment.get(key) for key in WINE_ENVIRONMENT)


def classify_process(
    facts: ProcessFacts,
    settings: Settings,
    *,
    game_pids: Collection[int] = (),
) -> Verdict:
    """The verdict for a process creating a Vulkan device. `game_pids`: the pids the running game signals
    name (GameMode, Steam, the exclusive-app list)."""
    name = display_name(facts)
    app_id = steam_app_id(facts)
    exe_for_rules = windows_program(facts.cmdline) or facts.exe or facts.name
    rule = match_app_rule(settings.app_rules, exe=exe_for_rules, app_id=app_id)
    if rule is None and exe_for_rules != facts.exe:
        rule = match_app_rule(settings.app_rules, exe=facts.exe, app_id=app_id)
    if rule is not None:
        if rule.action == "ignore":
            return Verdict(Kind.IGNORED, name, f'per-app rule "{rule.match}": ignore', app_id)
        return Verdict(Kind.GAME, name, f'per-app rule "{rule.match}": evict', app_id)
    lineage = [facts.pid, *(a.pid for a in facts.ancestors)]
    if any(pid in game_pids for pid in lineage):
        return Verdict(Kind.GAME, name, "a running game", app_id)
    wanted = {executable_name(entry) for entry in settings.exclusive_apps if entry.strip()}
    if wanted & {
        executable_name(facts.exe),
        executable_name(facts.name),
        executable_name(windows_program(facts.cmdline)),
    }:
        return Verdict(Kind.GAME, name, "on the exclusive-app list", app_id)
    own = {executable_name(facts.exe), executable_name(facts.name)} - {""}
    if own & (DESKTOP_PROCESS_NAMES | VIDEO_PLAYER_NAMES) and windows_program(facts.cmdline) is None:
        return Verdict(Kind.DESKTOP, name, "a desktop program")
    if any(_is_steam_launch(a) for a in facts.ancestors):
        return Verdict(Kind.GAME, name, "a Steam game", app_id)
    if app_id is not None:
        return Verdict(Kind.GAME, name, "a Steam game", app_id)
    if any(facts.environment.get(key) for key in LAUNCHER_ENVIRONMENT):
        return Verdict(Kind.GAME, name, "started by a game launcher (Lutris)")
    if _is_wine(facts):
        return Verdict(Kind.WINE, name, "runs under Wine or Proton")
    return Verdict(Kind.UNKNOWN, name, "not known as a game")


def waits(verdict: Verdict, settings: Settings) -> bool:
    """Whether the process waits while we free VRAM. A per-app "evict" rule always does; other games only
    while auto_pause_for_gaming is on; unknown applications when vulkan_unknown_apps is "wait"."""
    if verdict.kind in (Kind.DESKTOP, Kind.IGNORED):
        return False
    if verdict.why.startswith("per-app rule"):
        return True
    if not settings.auto_pause_for_gaming:
        return False
    if verdict.kind == Kind.UNKNOWN:
        return settings.vulkan_unknown_apps == "wait"
    return True


def read_process(pid: int, *, exe: str = "", cmdline: Sequence[str] = ()) -> ProcessFacts:
    """Facts about a live process from /proc; what cannot be read (it exited, another user's) falls back to
    the report's own `exe` and `cmdline`."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            exe = _safe(proc.exe) or exe
            cmdline = tuple(_safe(proc.cmdline) or cmdline)
            environment = {k: v for k, v in (_safe(proc.environ) or {}).items() if k in _ENVIRONMENT_KEYS}
        ancestors: list[Ancestor] = []
        for parent in proc.parents()[:_MAX_ANCESTORS]:
            ancestors.append(
                Ancestor(parent.pid, _safe(parent.name) or "", tuple(_safe(parent.cmdline) or ()))
            )
    except (psutil.Error, OSError):
        return ProcessFacts(pid=pid, name=os.path.basename(exe), exe=exe, cmdline=tuple(cmdline))
    return ProcessFacts(
        pid=pid, name=name, exe=exe, cmdline=cmdline, environment=environment, ancestors=tuple(ancestors)
    )


def _safe(getter: Callable[[], _T]) -> _T | None:
    try:
        return getter()
    except (psutil.Error, OSError):
        return None
