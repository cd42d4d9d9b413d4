"""Exponential backoff on an injected clock: how long to leave something that failed (NVML, a GPU, a model
server) before trying it again, so that a component that is down causes no error storm."""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """After the n-th failure in a row the next attempt waits `first_s * 2**(n-1)` seconds, at most `max_s`;
    one success resets it. `failed()` returns that delay (for callers that keep their own schedule);
    `ready()` says whether it has passed on `clock` (for callers that ask before each attempt)."""

    def __init__(self, *, first_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError(f"backoff: need 0 < first_s <= max_s, got first_s={first_s}, max_s={max_s}")
        self.first_s = first_s
        self.max_s = max_s
        self._clock = clock
        self.failures = 0
        self.retry_at = 0.0  # on `clock`; meaningful while failures > 0

    def ready(self) -> bool:
        """True when the next attempt may run now: no failure since the last success, or its delay passed."""
        return self.failures == 0 or self._clock() >= self.retry_at

    def next_delay_s(self) -> float:
        """The delay the next failure would set."""
        return min(self.max_s, self.first_s * 2.0**self.failures)

    def failed(self) -> float:
        """Record a failure; returns the delay in seconds before the next attempt."""
        delay_s = self.next_delay_s()
        self.failures += 1
        self.retry_at = self._clock() + delay_s
        return delay_s

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
