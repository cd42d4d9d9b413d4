"""Game signals in simulation (`--simulate`, `vram-steward replay`): the scenario's scripted signals, plus
every watcher that can run on the scenario's world, fed with it instead of the machine's.

The exclusive-app list is matched against the scenario's processes at the simulated time by the same
`ExclusiveApps` source, through the same rate-limited `ProcessScanner` (walking at
`process_check_interval_secs` on the simulated clock), so a user can try their own list, and its
settings changes, in a replay before trusting it.
"""

from __future__ import annotations

from collections.abc import Callable

from app.core.gpu.simulated import SimulatedBackend
from app.core.policy.signals import CompositeSignals, GameSignal
from app.core.settings import Settings
from app.core.signals.exclusive_apps import ExclusiveApps
from app.core.signals.process_scan import ProcessInfo, ProcessScanner


class ScenarioSignals:
    """The game signals a scenario scripts (`game_signal_start` / `game_signal_end`), shaped like the real
    watchers' output."""

    def __init__(self, backend: SimulatedBackend) -> None:
        self._backend = backend
        self._exes: dict[tuple[str, int | None, float], str | None] = {}

    def active(self) -> tuple[GameSignal, ...]:
        signals = self._backend.active_game_signals()
        # GameMode reads the executable of the registered pid once, when the game registers (from /proc);
        # here, the scenario's process with that pid, by name, if it runs when the signal starts.
        new = [s for s in signals if (s.name, s.pid, s.started_at) not in self._exes]
        if new:
            names = {p.pid: p.name for p in self._backend.processes()}
            for s in new:
                self._exes[(s.name, s.pid, s.started_at)] = names.get(s.pid) if s.pid is not None else None
        self._exes = {key: self._exes[key] for key in ((s.name, s.pid, s.started_at) for s in signals)}
        return tuple(
            GameSignal(
                name=s.name,
                source=s.source,
                pid=s.pid,
                app_id=s.app_id,
                exe=self._exes[(s.name, s.pid, s.started_at)],
                started_at=s.started_at,
            )
            for s in signals
        )

    def update_settings(self, settings: Settings) -> None:
        pass  # the scenario decides what it scripts; the settings reach the sources beside this one

    def close(self) -> None:
        pass


class ScenarioProcessTable:
    """A process-table walk over the scenario's processes at the simulated time (`ProcessScanner`'s
    `read`). The scenario has no executables or command lines: a process is known by its name, which is
    what `matching_entry` compares first on a real machine too."""

    def __init__(self, backend: SimulatedBackend) -> None:
        self._backend = backend

    def __call__(self, cmdline_names: frozenset[str]) -> list[ProcessInfo]:
        return [
            ProcessInfo(pid=p.pid, ppid=None, name=p.name, exe=None, create_time=p.started_at_s)
            for p in self._backend.processes()
        ]


def simulated_signals(
    settings: Settings, backend: SimulatedBackend, clock: Callable[[], float]
) -> CompositeSignals:
    """The scenario's scripted signals and the user's exclusive-app list over the scenario's processes.
    `update_settings` reaches the list and the scan interval, as on a real machine."""
    scanner = ProcessScanner(
        interval_s=settings.process_check_interval_secs, clock=clock, read=ScenarioProcessTable(backend)
    )
    return CompositeSignals([ScenarioSignals(backend), ExclusiveApps(scanner, settings.exclusive_apps)])
