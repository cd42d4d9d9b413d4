"""The engine's one door: what other threads may ask of it, and the typed outcome each request gets.

Every request is put on one thread-safe queue with `Steward.submit()` and answered through a
`concurrent.futures.Future`: its result is an `Outcome` when the engine did it, and its exception a
`VramError` when the engine refused (with the facts a problem JSON needs) or failed. Callers read the
outcome, never the event log. Nothing outside the worker thread changes engine state.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.errors import VramError
from app.core.events import Event
from app.core.holders import ModelStatus
from app.core.policy.actions import Command
from app.core.settings import AppRule, Settings


@dataclass(frozen=True)
class ApplySettings:
    """New settings for every part of the engine (policy, classifier, ledgers, signal sources and their
    intervals, holders). The caller has already saved them; this only applies them."""

    settings: Settings


@dataclass(frozen=True)
class PrepareForSleep:
    """The system is about to sleep (`sleeping=True`: evict; the outcome completes once VRAM Steward holds
    no VRAM any more) or woke up (`sleeping=False`: models come back)."""

    sleeping: bool


@dataclass(frozen=True)
class AddAppRule:
    """A per-application rule ("Always ignore this app"), in effect from this tick. The caller has already
    saved it (app.core.notify.rules); the engine adds it to its settings and records `AppRuleAdded`. A rule
    with the same `match` already there is replaced."""

    rule: AppRule
    name: str = ""  # the application for people ("Cyberpunk 2077")


@dataclass(frozen=True)
class RemoveAppRule:
    """Remove the per-application rule whose `match` is this (Undo, the dashboard's Remove); the caller has
    already removed it from the file. Records `AppRuleRemoved` when there was one."""

    match: str


@dataclass(frozen=True)
class ReloadNow:
    """Bring evicted models back now, without waiting for the cooldown (what Resume does for a game that
    still runs); recorded as `ReloadRequested`. `gpu` None means every GPU."""

    gpu: int | None = None


EngineCommand = Command | ApplySettings | PrepareForSleep | AddAppRule | RemoveAppRule | ReloadNow


@dataclass(frozen=True)
class Outcome:
    """What the engine did with a request, as of the end of the tick that handled it (or later, for a
    request that completes later: a verify, the sleep handshake)."""

    command: str  # the command's kind: "pause", "load", "settings", "sleep", ...
    state: str  # the engine's state after it
    reasons: tuple[str, ...] = ()
    models: tuple[ModelStatus, ...] = ()
    event: Event | None = None  # the event that says what happened, where there is one (a verify's result)

    def model(self, name: str) -> ModelStatus | None:
        return next((m for m in self.models if m.name == name), None)


class LoadRefused(VramError):
    """The engine refused a load because of its own state (paused, a game runs, thermal, no GPU, sleep,
    dedicated mode). Admission refusals are `InsufficientVram`. Not retriable as it is: the state must change
    first (the user resumes, the game ends), which the suggestions say."""

    retriable = False
    http_status = 409

    def __init__(self, model: str, gpu: int, reason: str, detail: str = "") -> None:
        super().__init__(
            f"loading {model} was refused: {detail or reason}",
            details={"model": model, "gpu": gpu, "reason": reason},
            suggestions=_suggestions(reason),
        )
        self.code = reason or "load_refused"
        self.model = model
        self.gpu = gpu
        self.reason = reason


def _suggestions(reason: str) -> list[str]:
    return {
        "paused": ["Resume VRAM Steward (`vram-steward resume` or the tray menu), then load again"],
        "evicted_for_game": ["Wait until the game ends, or use Resume now to keep models during it"],
        "game": ["Wait until the game ends, or use Resume now to keep models during it"],
        "dedicated": ["Close the other compute process, or set allow_shared_gpu = true"],
        "thermal": ["Wait until the GPU cools down"],
    }.get(reason, [])


def command_name(command: EngineCommand) -> str:
    if isinstance(command, ApplySettings):
        return "settings"
    if isinstance(command, PrepareForSleep):
        return "sleep" if command.sleeping else "wake"
    if isinstance(command, AddAppRule):
        return "add_rule"
    if isinstance(command, RemoveAppRule):
        return "remove_rule"
    if isinstance(command, ReloadNow):
        return "reload"
    return command.kind


def policy_command(command: EngineCommand) -> Command | None:
    """What the contention policy sees of a request (None: nothing; the engine handles it itself)."""
    if isinstance(command, Command):
        return command
    if isinstance(command, ReloadNow):
        return Command(kind="resume", gpu=command.gpu)
    return None
