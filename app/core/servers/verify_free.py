"""Verified eviction: after a server says it unloaded a model, watch NVML until the memory is really back.

Model servers answer an unload before the memory is free (Ollama's `keep_alive: 0` returns as soon as the
scheduler lets go; the runner exits afterwards), and a game that starts allocating in that gap still fails.
So eviction waits, polling the GPU backend, until the runner processes hold no more than they should, or a
timeout passes; then it says what came back and what is still held and by whom:
"freed 13.0 GiB, 286.1 MiB still held by llama-server (pid 4321)".

When NVML shows none of the runner processes (our app in a container or a Flatpak sees other PIDs than
NVML reports), it falls back to watching the GPU's free memory grow by the expected amount.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from app.core.gpu.backend import GpuBackend
from app.core.gpu.snapshot import BackendState, GpuState, TelemetrySnapshot
from app.core.units import format_bytes

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0
VERIFY_INTERVAL_S = 0.1


@dataclass(frozen=True)
class HeldMemory:
    """What some processes hold, as one NVML sample saw it."""

    total_bytes: int
    by_process: tuple[tuple[int, str, int], ...]  # (pid, name, bytes), only those holding something
    visible: bool  # at least one of the processes was listed by NVML
    free_bytes: dict[int, int]  # per GPU index, for the fallback

    def describe_holders(self) -> str | None:
        if not self.by_process:
            return None
        return ", ".join(f"{name} (pid {pid})" for pid, name, _ in self.by_process)


def measure(snapshot: TelemetrySnapshot, pids: Collection[int]) -> HeldMemory | None:
    """The VRAM that `pids` hold in this sample; None when the backend cannot tell (no driver, an error)."""
    if snapshot.state not in (BackendState.OK, BackendState.SIMULATED):
        return None
    holders: dict[int, tuple[str, int]] = {}
    visible = False
    free: dict[int, int] = {}
    for gpu in snapshot.gpus:
        if gpu.state != GpuState.OK:
            continue
        free[gpu.index] = gpu.free_bytes
        for proc in gpu.processes:
            if proc.pid in pids:
                visible = True
                name, held = holders.get(proc.pid, (proc.name, 0))
                holders[proc.pid] = (name, held + (proc.used_bytes or 0))
    by_process = tuple(sorted((pid, _short(name), b) for pid, (name, b) in holders.items() if b > 0))
    return HeldMemory(
        total_bytes=sum(b for _, _, b in by_process), by_process=by_process, visible=visible, free_bytes=free
    )


def _short(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1].split(" ", 1)[0] or name


@dataclass(frozen=True)
class FreeResult:
    """How an eviction's memory came back. `freed_bytes` None: the backend could not measure it."""

    freed_bytes: int | None
    residue_bytes: int | None  # still held beyond what should be, at the end of the wait
    residue_by: str | None  # who holds it, for people
    waited_s: float
    verified: bool  # measured through NVML (False: no GPU telemetry here, nothing was checked)

    @property
    def complete(self) -> bool:
        return self.verified and not self.residue_bytes

    def describe(self) -> str:
        if not self.verified:
            return "unloaded; VRAM could not be measured here"
        text = f"freed {format_bytes(self.freed_bytes)}"
        if self.residue_bytes:
            text += f", {format_bytes(self.residue_bytes)} still held"
            if self.residue_by:
                text += f" by {self.residue_by}"
        return text


def wait_until_freed(
    backend: GpuBackend,
    pids: Collection[int],
    before: HeldMemory | None,
    *,
    expected_bytes: int,
    clock: Callable[[], float],
    sleep: Callable[[float], object],
    timeout_s: float = VERIFY_TIMEOUT_S,
    interval_s: float = VERIFY_INTERVAL_S,
    gpus: Collection[int] = (),
) -> FreeResult:
    """Poll `backend` until the processes `pids` hold at most `before - expected_bytes` (they usually exit
    and hold nothing), or `timeout_s` passes. `before` is `measure()` taken before the unload request.

    When NVML listed none of `pids` before, wait instead for free memory on `gpus` to grow by
    `expected_bytes` (NVML rounds, so 95 % of it counts)."""
    started = clock()
    if before is None:
        return FreeResult(None, None, None, 0.0, verified=False)
    by_free = not before.visible and expected_bytes > 0 and bool(gpus)
    target = max(before.total_bytes - expected_bytes, 0)
    while True:
        now_held = measure(backend.sample(), pids)
        waited = clock() - started
        if now_held is None:
            return FreeResult(None, None, None, waited, verified=False)
        if by_free:
            grown = sum(now_held.free_bytes.get(g, 0) - before.free_bytes.get(g, 0) for g in gpus)
            if grown >= expected_bytes * 0.95 or waited >= timeout_s:
                residue = max(expected_bytes - max(grown, 0), 0) if grown < expected_bytes * 0.95 else 0
                return FreeResult(max(grown, 0), residue, None, waited, verified=True)
        else:
            freed = max(before.total_bytes - now_held.total_bytes, 0)
            residue = max(now_held.total_bytes - target, 0)
            if residue == 0 or waited >= timeout_s:
                if residue:
                    logger.warning(
                        "after %.1f s, %s still hold %s that should have been freed",
                        waited,
                        now_held.describe_holders(),
                        format_bytes(residue),
                    )
                return FreeResult(
                    freed, residue, now_held.describe_holders() if residue else None, waited, True
                )
        sleep(interval_s)
