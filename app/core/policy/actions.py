"""What goes into the contention policy each tick and what comes out: inputs, commands, actions, decisions.

All frozen. Evict and Reload are edge-triggered (the engine acts on each once); RefuseLoads is
level-triggered: it is in every decision while loads on that GPU must be refused, and its absence means
loads are allowed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from app.core.gpu.snapshot import TelemetrySnapshot
from app.core.holders import ModelStatus
from app.core.policy.classify import Classification
from app.core.policy.signals import GameSignal

CommandKind = Literal[
    "evict_now", "pause", "resume", "load", "unload", "verify", "show"
]  # the policy ignores the last two


@dataclass(frozen=True)
class Command:
    """Something the user asked for (tray, CLI, API). `gpu` None means every GPU."""

    kind: CommandKind
    model: str | None = None
    gpu: int | None = None


@dataclass(frozen=True)
class PolicyInputs:
    """One tick's view of the world."""

    snapshot: TelemetrySnapshot
    classification: Classification
    games: tuple[GameSignal, ...] = ()
    models: tuple[ModelStatus, ...] = ()
    commands: tuple[Command, ...] = ()
    on_battery: bool | None = None  # None: unknown (a desktop, or no power information)
    # what each game needed last time (game_key -> peak VRAM bytes): evict only that much for it
    game_peaks: Mapping[str, int] = field(default_factory=dict)
    sleeping: bool = False  # the system is about to sleep (logind PrepareForSleep(true))


class EngineState(enum.StrEnum):
    IDLE = "idle"  # we hold nothing
    ACTIVE = "active"  # models resident (or loading)
    EVICTED_FOR_GAME = "evicted_for_game"
    EVICTED_FOR_PRESSURE = "evicted_for_pressure"
    PAUSED = "paused"  # the user paused: nothing comes back until they resume
    COOLDOWN = "cooldown"  # models are out and will come back when the GPU stays free
    DEDICATED_BLOCKED = "dedicated_blocked"  # allow_shared_gpu is off and a foreign compute process is there
    THERMAL = "thermal"
    SLEEPING = "sleeping"  # the system sleeps: models come back after it wakes
    ON_BATTERY = "on_battery"  # hold_models_on_battery is off and the machine runs on battery
    NO_GPU = "no_gpu"
    ERROR = "error"  # the telemetry backend fails as a whole


EvictReason = Literal["game", "pressure", "user", "pause", "sleep", "thermal", "battery", "lost"]


@dataclass(frozen=True)
class Evict:
    """Free these models on this GPU now. `trigger` says who or what for people ("Cyberpunk 2077",
    "blender (pid 77) grew 3.1 GiB"); `need_bytes` is what pressure asked for (None: everything)."""

    gpu: int
    models: tuple[str, ...]
    reason: EvictReason
    trigger: str
    need_bytes: int | None = None
    trigger_exe: str | None = None  # the executable behind `trigger`, when one process is (rules use it)
    trigger_app_id: str | None = None  # the Steam AppId behind `trigger`, when a Steam game is (rules use it)


@dataclass(frozen=True)
class Reload:
    """Bring these evicted models back. `reason`: "cooldown" (calm long enough), "user" (Resume) or "wake"."""

    gpu: int
    models: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RefuseLoads:
    """Refuse loads on this GPU while this holds. `reason` is a code ("dedicated", "paused", "game",
    "thermal", "sleep", "battery", "lost"); `detail` says it for people."""

    gpu: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class WarnGame:
    """A game started while auto_pause_for_gaming is off and our models sit on its GPU: tell the user and
    offer "Free now" (which sends Command("evict_now", gpu=gpu))."""

    gpu: int
    game: GameSignal


Action = Evict | Reload | RefuseLoads | WarnGame


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    state: EngineState
    reasons: tuple[str, ...]  # for people, most important first
    resume_at: float | None  # when the cooldown ends (the policy's clock); None: not waiting on a timer
    next_poll_s: float
    # Why the GPU is kept free ("game", "pause", "user"), None when it is not: holders whose clients can load
    # models behind our back (model servers) free them again while this holds.
    hold: str | None = None
