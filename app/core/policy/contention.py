"""ContentionPolicy: the pure state machine that decides, each tick, which of our models leave VRAM and when
they come back (DESIGN.md, "Contention policy"). No I/O, no threads; time comes from the injected clock.

What takes models out, per GPU, first match wins (each is one Evict action):
  pause (the user; holds until Resume, through a game's end) > Evict now (the user; then the usual resume
  rules) > sleep > battery (hold_models_on_battery off) > heat (thermal_pause_celsius, 5 °C hysteresis) >
  a game (auto_pause_for_gaming, or a per-app "evict" rule: everything on the game's GPU at once, or on every
  GPU while the game is not on one yet) > foreign pressure (auto_evict, pressure_samples samples in a row,
  only as much as needed: see pressure.py). A lost GPU's models count as evicted (Evict reason "lost").
What brings them back (Reload): no game, pressure or heat for the cooldown (cooldown.py), no pause, sleep,
battery hold or dedicated-mode block, and room for them above the headroom. After sleep, or when the user
says Resume, they come back at once if the GPU is free. Models the user unloaded are never reloaded (the
holders report them UNLOADED, not EVICTED).
A game keeps models out even with auto_pause_for_gaming off (then it evicts nothing itself, but models the
user freed with "Free now" stay out until it ends); a game is announced with WarnGame instead.
Dedicated mode (allow_shared_gpu = false) only refuses loads (and reloads) while a foreign compute process is
on the GPU; it does not evict: models already resident were admitted first, and pressure still applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from app.core.gpu.snapshot import BackendState, GpuSnapshot, GpuState, ProcessKind, TelemetrySnapshot
from app.core.holders import ModelState, ModelStatus
from app.core.policy.actions import (
    Action,
    Command,
    CommandKind,
    Decision,
    EngineState,
    Evict,
    EvictReason,
    PolicyInputs,
    RefuseLoads,
    Reload,
    WarnGame,
)
from app.core.policy.classify import executable_name, match_app_rule
from app.core.policy.cooldown import ResumeWindow
from app.core.policy.pressure import Pressure, choose_reloads, choose_victims, display_name, measure_pressure
from app.core.policy.roles import Role
from app.core.policy.signals import GameSignal, game_key
from app.core.settings import Settings
from app.core.units import format_bytes

logger = logging.getLogger(__name__)

THERMAL_HYSTERESIS_C = 5  # resume only when this far below thermal_pause_celsius
SLEEP_BLOCKER = "the system sleeps"

# Which state wins when several GPUs (or several reasons) apply, most important first.
STATE_PRECEDENCE = (
    EngineState.PAUSED,
    EngineState.SLEEPING,
    EngineState.THERMAL,
    EngineState.EVICTED_FOR_GAME,
    EngineState.ON_BATTERY,
    EngineState.EVICTED_FOR_PRESSURE,
    EngineState.COOLDOWN,
    EngineState.DEDICATED_BLOCKED,
    EngineState.ACTIVE,
)

_HELD = (ModelState.RESIDENT, ModelState.LOADING)

__all__ = [
    "Action",
    "Command",
    "CommandKind",
    "ContentionPolicy",
    "Decision",
    "EngineState",
    "Evict",
    "PolicyInputs",
    "RefuseLoads",
    "Reload",
    "WarnGame",
    "describe",
]


@dataclass(frozen=True)
class _Game:
    signal: GameSignal
    gpus: frozenset[int]  # the GPUs its processes are on; empty: on none yet, so it concerns every GPU
    forced: bool  # a per-app "evict" rule names it: evicts even with auto_pause_for_gaming off
    pids: frozenset[int] = frozenset()  # its processes on the GPUs now


@dataclass(frozen=True)
class _Conditions:
    """What holds on one GPU this tick."""

    paused: bool
    evict_now: bool
    sleeping: bool
    battery: bool  # on battery with hold_models_on_battery off
    hot: bool
    games: tuple[_Game, ...]  # games that concern this GPU
    evicting_games: tuple[_Game, ...]  # those of them that take our models out
    pressure: Pressure
    dedicated: str | None  # why dedicated mode refuses loads here, for people


@dataclass
class _GpuOutcome:
    actions: list[Action] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    states: set[EngineState] = field(default_factory=set)
    resume_at: float | None = None
    busy: bool = False  # we hold VRAM here or wait to bring models back: poll fast


class ContentionPolicy:
    """Owned by the engine's worker thread; call `decide` once per tick."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._paused_all = False
        self._paused_gpus: set[int] = set()
        self._windows: dict[int, ResumeWindow] = {}
        self._pressure_samples: dict[int, int] = {}
        self._overridden_games: set[tuple[object, ...]] = set()  # games the user resumed over
        self._hot: set[int] = set()
        self._warned: set[tuple[object, ...]] = set()
        self._out_for_sleep: set[int] = set()
        self._rule_games_since: dict[int, float] = {}
        self._hold: str | None = None  # why the GPU is kept free (Decision.hold)
        self._game_gpus: dict[tuple[object, ...], frozenset[int]] = {}  # game -> GPUs its processes used
        self._fitted: dict[int, set[str]] = {}  # GPU -> games already given what they need (learned peaks)

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def paused(self) -> bool:
        return self._paused_all or bool(self._paused_gpus)

    def settled(self) -> bool:
        """True when no decision is in progress (no pressure being counted), so an unchanged world needs
        no new decision: the engine skips classify and decide then (its idle fast path)."""
        return not any(self._pressure_samples.values())

    def update_settings(self, settings: Settings) -> None:
        """Settings changed live (the tray's toggles, the settings dialog): applies from the next tick."""
        self._settings = settings
        for window in self._windows.values():
            window.configure(
                base_s=settings.resume_cooldown_secs,
                max_s=settings.max_cooldown_secs,
                calm_reset_s=settings.calm_reset_secs,
            )

    def cooldown_s(self, gpu: int) -> float:
        """The current resume window on a GPU (grows when signals keep coming back)."""
        return self._window(gpu).cooldown_s

    def decide(self, inputs: PolicyInputs) -> Decision:
        now = self._clock()
        snapshot = inputs.snapshot
        indexes = sorted({g.index for g in snapshot.gpus} | {m.gpu for m in inputs.models})
        evict_now, resume_now = self._apply_commands(inputs.commands, indexes)
        holding = any(m.state in _HELD for m in inputs.models)
        if snapshot.state not in (BackendState.OK, BackendState.SIMULATED, BackendState.NO_DRIVER):
            reason = snapshot.message or f"GPU telemetry failed ({snapshot.state})"
            poll = self._settings.poll_interval_secs if holding else self._settings.idle_poll_interval_secs
            return Decision((), EngineState.ERROR, (reason,), None, poll, self._hold)
        if snapshot.state == BackendState.NO_DRIVER or not snapshot.gpus:
            reason = snapshot.message or "No NVIDIA GPU found"
            return Decision(
                (), EngineState.NO_GPU, (reason,), None, self._settings.idle_poll_interval_secs, self._hold
            )

        games = self._games(inputs, now)
        # "Resume now" while a game runs: the user keeps the models for that game (until it ends), and
        # pressure from other processes still applies
        present = {game.signal.key for game in games}
        if any(c.kind == "resume" for c in inputs.commands):
            self._overridden_games |= present
        self._overridden_games &= present
        # ... and that game's own processes are no pressure either while it runs (the user chose)
        excused = frozenset(
            pid for game in games if game.signal.key in self._overridden_games for pid in game.pids
        )
        games = [game for game in games if game.signal.key not in self._overridden_games]
        outcomes = [
            self._decide_gpu(
                index, snapshot.gpu(index), inputs, games, now, index in evict_now, resume_now, excused
            )
            for index in indexes
        ]
        self._warned = {game.signal.key for game in games}

        states = set().union(*(o.states for o in outcomes))
        state = next((s for s in STATE_PRECEDENCE if s in states), EngineState.IDLE)
        waits = [o.resume_at for o in outcomes if o.resume_at is not None]
        busy = any(o.busy for o in outcomes)
        actions = tuple(a for o in outcomes for a in o.actions)
        decision = Decision(
            actions=actions,
            state=state,
            reasons=tuple(r for o in outcomes for r in o.reasons),
            resume_at=min(waits) if waits else None,
            next_poll_s=self._settings.poll_interval_secs if busy else self._settings.idle_poll_interval_secs,
            hold=self._update_hold(actions, state),
        )
        for action in decision.actions:
            if isinstance(action, (Evict, Reload)):
                logger.info("%s", _describe_action(action))
        return decision

    def _update_hold(self, actions: Sequence[Action], state: EngineState) -> str | None:
        """Servers keep the GPU free from an eviction for a game, a pause or the user's Evict now until the
        models come back (or nothing is held out any more): a client's load meanwhile is freed again."""
        for action in actions:
            if isinstance(action, Evict) and action.reason in ("game", "pause", "user"):
                self._hold = action.reason
            elif isinstance(action, Reload):
                self._hold = None
        if state in (EngineState.ACTIVE, EngineState.IDLE):
            self._hold = None
        return self._hold

    # --- commands ---------------------------------------------------------------------------------

    def _apply_commands(
        self, commands: Sequence[Command], indexes: Sequence[int]
    ) -> tuple[set[int], set[int]]:
        """Pause / resume change the standing state; returns the GPUs to evict now and to resume now."""
        evict_now: set[int] = set()
        resume_now: set[int] = set()
        for command in commands:
            targets = set(indexes) if command.gpu is None else {command.gpu}
            if command.kind == "pause":
                if command.gpu is None:
                    self._paused_all = True
                else:
                    self._paused_gpus.add(command.gpu)
                logger.info("paused by the user (%s)", "all GPUs" if command.gpu is None else command.gpu)
            elif command.kind == "resume":
                if command.gpu is None:
                    self._paused_all = False
                    self._paused_gpus.clear()
                else:
                    if self._paused_all:
                        self._paused_all = False
                        self._paused_gpus = set(indexes)
                    self._paused_gpus.discard(command.gpu)
                resume_now |= targets
                evict_now -= targets
            elif command.kind == "evict_now":
                evict_now |= targets
                resume_now -= targets
            # "load" and "unload" change what the holders report (LOADING / UNLOADED); nothing to keep here.
        return evict_now, resume_now

    # --- games ------------------------------------------------------------------------------------

    def _games(self, inputs: PolicyInputs, now: float) -> list[_Game]:
        """Game signals not under an "ignore" rule, and processes a per-app "evict" rule names."""
        snapshot, classification = inputs.snapshot, inputs.classification
        rules = self._settings.app_rules
        games: list[_Game] = []
        covered: set[int] = set()
        for signal in inputs.games:
            rule = match_app_rule(rules, exe=signal.exe or signal.name, app_id=signal.app_id)
            if rule is not None and rule.action == "ignore":
                continue
            exe = executable_name(signal.exe)
            on = {
                (gpu.index, proc.pid)
                for gpu in snapshot.gpus
                for proc in gpu.processes
                if proc.pid == signal.pid or (exe and executable_name(proc.name) == exe)
            }
            covered |= {pid for _, pid in on}
            forced = rule is not None and rule.action == "evict"
            # A game is tied to the GPUs its processes were seen on: before they show, it concerns every
            # GPU (we cannot know yet); after, only those, even once its process has exited while its
            # signal lingers (its end then frees nothing on the other GPUs).
            seen = self._game_gpus.get(signal.key, frozenset()) | {index for index, _ in on}
            self._game_gpus[signal.key] = seen
            games.append(_Game(signal, seen, forced, frozenset(pid for _, pid in on)))
        present_keys = {g.key for g in inputs.games}
        self._game_gpus = {key: gpus for key, gpus in self._game_gpus.items() if key in present_keys}
        by_rule: dict[int, set[int]] = {}
        names: dict[int, str] = {}
        for gpu in snapshot.gpus:
            for proc in gpu.processes:
                if proc.pid not in covered and classification.role(gpu.index, proc.pid) == Role.GAME:
                    by_rule.setdefault(proc.pid, set()).add(gpu.index)
                    names[proc.pid] = proc.name
        self._rule_games_since = {pid: self._rule_games_since.get(pid, now) for pid in by_rule}
        for pid, gpus in by_rule.items():
            signal = GameSignal(
                name=display_name(names[pid]),
                source="app_rule",
                pid=pid,
                exe=names[pid],
                started_at=self._rule_games_since[pid],
            )
            games.append(_Game(signal, frozenset(gpus), forced=True))
        return games

    # --- one GPU ----------------------------------------------------------------------------------

    def _window(self, gpu: int) -> ResumeWindow:
        if gpu not in self._windows:
            s = self._settings
            self._windows[gpu] = ResumeWindow(
                base_s=s.resume_cooldown_secs, max_s=s.max_cooldown_secs, calm_reset_s=s.calm_reset_secs
            )
        return self._windows[gpu]

    def _decide_gpu(
        self,
        index: int,
        gpu: GpuSnapshot | None,
        inputs: PolicyInputs,
        games: Sequence[_Game],
        now: float,
        evict_now: bool,
        resume_now: set[int],
        excused: frozenset[int] = frozenset(),
    ) -> _GpuOutcome:
        s = self._settings
        out = _GpuOutcome()
        mine = [m for m in inputs.models if m.gpu == index]
        held = [m for m in mine if m.state in _HELD]
        # what is out: evicted by us, or refused for lack of room (retried like a reload, the cooldown
        # window being the backoff, so a blocker that exits lets it in)
        evicted = [
            m
            for m in mine
            if m.state in (ModelState.EVICTED, ModelState.WAITING, ModelState.FROZEN) and not m.held_by_user
        ]
        window = self._window(index)
        paused = self._paused_all or index in self._paused_gpus
        if paused:
            out.states.add(EngineState.PAUSED)

        if gpu is None or gpu.state == GpuState.LOST:
            window.observe(now, contention=False, hold=True)
            self._pressure_samples[index] = 0
            message = (gpu.message if gpu is not None else None) or f"GPU {index} is no longer visible"
            if held:
                out.actions.append(Evict(index, _names(held), "lost", message))
            out.actions.append(RefuseLoads(index, "lost", message))
            if held or evicted:
                out.states.add(EngineState.COOLDOWN)
                out.reasons.append(f"GPU {index} is lost ({message}): its models come back when it returns")
            return out
        if gpu.state != GpuState.OK:
            window.observe(now, contention=False, hold=True)
            out.reasons.append(
                f"GPU {index} cannot be read ({gpu.message or gpu.state}): nothing changes there"
            )
            out.busy = bool(held or evicted)
            out.states.add(
                EngineState.ACTIVE if held else EngineState.COOLDOWN if evicted else EngineState.IDLE
            )
            return out

        given_back = sum(m.size_bytes or 0 for m in evicted)
        here = tuple(g for g in games if not g.gpus or index in g.gpus)
        evicting = tuple(g for g in here if g.forced or s.auto_pause_for_gaming)
        # a game given what it reached last time grows into that room: its growth is no pressure (the
        # headroom rule still is, if it needs more than it did)
        fitted = frozenset(pid for g in evicting if game_key(g.signal) in inputs.game_peaks for pid in g.pids)
        cond = _Conditions(
            paused=paused,
            evict_now=evict_now,
            sleeping=inputs.sleeping,
            battery=inputs.on_battery is True and not s.hold_models_on_battery,
            hot=self._update_heat(gpu),
            games=here,
            evicting_games=evicting,
            pressure=measure_pressure(
                gpu,
                inputs.classification,
                s,
                given_back_bytes=given_back,
                excused_pids=excused,
                growth_excused_pids=fitted,
            ),
            dedicated=self._dedicated_block(gpu, inputs),
        )
        contention = bool(here) or cond.pressure.holds or cond.hot
        window.observe(now, contention=contention, hold=cond.paused or cond.battery)

        if not cond.evicting_games:
            self._fitted.pop(index, None)
        evict = self._eviction(index, gpu, held, cond, inputs.game_peaks)
        if evict is not None:
            out.actions.append(evict)
            if evict.reason == "user":
                window.restart(now)
            if evict.reason == "sleep":
                self._out_for_sleep.add(index)
            else:
                self._out_for_sleep.discard(index)
        gone = set(evict.models) if evict is not None else set()
        still_held = [m for m in held if m.name not in gone]
        out_models = evicted + [m for m in held if m.name in gone]

        for game in here:
            warn = not (game.forced or s.auto_pause_for_gaming)
            if warn and still_held and game.signal.key not in self._warned:
                out.actions.append(WarnGame(index, game.signal))

        refusal = self._refusal(index, cond)
        if refusal is not None:
            out.actions.append(refusal)

        reloaded: tuple[str, ...] = ()
        if evict is None and evicted:
            asked = index in resume_now
            reloaded = self._resume(index, gpu, evicted, cond, window, now, asked, out)
        out_models = [m for m in out_models if m.name not in reloaded]

        if out_models:
            out.states.add(EngineState.COOLDOWN)
            if cond.sleeping:
                out.states.add(EngineState.SLEEPING)
            if cond.hot:
                out.states.add(EngineState.THERMAL)
            if cond.games:
                out.states.add(EngineState.EVICTED_FOR_GAME)
            if cond.battery:
                out.states.add(EngineState.ON_BATTERY)
            if cond.pressure.holds:
                out.states.add(EngineState.EVICTED_FOR_PRESSURE)
        if cond.dedicated:
            out.states.add(EngineState.DEDICATED_BLOCKED)
        if still_held or reloaded:
            out.states.add(EngineState.ACTIVE)
        out.busy = bool(still_held or reloaded or (out_models and not paused))
        return out

    def _update_heat(self, gpu: GpuSnapshot) -> bool:
        limit = self._settings.thermal_pause_celsius
        if limit is None:
            self._hot.discard(gpu.index)
        elif gpu.temperature_c is not None:
            if gpu.temperature_c > limit:
                if gpu.index not in self._hot:
                    logger.warning("GPU %d at %d °C, above %d °C", gpu.index, gpu.temperature_c, limit)
                self._hot.add(gpu.index)
            elif gpu.temperature_c <= limit - THERMAL_HYSTERESIS_C:
                self._hot.discard(gpu.index)
        return gpu.index in self._hot

    def _dedicated_block(self, gpu: GpuSnapshot, inputs: PolicyInputs) -> str | None:
        """Dedicated mode: the foreign compute processes that make us refuse loads, for people."""
        if self._settings.allow_shared_gpu:
            return None
        foreign = [
            f"{display_name(p.name)} (pid {p.pid})"
            for p in gpu.processes
            if p.kind in (ProcessKind.COMPUTE, ProcessKind.BOTH)
            and inputs.classification.role(gpu.index, p.pid) in (Role.OTHER, Role.GAME)
        ]
        if not foreign:
            return None
        return f"dedicated mode (allow_shared_gpu = false): {', '.join(foreign)} computes on GPU {gpu.index}"

    def _game_need(self, gpu: GpuSnapshot, cond: _Conditions, peaks: Mapping[str, int]) -> int | None:
        """Bytes to free so the games here get what they reached last time plus the headroom: None when
        one of them has no history (then everything goes, as the first time)."""
        more = 0
        for game in cond.evicting_games:
            peak = peaks.get(game_key(game.signal))
            if peak is None:
                return None
            holds = sum(p.used_bytes or 0 for p in gpu.processes if p.pid in game.pids)
            more += max(peak - holds, 0)
        return more + cond.pressure.headroom_bytes - gpu.free_bytes

    def _eviction(
        self,
        index: int,
        gpu: GpuSnapshot,
        held: Sequence[ModelStatus],
        cond: _Conditions,
        peaks: Mapping[str, int] | None = None,
    ) -> Evict | None:
        s = self._settings
        pressure = cond.pressure
        pressing = pressure.need_bytes > 0 and s.auto_evict and bool(held)
        count = self._pressure_samples.get(index, 0) + 1 if pressing else 0
        self._pressure_samples[index] = count
        if not held:
            return None
        reason: EvictReason | None = None
        trigger = ""
        exe: str | None = None  # who caused it, as a per-app rule matches it
        app_id: str | None = None
        if cond.paused:
            reason, trigger = "pause", "you paused VRAM Steward"
        elif cond.evict_now:
            reason, trigger = "user", "you chose Evict now"
        elif cond.sleeping:
            reason, trigger = "sleep", "the system is going to sleep"
        elif cond.battery:
            reason, trigger = "battery", "the computer runs on battery (hold_models_on_battery is off)"
        elif cond.hot:
            limit = s.thermal_pause_celsius
            reason, trigger = "thermal", f"GPU {index} at {gpu.temperature_c} °C (pause above {limit} °C)"
        elif cond.evicting_games:
            reason, trigger = "game", _game_names(cond.evicting_games)
            exe, app_id = _game_identity(cond.evicting_games, gpu)
            need = self._game_need(gpu, cond, peaks or {})
            if need is not None:  # every game here ran before: free only what it needs
                self._pressure_samples[index] = 0
                keys = {game_key(g.signal) for g in cond.evicting_games}
                if keys <= self._fitted.get(index, set()):
                    return None  # done for these games; growth beyond it is pressure as usual
                self._fitted[index] = keys
                if need <= 0:
                    logger.info("GPU %d: %s fits beside our models (learned peak)", index, trigger)
                    return None
                victims = choose_victims(held, need)
                return Evict(index, _names(victims), "game", trigger, need, exe, app_id)
        if reason is not None:
            self._pressure_samples[index] = 0
            return Evict(index, _names(held), reason, trigger, None, exe, app_id)
        # Free VRAM below the headroom is acute: someone's next allocation may fail, so act on the first
        # sample. Foreign growth with headroom still intact must persist for pressure_samples samples.
        acute = pressing and pressure.free_bytes < pressure.headroom_bytes
        if pressing and (acute or count >= s.pressure_samples):
            self._pressure_samples[index] = 0
            victims = choose_victims(held, pressure.need_bytes)
            return Evict(
                index,
                _names(victims),
                "pressure",
                pressure.trigger,
                pressure.need_bytes,
                pressure.trigger_exe,
            )
        if pressing:
            logger.debug("pressure on GPU %d, sample %d of %d: %s", index, count, s.pressure_samples,
                         pressure.trigger)  # fmt: skip
        return None

    @staticmethod
    def _refusal(index: int, cond: _Conditions) -> RefuseLoads | None:
        if cond.paused:
            return RefuseLoads(index, "paused", "paused by you: choose Resume to load models")
        if cond.sleeping:
            return RefuseLoads(index, "sleep", "the system is going to sleep")
        if cond.battery:
            return RefuseLoads(index, "battery", "on battery, and hold_models_on_battery is off")
        if cond.hot:
            return RefuseLoads(index, "thermal", f"GPU {index} is too hot")
        if cond.dedicated is not None:
            return RefuseLoads(index, "dedicated", cond.dedicated)
        if cond.evicting_games:
            return RefuseLoads(index, "game", f"{_game_names(cond.evicting_games)} is running")
        return None

    @staticmethod
    def _blockers(cond: _Conditions) -> list[str]:
        """Why evicted models may not come back now (empty: they may, once the cooldown has passed)."""
        blockers: list[str] = []
        if cond.paused:
            blockers.append("paused by you")
        if cond.sleeping:
            blockers.append(SLEEP_BLOCKER)
        if cond.battery:
            blockers.append("on battery")
        if cond.hot:
            blockers.append("the GPU is too hot")
        if cond.games:
            blockers.append(f"{_game_names(cond.games)} is running")
        if cond.pressure.holds:
            blockers.append(cond.pressure.trigger)
        if cond.dedicated is not None:
            blockers.append(cond.dedicated)
        return blockers

    def _resume(
        self,
        index: int,
        gpu: GpuSnapshot,
        evicted: Sequence[ModelStatus],
        cond: _Conditions,
        window: ResumeWindow,
        now: float,
        asked: bool,
        out: _GpuOutcome,
    ) -> tuple[str, ...]:
        """Reload what fits when nothing holds the models out any more; returns the names reloaded."""
        names = ", ".join(m.name for m in evicted)
        blockers = self._blockers(cond)
        if blockers:
            out.reasons.append(f"{names} on GPU {index} stay out: {'; '.join(blockers)}")
            if SLEEP_BLOCKER not in blockers:
                self._out_for_sleep.discard(index)  # awake, but something else holds them: usual rules
            return ()
        woke = index in self._out_for_sleep
        ready_at = window.ready_at()
        if not (asked or woke) and ready_at is not None and now < ready_at:
            out.resume_at = ready_at
            out.reasons.append(
                f"{names} on GPU {index} come back in {ready_at - now:.0f} s if the GPU stays free"
                f" (cooldown {window.cooldown_s:.0f} s)"
            )
            return ()
        available = gpu.free_bytes - cond.pressure.headroom_bytes
        chosen = choose_reloads(evicted, available)
        if not chosen:
            need = min(m.size_bytes or 0 for m in evicted)
            out.reasons.append(
                f"{names} on GPU {index} wait for room: the smallest needs {format_bytes(need)}, "
                f"{format_bytes(max(available, 0))} is free above the headroom"
            )
            return ()
        window.reloaded(now)
        self._out_for_sleep.discard(index)
        reason = "user" if asked else "wake" if woke else "cooldown"
        out.actions.append(Reload(index, _names(chosen), reason))
        return _names(chosen)


def game_usage_bytes(snapshot: TelemetrySnapshot, signal: GameSignal) -> int:
    """The most VRAM the game's processes (its pid, or its executable) hold on one GPU in this sample."""
    exe = executable_name(signal.exe)
    return max(
        (
            sum(
                p.used_bytes or 0
                for p in gpu.processes
                if p.pid == signal.pid or (exe and executable_name(p.name) == exe)
            )
            for gpu in snapshot.gpus
        ),
        default=0,
    )


def _names(models: Sequence[ModelStatus]) -> tuple[str, ...]:
    return tuple(m.name for m in models)


def _game_names(games: Sequence[_Game]) -> str:
    return ", ".join(dict.fromkeys(g.signal.name for g in games))


def _game_identity(games: Sequence[_Game], gpu: GpuSnapshot) -> tuple[str | None, str | None]:
    """(executable name, Steam AppId) of the one game behind an eviction, as a per-app rule matches it;
    (None, None) when several games are. The executable is the signal's, else its process's on the GPU."""
    by_key = {game_key(g.signal): g for g in games}
    if len(by_key) != 1:
        return None, None
    (game,) = by_key.values()
    exe = game.signal.exe or next((p.name for p in gpu.processes if p.pid in game.pids), None)
    return executable_name(exe) or None, game.signal.app_id


_STATE_LABELS = {
    EngineState.IDLE: "Idle: no models in VRAM",
    EngineState.ACTIVE: "Models in VRAM",
    EngineState.EVICTED_FOR_GAME: "Out of the way for a game",
    EngineState.EVICTED_FOR_PRESSURE: "Out of the way: another application needs VRAM",
    EngineState.PAUSED: "Paused",
    EngineState.COOLDOWN: "Waiting for the GPU to stay free",
    EngineState.DEDICATED_BLOCKED: "Loads refused: another compute process uses the GPU",
    EngineState.THERMAL: "Paused: the GPU is too hot",
    EngineState.SLEEPING: "Models out while the system sleeps",
    EngineState.ON_BATTERY: "Models out while on battery",
    EngineState.NO_GPU: "No NVIDIA GPU",
    EngineState.ERROR: "GPU telemetry is failing",
}


def _describe_action(action: Action) -> str:
    if isinstance(action, Evict):
        need = f", needed {format_bytes(action.need_bytes)}" if action.need_bytes is not None else ""
        return (
            f"freed {', '.join(action.models)} on GPU {action.gpu} ({action.reason}: {action.trigger}{need})"
        )
    if isinstance(action, Reload):
        return f"bringing back {', '.join(action.models)} on GPU {action.gpu}"
    if isinstance(action, WarnGame):
        return f"{action.game.name} started and models are still on GPU {action.gpu}: free them now?"
    return f"loads refused on GPU {action.gpu}: {action.detail or action.reason}"


def describe(decision: Decision) -> str:
    """One line for people (tray tooltip, log, replay): the state, then what is being done or why."""
    label = _STATE_LABELS.get(decision.state, str(decision.state))
    done = [_describe_action(a) for a in decision.actions if not isinstance(a, RefuseLoads)]
    detail = done or list(decision.reasons[:1])
    if not detail:
        detail = [_describe_action(a) for a in decision.actions[:1]]
    return " — ".join([label, *detail])
