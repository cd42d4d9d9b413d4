"""What the dashboard's Holders view, process table and GPU cards say, from the engine's snapshot.

Pure functions, no Qt (like presenter.py): every holder (our own models, each managed server's models or
processes, frozen apps, stopped commands and units) with its state in words and what it holds where.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.holders import ModelState, ModelStatus
from app.core.units import format_bytes
from app.ui.presenter import ProcessRow

if TYPE_CHECKING:
    from app.core.engine.steward import StewardSnapshot

# Holder names for people (ModelStatus.holder is the holder's own name: "builtin", "ollama", "freeze", ...)
HOLDER_TITLES = {
    "builtin": "VRAM Steward's own models",
    "freeze": "Frozen apps",
    "command": "Apps stopped and started by command",
    "systemd": "systemd units",
}
# Holders that free VRAM by stopping a whole program: a freed entry is "stopped", not "freed"
STOPPING_HOLDERS = frozenset({"command", "systemd"})


@dataclass(frozen=True)
class HolderRow:
    holder: str  # the holder's name, as ModelStatus.holder says it
    name: str
    state: str  # for people: "resident", "freed", "frozen in RAM", "stopped", "comes back on next use"
    gpu: int
    vram_text: str  # what it holds in VRAM now
    ram_text: str  # what it holds in host RAM instead (a frozen app), or ""
    detail: str  # the last error, or what happens next
    priority: int


@dataclass(frozen=True)
class HolderGroup:
    holder: str
    title: str
    rows: tuple[HolderRow, ...]
    vram_bytes: int


def holder_title(holder: str) -> str:
    return HOLDER_TITLES.get(holder, holder.replace("_", " "))


def state_words(model: ModelStatus) -> str:
    """The state as a user reads it."""
    if model.comes_back_on_next_use and model.state in (ModelState.UNLOADED, ModelState.EVICTED):
        return "freed, comes back on next use"
    if model.state == ModelState.EVICTED:
        return "stopped" if model.holder in STOPPING_HOLDERS else "freed"
    if model.state == ModelState.FROZEN:
        return "frozen in RAM" + (" (until you thaw it)" if model.held_by_user else "")
    if model.state == ModelState.UNLOADED:
        return "stopped" if model.holder in STOPPING_HOLDERS else "not loaded"
    if model.state == ModelState.WAITING:
        return "waiting for room"
    if model.state == ModelState.LOADING and model.progress_total_bytes:
        done = model.progress_done_bytes or 0
        return f"loading {max(0, min(100, round(100 * done / model.progress_total_bytes)))} %"
    return str(model.state)


def _vram_bytes(model: ModelStatus) -> int:
    if model.state in (ModelState.RESIDENT, ModelState.LOADING):
        if model.state == ModelState.LOADING and model.progress_done_bytes is not None:
            return model.progress_done_bytes
        return model.size_bytes or 0
    return 0


def holder_row(model: ModelStatus) -> HolderRow:
    vram = _vram_bytes(model)
    if model.state in (ModelState.RESIDENT, ModelState.LOADING) and model.size_bytes is None:
        vram_text = "N/A"
    else:
        vram_text = format_bytes(vram)
    ram_text = format_bytes(model.size_bytes) if model.state == ModelState.FROZEN else ""
    detail = model.last_error or ""
    if not detail and model.state == ModelState.EVICTED and not model.comes_back_on_next_use:
        detail = "comes back when the GPU is free"
    elif not detail and model.comes_back_on_next_use and model.state != ModelState.RESIDENT:
        detail = "the app loads it again when you next use it"
    return HolderRow(
        holder=model.holder,
        name=model.name,
        state=state_words(model),
        gpu=model.gpu,
        vram_text=f"{vram_text} on GPU {model.gpu}",
        ram_text=ram_text,
        detail=detail,
        priority=model.priority,
    )


def holder_groups(models: Iterable[ModelStatus]) -> tuple[HolderGroup, ...]:
    """Every holder with its models or processes; our own first, then the others by name."""
    by_holder: dict[str, list[ModelStatus]] = {}
    for model in models:
        by_holder.setdefault(model.holder, []).append(model)
    order = sorted(by_holder, key=lambda h: (h != "builtin", h))
    return tuple(
        HolderGroup(
            holder=h,
            title=holder_title(h),
            rows=tuple(holder_row(m) for m in by_holder[h]),
            vram_bytes=sum(_vram_bytes(m) for m in by_holder[h]),
        )
        for h in order
    )


def process_apps(snapshot: StewardSnapshot, rows: Sequence[ProcessRow]) -> list[str]:
    """The app each process row belongs to: the game a signal names, VRAM Steward for its own hosts, the
    managed app (the holder with models on that GPU), the desktop; else its executable."""
    games = {g.pid: g.name for g in snapshot.games if g.pid is not None}
    managed_by_gpu: dict[int, set[str]] = {}
    for m in snapshot.models:
        if m.holder != "builtin":
            managed_by_gpu.setdefault(m.gpu, set()).add(holder_title(m.holder))
    apps = []
    for row in rows:
        exe = row.name.replace("\\", "/").rsplit("/", 1)[-1].split(" ")[0]
        if row.pid in games:
            apps.append(games[row.pid])
        elif row.role == "self":
            apps.append("VRAM Steward")
        elif row.role == "managed":
            holders = managed_by_gpu.get(row.gpu, set())
            apps.append(next(iter(holders)) if len(holders) == 1 else exe)
        elif row.role == "desktop":
            apps.append("desktop")
        else:
            apps.append(exe)
    return apps


def gpu_card_line(gpu: int, models: Iterable[ModelStatus]) -> str:
    """Under a GPU's gauge on its card: what our holders keep on it."""
    held = [f"{m.name} ({state_words(m)})" for m in models if m.gpu == gpu]
    return "Holds: " + ", ".join(held) if held else "Holds nothing of yours"
