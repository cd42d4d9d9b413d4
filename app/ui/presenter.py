"""Snapshot -> what the user sees: labels, colours, patterns, icon name, tooltip and menu state.

Pure functions over the engine's immutable `StewardSnapshot` and the `Settings`; no Qt, no widgets, so every
rule about what the tray says is tested without a display. Colours come with a pattern and a label: nothing
is told by colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.gpu.snapshot import BackendState, GpuSnapshot, GpuState
from app.core.holders import ModelState, ModelStatus
from app.core.notify.text import format_duration
from app.core.policy.signals import game_key
from app.core.settings import Settings
from app.core.units import format_bytes, format_rate, format_usage

if TYPE_CHECKING:
    from app.core.engine.steward import StewardSnapshot

APP_TITLE = "VRAM Steward"


@dataclass(frozen=True)
class StateInfo:
    icon: str  # a state icon (app.core.resources.STATE_ICONS): its SVG without ".svg"
    title: str  # for people: the tooltip's first line and the dashboard's headline
    colour: str  # an accent for the headline; the icon's shape says the same thing


# Engine states (EngineState in app.core.policy.contention) -> icon, words, accent.
STATES: dict[str, StateInfo] = {
    "idle": StateInfo("idle", "Idle: no models loaded", "#6b7280"),
    "active": StateInfo("resident", "Models resident", "#2e7d32"),
    "evicted_for_game": StateInfo("evicted-for-game", "Models freed for a game", "#c77700"),
    "evicted_for_pressure": StateInfo("evicted-for-game", "Models freed: another app needs VRAM", "#c77700"),
    "cooldown": StateInfo("evicted-for-game", "Waiting for the GPU to stay free", "#c77700"),
    "paused": StateInfo("paused", "Paused", "#1565c0"),
    "dedicated_blocked": StateInfo("paused", "Waiting: other compute apps use the GPU", "#1565c0"),
    "thermal": StateInfo("paused", "Paused: GPU too hot", "#c62828"),
    "sleeping": StateInfo("paused", "Models freed: the system sleeps", "#1565c0"),
    "on_battery": StateInfo("paused", "Models freed: on battery", "#1565c0"),
    "no_gpu": StateInfo("no-gpu", "No NVIDIA GPU", "#6b7280"),
    "error": StateInfo("error", "Error: GPU monitoring failed", "#c62828"),
}
UNKNOWN_STATE = StateInfo("error", "Unknown state", "#c62828")

# Gauge segments: key -> (label, colour, pattern). Patterns map to Qt brush styles in gauges.py.
# "reserved" is what the driver keeps for itself (NVML's reserved memory): neither used nor free, so the free
# part is exactly the free VRAM that `status` and NVML report.
SEGMENTS: dict[str, tuple[str, str, str]] = {
    "ours": ("ours", "#2e7d32", "solid"),
    "desktop": ("desktop", "#1565c0", "diagonal"),
    "games_other": ("games + other apps", "#c77700", "cross"),
    "reserved": ("reserved by the driver", "#6b7280", "dense"),
    "free": ("free", "", "none"),  # empty colour: the palette's base colour
}
OUR_ROLES = frozenset({"self", "managed"})


@dataclass(frozen=True)
class Segment:
    key: str  # ours | desktop | games_other | reserved | free
    label: str
    bytes: int
    colour: str  # "#rrggbb", or "" for the palette's base colour
    pattern: str  # solid | diagonal | cross | none


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    ours_bytes: int
    headroom_bytes: int
    segments: tuple[Segment, ...]
    status_line: str  # the menu's line: "GPU 0: 6.1 GiB / 12.0 GiB used, 3.2 GiB ours"
    tooltip_line: str  # "GPU 0: 6.1 GiB / 12.0 GiB used, 5.7 GiB free"
    problem: str | None = None  # a lost or failing GPU: what happened


@dataclass(frozen=True)
class ModelView:
    name: str
    gpu: int
    state: str
    menu_text: str  # "llama-8b: resident (4.9 GiB)"
    command: str  # what a click does: "load" | "unload"
    checked: bool  # resident or loading
    size_text: str
    digest_short: str
    load_text: str  # "2.1 s at 3.5 GiB/s", or ""
    progress_percent: int | None  # while loading


@dataclass(frozen=True)
class Notice:
    """A standing condition the user should know of: one short line for the tray menu, its tooltip and the
    popup ("Simulation: no NVIDIA GPU", "Control API off: port 8765 busy"), the whole story (what happened,
    what to do) for the dashboard."""

    short: str
    detail: str


NOTICE_SHORT_CHARS = 48  # a plain text becomes a notice whose short line is its start, cut here


def as_notice(notice: Notice | str) -> Notice:
    """A notice as given, or one made from a plain text: its first sentence, cut to fit the tray menu."""
    if isinstance(notice, Notice):
        return notice
    text = notice.strip()
    first = text.split(". ", 1)[0].split("\n", 1)[0].rstrip(".")
    if len(first) > NOTICE_SHORT_CHARS:
        first = first[: NOTICE_SHORT_CHARS - 1].rstrip() + "…"
    return Notice(short=first, detail=text)


@dataclass(frozen=True)
class TrayView:
    """Everything the tray icon, its tooltip and its menu show."""

    state: str
    icon: str
    title: str
    accent: str
    tooltip: str
    gpus: tuple[GpuView, ...]
    models: tuple[ModelView, ...]
    auto_evict: bool
    auto_pause_for_gaming: bool
    pause_text: str  # "Pause" | "Resume"
    pause_command: str  # "pause" | "resume"
    evict_enabled: bool
    notes: tuple[str, ...] = ()  # the notices' short lines: simulation, no GPU, API off, backend problems
    notices: tuple[Notice, ...] = ()
    notice_short: str = ""  # every notice's short line, in one line ("" when there is none)
    notice_detail: str = ""  # every notice's whole story, a paragraph each: for the dashboard
    wait_text: str = ""  # "Models come back in 23 s" while a cooldown counts down, else ""
    resume_in_s: float | None = None  # the countdown itself (None: none runs)
    reload_enabled: bool = False  # models are out and "Reload now" would bring them back


@dataclass(frozen=True)
class ProcessRow:
    gpu: int
    pid: int
    name: str
    role: str
    vram_text: str
    used_bytes: int | None
    learned_text: str = ""  # a game's peak VRAM learned from earlier runs (what we free for it next time)


def state_info(state: str) -> StateInfo:
    return STATES.get(state, UNKNOWN_STATE)


def icon_for(state: str, models: Iterable[ModelStatus]) -> str:
    """The tray icon: "resident" only while a model really is resident (active with nothing loaded = idle)."""
    info = state_info(state)
    if state == "active" and not any(m.state in (ModelState.RESIDENT, ModelState.LOADING) for m in models):
        return "idle"
    return info.icon


def gpu_view(gpu: GpuSnapshot, roles: Mapping[tuple[int, int], str], settings: Settings) -> GpuView:
    """Split one GPU's VRAM into ours / desktop / games and other apps / reserved by the driver / free.

    Free is the GPU's free_bytes as NVML reports it (and `status` prints it); what is neither used nor free
    is the driver's reserve, shown apart rather than counted as free."""
    ours = desktop = 0
    for process in gpu.processes:
        role = roles.get((gpu.index, process.pid), "other")
        size = process.used_bytes or 0
        if role in OUR_ROLES:
            ours += size
        elif role == "desktop":
            desktop += size
    ours = min(ours, gpu.used_bytes)
    desktop = min(desktop, gpu.used_bytes - ours)
    games_other = max(gpu.used_bytes - ours - desktop, 0)
    free = min(max(gpu.free_bytes, 0), max(gpu.total_bytes - gpu.used_bytes, 0))
    reserved = max(gpu.total_bytes - gpu.used_bytes - free, 0)
    sizes = {"ours": ours, "desktop": desktop, "games_other": games_other, "reserved": reserved, "free": free}
    segments = tuple(
        Segment(key, label, sizes[key], colour, pattern) for key, (label, colour, pattern) in SEGMENTS.items()
    )
    used_total = f"{format_usage(gpu.used_bytes, gpu.total_bytes)} used"
    problem = None
    if gpu.state != GpuState.OK:
        problem = gpu.message or f"GPU {gpu.index} is {gpu.state}"
    return GpuView(
        index=gpu.index,
        name=gpu.name,
        total_bytes=gpu.total_bytes,
        used_bytes=gpu.used_bytes,
        free_bytes=gpu.free_bytes,
        ours_bytes=ours,
        headroom_bytes=settings.headroom_bytes(gpu.total_bytes),
        segments=segments,
        status_line=(
            f"GPU {gpu.index}: {problem}"
            if problem
            else f"GPU {gpu.index}: {used_total}, {format_bytes(ours)} ours"
        ),
        tooltip_line=(
            f"GPU {gpu.index}: {problem}"
            if problem
            else f"GPU {gpu.index}: {used_total}, {format_bytes(gpu.free_bytes)} free"
        ),
        problem=problem,
    )


def model_view(model: ModelStatus) -> ModelView:
    state = str(model.state)
    busy = model.state in (ModelState.RESIDENT, ModelState.LOADING)
    size_text = format_bytes(model.size_bytes)
    progress = None
    if model.state == ModelState.LOADING and model.progress_total_bytes:
        done = model.progress_done_bytes or 0
        progress = max(0, min(100, round(100 * done / model.progress_total_bytes)))
    state_text = f"loading {progress} %" if progress is not None else state
    if model.state == ModelState.FROZEN:
        state_text = "frozen in RAM" + (" until you thaw it" if model.held_by_user else "")
    load_text = ""
    if model.load_seconds is not None:
        load_text = f"{model.load_seconds:.1f} s"
        if model.load_bytes_per_s:
            load_text += f" at {format_rate(model.load_bytes_per_s)}"
    return ModelView(
        name=model.name,
        gpu=model.gpu,
        state=state,
        menu_text=f"{model.name}: {state_text} ({size_text})",
        command="unload" if busy else "load",
        checked=busy,
        size_text=size_text,
        digest_short=(model.digest or "")[:12],
        load_text=load_text,
        progress_percent=progress,
    )


def tooltip(title: str, gpus: Iterable[GpuView], notes: Iterable[str], wait_text: str = "") -> str:
    lines = [
        f"{APP_TITLE}: {title}",
        *([wait_text] if wait_text else []),
        *(g.tooltip_line for g in gpus),
        *notes,
    ]
    return "\n".join(lines)


def wait_text(resume_in_s: float | None) -> str:
    """The countdown people see before models come back: "Models come back in 23 s"."""
    if resume_in_s is None:
        return ""
    return f"Models come back in {format_duration(math.ceil(max(resume_in_s, 0.0)))}"


def notice_line(notices: Sequence[Notice]) -> str:
    """Every notice's short line, in one line."""
    return " · ".join(n.short for n in notices)


def notice_detail(notices: Sequence[Notice]) -> str:
    """Every notice's whole story, a paragraph each: what the dashboard shows."""
    return "\n\n".join(n.detail for n in notices)


def present(
    snapshot: StewardSnapshot,
    settings: Settings,
    *,
    notices: Iterable[Notice | str] = (),
    error_icon: bool = False,
) -> TrayView:
    """The whole tray view for one snapshot. `notices` are the app's own (a simulation, the API off, the
    notifications not shown, a broken settings file); `error_icon` shows the red icon whatever the state."""
    telemetry = snapshot.telemetry
    info = state_info(snapshot.state)
    shown = [as_notice(n) for n in notices]
    if telemetry.state not in (BackendState.OK, BackendState.SIMULATED) and telemetry.message:
        shown.append(Notice("GPU monitoring problem", telemetry.message))
    gpus = tuple(gpu_view(g, snapshot.roles, settings) for g in telemetry.gpus)
    models = tuple(model_view(m) for m in snapshot.models)
    paused = snapshot.paused or snapshot.state == "paused"
    resume_in_s = None if snapshot.resume_at is None else max(snapshot.resume_at - telemetry.taken_at, 0.0)
    waiting = wait_text(resume_in_s)
    out = any(m.state in (ModelState.EVICTED, ModelState.WAITING) for m in snapshot.models)
    frozen = [  # what sits in host RAM instead of VRAM (a frozen app), said in the tooltip
        f"{m.name}: {format_bytes(m.size_bytes)} of GPU {m.gpu} frozen in host RAM"
        for m in snapshot.models
        if m.state == ModelState.FROZEN
    ]
    return TrayView(
        state=snapshot.state,
        icon="error" if error_icon else icon_for(snapshot.state, snapshot.models),
        title=info.title,
        accent=info.colour,
        tooltip=tooltip(info.title, gpus, [*(n.short for n in shown), *frozen], waiting),
        gpus=gpus,
        models=models,
        auto_evict=settings.auto_evict,
        auto_pause_for_gaming=settings.auto_pause_for_gaming,
        pause_text="Resume" if paused else "Pause",
        pause_command="resume" if paused else "pause",
        evict_enabled=any(m.state in (ModelState.RESIDENT, ModelState.LOADING) for m in snapshot.models),
        wait_text=waiting,
        resume_in_s=resume_in_s,
        reload_enabled=out and not paused,
        notes=tuple(n.short for n in shown),
        notices=tuple(shown),
        notice_short=notice_line(shown),
        notice_detail=notice_detail(shown),
    )


def starting_view(
    settings: Settings, *, notices: Iterable[Notice | str] = (), error_icon: bool = False
) -> TrayView:
    """Before the first snapshot arrives."""
    shown = [as_notice(n) for n in notices]
    return TrayView(
        state="starting",
        icon="error" if error_icon else "idle",
        title="Starting",
        accent="#6b7280",
        tooltip=tooltip("Starting", (), [n.short for n in shown]),
        gpus=(),
        models=(),
        auto_evict=settings.auto_evict,
        auto_pause_for_gaming=settings.auto_pause_for_gaming,
        pause_text="Pause",
        pause_command="pause",
        evict_enabled=False,
        notes=tuple(n.short for n in shown),
        notices=tuple(shown),
        notice_short=notice_line(shown),
        notice_detail=notice_detail(shown),
    )


def process_rows(snapshot: StewardSnapshot) -> list[ProcessRow]:
    """The dashboard's process table, largest VRAM first; a game's row shows what it needed last time."""
    learned = {g.key: g.peak_bytes for g in snapshot.learned_games}
    by_pid = {g.pid: game_key(g) for g in snapshot.games if g.pid is not None}
    rows = []
    for gpu in snapshot.telemetry.gpus:
        for p in gpu.processes:
            exe = p.name.replace("\\", "/").rsplit("/", 1)[-1].lower().removesuffix(".exe")
            key = by_pid.get(p.pid, exe)
            peak = learned.get(key)
            rows.append(
                ProcessRow(
                    gpu=gpu.index,
                    pid=p.pid,
                    name=p.name,
                    role=snapshot.roles.get((gpu.index, p.pid), "unclassified"),
                    vram_text=format_bytes(p.used_bytes)
                    if p.used_bytes is not None
                    else f"N/A ({p.used_unavailable_reason or 'not reported'})",
                    used_bytes=p.used_bytes,
                    learned_text=f"needed {format_bytes(peak)} last time" if peak is not None else "",
                )
            )
    rows.sort(key=lambda r: (r.gpu, -(r.used_bytes or 0), r.pid))
    return rows
