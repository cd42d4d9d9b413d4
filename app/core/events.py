"""Typed events and the audit log.

Every event is a frozen dataclass with a `kind` (its class name), the time it happened on the engine's clock
(`at`), a severity and its facts. The engine publishes them to the UI, the API and the notifier; the audit
log keeps them as JSON lines in the platform state dir, rotated by size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from app.core.units import format_bytes

try:  # POSIX; elsewhere the audit log's rotation is locked within one process only
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events. `at` is the engine clock's time (seconds); `wall_time` is Unix time for logs."""

    at: float
    wall_time: float | None = None
    severity: ClassVar[Severity] = Severity.INFO

    @property
    def kind(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """One line for people (CLI, notifications, the dashboard's event list)."""
        facts = ", ".join(f"{k}={v}" for k, v in self.facts().items())
        return f"{self.kind}: {facts}"

    def facts(self) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ("at", "wall_time")
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "at": self.at,
            "wall_time": self.wall_time,
            "severity": str(type(self).severity),
            **self.facts(),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    return value


# --- residency (audit) ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VramAllocated(Event):
    model: str
    gpu: int
    bytes: int


@dataclass(frozen=True, kw_only=True)
class VramAllocationFailed(Event):
    severity: ClassVar[Severity] = Severity.WARNING
    model: str
    gpu: int
    bytes: int
    reason: str  # insufficient_vram | cuda_allocation_failed | model_file_error | ...
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class VramSealed(Event):
    model: str
    gpu: int
    bytes: int
    digest: str
    seconds: float
    bytes_per_s: float
    file_changed: bool = False


@dataclass(frozen=True, kw_only=True)
class SealVerified(Event):
    model: str
    gpu: int
    digest: str
    seconds: float


@dataclass(frozen=True, kw_only=True)
class SealVerificationFailed(Event):
    severity: ClassVar[Severity] = Severity.CRITICAL
    model: str
    gpu: int
    damaged_chunks: tuple[int, ...]
    chunk_size_bytes: int


@dataclass(frozen=True, kw_only=True)
class VramDeallocated(Event):
    model: str
    gpu: int
    bytes: int
    reason: str
    residue_bytes: int | None = None  # VRAM still held by us after the free, as NVML saw it
    residue_by: str | None = None  # who still holds it, for people ("llama-server (pid 4321)")


@dataclass(frozen=True, kw_only=True)
class HostDied(Event):
    severity: ClassVar[Severity] = Severity.ERROR
    gpu: int
    pid: int
    exit_code: int | None
    models: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class LoadProgress(Event):
    model: str
    gpu: int
    done_bytes: int
    total_bytes: int


# --- policy and engine ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelsEvicted(Event):
    gpu: int
    models: tuple[str, ...]
    reason: str  # game | pressure | user | pause | sleep | thermal | battery | dedicated
    trigger: str  # the process or signal that caused it, for people ("Cyberpunk 2077")
    freed_bytes: int | None  # what the evicted models held; None when a size is unknown
    duration_s: float | None = None  # how long the holders took to free the models (engine clock)
    trigger_exe: str | None = None  # the executable that caused it ("blender"), when one process did
    trigger_app_id: str | None = None  # the Steam AppId of the game that caused it, when Steam knows it


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    gpu: int
    models: tuple[str, ...]
    after_s: float  # how long the models were out


@dataclass(frozen=True, kw_only=True)
class LoadRefused(Event):
    severity: ClassVar[Severity] = Severity.WARNING
    model: str
    gpu: int
    reason: str
    need_bytes: int | None = None
    available_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class GameStarted(Event):
    name: str
    source: str  # gamemode | steam | exclusive_app | scenario
    pid: int | None = None
    app_id: str | None = None
    exe: str | None = None  # the game's executable (a path or a name), when known


@dataclass(frozen=True, kw_only=True)
class GameEnded(Event):
    name: str
    source: str
    pid: int | None = None
    app_id: str | None = None
    exe: str | None = None


@dataclass(frozen=True, kw_only=True)
class GameWarning(Event):
    """A game started while auto-pause for gaming is off: the UI offers "Free now"."""

    severity: ClassVar[Severity] = Severity.WARNING
    gpu: int
    name: str
    exe: str | None = None
    app_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class GpuLost(Event):
    severity: ClassVar[Severity] = Severity.ERROR
    gpu: int
    message: str


@dataclass(frozen=True, kw_only=True)
class BackendProblem(Event):
    severity: ClassVar[Severity] = Severity.ERROR
    state: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    by: str = "user"


@dataclass(frozen=True, kw_only=True)
class Unpaused(Event):
    by: str = "user"


@dataclass(frozen=True, kw_only=True)
class EvictRequested(Event):
    """Someone asked for Evict now (the tray, a notification, `vram-steward evict`). `gpu` None: every GPU."""

    by: str = "user"
    gpu: int | None = None


@dataclass(frozen=True, kw_only=True)
class ReloadRequested(Event):
    """Someone asked for Reload now: evicted models come back without waiting for the cooldown."""

    by: str = "user"
    gpu: int | None = None


@dataclass(frozen=True, kw_only=True)
class AppRuleAdded(Event):
    """A per-application rule took effect (saved in the settings file by whoever asked for it)."""

    match: str  # what the rule matches: an executable name ("cyberpunk2077") or "steam:<AppId>"
    action: str  # ignore | evict
    name: str = ""  # the application for people ("Cyberpunk 2077"), when known
    by: str = "user"


@dataclass(frozen=True, kw_only=True)
class AppRuleRemoved(Event):
    """A per-application rule was removed (Undo, the dashboard's Remove)."""

    match: str
    action: str
    by: str = "user"


@dataclass(frozen=True, kw_only=True)
class SettingsApplied(Event):
    """New settings reached every part of the engine (policy, classifier, ledgers, signals, holders)."""

    changed: tuple[str, ...]  # the keys that changed, for people


@dataclass(frozen=True, kw_only=True)
class ShowRequested(Event):
    """Someone asked to see VRAM Steward (`vram-steward show`, POST /v1/show, a notification's click)."""


@dataclass(frozen=True, kw_only=True)
class EngineError(Event):
    severity: ClassVar[Severity] = Severity.ERROR
    where: str
    message: str


# --- model servers (Ollama, llama.cpp's server, llama-swap) -------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerDown(Event):
    """A model server stopped answering (or answers something that is not its API). Sent once per outage;
    the adapter retries with backoff meanwhile."""

    severity: ClassVar[Severity] = Severity.WARNING
    server: str  # "ollama" | "llama_cpp" | "llama_swap"
    url: str
    message: str
    retry_in_s: float

    def describe(self) -> str:
        return f"{self.server} at {self.url} is down: {self.message} (retrying in {self.retry_in_s:.0f} s)"


@dataclass(frozen=True, kw_only=True)
class ServerUp(Event):
    """A model server answers again (or for the first time after it was down)."""

    server: str
    url: str
    down_for_s: float

    def describe(self) -> str:
        return f"{self.server} at {self.url} answers again (was down {self.down_for_s:.0f} s)"


@dataclass(frozen=True, kw_only=True)
class ModelPartlyOnCpu(Event):
    """A server model does not fit in VRAM: part of it runs on the CPU, much slower (Ollama's size_vram <
    size). Users cannot see this anywhere else."""

    severity: ClassVar[Severity] = Severity.WARNING
    model: str
    server: str
    gpu: int
    size_bytes: int  # the whole model in memory
    vram_bytes: int  # the part on the GPU

    def describe(self) -> str:
        on_gpu = 100 * self.vram_bytes // self.size_bytes if self.size_bytes else 0
        return (
            f"{self.model} ({self.server}) runs partly on the CPU: {on_gpu}% of "
            f"{format_bytes(self.size_bytes)} is on GPU {self.gpu}"
        )


@dataclass(frozen=True, kw_only=True)
class ModelReloadedWhileHeld(Event):
    """A client loaded a server model again while VRAM Steward held the GPU free (a game, a pause); it was
    evicted again. `client` names the client when the server says who asked (Ollama does not)."""

    severity: ClassVar[Severity] = Severity.WARNING
    model: str
    server: str
    gpu: int
    reason: str  # why the GPU is held: game | pause | user
    client: str | None = None
    evicted_again: bool = True

    def describe(self) -> str:
        who = self.client or "a client"
        why = {"game": "a game was running", "pause": "VRAM Steward was paused"}.get(
            self.reason, "the GPU was kept free"
        )
        done = "evicted again" if self.evicted_again else "could not evict it again"
        return f"{who} loaded {self.model} ({self.server}) while {why}; {done}"


@dataclass(frozen=True, kw_only=True)
class AppFound(Event):
    """Discovery found a known AI app answering on a loopback port that no `[[servers]]` entry manages yet
    (app/core/servers/discovery.py). Not from the engine's thread: the discovery thread reports it."""

    server_kind: str  # the `[[servers]]` kind that would manage it: "comfyui", "lm_studio", ...
    display_name: str  # "ComfyUI"
    url: str  # "http://127.0.0.1:8188"
    port: int

    def describe(self) -> str:
        return f"found {self.display_name} at {self.url}, not managed yet"


@dataclass(frozen=True, kw_only=True)
class VulkanDeviceStarting(Event):
    """The Vulkan layer reported a game creating its device, and we answered it (app/core/vulkan/): after
    freeing our models on that GPU, or at the layer's deadline. Not from the engine's thread: the layer's
    socket thread reports it. Reports answered at once (desktop programs, ignored apps) are only logged."""

    program: str  # "Cyberpunk2077.exe"
    pid: int
    gpu: int | None  # the NVML index the device is on; None: not known (every GPU was freed)
    freed_bytes: int  # our models' sizes on that GPU that held VRAM when it reported
    waited_s: float  # how long its vkCreateDevice waited for us
    outcome: str  # "freed" | "deadline" (the layer's wait ran out first) | "nothing to free"
    why: str = ""  # why it counts as a game: "a Steam game", "runs under Wine or Proton", ...

    def describe(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else "every GPU"
        ms = round(self.waited_s * 1000)
        if self.outcome == "nothing to free":
            return f"{self.program} is starting on {where}: nothing of ours to free"
        if self.outcome == "deadline":
            return (
                f"{self.program} is starting on {where}: {format_bytes(self.freed_bytes)} not yet freed "
                f"when its wait ended ({ms} ms)"
            )
        return (
            f"{self.program} is starting on {where}: freed {format_bytes(self.freed_bytes)} in {ms} ms "
            "before it created its device"
        )


# --- the audit log -------------------------------------------------------------------------------


class AuditLog:
    """Append-only JSON lines; rotated by size into `audit.jsonl.1` ... `.N` (oldest dropped).

    Writes are line-atomic (one write() of a whole line, opened with O_APPEND). The size check, the rotation
    and the append happen under an exclusive flock on `audit.jsonl.lock`, so processes writing at once (the
    engine and a CLI command, or two engines during a hand-over) rotate once per overflow, never twice: a
    double rotation pushes a just-rotated file past the last backup and its events are lost.
    """

    def __init__(self, path: Path, *, max_bytes: int = 5 * 1024 * 1024, backups: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

    def write(self, event: Event) -> None:
        line = json.dumps(event.to_json(), sort_keys=True, default=str) + "\n"
        data = line.encode()
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with _file_lock(self.path.with_name(self.path.name + ".lock")):
                    if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                        self._rotate()
                    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(self.path, flags, 0o600)
                    try:
                        os.write(fd, data)
                    finally:
                        os.close(fd)
            except OSError as exc:  # the audit log must never take the engine down
                logger.warning("could not write the audit log %s: %s", self.path, exc)

    def _rotate(self) -> None:
        for i in range(self.backups, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            dst = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, dst)

    def read(self) -> list[dict[str, Any]]:
        """All events in the current file, oldest first (for tests and `vram-steward status`)."""
        if not self.path.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created 0600, never through a symlink) for the `with` block; without
    flock (not POSIX) only the in-process lock applies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        VramAllocated,
        VramAllocationFailed,
        VramSealed,
        SealVerified,
        SealVerificationFailed,
        VramDeallocated,
        HostDied,
        LoadProgress,
        ModelsEvicted,
        Resumed,
        LoadRefused,
        GameStarted,
        GameEnded,
        GameWarning,
        GpuLost,
        BackendProblem,
        Paused,
        Unpaused,
        EvictRequested,
        ReloadRequested,
        AppRuleAdded,
        AppRuleRemoved,
        SettingsApplied,
        ShowRequested,
        EngineError,
        ServerDown,
        ServerUp,
        ModelPartlyOnCpu,
        ModelReloadedWhileHeld,
        AppFound,
        VulkanDeviceStarting,
    )
}

__all__ = ["EVENT_TYPES", "AuditLog", "Event", "Severity", "field"]
