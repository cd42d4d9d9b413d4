"""Builds a running engine from settings: backend, holders, game signals, ledgers, the asyncio thread and the
API. The daemon, the tray app and `replay` all start here, so they drive the same `Steward`."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.core import paths
from app.core.aio_thread import AsyncioThread
from app.core.engine.game_peaks import GamePeaks
from app.core.engine.steward import Steward
from app.core.events import AuditLog
from app.core.gpu.backend import GpuBackend, open_backend
from app.core.gpu.simulated import SimulatedBackend
from app.core.holders import ModelHolder
from app.core.policy.signals import GameSignalSource
from app.core.residency.ledger import Ledgers
from app.core.settings import ServerConfig, Settings
from app.core.signals.scenario import simulated_signals

if TYPE_CHECKING:
    from app.core.api.server import ApiServer
    from app.core.servers.discovery import DiscoveryWatcher
    from app.core.vulkan.signals import VulkanLayerSignals

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a running instance owns, torn down in order by `stop()`."""

    settings: Settings
    steward: Steward
    backend: GpuBackend
    simulated: bool
    stop_event: threading.Event = field(default_factory=threading.Event)
    worker: threading.Thread | None = None
    aio: AsyncioThread | None = None
    api: ApiServer | None = None
    sleep_watcher: object | None = None
    discovery: DiscoveryWatcher | None = None  # finds unmanaged AI apps (real runs only); subscribe to it
    vulkan_layer: VulkanLayerSignals | None = None  # the Vulkan layer's socket; subscribe to its events

    def start_worker(self) -> None:
        self.worker = threading.Thread(
            target=self.steward.run, args=(self.stop_event,), name="steward", daemon=True
        )
        self.worker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ordered shutdown: stop ticking (the worker then releases all VRAM), stop the API, the loop."""
        self.stop_event.set()
        self.steward.wake()
        if self.worker is not None:
            self.worker.join(timeout_s)
        else:
            self.steward.shutdown()
        if self.discovery is not None:
            self.discovery.close()
        close = getattr(self.sleep_watcher, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                logger.exception("stopping the sleep watcher failed")
        if self.api is not None and self.aio is not None:
            try:
                self.aio.run(self.api.stop(), timeout_s=5.0)
            except Exception:
                logger.exception("stopping the API failed")
        if self.aio is not None:
            self.aio.stop(timeout_s=5.0)


class ManagedHolders:
    """Holders for the `[[servers]]` entries: one per server, app, command or unit, and one freezing holder
    for every `kind = "freeze"` entry. `new_holders(settings)` makes those for entries not seen before (at
    start, and for entries added while running); a removed or changed entry keeps its holder until restart."""

    def __init__(self, backend: GpuBackend, ledgers: Ledgers, clock: Callable[[], float]) -> None:
        self._backend = backend
        self._ledgers = ledgers
        self._clock = clock
        self._seen: set[ServerConfig] = set()

    def new_holders(self, settings: Settings) -> list[ModelHolder]:
        fresh = [s for s in settings.servers if s not in self._seen]
        self._seen |= set(fresh)
        holders: list[ModelHolder] = []
        servers = [s for s in fresh if s.kind != "freeze"]
        if servers:
            from app.core.servers import make_server_holder

            holders.extend(
                make_server_holder(
                    s, backend=self._backend, clock=self._clock, default_gpu=settings.gpu_device
                )
                for s in servers
            )
        frozen = [s for s in fresh if s.kind == "freeze"]
        if frozen:
            from app.core.freeze.driver import open_driver
            from app.core.freeze.holder import FreezeHolder, FreezeRule

            rules = [FreezeRule(s.name or s.match, s.match, settings.gpu_device) for s in frozen]
            holders.append(
                FreezeHolder(
                    rules, backend=self._backend, ledgers=self._ledgers, driver=open_driver, clock=self._clock
                )
            )
        return holders


def make_signals(
    settings: Settings,
    backend: GpuBackend,
    clock: Callable[[], float],
    aio: AsyncioThread | None,
    wake: Callable[[], None] = lambda: None,
) -> GameSignalSource:
    """The game signals that can run here: in simulation the scenario's scripted signals and the
    exclusive-app list matched over the scenario's processes; GameMode, Steam and the exclusive-app list on
    a real machine (each optional, each failing quietly to "no games")."""
    if isinstance(backend, SimulatedBackend):
        return simulated_signals(settings, backend, clock)
    from app.core.policy.signals import CompositeSignals
    from app.core.signals.exclusive_apps import ExclusiveApps
    from app.core.signals.process_scan import ProcessScanner
    from app.core.signals.steam import SteamGames

    scanner = ProcessScanner(interval_s=settings.process_check_interval_secs, clock=clock)
    sources: list[GameSignalSource] = [SteamGames(scanner), ExclusiveApps(scanner, settings.exclusive_apps)]
    if aio is not None:
        try:
            from app.core.signals.gamemode import GameModeWatcher

            # starts watching at once, never blocks; a change wakes the engine before its next tick
            sources.append(GameModeWatcher(aio, clock=clock, on_change=wake))
        except Exception:
            logger.exception("the GameMode watcher could not start")
    return CompositeSignals(sources)


def watch_sleep(steward: Steward, aio: AsyncioThread, *, timeout_s: float = 3.5) -> object | None:
    """Evict before the system sleeps and reload after (logind PrepareForSleep on the system bus; inert
    without one). The sleep waits, under logind's delay lock, until our VRAM is released or timeout_s."""
    try:
        from app.core.signals.sleep import SleepWatcher
    except Exception:
        logger.exception("the sleep watcher could not start")
        return None

    def before_sleep() -> None:
        # through the engine's door: the outcome completes once the engine holds no VRAM any more
        released = steward.set_sleeping(True)
        try:
            released.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            logger.warning("VRAM was not released within %.1f s of the sleep notice", timeout_s)
        except Exception:
            logger.exception("releasing VRAM before sleep failed")

    def after_resume() -> None:
        steward.set_sleeping(False)

    try:
        return SleepWatcher(aio, before_sleep=before_sleep, after_resume=after_resume)
    except Exception:
        logger.exception("the sleep watcher could not start")
        return None


def build_runtime(
    settings: Settings,
    *,
    simulate: str | Path | None = None,
    clock: Callable[[], float] | None = None,
    with_api: bool = True,
    audit: bool = True,
) -> Runtime:
    start = time.monotonic()
    clock = clock or (lambda: time.monotonic() - start)
    holders: list[ModelHolder] = []
    ledgers = Ledgers(headroom_bytes=settings.headroom_bytes, clock=clock)
    backend: GpuBackend
    if simulate is not None:
        from app.core.residency.simulated_holder import SimulatedHolder, SimulatedModel

        sim = SimulatedBackend.from_file(simulate)
        sim.set_clock(clock)
        backend = sim
        models = [SimulatedModel(m.name, m.gpu, m.size_bytes, m.priority) for m in sim.scenario.models]
        for m in settings.models:
            size = m.path.stat().st_size if m.path.exists() else 0
            if size and all(x.name != m.name for x in models):
                models.append(SimulatedModel(m.name, m.gpu, size, m.priority))
        holders.append(SimulatedHolder(sim, models, ledgers, clock=clock))
    else:
        backend = open_backend(None)
        if settings.models:
            from app.core.residency.manager import ResidencyManager

            holders.append(
                ResidencyManager.for_settings(settings, ledgers=ledgers, backend=backend, clock=clock)
            )
    managed = ManagedHolders(backend, ledgers, clock) if simulate is None else None
    if managed is not None:  # real servers and apps only: a simulation must not touch them
        holders.extend(managed.new_holders(settings))
    aio: AsyncioThread | None = None
    if with_api or simulate is None:  # D-Bus (GameMode, logind) and the API run on the asyncio thread
        aio = AsyncioThread()
        aio.start()
    engines: list[Steward] = []  # the signal watchers wake the engine, which is built right after them

    def wake() -> None:
        for engine in engines:
            engine.wake()

    signals = make_signals(settings, backend, clock, aio, wake=wake)
    vulkan_layer = None
    if simulate is None or with_api:  # a replay (no API) stays exact and private: it opens no socket
        from app.core.policy.signals import CompositeSignals
        from app.core.vulkan.signals import VulkanLayerSignals

        # serves the socket only while settings.vulkan_layer_socket is on (it follows settings changes)
        vulkan_layer = VulkanLayerSignals(settings, clock=clock, wake=wake)
        inner = signals.sources if isinstance(signals, CompositeSignals) else (signals,)
        signals = CompositeSignals([*inner, vulkan_layer])  # one flat list: each source fails alone
    steward = Steward(
        settings,
        backend,
        holders,
        signals=signals,
        ledgers=ledgers,
        clock=clock,
        audit=AuditLog(paths.audit_log_file()) if audit else None,
        # what each game needed last time; a simulation learns in memory only (replays stay exact)
        game_peaks=GamePeaks(paths.game_peaks_file() if simulate is None else None),
        # a [[servers]] entry added while running (the settings dialog, "Manage it") gets its holder at once
        new_holders=managed.new_holders if managed is not None else None,
    )
    engines.append(steward)
    if vulkan_layer is not None:  # its answers wait for snapshots that show our VRAM freed
        steward.subscribe_snapshots(vulkan_layer.observe)
        vulkan_layer.subscribe(steward.post)  # its reports join the engine's events (audit, status, UI)
    sleep_watcher = watch_sleep(steward, aio) if aio is not None and simulate is None else None
    runtime = Runtime(
        settings=settings,
        steward=steward,
        backend=backend,
        simulated=simulate is not None,
        aio=aio,
        sleep_watcher=sleep_watcher,
    )
    runtime.vulkan_layer = vulkan_layer
    if simulate is None:  # a simulation must not probe the real machine
        from app.core.servers.discovery import DiscoveryWatcher

        runtime.discovery = DiscoveryWatcher.for_backend(lambda: runtime.settings.servers, backend)
        runtime.discovery.start()  # its own daemon thread: the engine never waits on a probe
    if with_api and aio is not None:
        from app.core.api.endpoint import api_socket_file
        from app.core.api.metrics import StewardMetrics
        from app.core.api.server import ApiServer
        from app.core.api.token import issue_token

        metrics = StewardMetrics(steward)
        api = ApiServer(
            steward,
            host=settings.api_host,
            port=settings.api_port,
            token=issue_token(),  # a new token at every start
            allow_remote=settings.allow_remote_api,
            endpoint_file=paths.api_endpoint_file(),
            metrics=metrics.render,
            unix_socket=api_socket_file(),  # the CLI's channel: the kernel checks the peer's user
            tls_cert=settings.api_tls_cert or None,  # TLS when remote: these, or a self-signed one
            tls_key=settings.api_tls_key or None,
        )
        metrics.queue_lengths = api.reservations.queue_lengths
        if runtime.discovery is not None:
            api.discovery_report = runtime.discovery.report  # GET /v1/discovered
        try:
            aio.run(api.start(), timeout_s=10.0)  # ApiPortUnavailable when the port is taken
        except BaseException:
            runtime.stop()  # nothing was started but the asyncio thread and the watchers: stop them
            raise
        runtime.api = api
    return runtime
