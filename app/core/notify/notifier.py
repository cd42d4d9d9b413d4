"""Notifications: the Notifier interface, the router that picks one and keeps bursts calm, and the backends
that live in the core (desktop notifications over D-Bus through desktop-notifier, and the log).

The engine calls `NotificationRouter.handle(event)` on its worker thread; the router decides at once (pure
words from notify_text, coalescing on the injected clock) and hands the delivery to the asyncio thread, so
the worker never waits on D-Bus. There the first backend that is available takes it: the desktop
notification server when one owns org.freedesktop.Notifications on the session bus; else the tray balloon
if the UI registered one (app/ui/balloon.py); else the log. Every call into a backend runs under a timeout:
a hung notification server costs one timeout, then it is skipped for a while (`retry_after_s`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from app.core.aio_thread import AsyncioThread
from app.core.engine.commands import ApplySettings
from app.core.errors import VramError
from app.core.events import Event
from app.core.notify.rules import add_rule, remove_rule
from app.core.notify.text import (
    ACTION_EVICT_NOW,
    ACTION_RESUME,
    ACTION_SHOW,
    FREEZE_APP_PREFIX,
    IGNORE_APP_PREFIX,
    MANAGE_APP_PREFIX,
    REMOVE_RULE_PREFIX,
    NotificationText,
    Urgency,
    merge_burst,
    notification_for,
    rule_subject,
)
from app.core.policy.contention import Command
from app.core.settings import AppRule, Settings

if TYPE_CHECKING:
    from app.core.wiring import Runtime

logger = logging.getLogger(__name__)

APP_NAME = "VRAM Steward"
NOTIFICATIONS_BUS_NAME = "org.freedesktop.Notifications"
DEFAULT_CALL_TIMEOUT_S = 3.0  # one D-Bus round trip takes milliseconds; this is for a hung server
DEFAULT_RETRY_AFTER_S = 60.0  # after a timeout, skip that backend this long
RECENT_DELIVERIES = 50

OnAction = Callable[[str], None]


@runtime_checkable
class Notifier(Protocol):
    """Somewhere a notification can be shown. Methods run on the router's asyncio loop.

    `send` returns True when the notification was handed over, False when this backend cannot take it
    (the router then tries the next). `on_action(key)` is called when the user presses a button or clicks
    the notification, from whichever thread the backend's toolkit calls back on.
    """

    name: str

    async def available(self) -> bool: ...

    async def send(self, text: NotificationText, on_action: OnAction) -> bool: ...

    async def close(self) -> None: ...


# --- backends -------------------------------------------------------------------------------------


class LogNotifier:
    """The last resort: the notification as a log line (the terminal and the log file)."""

    name = "log"

    async def available(self) -> bool:
        return True

    async def send(self, text: NotificationText, on_action: OnAction) -> bool:
        level = logging.WARNING if text.urgency is Urgency.CRITICAL else logging.INFO
        logger.log(level, "notification: %s | %s", text.title, text.body.replace("\n", " | "))
        return True

    async def close(self) -> None:
        pass


class DesktopNotifierBackend:
    """Native desktop notifications through desktop-notifier (org.freedesktop.Notifications on Linux).

    Available when a notification server owns the name on the session bus (asked of the bus daemon, so
    nothing is D-Bus-activated). Buttons are sent only where the server announces the "actions" capability.
    """

    name = "desktop"

    def __init__(self, *, app_name: str = APP_NAME, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.app_name = app_name
        self.call_timeout_s = call_timeout_s
        self._notifier: Any = None  # desktop_notifier.DesktopNotifier, made on the loop at first use
        self._bus: Any = None  # our own dbus-fast connection, for NameHasOwner
        self._no_bus_reason: str | None = None

    async def available(self) -> bool:
        if sys.platform != "linux":
            return True  # desktop-notifier's macOS / Windows backends need no server check
        return bool(await self.name_has_owner(NOTIFICATIONS_BUS_NAME))

    async def name_has_owner(self, name: str) -> bool | None:
        """Whether a well-known name has an owner on the session bus (asked of the bus daemon, so nothing
        is D-Bus-activated); None when there is no session bus. The tray balloon asks it too."""
        try:
            bus = await self._session_bus()
            from dbus_fast import Message, MessageType

            reply = await asyncio.wait_for(
                bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="NameHasOwner",
                        signature="s",
                        body=[name],
                    )
                ),
                self.call_timeout_s,
            )
        except Exception as exc:  # no session bus, a refused connection, a timeout ...
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._no_bus_reason:
                logger.info("no D-Bus session bus for desktop notifications (%s)", reason)
                self._no_bus_reason = reason
            await self._drop_bus()
            return None
        self._no_bus_reason = None
        return bool(reply.message_type == MessageType.METHOD_RETURN and reply.body and reply.body[0])

    async def send(self, text: NotificationText, on_action: OnAction) -> bool:
        from desktop_notifier import DesktopNotifier

        if self._notifier is None:
            from desktop_notifier import Icon

            from app.core.resources import app_icon_file

            icon_file = app_icon_file()
            icon = Icon(path=icon_file) if icon_file else Icon(name="vram-steward")
            self._notifier = DesktopNotifier(app_name=self.app_name, app_icon=icon)
        try:
            return await self._send(self._notifier, text, on_action)
        except (TimeoutError, asyncio.CancelledError):
            self._forget_notifier()  # its connection may be stuck half-way: start afresh next time
            raise

    async def _send(self, notifier: Any, text: NotificationText, on_action: OnAction) -> bool:
        from desktop_notifier import Button, Capability
        from desktop_notifier import Urgency as DnUrgency

        capabilities = await asyncio.wait_for(notifier.get_capabilities(), self.call_timeout_s)
        buttons = []
        if Capability.BUTTONS in capabilities:
            buttons = [Button(title=a.label, on_pressed=_bind(on_action, a.key)) for a in text.actions]
        on_clicked = None
        if text.default_action is not None and Capability.ON_CLICKED in capabilities:
            on_clicked = _bind(on_action, text.default_action)
        dispatched: list[bool] = []
        await asyncio.wait_for(
            notifier.send(
                text.title,
                text.body,
                urgency={
                    Urgency.LOW: DnUrgency.Low,
                    Urgency.NORMAL: DnUrgency.Normal,
                    Urgency.CRITICAL: DnUrgency.Critical,
                }[text.urgency],
                buttons=buttons,
                on_clicked=on_clicked,
                on_dispatched=lambda: dispatched.append(True),
            ),
            self.call_timeout_s,
        )
        return bool(dispatched)  # desktop-notifier logs and swallows a failed send

    def _forget_notifier(self) -> None:
        notifier, self._notifier = self._notifier, None
        bus = getattr(getattr(notifier, "_backend", None), "bus", None)
        if bus is not None:
            bus.disconnect()

    async def close(self) -> None:
        await self._drop_bus()
        self._forget_notifier()

    async def _session_bus(self) -> Any:
        if self._bus is not None and self._bus.connected:
            return self._bus
        from dbus_fast.aio import MessageBus

        self._bus = await asyncio.wait_for(MessageBus().connect(), self.call_timeout_s)
        return self._bus

    async def _drop_bus(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()


def _bind(on_action: OnAction, key: str) -> Callable[[], None]:
    return lambda: on_action(key)


# --- the router -----------------------------------------------------------------------------------


@dataclass
class _Window:
    """One coalescing window of one kind: opened when a notification went out."""

    opened_at: float
    pending: list[tuple[NotificationText, Event]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class Delivery:
    """A notification that went out, and through which backend (for tests and the dashboard)."""

    backend: str
    text: NotificationText
    at: float


# Backends that only write the log: a notification that reached no other one was not shown to anybody.
LOG_ONLY_BACKENDS = frozenset({"log"})
OnProblem = Callable[[str | None], None]


class NotificationRouter:
    """Turns events into notifications: coalesces bursts, picks the first available backend, maps actions.

    `handle(event)` never blocks (call it from any thread). `on_action(key, event)` is called when the user
    presses a button ("resume", "show", "evict_now", "ignore_app:<name>"); the caller maps it to a command.
    """

    def __init__(
        self,
        backends: Sequence[Notifier],
        *,
        aio: AsyncioThread,
        clock: Callable[[], float],
        on_action: Callable[[str, Event], None],
        coalesce_s: float = 10.0,
        enabled: bool = True,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        log_path: Path | None = None,
    ) -> None:
        if not backends:
            raise ValueError("NotificationRouter needs at least one backend (LogNotifier always works)")
        self._backends: list[Notifier] = list(backends)
        self._aio = aio
        self._clock = clock
        self._on_action = on_action
        self.coalesce_s = coalesce_s
        self.enabled = enabled
        self.call_timeout_s = call_timeout_s
        self.retry_after_s = retry_after_s
        self._log_path = log_path
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._resting_until: dict[str, float] = {}  # backend name -> clock time it is tried again
        self._in_flight: set[concurrent.futures.Future[None]] = set()
        self._closed = False
        self.deliveries: collections.deque[Delivery] = collections.deque(maxlen=RECENT_DELIVERIES)
        self.problem: str | None = None  # why the last notification was not shown (only logged); None: shown
        self.failed = 0  # notifications no one saw since the start
        self._problem_listeners: list[OnProblem] = []

    def subscribe_problem(self, listener: OnProblem) -> None:
        """Called with the new `problem` when delivery starts failing (a text) or works again (None), on the
        router's loop thread: hand it over to your own thread."""
        self._problem_listeners.append(listener)

    # --- any thread -----------------------------------------------------------------------------

    def apply_settings(self, settings: Settings) -> None:
        """Follow the `notifications` switch and `notification_coalesce_secs` (e.g. after the dialog)."""
        self.enabled = settings.notifications
        self.coalesce_s = settings.notification_coalesce_secs

    def add_fallback(self, backend: Notifier) -> None:
        """Add a backend just before the log (the tray balloon, once the UI has a tray icon)."""
        with self._lock:
            at = next(
                (i for i, b in enumerate(self._backends) if isinstance(b, LogNotifier)), len(self._backends)
            )
            self._backends.insert(at, backend)

    @property
    def backend_names(self) -> list[str]:
        return [b.name for b in self._backends]

    def handle(self, event: Event) -> None:
        """Decide now, deliver on the asyncio thread. Events that deserve no notification are dropped."""
        if not self.enabled or self._closed:
            return
        text = notification_for(event, log_path=self._log_path)
        if text is None:
            return
        now = self._clock()
        with self._lock:
            window = self._windows.get(text.coalesce_key)
            if window is not None and now - window.opened_at < self.coalesce_s:
                window.pending.append((text, event))
                if window.timer is None:
                    self._call_on_loop(self._arm_timer, text.coalesce_key)
                return
            burst = [(text, event)]
            if window is not None:  # a burst whose timer has not fired yet goes out with this one
                burst = [*window.pending, *burst]
                self._cancel_timer(window)
            self._windows[text.coalesce_key] = _Window(opened_at=now)
        self._dispatch(burst)

    def flush_due(self) -> int:
        """Send every held-back burst whose window has ended; returns how many went out. The loop calls it
        on a timer; tests with a fake clock call it after moving the clock."""
        now = self._clock()
        due: list[list[tuple[NotificationText, Event]]] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if window.pending and now - window.opened_at >= self.coalesce_s:
                    self._cancel_timer(window)
                    due.append(window.pending)
                    self._windows[key] = _Window(opened_at=now)
        for burst in due:
            self._dispatch(burst)
        return len(due)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every delivery handed to the loop has finished (tests, and an orderly shutdown)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = list(self._in_flight)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            concurrent.futures.wait(pending, timeout=left)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop: held-back bursts are dropped (logged), backends closed. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            dropped = sum(len(w.pending) for w in self._windows.values())
            for window in self._windows.values():
                self._cancel_timer(window)
            self._windows.clear()
        if dropped:
            logger.info("notifications: %d held-back notification(s) dropped at shutdown", dropped)
        self.wait_idle(timeout_s)
        if not self._aio.running or self._aio.in_loop_thread():
            return
        for backend in self._backends:
            try:
                self._aio.run(backend.close(), timeout_s=timeout_s)
            except Exception as exc:
                logger.warning("closing the %s notifier failed: %s", backend.name, exc)

    # --- delivery ---------------------------------------------------------------------------------

    def _dispatch(self, burst: list[tuple[NotificationText, Event]]) -> None:
        text = merge_burst([t for t, _ in burst])
        event = burst[-1][1]
        try:
            future = self._aio.submit(self._deliver(text, event))
        except RuntimeError as exc:  # the loop is gone (shutdown): the log still gets it
            logger.info("notification (no asyncio loop: %s): %s | %s", exc, text.title, text.body)
            return
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    async def _deliver(self, text: NotificationText, event: Event) -> None:
        def on_action(key: str) -> None:
            self._action(key, event)

        with self._lock:
            backends = list(self._backends)
        missed: list[str] = []  # why each backend before the one that took it did not
        for backend in backends:
            if self._resting_until.get(backend.name, float("-inf")) > self._clock():
                missed.append(f"{backend.name}: skipped after a timeout")
                continue
            try:
                if not await asyncio.wait_for(backend.available(), self.call_timeout_s):
                    logger.debug("notifier %s is not available", backend.name)
                    missed.append(f"{backend.name}: not available")
                    continue
                if await asyncio.wait_for(backend.send(text, on_action), self.call_timeout_s):
                    self.deliveries.append(Delivery(backend.name, text, self._clock()))
                    self._delivered(backend.name, text, missed)
                    return
                logger.info("the %s notifier did not take %r; trying the next", backend.name, text.title)
                missed.append(f"{backend.name}: the server did not take it")
            except TimeoutError:
                self._resting_until[backend.name] = self._clock() + self.retry_after_s
                logger.warning(
                    "the %s notifier did not answer within %g s; skipping it for %g s",
                    backend.name,
                    self.call_timeout_s,
                    self.retry_after_s,
                )
                missed.append(f"{backend.name}: no answer within {self.call_timeout_s:g} s")
            except Exception as exc:
                logger.warning("the %s notifier failed: %s: %s", backend.name, type(exc).__name__, exc)
                missed.append(f"{backend.name}: {type(exc).__name__}: {exc}")
        logger.warning("no notifier could show: %s | %s", text.title, text.body)
        self._delivered(None, text, missed)

    def _delivered(self, backend: str | None, text: NotificationText, missed: list[str]) -> None:
        """Keep `problem` true: a notification that only reached the log was not shown to anybody."""
        if backend is not None and backend not in LOG_ONLY_BACKENDS:
            problem = None
        elif not missed:
            return  # the log is the only backend there is (by design): nothing failed
        else:
            self.failed += 1
            problem = f"Notifications are not shown ({'; '.join(missed)}); they go to the log only"
            logger.warning("notification not shown (%s): %s", "; ".join(missed), text.title)
        if problem == self.problem:
            return
        if problem is None:
            logger.info("notifications are shown again")
        self.problem = problem
        for listener in list(self._problem_listeners):
            try:
                listener(problem)
            except Exception:
                logger.exception("a notification-problem listener failed")

    def _action(self, key: str, event: Event) -> None:
        logger.info("notification action %r for %s", key, event.kind)
        try:
            self._on_action(key, event)
        except Exception:
            logger.exception("handling the notification action %r failed", key)

    # --- the coalescing timer (loop thread) -------------------------------------------------------

    def _call_on_loop(self, fn: Callable[[str], None], key: str) -> None:
        if self._aio.running:
            self._aio.loop.call_soon_threadsafe(fn, key)

    def _arm_timer(self, key: str) -> None:
        with self._lock:
            window = self._windows.get(key)
            if window is None or window.timer is not None or not window.pending or self._closed:
                return
            delay_s = max(0.05, window.opened_at + self.coalesce_s - self._clock())
            window.timer = self._aio.loop.call_later(delay_s, self._timer_fired, key)

    def _timer_fired(self, key: str) -> None:
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window.timer = None
        self.flush_due()
        self._arm_timer(key)  # still not due by the clock (a clock that runs slow): look again later

    def _cancel_timer(self, window: _Window) -> None:
        timer, window.timer = window.timer, None
        if timer is None:
            return
        if self._aio.in_loop_thread():
            timer.cancel()
        else:  # a TimerHandle is the loop's: cancel it there
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._aio.loop.call_soon_threadsafe(timer.cancel)


# --- wiring ---------------------------------------------------------------------------------------


def command_for_action(key: str, event: Event) -> Command | None:
    """The engine command a button asks for ("resume", "evict_now"), on the event's GPU where it names one;
    None for keys the caller handles itself ("show", "ignore_app:<name>")."""
    gpu = getattr(event, "gpu", None)
    gpu = gpu if isinstance(gpu, int) else None
    if key == ACTION_RESUME:
        return Command(kind="resume", gpu=gpu)
    if key == ACTION_EVICT_NOW:
        return Command(kind="evict_now", gpu=gpu)
    return None


def add_ignore_rule(settings: Settings, app_name: str, path: Path | None = None) -> Settings:
    """Save an "ignore" rule for `app_name` in the settings file (what "Always ignore this app" does);
    returns the new settings. A rule for that name already there is kept as it is."""
    from app.core.config import update_settings

    target = path if path is not None else settings.source
    if any(rule.match == app_name for rule in settings.app_rules):
        return settings
    rules = (*settings.app_rules, AppRule(match=app_name, action="ignore"))
    return update_settings(target, app_rules=rules)


def attach_notifications(runtime: Runtime) -> NotificationRouter | None:
    """Notifications for the headless daemon: desktop notifications when a server runs, else the log.

    Returns None when `notifications = false`. Buttons become engine commands; "Always ignore this app"
    saves a rule in the settings file; "Open dashboard" is noted (the daemon has none)."""
    settings = runtime.settings
    if not settings.notifications:
        logger.info("notifications are off (notifications = false)")
        return None
    if runtime.aio is None:
        aio = AsyncioThread()
        aio.start()
        runtime.aio = aio  # Runtime.stop() stops it
    steward = runtime.steward

    def on_action(key: str, event: Event) -> None:
        command = command_for_action(key, event)
        if command is not None:
            steward.submit(command)
        elif key.startswith((IGNORE_APP_PREFIX, REMOVE_RULE_PREFIX)):
            adding = key.startswith(IGNORE_APP_PREFIX)
            match = key.partition(":")[2]
            try:  # saved (comments kept), then applied on the engine thread through its one door
                if adding:
                    new = add_rule(
                        runtime.settings.source, match, steward.submit, name=rule_subject(event, match)
                    )
                else:
                    new = remove_rule(runtime.settings.source, match, steward.submit)
            except (VramError, OSError) as exc:
                logger.error("could not %s the rule for %s: %s", "save" if adding else "remove", match, exc)
                return
            runtime.settings = new
            router.apply_settings(new)
        elif key.startswith(MANAGE_APP_PREFIX):
            manage_found_app(runtime, key[len(MANAGE_APP_PREFIX) :])
        elif key.startswith(FREEZE_APP_PREFIX):
            manage_found_app(runtime, f"freeze {key[len(FREEZE_APP_PREFIX) :]}")
        elif key == ACTION_SHOW:
            logger.info("the daemon has no dashboard; run `vram-steward status` or start the tray app")

    router = NotificationRouter(
        [DesktopNotifierBackend(), LogNotifier()],
        aio=runtime.aio,
        clock=steward.clock,
        on_action=on_action,
        coalesce_s=settings.notification_coalesce_secs,
    )
    steward.subscribe(router.handle)
    if runtime.discovery is not None:  # apps found on its own thread, offered like any event
        runtime.discovery.subscribe(lambda app: router.handle(app.event(at=steward.clock())))
    return router


def manage_found_app(runtime: Runtime, what: str) -> None:
    """ "Manage it" on a discovered app ("<kind> <url>"): write its `[[servers]]` entry (comments kept) and
    apply it: the engine makes the entry's holder at once."""
    from app.core.config import add_server
    from app.core.settings import ServerConfig

    kind, _, url = what.partition(" ")
    entry = (  # "Freeze it while I game" names an executable; "Manage it" a URL
        ServerConfig(kind=kind, name=url, match=url) if kind == "freeze" else ServerConfig(kind=kind, url=url)
    )
    try:
        new = add_server(runtime.settings.source, entry)
    except (VramError, OSError) as exc:
        logger.error("could not save the [[servers]] entry for %s at %s: %s", kind, url, exc)
        return
    runtime.settings = new
    runtime.steward.submit(ApplySettings(new))
    logger.info("%s at %s is saved in %s and managed from now on", kind, url, new.source)


__all__ = [
    "Delivery",
    "DesktopNotifierBackend",
    "LogNotifier",
    "NotificationRouter",
    "Notifier",
    "add_ignore_rule",
    "attach_notifications",
    "command_for_action",
]
