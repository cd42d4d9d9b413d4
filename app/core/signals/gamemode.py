"""Games registered with Feral's GameMode daemon (gamemoded), watched over the D-Bus session bus.

Watching must never start the daemon: we ask the bus whether com.feralinteractive.GameMode has an owner
(NameHasOwner) before calling it, and every call carries NO_AUTOSTART. "No daemon" means "no games".
NameOwnerChanged tells us when the daemon starts or stops later. With an owner: ListGames() once, then the
GameRegistered / GameUnregistered signals. No session bus at all: logged once at info, no games, no error.

Everything D-Bus runs on the AsyncioThread; `active()` only reads the latest snapshot under a lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

import psutil
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from app.core.aio_thread import AsyncioThread
from app.core.policy.signals import GameSignal
from app.core.settings import Settings
from app.core.signals import dbus_calls

logger = logging.getLogger(__name__)

GAMEMODE_NAME = "com.feralinteractive.GameMode"
GAMEMODE_PATH = "/com/feralinteractive/GameMode"
GAMEMODE_INTERFACE = "com.feralinteractive.GameMode"
GAME_INTERFACE = "com.feralinteractive.GameMode.Game"

_OWNER_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    f"member='NameOwnerChanged',arg0='{GAMEMODE_NAME}'"
)
_GAMES_RULE = (
    f"type='signal',sender='{GAMEMODE_NAME}',path='{GAMEMODE_PATH}',interface='{GAMEMODE_INTERFACE}'"
)


class GameModeWatcher(dbus_calls.BusWatcher):
    """GameSignalSource for GameMode. Watching starts in the constructor (unless autostart=False) and never
    blocks: `start()` returns a Future that completes when the first look (connect, subscribe, ListGames)
    is done, for tests and `status` to wait on. The AsyncioThread must be running.

    `status` is "starting", "no_bus", "no_daemon", "watching" or "closed". `on_change`, when given, is called
    on the asyncio thread after the set of games changed (e.g. to wake the engine before its next tick).
    """

    label = "GameMode watcher"

    def __init__(
        self,
        aio: AsyncioThread,
        *,
        bus_address: str | None = None,
        clock: Callable[[], float],
        call_timeout_s: float = dbus_calls.DEFAULT_TIMEOUT_S,
        on_change: Callable[[], None] | None = None,
        autostart: bool = True,
    ) -> None:
        self.aio = aio
        self.bus_address = bus_address
        self.clock = clock
        self.call_timeout_s = call_timeout_s
        self.on_change = on_change
        self.status = "starting"
        self._lock = threading.Lock()
        self._snapshot: tuple[GameSignal, ...] = ()
        self._started: concurrent.futures.Future[None] | None = None
        # Loop-thread state:
        self._bus: MessageBus | None = None
        self._owner: str | None = None
        self._epoch = 0  # grows on every owner change; stale ListGames replies are dropped
        self._games: dict[int, GameSignal] = {}
        self._pending_ops: list[tuple[str, int]] | None = None  # signals seen while ListGames is in flight
        self._tasks: set[asyncio.Task[None]] = set()
        if autostart:
            self.start()

    # --- the GameSignalSource side (any thread) ---------------------------------------------------

    def active(self) -> tuple[GameSignal, ...]:
        with self._lock:
            return self._snapshot

    def update_settings(self, settings: Settings) -> None:
        pass  # GameMode says what runs; no setting changes how we listen

    def _closed(self) -> None:
        with self._lock:
            self._snapshot = ()

    # --- on the asyncio thread ---------------------------------------------------------------------

    async def _start(self) -> None:
        address = self.bus_address or dbus_calls.session_bus_address()
        try:
            bus = await dbus_calls.connect(address, timeout_s=self.call_timeout_s)
        except dbus_calls.BusUnavailable as exc:
            self.status = "no_bus"
            logger.info("GameMode watcher inactive: %s. GameMode games will not be seen.", exc)
            return
        if self.status == "closed":
            bus.disconnect()
            return
        self._bus = bus
        bus.add_message_handler(self._on_message)
        self._spawn(self._watch_disconnect(bus))
        try:
            await dbus_calls.add_match(bus, _OWNER_RULE)
            await dbus_calls.add_match(bus, _GAMES_RULE)
            epoch = self._epoch
            owner = await dbus_calls.name_owner(bus, GAMEMODE_NAME)
        except dbus_calls.CallFailed as exc:
            self.status = "no_daemon"
            logger.warning("GameMode watcher: the session bus refused our subscription: %s", exc)
            return
        if epoch != self._epoch:
            return  # NameOwnerChanged arrived meanwhile and has taken over
        if owner is None:
            self.status = "no_daemon"
            logger.info("GameMode daemon not running; watching for it to start")
            return
        self._owner_changed(owner)
        await self._list_games(self._epoch)

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.remove_message_handler(self._on_message)
            bus.disconnect()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as exc:
            logger.debug("GameMode watcher: bus connection ended: %r", exc)
        if self.status != "closed":
            logger.info("GameMode watcher: the session bus went away; no GameMode games from now on")
            self.status = "no_bus"
        self._owner = None
        self._games.clear()
        self._publish()

    def _on_message(self, message: Message) -> None:
        if message.message_type != MessageType.SIGNAL:
            return
        if message.member == "NameOwnerChanged" and message.interface == dbus_calls.DBUS_NAME:
            name, _old, new = message.body
            if name == GAMEMODE_NAME:
                self._owner_changed(new or None)
                if new:
                    self._spawn(self._list_games(self._epoch))
            return
        if message.interface != GAMEMODE_INTERFACE or message.path != GAMEMODE_PATH:
            return
        if message.member not in ("GameRegistered", "GameUnregistered"):
            return
        if self._owner is None or message.sender != self._owner:
            return  # not from the daemon we listed (or from before we knew it): ListGames covers it
        pid = int(message.body[0])
        if self._pending_ops is not None:
            self._pending_ops.append((message.member, pid))
        self._apply(message.member, pid)
        self._publish()

    def _owner_changed(self, owner: str | None) -> None:
        self._epoch += 1
        self._owner = owner
        self._games.clear()
        if owner is None:
            self._pending_ops = None
            self.status = "no_daemon"
            logger.info("GameMode daemon stopped")
        else:
            self._pending_ops = []  # from now on, remember signals until ListGames has answered
            self.status = "watching"
            logger.info("GameMode daemon found on the session bus (%s)", owner)
        self._publish()

    async def _list_games(self, epoch: int) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            (games,) = await dbus_calls.call(
                bus,
                destination=GAMEMODE_NAME,
                path=GAMEMODE_PATH,
                interface=GAMEMODE_INTERFACE,
                member="ListGames",
                timeout_s=self.call_timeout_s,
            )
        except dbus_calls.CallFailed as exc:
            logger.warning("GameMode: ListGames failed, following its signals only: %s", exc)
            games = []
        if epoch != self._epoch:
            return  # the daemon changed meanwhile; a newer listing is on its way
        replay = self._pending_ops or []
        self._pending_ops = None
        listed = {int(pid) for pid, _path in games}
        self._games = {pid: sig for pid, sig in self._games.items() if pid in listed}
        for pid in listed:
            self._apply("GameRegistered", pid)
        for member, pid in replay:
            self._apply(member, pid)
        self._publish()

    def _apply(self, member: str, pid: int) -> None:
        if member == "GameUnregistered":
            self._games.pop(pid, None)
        elif pid not in self._games:
            name, exe = describe_process(pid)
            self._games[pid] = GameSignal(
                name=name or f"game (pid {pid})", source="gamemode", pid=pid, exe=exe, started_at=self.clock()
            )
            if name is None:  # not in our PID namespace (Flatpak, container): ask the daemon
                self._spawn(self._name_from_daemon(pid, self._epoch))

    async def _name_from_daemon(self, pid: int, epoch: int) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            (variant,) = await dbus_calls.call(
                bus,
                destination=GAMEMODE_NAME,
                path=f"{GAMEMODE_PATH}/Games/{pid}",
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[GAME_INTERFACE, "Executable"],
                timeout_s=self.call_timeout_s,
            )
        except dbus_calls.CallFailed as exc:
            logger.debug("GameMode: no Executable for pid %d: %s", pid, exc)
            return
        exe = str(variant.value)
        current = self._games.get(pid)
        if epoch == self._epoch and current is not None and exe:
            self._games[pid] = GameSignal(
                name=exe.rsplit("/", 1)[-1],
                source="gamemode",
                pid=pid,
                exe=exe,
                started_at=current.started_at,
            )
            self._publish()

    def _publish(self) -> None:
        snapshot = tuple(sorted(self._games.values(), key=lambda s: (s.started_at, s.pid or 0)))
        with self._lock:
            changed = snapshot != self._snapshot
            self._snapshot = snapshot
        if changed and self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                logger.exception("GameMode watcher: on_change callback failed")


def describe_process(pid: int) -> tuple[str | None, str | None]:
    """(name, exe) of a local process, or (None, None) when it is not visible from here."""
    try:
        proc = psutil.Process(pid)
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None, None
    try:
        exe = proc.exe() or None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        exe = None
    return name, exe
