"""Steam games: Steam starts every game through its `reaper` wrapper, whose command line reads
`reaper SteamLaunch AppId=1091500 -- <the game's command>`. That process is the signal; its AppId names the
game (from the library's appmanifest_<AppId>.acf when present), and the first descendant that is not a
launcher wrapper (shell, Proton, pressure-vessel, Wine helpers) is taken as the game's process. Only
reapers of this user count: any user can start a process named `reaper` with that command line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from app.core.policy.signals import GameSignal
from app.core.signals.process_scan import ProcessInfo, ProcessScanner, ProcessTable, TableSignalSource

logger = logging.getLogger(__name__)

REAPER_NAME = "reaper"

# Launcher layers between the reaper and the game itself (lower-case process names).
WRAPPER_NAMES = frozenset(
    {
        "reaper", "sh", "bash", "dash", "env", "timeout", "python", "python3", "proton",
        "_v2-entry-point", "steam-launch-wrapper", "pressure-vessel-wrap", "pressure-vessel-adverb",
        "pv-bwrap", "bwrap", "srt-bwrap", "steam-runtime-launch-client", "steam-runtime-launcher-service",
        "gamemoderun", "mangohud", "gamescope", "wine", "wine64", "wine-preloader", "wine64-preloader",
        "wineserver", "steam.exe", "start.exe", "services.exe", "winedevice.exe", "explorer.exe",
        "plugplay.exe", "rpcss.exe", "svchost.exe", "tabtip.exe", "conhost.exe", "rundll32.exe",
    }
)  # fmt: skip

_MANIFEST_NAME = re.compile(r'^\s*"name"\s+"([^"]*)"', re.MULTILINE)


def default_steamapps_dirs() -> tuple[Path, ...]:
    """Where Steam keeps its main library on Linux (native, the ~/.steam link, and the Flatpak)."""
    home = Path.home()
    return (
        home / ".local/share/Steam/steamapps",
        home / ".steam/steam/steamapps",
        home / ".var/app/com.valvesoftware.Steam/.local/share/Steam/steamapps",
    )


def steam_app_id(cmdline: Sequence[str]) -> str | None:
    """The AppId of a `reaper SteamLaunch AppId=N -- ...` command line, or None for anything else."""
    head = list(cmdline[: cmdline.index("--")] if "--" in cmdline else cmdline)
    if "SteamLaunch" not in head:
        return None
    for arg in head:
        if arg.lower().startswith("appid="):
            value = arg.split("=", 1)[1]
            return value if value.isdigit() else None
    return None


def read_manifest_name(app_id: str, steamapps_dirs: Sequence[Path]) -> str | None:
    """The "name" field of appmanifest_<app_id>.acf in the first library that has one."""
    for directory in steamapps_dirs:
        path = directory / f"appmanifest_{app_id}.acf"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        match = _MANIFEST_NAME.search(text)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return None


def libraries_in_cmdline(cmdline: Sequence[str]) -> list[Path]:
    """Library folders named by the game's path (".../steamapps/common/<game>/..." -> ".../steamapps")."""
    found: list[Path] = []
    for arg in cmdline:
        marker = arg.find("/steamapps/")
        if marker > 0:
            library = Path(arg[: marker + len("/steamapps")])
            if library not in found:
                found.append(library)
    return found


def find_game_process(table: ProcessTable, reaper: ProcessInfo) -> ProcessInfo | None:
    """The first descendant of the reaper (breadth first, oldest first) that is not a launcher wrapper."""
    children: dict[int, list[ProcessInfo]] = {}
    for proc in table.processes:
        if proc.ppid is not None:
            children.setdefault(proc.ppid, []).append(proc)
    queue = [reaper.pid]
    seen = {reaper.pid}
    while queue:
        level: list[ProcessInfo] = []
        for pid in queue:
            level.extend(children.get(pid, []))
        level.sort(key=lambda p: (p.create_time or 0.0, p.pid))
        for proc in level:
            if proc.name.lower() not in WRAPPER_NAMES:
                return proc
        queue = [p.pid for p in level if p.pid not in seen]
        seen.update(queue)
    return None


def name_from_cmdline(cmdline: Sequence[str]) -> str | None:
    """A Windows game's .exe, else the last program after the last `--` that is not a wrapper."""
    tail = list(cmdline[len(cmdline) - cmdline[::-1].index("--") :]) if "--" in cmdline else []
    for arg in reversed(tail):
        if arg.lower().endswith(".exe") and os.path.basename(arg).lower() not in WRAPPER_NAMES:
            return os.path.basename(arg.replace("\\", "/"))
    for arg in tail:
        base = os.path.basename(arg)
        if base and not arg.startswith("-") and base.lower() not in WRAPPER_NAMES:
            return base
    return None


class SteamGames(TableSignalSource):
    """GameSignalSource for running Steam games. active() rescans the process table when the shared
    scanner says it is due (process_check_interval_secs on the scanner's clock), else returns the last
    result."""

    def __init__(self, scanner: ProcessScanner, *, steamapps_dirs: Sequence[Path] | None = None) -> None:
        super().__init__(scanner)
        scanner.want_cmdline(REAPER_NAME)
        if steamapps_dirs is None:
            steamapps_dirs = default_steamapps_dirs()
        self.steamapps_dirs = tuple(steamapps_dirs)
        self._manifest_names: dict[str, str | None] = {}

    def _signals_from(self, table: ProcessTable) -> tuple[GameSignal, ...]:
        signals: list[GameSignal] = []
        seen: set[tuple[int, float | None]] = set()
        for proc in table.processes:
            if proc.name.lower() != REAPER_NAME or not proc.cmdline:
                continue
            if not proc.owned_by_us():  # another user's game (or a fake reaper) is not ours to yield to
                continue
            app_id = steam_app_id(proc.cmdline)
            if app_id is None:
                continue
            key = (proc.pid, proc.create_time)
            seen.add(key)
            started_at = self._first_seen.setdefault(key, table.scanned_at)
            game = find_game_process(table, proc)
            name = (
                self._manifest_name(app_id, proc.cmdline)
                or (game.name if game else None)
                or name_from_cmdline(proc.cmdline)
                or f"Steam game {app_id}"
            )
            target = game or proc
            signals.append(
                GameSignal(
                    name=name,
                    source="steam",
                    pid=target.pid,
                    app_id=app_id,
                    exe=target.exe,
                    started_at=started_at,
                )
            )
        for key in set(self._first_seen) - seen:
            del self._first_seen[key]
        running_ids = {s.app_id for s in signals}
        for app_id in set(self._manifest_names) - running_ids:
            del self._manifest_names[app_id]  # read again on the next launch (installed meanwhile?)
        return tuple(signals)

    def _manifest_name(self, app_id: str, cmdline: Sequence[str]) -> str | None:
        if app_id not in self._manifest_names:
            dirs = [*libraries_in_cmdline(cmdline), *self.steamapps_dirs]
            self._manifest_names[app_id] = read_manifest_name(app_id, dirs)
            logger.debug("Steam AppId %s: manifest name %r", app_id, self._manifest_names[app_id])
        return self._manifest_names[app_id]
