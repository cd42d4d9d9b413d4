"""The engine: one loop (`run`); one tick = sample → classify → decide → act → publish.

One worker thread runs `Steward.run` (a QThread in the tray app, a plain thread in the daemon: the same loop).
Nothing else touches its state. Other threads go through one door, `submit()` (thread-safe): every request
(app.core.engine.commands) wakes the loop at once and gets a future with a typed outcome. They read `snapshot`
(an immutable record swapped atomically), or subscribe to events and snapshots (callbacks run on the worker
thread: hand them over to your own thread, as the Qt worker does with queued signals).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from app.core import events as ev
from app.core.engine.commands import (
    AddAppRule,
    ApplySettings,
    EngineCommand,
    LoadRefused,
    Outcome,
    PrepareForSleep,
    ReloadNow,
    RemoveAppRule,
    command_name,
    policy_command,
)
from app.core.engine.game_peaks import GamePeaks, LearnedGame
from app.core.errors import InvalidInput, VramError
from app.core.events import AuditLog, Event
from app.core.gpu.backend import GpuBackend
from app.core.gpu.snapshot import BackendState, GpuState, TelemetrySnapshot
from app.core.holders import Holder, HolderRole, ModelState, ModelStatus
from app.core.policy.classify import ProcessClassifier
from app.core.policy.contention import (
    Command,
    ContentionPolicy,
    Decision,
    EngineState,
    Evict,
    PolicyInputs,
    RefuseLoads,
    Reload,
    WarnGame,
    game_usage_bytes,
)
from app.core.policy.signals import GameSignal, GameSignalSource, game_key
from app.core.residency.ledger import Ledgers
from app.core.settings import Settings
from app.core.units import format_bytes

logger = logging.getLogger(__name__)

RECENT_EVENTS = 100
REFRESH_S = 1.0  # while nothing moves, step() still runs a full tick at least this often


@dataclass(frozen=True)
class StewardSnapshot:
    """What the UI, the API and the CLI show. Immutable; a new one after every tick."""

    telemetry: TelemetrySnapshot
    state: str
    reasons: tuple[str, ...]
    models: tuple[ModelStatus, ...]
    games: tuple[GameSignal, ...]
    recent_events: tuple[Event, ...]
    roles: dict[tuple[int, int], str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    paused: bool = False
    resume_at: float | None = None
    next_poll_s: float = 1.0
    tick: int = 0
    learned_games: tuple[LearnedGame, ...] = ()  # what each game needed last time

    def to_status(self, settings: Settings | None = None) -> dict[str, Any]:
        """The `status --json` document (docs/status-json.md)."""
        from app.core.engine.status import build_status

        extra: dict[str, Any] = {
            "reasons": list(self.reasons),
            "paused": self.paused,
            "resume_at": self.resume_at,
            # the countdown people see: seconds until the models may come back (`reasons` says why they wait)
            "resume_in_s": (
                None if self.resume_at is None else max(self.resume_at - self.telemetry.taken_at, 0.0)
            ),
            "notes": list(self.notes),
            "games": [
                {"name": g.name, "source": g.source, "pid": g.pid, "app_id": g.app_id} for g in self.games
            ],
            "games_learned": [g.to_json() for g in self.learned_games],
        }
        return build_status(
            self.telemetry,
            settings=settings,
            models=self.models,
            events=self.recent_events,
            roles=self.roles,
            state=self.state,
            extra=extra,
        )


@dataclass
class _Request:
    command: EngineCommand
    future: concurrent.futures.Future[Outcome] = field(default_factory=concurrent.futures.Future)
    pending: bool = False  # completes in a later tick (a verify, the sleep handshake)


class Steward:
    """The engine. Call `step()` (or `tick()`) from one thread only; everything else goes through
    `submit()`."""

    def __init__(
        self,
        settings: Settings,
        backend: GpuBackend,
        holders: Sequence[Holder],
        *,
        signals: GameSignalSource | None = None,
        ledgers: Ledgers | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
        autoload: bool = True,
        game_peaks: GamePeaks | None = None,
        new_holders: Callable[[Settings], Sequence[Holder]] | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.holders = list(holders)
        self.signals = signals
        self.clock = clock
        self.wall_clock = wall_clock
        self.audit = audit
        self.ledgers = ledgers if ledgers is not None else Ledgers(settings.headroom_bytes, clock=clock)
        self.classifier = ProcessClassifier(settings, clock=clock)
        self.policy = ContentionPolicy(settings, clock=clock)
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._posted: queue.SimpleQueue[Event] = queue.SimpleQueue()  # events from other threads (post)
        self._recent: collections.deque[Event] = collections.deque(maxlen=RECENT_EVENTS)
        self._listeners: list[Callable[[Event], None]] = []
        self._snapshot_listeners: list[Callable[[StewardSnapshot], None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        self._battery: bool | None = None
        self._battery_read_at = float("-inf")
        self._tick = 0
        self._closed = False
        self._snapshot: StewardSnapshot | None = None
        self._last_decision: Decision | None = None
        self._quiet_key: tuple[Any, ...] | None = None  # the world as of the last quiet decision
        self._still_key: tuple[Any, ...] | None = None  # the cheap probe's view as of that decision
        self._full_at = float("-inf")  # when the last full sample was taken
        self._held_events: list[Event] = []  # polled by a step() that then ran the full tick
        self.probes = 0  # steps answered by the cheap probe alone (benchmarks and tests read it)
        self._games_seen: dict[tuple[str, int | None], GameSignal] = {}
        self._backend_state: BackendState | None = None
        self._lost: set[int] = set()
        self._hold: str | None = None  # what the holders were last told (Decision.hold)
        self._new_holders = new_holders
        self.game_peaks = game_peaks if game_peaks is not None else GamePeaks(None)
        self._learned = self.game_peaks.load()  # what each game needed last time (read again at its start)
        self._run_peaks: dict[str, tuple[str, int]] = {}  # game key -> (name, peak bytes) of this run
        self._out_since: dict[int, float] = {}  # GPU -> when its models were first evicted (Resumed.after_s)
        self._sleep_waiters: list[_Request] = []  # PrepareForSleep(True): done once we hold no VRAM
        if autoload:  # keep the user's models resident: load every configured model at start
            for model in self._models():
                self.submit(Command(kind="load", model=model.name))

    # --- other threads -------------------------------------------------------------------------

    def submit(self, command: EngineCommand) -> concurrent.futures.Future[Outcome]:
        """The one door: queue a request and wake the loop, which handles it at once. The future's result
        is the typed `Outcome` (after the tick that handled it); its exception a VramError when the engine
        refused (`LoadRefused`, `InsufficientVram`, ...) or failed."""
        request = _Request(command)
        self._requests.put(request)
        self.wake()
        return request.future

    def set_sleeping(self, sleeping: bool) -> concurrent.futures.Future[Outcome]:
        """The system is about to sleep (logind PrepareForSleep) or woke up: evict before, reload after.
        Before sleep, the future completes once VRAM Steward holds no VRAM."""
        return self.submit(PrepareForSleep(sleeping))

    def _on_battery(self) -> bool | None:
        """Only read when the user wants no models on battery (psutil reads /sys; at most every 30 s)."""
        if self.settings.hold_models_on_battery:
            return None
        now = self.clock()
        if now - self._battery_read_at >= 30.0 or self._battery is None:
            self._battery_read_at = now
            try:
                battery = psutil.sensors_battery()
            except Exception:  # no battery support on this platform
                battery = None
            self._battery = None if battery is None else not battery.power_plugged
        return self._battery

    def post(self, event: Event) -> None:
        """An event that happened on another thread (the Vulkan layer's socket): emitted on the engine's
        thread at its next step, like its own events (recent events, audit log, every subscriber)."""
        self._posted.put(event)
        self.wake()

    def wake(self) -> None:
        """Tick now instead of at the next interval (a command arrived, a game signal changed)."""
        self._wake.set()

    @property
    def snapshot(self) -> StewardSnapshot | None:
        return self._snapshot

    def subscribe(self, on_event: Callable[[Event], None]) -> None:
        with self._lock:
            self._listeners.append(on_event)

    def subscribe_snapshots(self, on_snapshot: Callable[[StewardSnapshot], None]) -> None:
        with self._lock:
            self._snapshot_listeners.append(on_snapshot)

    # --- the worker thread ---------------------------------------------------------------------

    def update_settings(self, settings: Settings) -> None:
        """Apply new settings to every part that reads them. Worker thread only: other threads submit
        `ApplySettings` (a test that drives tick() itself may call this between ticks)."""
        old = self.settings
        self.settings = settings
        self.policy.update_settings(settings)
        self.classifier.update_settings(settings)
        self.ledgers.set_headroom(settings.headroom_bytes)
        if self.signals is not None:
            self.signals.update_settings(settings)
        for holder in self.holders:
            holder.update_settings(settings)
        if self._new_holders is not None:  # entries added while running get their holders now
            self.holders.extend(self._new_holders(settings))
        changed = tuple(
            f.name
            for f in dataclasses.fields(settings)
            if f.name != "source" and getattr(old, f.name) != getattr(settings, f.name)
        )
        self._emit(ev.SettingsApplied(at=self.clock(), changed=changed))

    def step(self) -> StewardSnapshot:
        """What the worker runs every interval: the last snapshot again when the world sits still, else a
        full `tick()`.

        "Still" means: the last tick was quiet (no action, a steady state, nothing being counted), no
        command waits, the holders have nothing to say, the game signals are the same, and the backend's
        cheap probe (NVML: each GPU's used memory, one ~5 µs call) reads what it read before that tick.
        Any foreign allocation moves used memory, so it still reaches a full tick within one interval;
        what the probe cannot see (temperature, utilization, reservations expiring) waits at most
        REFRESH_S. This is most steps while models sit resident at 10 Hz, and what keeps the idle cost
        low (docs/BENCHMARKS.md)."""
        self._emit_posted()
        prev = self._snapshot
        if prev is not None and self._still():
            self.probes += 1
            return prev
        return self.tick()

    def _still(self) -> bool:
        if (
            self._still_key is None
            or not self._requests.empty()
            or self._sleep_waiters
            or self.clock() - self._full_at >= REFRESH_S
        ):
            return False
        for holder in self.holders:
            self._held_events.extend(holder.poll())
        return not self._held_events and self._probe_key(self._games()) == self._still_key

    def _games(self) -> tuple[GameSignal, ...]:
        return tuple(self.signals.active()) if self.signals else ()

    def _probe_key(self, games: tuple[GameSignal, ...]) -> tuple[Any, ...] | None:
        """What step() compares between ticks; None when the backend cannot tell cheaply."""
        probe = self.backend.probe()
        if probe is None:
            return None
        return (probe, games, id(self.settings), self._sleeping, self._on_battery())

    def tick(self) -> StewardSnapshot:
        """One sample → classify → decide → act → publish cycle."""
        self._tick += 1
        self._emit_posted()
        requests = self._drain()
        requests = self._apply_engine_commands(requests)
        now = self.clock()
        games = self._games()
        probe_key = self._probe_key(games)  # before the sample: a change after it shows in the next probe
        telemetry = self.backend.sample()
        self._full_at = now
        self._still_key = None
        self._note_backend(telemetry)

        holder_pids = self._holder_pids()
        self.ledgers.observe_snapshot(telemetry, self._live_pids())

        held, self._held_events = self._held_events, []
        polled_events = len(held)
        for event in held:
            self._emit(event)
        for holder in self.holders:
            for event in holder.poll():
                polled_events += 1
                self._emit(event)

        models = self._models()
        fast = None if requests else self._unchanged(telemetry, games, models, polled_events)
        if fast is not None:
            self._still_key = probe_key
            return self._publish(fast)
        managed_pids = self._managed_pids()  # model servers' runners: ours to free, never foreign
        classification = self.classifier.classify(
            telemetry,
            self_pids=(holder_pids - managed_pids) | self._own_pids(),
            managed_pids=managed_pids,
            games=games,
            our_expected_bytes=self._expected_bytes(models),
        )
        commands = tuple(c for c in (policy_command(r.command) for r in requests) if c is not None)
        decision = self.policy.decide(
            PolicyInputs(
                snapshot=telemetry,
                classification=classification,
                games=tuple(games),
                models=tuple(models),
                commands=commands,
                on_battery=self._on_battery(),
                sleeping=self._sleeping,
                game_peaks={key: game.peak_bytes for key, game in self._learned.items()},
            )
        )
        self._note_games(games)
        self._note_game_usage(telemetry, games)
        self._act(decision, requests)
        self._last_decision = decision

        snapshot = StewardSnapshot(
            telemetry=telemetry,
            state=str(decision.state),
            reasons=tuple(decision.reasons),
            models=tuple(self._models()),
            games=tuple(games),
            recent_events=tuple(self._recent),
            roles={key: str(role) for key, role in classification.roles.items()},
            notes=tuple(classification.notes) + self._settings_notes(telemetry),
            paused=decision.state == EngineState.PAUSED,
            resume_at=decision.resume_at,
            next_poll_s=self._next_poll_s(decision),
            tick=self._tick,
            learned_games=tuple(self._learned.values()),
        )
        self._quiet_key = self._world_key(telemetry, games, snapshot.models) if not decision.actions else None
        if self._quiet_key is not None and not polled_events and self._settled(decision):
            self._still_key = probe_key
        self._publish(snapshot)  # before answering: a caller that reads `snapshot` next must see this one
        for request in requests:
            if not request.pending and not request.future.done():
                request.future.set_result(self._outcome(request.command, snapshot))
        self._answer_sleep_waiters(snapshot)
        logger.debug("tick %d at %.3f: %s", self._tick, now, decision.state)
        return snapshot

    @staticmethod
    def _outcome(command: EngineCommand, snapshot: StewardSnapshot, event: Event | None = None) -> Outcome:
        return Outcome(
            command=command_name(command),
            state=snapshot.state,
            reasons=snapshot.reasons,
            models=snapshot.models,
            event=event,
        )

    def _apply_engine_commands(self, requests: list[_Request]) -> list[_Request]:
        """Settings and the sleep handshake change the engine itself; they apply before this tick samples,
        so its decision already uses them. Policy commands go on to the policy."""
        for request in requests:
            command = request.command
            if isinstance(command, ApplySettings):
                try:
                    self.update_settings(command.settings)
                except Exception as exc:
                    logger.exception("applying settings failed")
                    request.future.set_exception(exc)
            elif isinstance(command, PrepareForSleep):
                self._sleeping = command.sleeping
                if command.sleeping:
                    request.pending = True
                    self._sleep_waiters.append(request)
            elif isinstance(command, (AddAppRule, RemoveAppRule)):
                self._change_app_rules(command, request)
            elif isinstance(command, ReloadNow):
                self._emit(ev.ReloadRequested(at=self.clock(), gpu=command.gpu))
            elif command.kind == "evict_now":
                self._emit(ev.EvictRequested(at=self.clock(), gpu=command.gpu))
            elif command.kind in ("pause", "resume"):
                cls = ev.Paused if command.kind == "pause" else ev.Unpaused
                self._emit(cls(at=self.clock(), by="user"))
            elif command.kind == "show":
                self._emit(ev.ShowRequested(at=self.clock()))
        return requests

    def _change_app_rules(self, command: AddAppRule | RemoveAppRule, request: _Request) -> None:
        """A rule added or removed: the policy and the classifier follow from this tick on."""
        rules = self.settings.app_rules
        match = command.rule.match if isinstance(command, AddAppRule) else command.match
        kept = tuple(r for r in rules if r.match != match)
        removed = next((r for r in rules if r.match == match), None)
        new_rules = (*kept, command.rule) if isinstance(command, AddAppRule) else kept
        try:
            if new_rules != rules:
                self.update_settings(dataclasses.replace(self.settings, app_rules=new_rules))
        except Exception as exc:
            logger.exception("changing the per-app rules failed")
            request.future.set_exception(exc)
            return
        if isinstance(command, AddAppRule):
            rule = command.rule
            self._emit(
                ev.AppRuleAdded(at=self.clock(), match=rule.match, action=rule.action, name=command.name)
            )
        elif removed is not None:
            self._emit(ev.AppRuleRemoved(at=self.clock(), match=removed.match, action=removed.action))

    def _answer_sleep_waiters(self, snapshot: StewardSnapshot) -> None:
        """The sleep handshake completes once none of our holders' processes holds VRAM any more (or the
        system woke up meanwhile)."""
        if not self._sleep_waiters:
            return
        if self._sleeping and self._holder_pids():
            return
        waiters, self._sleep_waiters = self._sleep_waiters, []
        for request in waiters:
            if not request.future.done():
                request.future.set_result(self._outcome(request.command, snapshot))

    def _publish(self, snapshot: StewardSnapshot) -> StewardSnapshot:
        self._snapshot = snapshot
        for listener in list(self._snapshot_listeners):
            self._safe_call(listener, snapshot)
        return snapshot

    _QUIET_STATES = frozenset({EngineState.ACTIVE, EngineState.IDLE, EngineState.NO_GPU})

    def _world_key(
        self, telemetry: TelemetrySnapshot, games: Sequence[GameSignal], models: Sequence[ModelStatus]
    ) -> tuple[Any, ...]:
        """What a decision depends on, without what moves on its own every sample (utilization, and the
        temperature unless a thermal pause is configured)."""
        thermal = self.settings.thermal_pause_celsius is not None
        gpus = tuple(
            (g.index, g.state, g.total_bytes, g.free_bytes, g.processes, g.temperature_c if thermal else None)
            for g in telemetry.gpus
        )
        return (
            telemetry.state,
            gpus,
            tuple(games),
            tuple(models),
            id(self.settings),
            self._sleeping,
            self._on_battery(),
        )

    def _unchanged(
        self,
        telemetry: TelemetrySnapshot,
        games: Sequence[GameSignal],
        models: Sequence[ModelStatus],
        polled_events: int,
    ) -> StewardSnapshot | None:
        """The idle fast path: when nothing a decision depends on has changed since a quiet decision (no
        actions, a steady state, nothing being counted) and no command waits, reuse it. This is most ticks
        while models sit resident at 10 Hz, and what keeps the idle cost low."""
        prev = self._snapshot
        decision = self._last_decision
        if (
            prev is None
            or decision is None
            or self._quiet_key is None
            or polled_events
            or not self._requests.empty()
            or not self._settled(decision)
            or self._world_key(telemetry, games, models) != self._quiet_key
        ):
            return None
        return dataclasses.replace(prev, telemetry=telemetry, tick=self._tick)

    def _settled(self, decision: Decision) -> bool:
        return decision.state in self._QUIET_STATES and self.policy.settled()

    def run(self, stop: threading.Event, *, sleep: Callable[[float], Any] | None = None) -> None:
        """Tick until `stop` is set, at the pace the policy asks for; then shut down in order."""
        wait = sleep or self._wake.wait
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    snapshot = self.step()
                    interval = snapshot.next_poll_s
                except Exception as exc:  # the worker never dies of one bad tick
                    logger.exception("tick failed")
                    self._emit(ev.EngineError(at=self.clock(), where="tick", message=str(exc)))
                    interval = 1.0
                if self._requests.empty() and not stop.is_set():
                    wait(interval)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Ordered: release all VRAM (holders close), stop signal watchers, close the backend."""
        if self._closed:
            return
        self._closed = True
        for holder in self.holders:
            try:  # our own VRAM is freed, and the frees audited, before we exit
                for event in holder.close():
                    self._emit(event)
            except Exception:
                logger.exception("closing holder %s failed", holder.name)
        if self.signals is not None:
            try:
                self.signals.close()
            except Exception:
                logger.exception("closing game signals failed")
        self.backend.close()
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                break
            if request.future is not None and not request.future.done():
                request.future.cancel()

    # --- internals -----------------------------------------------------------------------------

    def _emit_posted(self) -> None:
        while True:
            try:
                event = self._posted.get_nowait()
            except queue.Empty:
                return
            self._emit(event)

    def _drain(self) -> list[_Request]:
        requests: list[_Request] = []
        while True:
            try:
                requests.append(self._requests.get_nowait())
            except queue.Empty:
                return requests

    def _models(self) -> list[ModelStatus]:
        out: list[ModelStatus] = []
        for holder in self.holders:
            out.extend(holder.models())
        return out

    def _holder_for(self, model: str) -> Holder | None:
        for holder in self.holders:
            if any(m.name == model for m in holder.models()):
                return holder
        return None

    def _holder_pids(self) -> set[int]:
        pids: set[int] = set()
        for holder in self.holders:
            pids |= holder.pids()
        return pids

    def _managed_pids(self) -> set[int]:
        """PIDs of the processes of the apps we manage (model servers' runners, frozen processes)."""
        pids: set[int] = set()
        for holder in self.holders:
            if holder.role == HolderRole.MANAGED:
                pids |= holder.pids()
        return pids

    def _live_pids(self) -> set[int] | None:
        """Every live process, so reservations of clients that died expire; only read when a reservation
        names a pid (a /proc listing costs about a millisecond)."""
        if not any(r.pid is not None for ledger in self.ledgers.values() for r in ledger.reservations()):
            return None
        return set(psutil.pids())

    @staticmethod
    def _own_pids() -> set[int]:
        return {os.getpid()}

    def _expected_bytes(self, models: Sequence[ModelStatus]) -> dict[int, int]:
        """What our own processes should hold per GPU (the `self` holders' resident models; a managed
        app's processes are matched by PID instead)."""
        own = {h.name for h in self.holders if h.role == HolderRole.SELF}
        expected: dict[int, int] = {}
        for m in models:
            if m.state == ModelState.RESIDENT and m.size_bytes and m.holder in own:
                expected[m.gpu] = expected.get(m.gpu, 0) + m.size_bytes
        return expected

    def _act(self, decision: Decision, requests: list[_Request]) -> None:
        refused: dict[int, str] = {}
        for action in decision.actions:
            try:
                if isinstance(action, Evict):
                    self._evict(action)
                elif isinstance(action, Reload):
                    self._reload(action)
                elif isinstance(action, RefuseLoads):
                    refused[action.gpu] = action.reason
                elif isinstance(action, WarnGame):
                    game = action.game
                    self._emit(
                        ev.GameWarning(
                            at=self.clock(), gpu=action.gpu, name=game.name, exe=game.exe, app_id=game.app_id
                        )
                    )
            except Exception as exc:
                logger.exception("action %s failed", action)
                self._emit(ev.EngineError(at=self.clock(), where=type(action).__name__, message=str(exc)))
        self._set_hold(decision.hold)
        blocked = decision.state in (
            EngineState.PAUSED,
            EngineState.EVICTED_FOR_GAME,
            EngineState.THERMAL,
            EngineState.NO_GPU,
        )
        for request in requests:
            command = request.command
            if not isinstance(command, Command):
                continue
            if command.kind == "load" and command.model:
                self._load(command.model, refused, blocked, decision, request)
            elif command.kind == "verify" and command.model:
                self._verify(command.model, request)
            elif command.kind == "unload" and command.model:
                holder = self._holder_for(command.model)
                if holder is None:
                    self._fail(request, f"unknown model {command.model!r}")
                    continue
                for event in holder.unload(command.model):
                    self._emit(event)

    def _set_hold(self, reason: str | None) -> None:
        """Tell the holders when the policy starts or stops keeping the GPU free (Decision.hold)."""
        if reason == self._hold:
            return
        self._hold = reason
        for holder in self.holders:
            holder.set_hold(reason)

    def _load(
        self,
        model: str,
        refused: dict[int, str],
        blocked: bool,
        decision: Decision,
        request: _Request,
    ) -> None:
        holder = self._holder_for(model)
        status = next((m for m in self._models() if m.name == model), None)
        if holder is None or status is None:
            self._fail(request, f"unknown model {model!r}")
            return
        if status.state in (ModelState.RESIDENT, ModelState.LOADING):
            return
        reason = refused.get(status.gpu) or (str(decision.state) if blocked else None)
        if reason:
            self._emit(ev.LoadRefused(at=self.clock(), model=model, gpu=status.gpu, reason=reason))
            detail = next((r for r in decision.reasons if r), "")
            request.future.set_exception(LoadRefused(model, status.gpu, reason, detail))
            return
        try:
            holder.start_load(model)
        except VramError as exc:  # the holder reported the refusal in its own events (one event per fact)
            request.future.set_exception(exc)

    def _verify(self, model: str, request: _Request) -> None:
        """Recompute the chunk digests of what is in VRAM. The request completes when the holder's check
        does: its outcome carries the SealVerified event, or it fails with SealVerificationFailed naming
        the damaged chunks (also a critical audit event, which the holder reports through poll())."""
        holder = self._holder_for(model)
        if holder is None:
            self._fail(request, f"unknown model {model!r}")
            return
        request.pending = True
        command = request.command

        def done(check: concurrent.futures.Future[Event]) -> None:
            if request.future.done():
                return
            exc = check.exception()
            if exc is not None:
                request.future.set_exception(exc)
                return
            snapshot = self._snapshot
            event = check.result()
            if snapshot is None:
                request.future.set_result(Outcome(command=command_name(command), state="", event=event))
            else:
                request.future.set_result(self._outcome(command, snapshot, event))
            self.wake()  # the events of the check are in the holder's next poll()

        holder.verify(model).add_done_callback(done)

    def _fail(self, request: _Request, message: str) -> None:
        if not request.future.done():
            request.future.set_exception(InvalidInput(message))

    def _evict(self, action: Evict) -> None:
        """Hand the models to their holders to free (each returns at once; the frees, verified, arrive as
        VramDeallocated events). `freed_bytes` is what those models held: a before/after difference of free
        VRAM would count a foreign process's allocations meanwhile, and a holder still freeing as nothing."""
        held = {m.name: m for m in self._models()}
        freed: int | None = 0
        for name in action.models:
            status = held.get(name)
            if status is None or status.state not in (ModelState.RESIDENT, ModelState.LOADING):
                continue
            size = status.size_bytes if status.state == ModelState.RESIDENT else status.progress_done_bytes
            freed = None if size is None or freed is None else freed + size
        by_holder: dict[int, tuple[Holder, list[str]]] = {}
        for name in action.models:
            holder = self._holder_for(name)
            if holder is not None:
                by_holder.setdefault(id(holder), (holder, []))[1].append(name)
        self._out_since.setdefault(action.gpu, self.clock())
        duration_s = 0.0  # time spent handing the frees over (a holder's own wait is not the engine's)
        for holder, names in by_holder.values():
            started = self.clock()
            freed_events = holder.evict(names, action.reason)
            duration_s += self.clock() - started
            for event in freed_events:
                self._emit(event)
        self._emit(
            ev.ModelsEvicted(
                at=self.clock(),
                gpu=action.gpu,
                models=tuple(action.models),
                reason=action.reason,
                trigger=action.trigger,
                freed_bytes=freed,
                duration_s=duration_s,
                trigger_exe=action.trigger_exe,
                trigger_app_id=action.trigger_app_id,
            )
        )

    def _reload(self, action: Reload) -> None:
        started: list[str] = []
        for name in action.models:
            holder = self._holder_for(name)
            if holder is None:
                continue
            try:
                holder.start_load(name)
                started.append(name)
            except VramError:  # the holder reported the refusal in its own events, and the model waits
                logger.info("reloading %s was refused; it waits for room", name)
        if started:
            now = self.clock()
            out_for = now - self._out_since.pop(action.gpu, now)
            self._emit(ev.Resumed(at=now, gpu=action.gpu, models=tuple(started), after_s=out_for))

    def _next_poll_s(self, decision: Decision) -> float:
        """The policy's pace, but the busy one as soon as anything of ours is loading: a tick that starts a
        load (decided while nothing was held, at the idle pace) must not leave a game signal or pressure
        during the load unseen for the idle interval."""
        if any(m.state == ModelState.LOADING for m in self._models()):
            return min(decision.next_poll_s, self.settings.poll_interval_secs)
        return decision.next_poll_s

    def _settings_notes(self, telemetry: TelemetrySnapshot) -> tuple[str, ...]:
        """Settings that cannot work on this machine, said where people look (status, dashboard)."""
        reserved = self.settings.reserved_system_vram
        return tuple(
            f"reserved_system_vram ({format_bytes(reserved)}) is as large as GPU {g.index} "
            f"({format_bytes(g.total_bytes)}): no model can ever load there; lower it in the settings"
            for g in telemetry.gpus
            if g.state == GpuState.OK and g.total_bytes and reserved >= g.total_bytes
        )

    def _note_game_usage(self, telemetry: TelemetrySnapshot, games: Sequence[GameSignal]) -> None:
        for game in games:
            key = game_key(game)
            used = game_usage_bytes(telemetry, game)
            name, peak = self._run_peaks.get(key, (game.name, 0))
            if used > peak:
                self._run_peaks[key] = (name, used)

    def _learn_game_ended(self, game: GameSignal) -> None:
        """Its run's peak joins what was learned (read-modify-write of that game's entry)."""
        key = game_key(game)
        name, peak = self._run_peaks.pop(key, (game.name, 0))
        if peak <= 0:
            return
        try:
            self._learned[key] = self.game_peaks.record(key, name, peak)
        except OSError:
            logger.exception("could not save what %s needed", name)

    def _note_games(self, games: Sequence[GameSignal]) -> None:
        seen = self._games_seen
        now = {(g.source, g.pid): g for g in games}
        if any(key not in seen for key in now):
            self._learned = self.game_peaks.load()  # a `games --forget` since counts from this start
        for key, game in now.items():
            if key not in seen:
                self._emit(
                    ev.GameStarted(
                        at=self.clock(),
                        name=game.name,
                        source=game.source,
                        pid=game.pid,
                        app_id=game.app_id,
                        exe=game.exe,
                    )
                )
        for key, game in seen.items():
            if key not in now:
                if not any(game_key(g) == game_key(game) for g in now.values()):
                    self._learn_game_ended(game)
                self._emit(
                    ev.GameEnded(
                        at=self.clock(),
                        name=game.name,
                        source=game.source,
                        pid=game.pid,
                        app_id=game.app_id,
                        exe=game.exe,
                    )
                )
        self._games_seen = now

    def _note_backend(self, telemetry: TelemetrySnapshot) -> None:
        if telemetry.state != self._backend_state:
            if telemetry.state not in (BackendState.OK, BackendState.SIMULATED):
                self._emit(
                    ev.BackendProblem(
                        at=self.clock(), state=str(telemetry.state), message=telemetry.message or ""
                    )
                )
            self._backend_state = telemetry.state
        lost = {g.index for g in telemetry.gpus if g.state == GpuState.LOST}
        for index in lost - self._lost:
            gpu = telemetry.gpu(index)
            message = (gpu.message if gpu else None) or "GPU fell off the bus"
            self._emit(ev.GpuLost(at=self.clock(), gpu=index, message=message))
        self._lost = lost

    def _emit(self, event: Event) -> None:
        if event.wall_time is None:
            event = dataclasses.replace(event, wall_time=self.wall_clock())
        self._recent.append(event)
        if self.audit is not None:
            self.audit.write(event)
        logger.info("%s", event.describe())
        for listener in list(self._listeners):
            self._safe_call(listener, event)

    @staticmethod
    def _safe_call(fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception:
            logger.exception("listener %r failed", fn)
