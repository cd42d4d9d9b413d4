"""ServerHolder: the ModelHolder logic that the Ollama, llama.cpp and llama-swap adapters share.

The engine calls a holder from its worker thread at up to 10 Hz, and a holder never makes it wait: every
request to the server (listing, unloading and verifying the free, loading) runs on a background thread
with a deadline on the whole request, and `poll()` only collects what finished. A listing is started at
most every `refresh_interval_s` (2 s); a server that is down is asked again only after a backoff (2 s
doubling to 60 s), with one `ServerDown` event per outage, not one per attempt. A slow, trickling,
redirecting or silent server can delay only its own models, never a game's eviction of the others.

What the adapters add: how to list what the server holds (`_list_models`), how to unload and load one model
(`_unload`, `_load`), and how to find its runner processes (`find_runners`).

Models a holder reports:
- RESIDENT / LOADING: what the server holds now (Ollama's /api/ps, llama.cpp's /models, llama-swap's
  /running), on the GPU where its runner processes are (or `default_gpu` when NVML cannot tell);
- EVICTED: what VRAM Steward unloaded; restored by `start_load` when the engine resumes;
- UNLOADED: what the user unloaded through VRAM Steward (can be loaded again by name);
- FAILED: a restore the server refused.
Models the server unloads on its own (its idle timer, its LRU) simply leave the list: that is the server's
policy, not ours to undo.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from app.core import events as ev
from app.core.backoff import Backoff
from app.core.events import Event
from app.core.gpu.backend import GpuBackend
from app.core.gpu.snapshot import BackendState, GpuState, TelemetrySnapshot
from app.core.holders import HolderRole, ModelState, ModelStatus, unsupported_verify
from app.core.servers.base import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    JsonHttpClient,
    ServerBadAnswer,
    ServerError,
    ServerUnreachable,
)
from app.core.servers.runners import FindRunners, RunnerProcess
from app.core.servers.verify_free import VERIFY_TIMEOUT_S, FreeResult, measure, wait_until_freed
from app.core.settings import ServerConfig, Settings

logger = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 2.0
FORGET_RESIDENT_AFTER_DOWN_S = 30.0  # a server down this long no longer holds what it listed
UNLOAD_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 600.0  # a big model from a slow disk


@dataclass(frozen=True)
class ServedModel:
    """One model as the server lists it."""

    name: str
    state: ModelState  # RESIDENT or LOADING
    vram_bytes: int | None = (
        None  # on the GPU, as the server says (Ollama's size_vram); None: it does not say
    )
    total_bytes: int | None = None  # the whole model in memory (Ollama's size)
    digest: str | None = None
    runner_args: tuple[str, ...] = ()  # arguments that name its runner process (a path, a port); (): unknown


@dataclass(frozen=True)
class ServerStatus:
    """For the UI and the API: is the server up, and if not, why and when we try again."""

    kind: str
    url: str
    up: bool | None  # None: not asked yet
    message: str | None = None
    retry_at: float | None = None  # engine clock


@dataclass
class _Known:
    """What we know of one model (worker thread only)."""

    name: str
    gpu: int
    size_bytes: int | None
    state: ModelState
    digest: str | None = None
    last_error: str | None = None
    load: concurrent.futures.Future[None] | None = None
    load_answered: bool = False  # the load request completed: the next listing must show the model
    comes_back_on_next_use: bool = False  # the app cannot be asked to load it: its next use does
    warned_partly_on_cpu: bool = False
    pids: frozenset[int] = field(default_factory=frozenset)


T = TypeVar("T")


@dataclass(frozen=True)
class _Listing:
    """What a background listing found (the server's models, or why it could not), and the runners."""

    served: list[ServedModel] | None
    error: ServerError | None
    runners: list[RunnerProcess]
    epoch: int  # the holder's free epoch when it started: a listing older than a free is stale


@dataclass(frozen=True)
class _FreeOutcome:
    """What a background free did: the models the server unloaded, those it could not, and what came back."""

    reason: str
    new_state: ModelState
    unloaded: tuple[str, ...]
    failed: tuple[tuple[str, ServerError], ...]
    result: FreeResult


def run_in_daemon_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run `fn` on its own daemon thread: a request that hangs must never keep the app from exiting (a
    ThreadPoolExecutor's workers are joined at exit)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=work, name="server-io", daemon=True).start()
    return future


def run_at_once(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run `fn` now and return its finished future (tests: deterministic requests)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)
    return future


class BackgroundRunner(Protocol):
    """Runs a function off the engine thread and returns its future (`run_in_daemon_thread`; tests pass
    `run_at_once`)."""

    def __call__(self, fn: Callable[[], T], /) -> concurrent.futures.Future[T]: ...


class ComesBackOnNextUse(ServerError):
    """What `_load` raises for an app that has no call to load a model again (ComfyUI, InvokeAI): the model
    is shown as UNLOADED with `comes_back_on_next_use`, and the app's next use (a prompt, an invocation)
    loads it. Not a failure: no event."""


class ServerHolder(abc.ABC):
    """ModelHolder over a model server's HTTP API; subclasses set `name` and implement the abstract parts."""

    name: str = "server"
    display_name: str = "the server"
    role = HolderRole.MANAGED
    # The app's processes stay after a free (ComfyUI, A1111/Forge, InvokeAI keep their CUDA context and
    # only drop their models): a free expects the models' own bytes back (ServedModel.vram_bytes), not
    # everything its processes hold. False: the runners exit and give back all they hold (Ollama's runners).
    runners_stay: bool = False

    def __init__(
        self,
        config: ServerConfig,
        *,
        backend: GpuBackend,
        find_runners: FindRunners,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
        default_gpu: int = 0,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
        timeout_s: float = 2.0,
        verify_timeout_s: float = VERIFY_TIMEOUT_S,
        backoff: Backoff | None = None,
        run_in_background: BackgroundRunner | None = None,
    ) -> None:
        self.config = config
        self.client = self._make_client(config, timeout_s)
        self._backend = backend
        self._find_runners = find_runners
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._default_gpu = default_gpu
        self._refresh_interval_s = refresh_interval_s
        self._verify_timeout_s = verify_timeout_s
        self._backoff = backoff or Backoff(first_s=BACKOFF_FIRST_S, max_s=BACKOFF_MAX_S, clock=clock)
        self._submit = run_in_background or run_in_daemon_thread
        self._known: dict[str, _Known] = {}
        self._runners: list[RunnerProcess] = []
        self._next_refresh_at = float("-inf")
        self._up: bool | None = None
        self._down_since: float | None = None
        self._down_message: str | None = None
        self._held = False
        self._hold_reason = ""
        self._closed = False
        self._listing: concurrent.futures.Future[_Listing] | None = None
        self._freeing: list[tuple[concurrent.futures.Future[_FreeOutcome], dict[str, ModelState]]] = []
        self._epoch = 0  # moves when a free starts or ends or a load is answered: older listings are stale

    # --- what adapters implement ----------------------------------------------------------------

    def _make_client(self, config: ServerConfig, timeout_s: float) -> JsonHttpClient:
        """The HTTP client for the server's API (a holder without one, generic.StopStartHolder, overrides)."""
        return JsonHttpClient(
            config.url,
            timeout_s=timeout_s,
            label=f"{self.display_name} at {config.url}",
            bearer=config.api_key,
        )

    def describe_where(self) -> str:
        """The holder for people, in messages: "ComfyUI at http://127.0.0.1:8188"."""
        return f"{self.display_name} at {self.config.url}"

    @abc.abstractmethod
    def _list_models(self) -> list[ServedModel]:
        """What the server holds now. Raises ServerUnreachable / ServerBadAnswer."""

    @abc.abstractmethod
    def _unload(self, model: str) -> None:
        """Ask the server to unload `model` (returns before the memory is free). A model the server does not
        hold is not an error."""

    @abc.abstractmethod
    def _load(self, model: str) -> None:
        """Ask the server to load `model`; may block until it is loaded (runs on a background thread)."""

    # --- ModelHolder ------------------------------------------------------------------------------

    def models(self) -> Sequence[ModelStatus]:
        down = self._down_message if self._up is False else None
        return [
            ModelStatus(
                name=k.name,
                gpu=k.gpu,
                size_bytes=k.size_bytes,
                state=k.state,
                holder=self.name,
                digest=k.digest,
                last_error=k.last_error or down,
                comes_back_on_next_use=k.comes_back_on_next_use,
            )
            for k in self._known.values()
        ]

    def pids(self) -> set[int]:
        """The runner processes found at the last refresh: their VRAM is `managed`, ours to free."""
        return {r.pid for r in self._runners}

    def start_load(self, model: str) -> None:
        """Restore (preload) a model; returns at once, the outcome arrives through poll()."""
        known = self._known.get(model)
        if known is not None and known.state in (ModelState.RESIDENT, ModelState.LOADING):
            return
        if known is None:
            known = self._known[model] = _Known(model, self._default_gpu, None, ModelState.UNLOADED)
        if self._up is False:
            known.last_error = f"not loaded: {self._down_message}"
            logger.warning("%s: cannot load %s now: %s", self.name, model, self._down_message)
            return
        known.state = ModelState.LOADING
        known.last_error = None
        known.load_answered = False
        logger.info("%s: loading %s", self.name, model)
        known.load = self._submit(lambda: self._load(model))

    def evict(self, models: Sequence[str], reason: str) -> Sequence[Event]:
        """Start unloading `models` on a background thread; they count as EVICTED from now on. The frees,
        verified through NVML, arrive as VramDeallocated events through poll()."""
        return self._free(models, reason, ModelState.EVICTED)

    def unload(self, model: str) -> Sequence[Event]:
        known = self._known.get(model)
        if known is not None and known.state in (ModelState.EVICTED, ModelState.FAILED):
            known.state = ModelState.UNLOADED
            return []
        return self._free([model], "unload", ModelState.UNLOADED)

    def poll(self) -> Sequence[Event]:
        """Collect finished loads, frees and listings; start the next listing when one is due. Never
        blocks: the requests themselves run on background threads."""
        events: list[Event] = []
        if self._closed:
            return events
        self._collect_loads(events)
        self._collect_frees(events)
        self._collect_listing(events)
        if self._clock() >= self._next_refresh_at and self._listing is None:
            epoch = self._epoch
            self._listing = self._submit(lambda: self._list_in_background(epoch))
            self._collect_listing(events)  # a runner that runs at once (tests) has finished already
        return events

    def set_hold(self, reason: str | None) -> None:
        """The policy keeps the GPU free (a game, a pause, Evict now): a model a client loads meanwhile is
        evicted again at the next listing."""
        if reason is not None and not self._held:
            logger.info("%s: holding the GPU free (%s)", self.name, reason)
        self._held = reason is not None
        self._hold_reason = reason or ""

    def verify(self, model: str) -> concurrent.futures.Future[Event]:
        return unsupported_verify(model, self.display_name)

    def update_settings(self, settings: Settings) -> None:
        """A changed url or keep_alive for this server applies from the next request."""
        for config in settings.servers:
            if config.kind == self.config.kind and config != self.config:
                if config.url != self.config.url or config.api_key != self.config.api_key:
                    self.client = JsonHttpClient(
                        config.url,
                        timeout_s=self.client.timeout_s,
                        label=f"{self.display_name} at {config.url}",
                        bearer=config.api_key,
                    )
                    self._next_refresh_at = float("-inf")
                self.config = config

    def close(self) -> Sequence[Event]:
        """Stop. The server's models stay as they are: the server is the user's, not ours to empty. Requests
        still running end on their own deadline (daemon threads)."""
        self._closed = True
        return []

    # --- extra methods the engine and the UI use ----------------------------------------------------

    def server_status(self) -> ServerStatus:
        retry_at = self._next_refresh_at if self._up is False else None
        return ServerStatus(self.name, self.config.url, self._up, self._down_message, retry_at)

    # --- internals ----------------------------------------------------------------------------------

    def _runners_now(self) -> list[RunnerProcess]:
        try:
            found = self._find_runners()
        except Exception:  # psutil trouble must never take the engine down
            logger.exception("%s: listing runner processes failed", self.name)
            return self._runners
        port = _url_port(self.config.url)  # an app's processes started for another port are another's
        return [r for r in found if r.port is None or port is None or r.port == port]

    def _list_in_background(self, epoch: int) -> _Listing:
        """On a background thread: ask the server what it holds, then find its runners."""
        try:
            served: list[ServedModel] | None = self._list_models()
            error: ServerError | None = None
        except ServerError as exc:
            served, error = None, exc
        except Exception as exc:  # an adapter's bug must read as a bad answer, not kill the listing
            logger.exception("%s: listing failed unexpectedly", self.name)
            served, error = None, ServerBadAnswer(f"{type(exc).__name__}: {exc}")
        return _Listing(served, error, self._runners_now(), epoch)  # runners after: started by now

    def _collect_listing(self, events: list[Event]) -> None:
        future = self._listing
        if future is None or not future.done():
            return
        self._listing = None
        listing = future.result()
        now = self._clock()
        self._runners = listing.runners
        if listing.error is not None or listing.served is None:
            self._mark_down(now, listing.error or ServerBadAnswer("no listing"), events)
            return
        self._mark_up(now, events)
        if listing.epoch != self._epoch or self._freeing:
            # it started before a free ended, so it may list what is gone: ask again soon
            self._next_refresh_at = now + min(self._refresh_interval_s, 0.5)
            return
        self._next_refresh_at = now + self._refresh_interval_s
        self._apply_listing(listing.served, events)
        if self._held:
            self._evict_reloaded(listing.served, events)

    def _mark_down(self, now: float, exc: ServerError, events: list[Event]) -> None:
        delay = self._backoff.failed()
        self._next_refresh_at = now + delay
        kind = "does not answer" if isinstance(exc, ServerUnreachable) else "answers, but not as its API does"
        self._down_message = f"{self.describe_where()} {kind}: {exc.message}"
        if self._up is not False:
            self._down_since = now
            logger.warning("%s (next try in %.0f s)", self._down_message, delay)
            events.append(
                ev.ServerDown(
                    at=now, server=self.name, url=self.config.url, message=exc.message, retry_in_s=delay
                )
            )
        else:
            logger.debug("%s still down (attempt %d): %s", self.name, self._backoff.failures, exc.message)
        self._up = False
        if self._down_since is not None and now - self._down_since >= FORGET_RESIDENT_AFTER_DOWN_S:
            for name in [k.name for k in self._known.values() if k.state == ModelState.RESIDENT]:
                del self._known[name]

    def _mark_up(self, now: float, events: list[Event]) -> None:
        if self._up is False:
            down_for = now - self._down_since if self._down_since is not None else 0.0
            logger.info("%s at %s answers again", self.name, self.config.url)
            events.append(ev.ServerUp(at=now, server=self.name, url=self.config.url, down_for_s=down_for))
        self._up = True
        self._down_since = None
        self._down_message = None
        self._backoff.succeeded()

    def _collect_loads(self, events: list[Event]) -> None:
        for known in self._known.values():
            future = known.load
            if future is None or not future.done():
                continue
            known.load = None
            exc = future.exception()
            if exc is None:
                known.load_answered = True
                self._epoch += 1  # a listing begun before this answer may not show the model yet
                self._next_refresh_at = min(self._next_refresh_at, self._clock())  # show it resident soon
                continue
            if isinstance(exc, ComesBackOnNextUse):
                known.state, known.comes_back_on_next_use, known.last_error = ModelState.UNLOADED, True, None
                logger.info("%s: %s comes back at its next use (%s)", self.name, known.name, exc.message)
                continue
            message = exc.message if isinstance(exc, ServerError) else f"{type(exc).__name__}: {exc}"
            known.state = ModelState.FAILED
            known.last_error = message
            logger.warning("%s: loading %s failed: %s", self.name, known.name, message)
            events.append(
                ev.VramAllocationFailed(
                    at=self._clock(),
                    model=known.name,
                    gpu=known.gpu,
                    bytes=known.size_bytes or 0,
                    reason="server_refused",
                    message=message,
                )
            )

    def _apply_listing(self, served: list[ServedModel], events: list[Event]) -> None:
        now = self._clock()
        snapshot = self._sample()
        listed = {m.name for m in served}
        for model in served:
            pids = self._runner_pids(model)
            gpu, size = self._place(model, pids, snapshot)
            known = self._known.get(model.name)
            if known is None:
                known = self._known[model.name] = _Known(model.name, gpu, size, model.state)
                logger.info("%s holds %s (%s)", self.name, model.name, model.state)
            was_loading_by_us = known.state == ModelState.LOADING and (known.load or known.load_answered)
            known.gpu, known.digest = gpu, model.digest or known.digest
            known.size_bytes = size if size is not None else known.size_bytes
            known.pids = pids or frozenset()
            known.comes_back_on_next_use = False
            if model.state == ModelState.RESIDENT:
                if was_loading_by_us:
                    events.append(ev.VramAllocated(at=now, model=model.name, gpu=gpu, bytes=size or 0))
                known.state = ModelState.RESIDENT
                known.load, known.load_answered, known.last_error = None, False, None
                self._warn_partly_on_cpu(known, model, events)
            elif not was_loading_by_us:
                known.state = ModelState.LOADING  # a client asked for it
        for known in list(self._known.values()):
            if known.name in listed:
                continue
            known.warned_partly_on_cpu = False
            if known.state == ModelState.RESIDENT:
                logger.info("%s no longer holds %s (its own idle timer or LRU)", self.name, known.name)
                del self._known[known.name]
            elif known.state == ModelState.LOADING and known.load is None:
                if known.load_answered:
                    known.state = ModelState.FAILED
                    known.last_error = f"{self.display_name} said it loaded {known.name} but does not list it"
                    known.load_answered = False
                else:  # a client's load that ended without us
                    del self._known[known.name]

    def _warn_partly_on_cpu(self, known: _Known, model: ServedModel, events: list[Event]) -> None:
        vram, total = model.vram_bytes, model.total_bytes
        if vram is None or not total or vram >= total or known.warned_partly_on_cpu:
            return
        known.warned_partly_on_cpu = True
        events.append(
            ev.ModelPartlyOnCpu(
                at=self._clock(),
                model=model.name,
                server=self.name,
                gpu=known.gpu,
                size_bytes=total,
                vram_bytes=vram,
            )
        )

    def _evict_reloaded(self, served: list[ServedModel], events: list[Event]) -> None:
        """While the GPU is held, whatever the server holds was loaded by a client: evict it again."""
        names = [m.name for m in served]
        if not names:
            return
        noticed_at = self._clock()
        freed = self._free(names, f"{self._hold_reason}_reload", ModelState.EVICTED)
        evicted = {n for n in names if n in self._known and self._known[n].state == ModelState.EVICTED}
        for name in names:
            known = self._known.get(name)
            events.append(
                ev.ModelReloadedWhileHeld(
                    at=noticed_at,
                    model=name,
                    server=self.name,
                    gpu=known.gpu if known else self._default_gpu,
                    reason=self._hold_reason,
                    client=None,
                    evicted_again=name in evicted,
                )
            )
        events.extend(freed)

    def _free(self, models: Sequence[str], reason: str, new_state: ModelState) -> list[Event]:
        """Start unloading `models` through the API on a background thread, which then waits until their
        VRAM is back (verified eviction). They take `new_state` at once; the outcome arrives in poll()."""
        events: list[Event] = []
        targets = [
            self._known[m]
            for m in dict.fromkeys(models)
            if m in self._known and self._known[m].state in (ModelState.RESIDENT, ModelState.LOADING)
        ]
        if not targets:
            return events
        everything = all(
            k.name in {t.name for t in targets}
            for k in self._known.values()
            if k.state in (ModelState.RESIDENT, ModelState.LOADING)
        )
        per_model = all(t.pids for t in targets)
        watch = set().union(*(t.pids for t in targets)) if per_model else self.pids()
        before = measure(self._backend.sample(), watch) if watch or everything else None
        expected = sum(k.size_bytes or 0 for k in targets)
        if before is not None and (per_model or everything) and not self.runners_stay:
            expected = max(expected, before.total_bytes)  # the runners go away entirely, context and all
        gpus = {k.gpu for k in targets}
        names = tuple(k.name for k in targets)
        previous = {k.name: k.state for k in targets}
        for known in targets:
            known.state = new_state
            known.load, known.load_answered, known.last_error = None, False, None

        def work() -> _FreeOutcome:
            unloaded: list[str] = []
            failed: list[tuple[str, ServerError]] = []
            for name in names:
                try:
                    self._unload(name)
                except ServerError as exc:
                    failed.append((name, exc))
                else:
                    unloaded.append(name)
            complete = before is not None and unloaded and not failed
            result = (
                wait_until_freed(
                    self._backend,
                    watch,
                    before,
                    expected_bytes=expected,
                    clock=self._clock,
                    sleep=self._sleep,
                    timeout_s=self._verify_timeout_s,
                    gpus=gpus,
                )
                if complete and before is not None
                else FreeResult(None, None, None, 0.0, verified=False)
            )
            return _FreeOutcome(reason, new_state, tuple(unloaded), tuple(failed), result)

        self._epoch += 1
        self._freeing.append((self._submit(work), previous))
        self._collect_frees(events)  # a runner that runs at once (tests) has finished already
        return events

    def _collect_frees(self, events: list[Event]) -> None:
        still: list[tuple[concurrent.futures.Future[_FreeOutcome], dict[str, ModelState]]] = []
        for future, previous in self._freeing:
            if not future.done():
                still.append((future, previous))
                continue
            self._epoch += 1
            exc = future.exception()
            if exc is not None:  # a bug in the adapter: the models are as before, and say why
                logger.error("%s: freeing failed unexpectedly: %r", self.name, exc)
                failed: tuple[tuple[str, ServerError], ...] = tuple(
                    (name, ServerBadAnswer(f"{type(exc).__name__}: {exc}")) for name in previous
                )
                empty = FreeResult(None, None, None, 0.0, verified=False)
                outcome = _FreeOutcome("", ModelState.EVICTED, (), failed, empty)
            else:
                outcome = future.result()
            self._apply_free(outcome, previous, events)
        self._freeing = still

    def _apply_free(
        self, outcome: _FreeOutcome, previous: dict[str, ModelState], events: list[Event]
    ) -> None:
        now = self._clock()
        for name, error in outcome.failed:
            known = self._known.get(name)
            if known is not None and known.state == outcome.new_state:
                known.state = previous.get(name, ModelState.RESIDENT)  # still there: the next listing says
                known.last_error = f"could not unload: {error.message}"
            logger.warning("%s: unloading %s failed: %s", self.name, name, error.message)
            events.append(ev.EngineError(at=now, where=f"{self.name}.unload", message=error.message))
            if isinstance(error, ServerUnreachable):
                self._mark_down(now, error, events)
        if outcome.unloaded:
            logger.info(
                "%s: unloaded %s (%s): %s",
                self.name,
                ", ".join(outcome.unloaded),
                outcome.reason,
                outcome.result.describe(),
            )
        for name in outcome.unloaded:
            known = self._known.get(name)
            events.append(
                ev.VramDeallocated(
                    at=now,
                    model=name,
                    gpu=known.gpu if known else self._default_gpu,
                    bytes=(known.size_bytes or 0) if known else 0,
                    reason=outcome.reason,
                    residue_bytes=outcome.result.residue_bytes,
                    residue_by=outcome.result.residue_by,
                )
            )
        self._next_refresh_at = min(self._next_refresh_at, now)

    def _sample(self) -> TelemetrySnapshot | None:
        try:
            snapshot = self._backend.sample()
        except Exception:
            logger.exception("%s: sampling the GPU failed", self.name)
            return None
        return snapshot if snapshot.state in (BackendState.OK, BackendState.SIMULATED) else None

    def _runner_pids(self, model: ServedModel) -> frozenset[int] | None:
        """The runner processes of one model, when its arguments tell them apart; None: they do not."""
        if not model.runner_args:
            return None
        pids = frozenset(r.pid for r in self._runners if any(r.has_argument(a) for a in model.runner_args))
        return pids or None

    def _place(
        self, model: ServedModel, own_pids: frozenset[int] | None, snapshot: TelemetrySnapshot | None
    ) -> tuple[int, int | None]:
        """(GPU index, VRAM bytes) of a listed model: the GPU where its runners hold memory, and the server's
        figure for the bytes (NVML's when the server gives none)."""
        if snapshot is None:
            return self._default_gpu, model.vram_bytes
        pids = own_pids if own_pids else {r.pid for r in self._runners}
        per_gpu: dict[int, int] = {}
        for gpu in snapshot.gpus:
            if gpu.state != GpuState.OK:
                continue
            held = sum(p.used_bytes or 0 for p in gpu.processes if p.pid in pids)
            if held > 0:
                per_gpu[gpu.index] = held
        if not per_gpu:
            return self._default_gpu, model.vram_bytes
        if own_pids:  # its own processes: where they hold the most; their total when the server is silent
            gpu_index = max(per_gpu, key=lambda g: per_gpu[g])
            return gpu_index, model.vram_bytes if model.vram_bytes is not None else sum(per_gpu.values())
        if len(per_gpu) == 1 or model.vram_bytes is None:
            return max(per_gpu, key=lambda g: per_gpu[g]), model.vram_bytes
        return min(per_gpu, key=lambda g: abs(per_gpu[g] - (model.vram_bytes or 0))), model.vram_bytes


def _url_port(url: str) -> int | None:
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError:
        return None


def require(condition: bool, message: str) -> None:
    """Raise ServerBadAnswer(message) unless `condition`: for checking the shape of an answer."""
    if not condition:
        raise ServerBadAnswer(message)
