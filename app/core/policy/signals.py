"""Game signals: "something that needs the whole GPU is running", from GameMode, Steam, the user's
exclusive-app list or a simulation scenario.

Each source keeps its latest snapshot under a lock and returns it from `active()`, which the engine's worker
thread calls about once a tick: it must be cheap and must never block on I/O.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.core.settings import Settings

logger = logging.getLogger(__name__)

SOURCES = ("gamemode", "steam", "exclusive_app", "scenario")


@dataclass(frozen=True, kw_only=True)
class GameSignal:
    """One running game (or exclusive app), named for people: GameStarted/GameEnded carry these facts."""

    name: str  # for people: "Cyberpunk 2077"
    source: str  # "gamemode" | "steam" | "exclusive_app" | "scenario"
    pid: int | None
    app_id: str | None = None  # Steam AppId, as text ("1091500")
    exe: str | None = None  # full path of the executable when known
    started_at: float  # the engine clock's time when this signal was first seen

    @property
    def key(self) -> tuple[object, ...]:
        """Identity for de-duplication and for telling "started" from "still running"."""
        if self.pid is not None:
            return ("pid", self.pid)
        return ("no-pid", self.source, self.app_id, self.name)


class GameSignalSource(Protocol):
    def active(self) -> tuple[GameSignal, ...]:
        """The games running now. Cheap, thread-safe, never blocks on I/O."""
        ...

    def update_settings(self, settings: Settings) -> None:
        """Settings changed while running (the exclusive-app list, the scan interval); from the next
        active()."""
        ...

    def close(self) -> None:
        """Stop watching and release what the source holds (bus connections). Idempotent."""
        ...


_GENERIC_NAME = re.compile(r"^(steam game \d+|pid \d+|game \(pid \d+\))$", re.IGNORECASE)


def game_key(signal: GameSignal) -> str:
    """What a game is remembered by: its Steam AppId ("steam:1091500"), else its executable's name."""
    if signal.app_id:
        return f"steam:{signal.app_id}"
    text = (signal.exe or signal.name).strip().replace("\\", "/").rsplit("/", 1)[-1].lower()
    return text.removesuffix(".exe")


def name_score(signal: GameSignal) -> int:
    """How informative a signal's name is: 0 a placeholder ("Steam game 1091500"), 1 an executable's name
    ("Cyberpunk2077.exe"), 2 a title that is not just the executable ("Cyberpunk 2077")."""
    name = signal.name.strip()
    if not name or _GENERIC_NAME.match(name):
        return 0
    exe_base = os.path.basename(signal.exe) if signal.exe else ""
    lowered = name.lower()
    if lowered == exe_base.lower() or lowered.endswith(".exe") or (" " not in name and "/" not in name):
        return 1
    return 2


def merge(signals: Iterable[GameSignal]) -> tuple[GameSignal, ...]:
    """De-duplicate: one signal per pid (or per source+app+name without a pid).

    The merged signal keeps the source of the one seen first (earliest started_at, then the order given),
    so that (source, pid) stays stable while a second source joins; it takes the most informative name
    (see name_score), and any app_id / exe that one of the duplicates knew. Order: first appearance.
    """
    merged: dict[tuple[object, ...], GameSignal] = {}
    for signal in signals:
        current = merged.get(signal.key)
        if current is None:
            merged[signal.key] = signal
            continue
        first, second = (signal, current) if signal.started_at < current.started_at else (current, signal)
        named = signal if name_score(signal) > name_score(current) else current
        merged[signal.key] = replace(
            first,
            name=named.name,
            app_id=first.app_id or second.app_id,
            exe=first.exe or second.exe,
        )
    return tuple(merged.values())


class ScriptedSignals:
    """A source whose games a script sets (`source.games = (GameSignal(...),)`): benchmarks and tests that
    raise a game signal at a moment of their choosing, as a watcher would."""

    def __init__(self) -> None:
        self.games: tuple[GameSignal, ...] = ()

    def active(self) -> tuple[GameSignal, ...]:
        return self.games

    def update_settings(self, settings: Settings) -> None:
        pass  # a script decides what it signals

    def close(self) -> None:
        self.games = ()


class CompositeSignals:
    """Several sources seen as one: merged and de-duplicated. A source that fails is logged (once until it
    recovers) and counted as reporting nothing, so one broken watcher never hides the others."""

    def __init__(self, sources: Sequence[GameSignalSource]) -> None:
        self.sources = tuple(sources)
        self._failing: set[int] = set()

    def active(self) -> tuple[GameSignal, ...]:
        collected: list[GameSignal] = []
        for index, source in enumerate(self.sources):
            try:
                collected.extend(source.active())
            except Exception:
                if index not in self._failing:
                    self._failing.add(index)
                    logger.exception("game-signal source %r failed; ignoring it until it recovers", source)
                continue
            self._failing.discard(index)
        return merge(collected)

    def update_settings(self, settings: Settings) -> None:
        for source in self.sources:
            source.update_settings(settings)

    def close(self) -> None:
        for source in self.sources:
            try:
                source.close()
            except Exception:
                logger.exception("closing game-signal source %r failed", source)
