"""The Vulkan layer as a game-signal source: a report from a game holds its vkCreateDevice while the engine
frees our models on that GPU (docs/vulkan-layer.md).

On a report (the socket's thread for that connection): classify the process (verdict.py). Desktop programs,
ignored apps and (by default) unknown apps are answered at once. A game becomes a GameSignal (source
"vulkan_layer", the kernel's pid of the reporter) that lasts while that process lives, the engine is woken,
and the answer waits until a snapshot taken after the engine saw the signal shows none of our models holding
VRAM on that GPU and no process of ours left on it in NVML, or until the layer's deadline. The engine never
waits on any of this: it reads `active()` (a dict under a lock) and hands each snapshot to `observe()`.

Which GPU: the report's UUID is NVML's. A UUID that no watched GPU has is another vendor's device (a laptop's
integrated GPU, Mesa's CPU driver): nothing of ours is there, so it is answered at once. A report without a
UUID (a Vulkan 1.0 application) concerns every GPU. The signal itself concerns every GPU until the game shows
on one (the policy's rule for every game signal, app/core/policy/contention.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from app.core import paths
from app.core.errors import VramError
from app.core.events import AuditLog, Event, VulkanDeviceStarting
from app.core.holders import ModelState
from app.core.policy.roles import Role
from app.core.policy.signals import GameSignal
from app.core.settings import Settings
from app.core.vulkan.install import record_report
from app.core.vulkan.report import LayerReport, PeerCredentials
from app.core.vulkan.server import LayerSocketServer
from app.core.vulkan.verdict import ProcessFacts, Verdict, classify_process, read_process, waits

if TYPE_CHECKING:
    from app.core.engine.steward import StewardSnapshot

logger = logging.getLogger(__name__)

SOURCE = "vulkan_layer"
SOCKET_NAME = "vulkan.sock"
ANSWER_MARGIN_S = 0.02  # answer this much before the layer's deadline, so the answer is not wasted
LIVENESS_CHECK_S = 0.5  # how often active() asks whether the reporting processes still live
RECHECK_S = 0.01  # while a game waits and no snapshot came, wake the engine this often
SELF_RESIDUE_BYTES = 768 << 20  # what a CUDA context of ours may still hold while its process exits
HOLDING_STATES = frozenset({ModelState.RESIDENT, ModelState.LOADING})


def socket_path() -> Path:
    """Where the layer looks by default ($XDG_RUNTIME_DIR/vram-steward/vulkan.sock; the layer also honours
    VRAM_STEWARD_RUNTIME_DIR and VRAM_STEWARD_LAYER_SOCKET)."""
    return paths.runtime_dir() / SOCKET_NAME


@dataclass(frozen=True)
class _Tracked:
    signal: GameSignal
    create_time: float | None  # psutil's, so that a reused pid does not keep a signal alive


class VulkanLayerSignals:
    """GameSignalSource fed by the layer's reports. `observe` must be subscribed to the engine's snapshots
    (Steward.subscribe_snapshots); `subscribe` gets each VulkanDeviceStarting event."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float],
        wake: Callable[[], None] = lambda: None,
        path: Path | None = None,
        audit: AuditLog | None = None,
        state_file: Path | None = None,
        read: Callable[..., ProcessFacts] = read_process,
    ) -> None:
        self.path = path or socket_path()
        self._settings = settings
        self._clock = clock
        self._wake = wake
        self._audit = audit
        self._state_file = state_file
        self._read = read
        self._changed = threading.Condition()
        self._snapshot: StewardSnapshot | None = None
        self._seen = 0  # snapshots observed
        self._games: dict[int, _Tracked] = {}
        self._checked_at = 0.0
        self._subscribers: list[Callable[[Event], None]] = []
        self._server: LayerSocketServer | None = None
        self._closed = False
        self._serve(settings.vulkan_layer_socket)

    # --- GameSignalSource ------------------------------------------------------------------------------

    def active(self) -> tuple[GameSignal, ...]:
        now = time.monotonic()
        with self._changed:
            if self._games and now - self._checked_at >= LIVENESS_CHECK_S:
                self._checked_at = now
                self._games = {pid: t for pid, t in self._games.items() if _alive(pid, t.create_time)}
            return tuple(t.signal for t in self._games.values())

    def update_settings(self, settings: Settings) -> None:
        with self._changed:
            self._settings = settings
        self._serve(settings.vulkan_layer_socket)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._serve(False)

    # --- the engine's side ----------------------------------------------------------------------------

    def observe(self, snapshot: StewardSnapshot) -> None:
        """Each new snapshot (on the engine's thread: only stores it and wakes the waiting answers)."""
        with self._changed:
            self._snapshot = snapshot
            self._seen += 1
            self._changed.notify_all()

    def subscribe(self, on_event: Callable[[Event], None]) -> None:
        self._subscribers.append(on_event)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _serve(self, wanted: bool) -> None:
        if wanted and self._server is None and not self._closed:
            server = LayerSocketServer(self.path, self.handle)
            try:
                server.start()
            except (OSError, VramError) as exc:  # an unsafe runtime folder, a path in use: no layer, no harm
                logger.warning("cannot answer the Vulkan layer on %s: %s", self.path, exc)
                return
            self._server = server
        elif not wanted and self._server is not None:
            server, self._server = self._server, None
            server.close()

    # --- one report (on its connection's thread) ------------------------------------------------------

    def handle(self, report: LayerReport, peer: PeerCredentials) -> None:
        """Returns when the answer may go: at once, or when our VRAM on that GPU is freed, or just before
        the layer's deadline."""
        started = time.monotonic()
        deadline = started + report.timeout_ms / 1000 - ANSWER_MARGIN_S
        facts = self._read(peer.pid, exe=report.exe, cmdline=report.cmdline)
        with self._changed:
            settings, snapshot = self._settings, self._snapshot
        game_pids = (
            {g.pid for g in snapshot.games if g.pid is not None and g.source != SOURCE} if snapshot else set()
        )
        verdict = classify_process(facts, settings, game_pids=game_pids)
        known_gpu, gpu = _gpu_for(report.uuid, snapshot)
        facts_for_state: dict[str, Any] = {
            "pid": peer.pid, "program": verdict.name, "device": report.device, "uuid": report.uuid,
            "gpu": gpu, "verdict": str(verdict.kind),
        }  # fmt: skip
        if not known_gpu or not waits(verdict, settings):
            why = verdict.why if known_gpu else f"{report.device or 'its device'} is not a GPU we watch"
            logger.debug(
                "Vulkan: %s (pid %d) creates a device: answered at once (%s)", verdict.name, peer.pid, why
            )
            record_report({**facts_for_state, "answer": "at once", "why": why}, path=self._state_file)
            return
        held = self._register(peer.pid, verdict, facts, gpu)
        self._wake()
        outcome = "nothing to free"
        if held:
            outcome = "freed" if self._wait_until_freed(peer.pid, gpu, deadline) else "deadline"
        waited_s = time.monotonic() - started
        event = VulkanDeviceStarting(
            at=self._clock(), wall_time=time.time(), program=verdict.name, pid=peer.pid, gpu=gpu,
            freed_bytes=held, waited_s=waited_s, outcome=outcome, why=verdict.why,
        )  # fmt: skip
        record_report({**facts_for_state, "answer": outcome, "waited_s": waited_s}, path=self._state_file)
        self._publish(event)

    def _register(self, pid: int, verdict: Verdict, facts: ProcessFacts, gpu: int | None) -> int:
        """Add (or keep) the game's signal; the bytes our models hold on the GPUs it concerns right now."""
        with self._changed:
            if pid not in self._games:
                self._games[pid] = _Tracked(
                    GameSignal(
                        name=verdict.name, source=SOURCE, pid=pid, app_id=verdict.app_id,
                        exe=facts.exe or None, started_at=self._clock(),
                    ),
                    _create_time(pid),
                )  # fmt: skip
            snapshot = self._snapshot
        if snapshot is None:
            return 0
        return sum(
            m.size_bytes or 0
            for m in snapshot.models
            if m.state in HOLDING_STATES and (gpu is None or m.gpu == gpu)
        )

    def _wait_until_freed(self, pid: int, gpu: int | None, deadline: float) -> bool:
        with self._changed:
            start_seen = self._seen
            while not self._closed:
                snapshot = self._snapshot
                if self._seen > start_seen and snapshot is not None and _freed(snapshot, pid, gpu):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not self._changed.wait(min(left, RECHECK_S)):
                    # a game is waiting: have the engine look again now rather than at its next poll (the
                    # holders' frees complete between polls); a wake costs one cheap step
                    self._wake()
        return False

    def _publish(self, event: VulkanDeviceStarting) -> None:
        logger.debug("%s", event.describe())  # the engine logs it (wiring posts it to Steward.post)
        if self._audit is not None:
            self._audit.write(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                logger.exception("a Vulkan layer subscriber failed")


def _gpu_for(uuid: str | None, snapshot: StewardSnapshot | None) -> tuple[bool, int | None]:
    """(whether the device may be one of ours, its NVML index when known)."""
    if uuid is None or snapshot is None or not snapshot.telemetry.gpus:
        return True, None
    for gpu in snapshot.telemetry.gpus:
        if gpu.uuid.lower() == uuid.lower():
            return True, gpu.index
    return False, None


def _freed(snapshot: StewardSnapshot, pid: int, gpu: int | None) -> bool:
    """The engine has seen the game, none of our models holds VRAM on that GPU, and NVML shows it back: our
    processes there hold at most a CUDA context that is being torn down (a residency host exits after its
    free; measured on an H100, its last ~0.5 GiB context takes longer to leave NVML than the weights did)."""
    if all(g.pid != pid for g in snapshot.games):
        return False
    if any(m.state in HOLDING_STATES and (gpu is None or m.gpu == gpu) for m in snapshot.models):
        return False
    left = 0
    for sample in snapshot.telemetry.gpus:
        if gpu is not None and sample.index != gpu:
            continue
        for process in sample.processes:
            if snapshot.roles.get((sample.index, process.pid)) != Role.SELF:
                continue
            if process.used_bytes is None:
                return False  # cannot tell what it still holds: wait for it to leave
            left += process.used_bytes
    return left <= SELF_RESIDUE_BYTES


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int, create_time: float | None) -> bool:
    if create_time is None:
        return psutil.pid_exists(pid)
    try:
        return float(psutil.Process(pid).create_time()) == create_time
    except psutil.Error:
        return False
