"""When evicted models may come back on one GPU: after a cooldown with no signal, at most one reload per
window, the window doubling when a signal returns within the window after a reload (that reload was too
early; once per reload, so each premature reload doubles it once), and back to the base after a long calm
(DESIGN.md's defaults: 30 s, up to 10 min, reset after an hour)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class ResumeWindow:
    """Mutable, owned by ContentionPolicy. Times are on the policy's clock."""

    base_s: float
    max_s: float
    calm_reset_s: float
    cooldown_s: float = 0.0
    last_signal_at: float | None = None  # last tick at which something kept our models out
    last_contention_at: float | None = None  # last tick at which a game, pressure or heat held
    last_reload_at: float | None = None
    contention_active: bool = False
    grown_since_reload: bool = False

    def __post_init__(self) -> None:
        if self.cooldown_s <= 0:
            self.cooldown_s = self.base_s

    def configure(self, *, base_s: float, max_s: float, calm_reset_s: float) -> None:
        """Settings changed live: keep the history, clamp the current window to the new bounds."""
        self.base_s, self.max_s, self.calm_reset_s = base_s, max_s, calm_reset_s
        self.cooldown_s = min(max(self.cooldown_s, base_s), max(max_s, base_s))

    def observe(self, now: float, *, contention: bool, hold: bool) -> bool:
        """Record one tick. `contention`: a game, pressure or heat holds (these grow the window); `hold`:
        something else keeps the models out (pause, battery, a lost GPU). True when the window grew."""
        grew = False
        calm = self.last_contention_at is None or now - self.last_contention_at >= self.calm_reset_s
        if calm and self.cooldown_s != self.base_s:
            logger.info("an hour of calm: resume cooldown back to %.0f s", self.base_s)
            self.cooldown_s = self.base_s
        if contention:
            returned_early = self.last_reload_at is not None and now - self.last_reload_at < self.cooldown_s
            rising = not self.contention_active
            if rising and returned_early and not self.grown_since_reload and self.cooldown_s < self.max_s:
                self.cooldown_s = min(self.cooldown_s * 2, self.max_s)
                self.grown_since_reload = True
                grew = True
                logger.info("signal returned %.1f s after a reload: cooldown now %.0f s",
                            now - (self.last_reload_at or now), self.cooldown_s)  # fmt: skip
            self.last_contention_at = now
        self.contention_active = contention
        if contention or hold:
            self.last_signal_at = now
        return grew

    def restart(self, now: float) -> None:
        """The user evicted: the cooldown counts from now, the window does not grow."""
        self.last_signal_at = now

    def ready_at(self) -> float | None:
        """The earliest time a reload may happen; None when nothing holds it back."""
        times = [t + self.cooldown_s for t in (self.last_signal_at, self.last_reload_at) if t is not None]
        return max(times) if times else None

    def reloaded(self, now: float) -> None:
        self.last_reload_at = now
        self.grown_since_reload = False
