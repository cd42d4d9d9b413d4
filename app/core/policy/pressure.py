"""Foreign VRAM pressure on one GPU, and which of our models to give up for it.

Pressure holds when free VRAM is below the headroom, or when foreign VRAM has grown beyond the baseline by
more than the threshold (max(1 GiB, 5 % of total) by default). What we free is "as much as needed":

    need = max(headroom - free,  growth - threshold - bytes we already gave back on this GPU)

The first term restores the headroom with the foreign usage as it is now. The second makes room for the
foreign growth beyond what the desktop is allowed to grow for free: a growing application (a game without a
signal, a render) is given back, byte for byte, what it took beyond the threshold, counting what is already
evicted there, so an application that keeps growing is followed step by step rather than all at once.
Models go lowest priority first, then least recently used (never used counts as the oldest).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.core.gpu.snapshot import GpuProcess, GpuSnapshot
from app.core.holders import ModelStatus
from app.core.policy.classify import Classification, executable_name
from app.core.settings import Settings
from app.core.units import format_bytes


@dataclass(frozen=True)
class Pressure:
    holds: bool  # the signal itself: keeps models out and starts the cooldown over
    need_bytes: int  # what to free now; 0 when enough is already given back
    trigger: str  # for people
    headroom_bytes: int
    free_bytes: int  # free VRAM, plus what processes under an "ignore" rule use (they never trigger)
    growth_bytes: int
    threshold_bytes: int
    trigger_exe: str | None = None  # the executable of the process that grew most (for rules about it)


def display_name(process_name: str) -> str:
    """A process name for people: the executable without its directory or arguments, case kept."""
    text = process_name.strip()
    if " -" in text:
        text = text.split(" -", 1)[0].rstrip()
    return text.replace("\\", "/").rsplit("/", 1)[-1] or process_name


def measure_pressure(
    gpu: GpuSnapshot,
    classification: Classification,
    settings: Settings,
    *,
    given_back_bytes: int,
    excused_pids: frozenset[int] = frozenset(),
    growth_excused_pids: frozenset[int] = frozenset(),
) -> Pressure:
    """`excused_pids`: processes that are no pressure for now (a game the user chose to keep the models
    for with "Resume now"): their VRAM counts as free, like an "ignore" rule's, until that game ends.
    `growth_excused_pids`: processes whose growth is expected (a game given the room it needed last
    time); the headroom rule still applies to them."""
    headroom = settings.headroom_bytes(gpu.total_bytes)
    threshold = settings.pressure_threshold_bytes(gpu.total_bytes)
    excused = [p for p in gpu.processes if p.pid in excused_pids]
    free = gpu.free_bytes + classification.ignored_bytes(gpu.index) + sum(p.used_bytes or 0 for p in excused)
    growth = classification.growth(gpu.index) - sum(
        classification.growth_bytes.get((gpu.index, p.pid), 0)
        for p in gpu.processes
        if p.pid in excused_pids or p.pid in growth_excused_pids
    )
    short = headroom - free
    excess = growth - threshold
    holds = short > 0 or excess > 0
    need = max(short, excess - given_back_bytes, 0) if holds else 0
    trigger_exe: str | None = None
    if excess > 0:
        grower = _biggest_grower(gpu, classification)
        trigger_exe = executable_name(grower.name) if grower is not None else None
        trigger = (
            f"{display_name(grower.name)} (pid {grower.pid}) grew "
            f"{format_bytes(classification.growth_bytes.get((gpu.index, grower.pid), 0))}"
            if grower is not None
            else f"foreign VRAM grew {format_bytes(growth)} (threshold {format_bytes(threshold)})"
        )
    elif short > 0:
        trigger = f"free VRAM {format_bytes(free)} is below the {format_bytes(headroom)} headroom"
    else:
        trigger = ""
    return Pressure(holds, need, trigger, headroom, free, growth, threshold, trigger_exe)


def _biggest_grower(gpu: GpuSnapshot, classification: Classification) -> GpuProcess | None:
    grown = [(classification.growth_bytes.get((gpu.index, p.pid), 0), p) for p in gpu.processes]
    grown = [(g, p) for g, p in grown if g > 0]
    if not grown:
        return None
    return max(grown, key=lambda item: item[0])[1]


def choose_victims(models: Sequence[ModelStatus], need_bytes: int) -> tuple[ModelStatus, ...]:
    """The fewest models, lowest priority then least recently used first, whose sizes add up to need_bytes
    (all of them when they do not). A model of unknown size counts as 0 bytes."""
    order = sorted(
        models, key=lambda m: (m.priority, m.last_used_at if m.last_used_at is not None else float("-inf"))
    )
    chosen: list[ModelStatus] = []
    freed = 0
    for model in order:
        if freed >= need_bytes and chosen:
            break
        chosen.append(model)
        freed += model.size_bytes or 0
    return tuple(chosen)


def choose_reloads(models: Sequence[ModelStatus], available_bytes: int) -> tuple[ModelStatus, ...]:
    """The evicted models that fit in `available_bytes` (free minus headroom), highest priority then most
    recently used first; a model that does not fit is skipped so a smaller one may still come back."""
    order = sorted(
        models,
        key=lambda m: (-m.priority, -(m.last_used_at if m.last_used_at is not None else float("-inf"))),
    )
    chosen: list[ModelStatus] = []
    left = available_bytes
    for model in order:
        size = model.size_bytes or 0
        if size <= left:
            chosen.append(model)
            left -= size
    return tuple(chosen)
