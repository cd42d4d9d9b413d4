"""What each game needed last time: the peak VRAM its processes reached, per game (Steam AppId, else its
executable), kept in the state dir so that next time VRAM Steward frees only what the game needs.

The file is small JSON, read when a game starts (so `vram-steward games --forget` takes effect at the game's
next start) and updated with a read-modify-write of that one game's entry when it ends, written atomically.
A file that cannot be read is set aside as `<name>.broken` (never silently overwritten) and learning starts
over.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.atomic import write_atomic

logger = logging.getLogger(__name__)

FILE_VERSION = 1


@dataclass(frozen=True)
class LearnedGame:
    key: str  # "steam:1091500" or the executable's name ("cyberpunk2077")
    name: str  # for people
    peak_bytes: int  # the most VRAM its processes held on one GPU, over the runs seen
    runs: int
    last_seen: float  # Unix time of the last run's end

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "peak_bytes": self.peak_bytes,
            "runs": self.runs,
            "last_seen": self.last_seen,
        }


class GamePeaks:
    """The learned peaks. `path` None keeps them in memory only (tests, replay)."""

    def __init__(self, path: Path | None, *, wall_clock: Any = time.time) -> None:
        self.path = path
        self._wall_clock = wall_clock
        self._memory: dict[str, LearnedGame] = {}

    def load(self) -> dict[str, LearnedGame]:
        """Every learned game, as the file says now."""
        if self.path is None:
            return dict(self._memory)
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            games = {
                str(key): LearnedGame(
                    key=str(key),
                    name=str(entry["name"]),
                    peak_bytes=int(entry["peak_bytes"]),
                    runs=int(entry.get("runs", 1)),
                    last_seen=float(entry.get("last_seen", 0.0)),
                )
                for key, entry in dict(raw["games"]).items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            broken = self.path.with_name(self.path.name + ".broken")
            logger.warning(
                "%s cannot be read (%s); set aside as %s, learning starts over", self.path, exc, broken
            )
            try:
                self.path.replace(broken)
            except OSError:
                logger.exception("could not set %s aside", self.path)
            return {}
        return games

    def record(self, key: str, name: str, peak_bytes: int) -> LearnedGame:
        """One run of a game ended having held `peak_bytes` at most: keep the larger of it and what was
        learned before (a game's need rarely shrinks; `forget` starts over)."""
        games = self.load()
        before = games.get(key)
        learned = LearnedGame(
            key=key,
            name=name,
            peak_bytes=max(peak_bytes, before.peak_bytes if before else 0),
            runs=(before.runs if before else 0) + 1,
            last_seen=self._wall_clock(),
        )
        games[key] = learned
        self._save(games)
        return learned

    def forget(self, key: str) -> bool:
        """Drop what was learned of one game; True when there was something."""
        games = self.load()
        if games.pop(key, None) is None:
            return False
        self._save(games)
        return True

    def _save(self, games: dict[str, LearnedGame]) -> None:
        if self.path is None:
            self._memory = dict(games)
            return
        document = {
            "version": FILE_VERSION,
            "games": {key: {k: v for k, v in g.to_json().items() if k != "key"} for key, g in games.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)
