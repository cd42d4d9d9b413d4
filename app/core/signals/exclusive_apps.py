"""The user's exclusive-app list (Settings.exclusive_apps), as BOINC does it: while a process with one of
these executable names runs, it gets the GPU. Names match the process name or the basename of its
executable, case-insensitively, with or without ".exe" ("blender", "resolve", "DaVinci Resolve").
Only this user's processes count: another user's `blender` (or any process they name so) must not evict our
models. A process whose owner is unknown (a scenario's, in simulation) still matches."""

from __future__ import annotations

import os
from collections.abc import Iterable

from app.core.policy.signals import GameSignal
from app.core.settings import Settings
from app.core.signals.process_scan import ProcessInfo, ProcessScanner, ProcessTable, TableSignalSource


def normalize_app_name(name: str) -> str:
    lowered = name.strip().lower()
    return lowered.removesuffix(".exe")


def matching_entry(proc: ProcessInfo, wanted: dict[str, str]) -> str | None:
    """The list entry (as the user wrote it) that this process matches, if any."""
    candidates = [proc.name]
    if proc.exe:
        candidates.append(os.path.basename(proc.exe))
    for candidate in candidates:
        entry = wanted.get(normalize_app_name(candidate))
        if entry is not None:
            return entry
    return None


class ExclusiveApps(TableSignalSource):
    """GameSignalSource for processes on the exclusive-app list. One signal per matching process."""

    def __init__(self, scanner: ProcessScanner, names: Iterable[str]) -> None:
        super().__init__(scanner)
        self._wanted: dict[str, str] = {}
        self.set_names(names)

    def set_names(self, names: Iterable[str]) -> None:
        """Replace the list (settings changed); takes effect on the next active()."""
        wanted = {normalize_app_name(n): n.strip() for n in names if n.strip()}
        with self._lock:
            self._wanted = wanted
            self._generation = -1

    def update_settings(self, settings: Settings) -> None:
        super().update_settings(settings)
        self.set_names(settings.exclusive_apps)

    def _enabled(self) -> bool:
        return bool(self._wanted)  # an empty list costs no process walk

    def _signals_from(self, table: ProcessTable) -> tuple[GameSignal, ...]:
        signals: list[GameSignal] = []
        seen: set[tuple[int, float | None]] = set()
        own_pid = os.getpid()
        for proc in table.processes:
            if proc.pid == own_pid or not proc.owned_by_us():
                continue
            entry = matching_entry(proc, self._wanted)
            if entry is None:
                continue
            key = (proc.pid, proc.create_time)
            seen.add(key)
            signals.append(
                GameSignal(
                    name=entry,
                    source="exclusive_app",
                    pid=proc.pid,
                    exe=proc.exe,
                    started_at=self._first_seen.setdefault(key, table.scanned_at),
                )
            )
        for key in set(self._first_seen) - seen:
            del self._first_seen[key]
        return tuple(signals)
