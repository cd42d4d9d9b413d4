"""Small helpers over dbus-fast for the watchers on the asyncio thread: find the bus, connect and call with
a timeout, subscribe to signals. Method calls carry NO_AUTOSTART, so a call can never start a daemon
through D-Bus activation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from app.core.aio_thread import AsyncioThread

logger = logging.getLogger(__name__)

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
DEFAULT_TIMEOUT_S = 2.0


class BusWatcher:
    """start() / close() of a watcher whose work runs on the AsyncioThread: `_start()` connects and
    subscribes, `_close()` disconnects (on the loop), `_closed()` tidies up afterwards (any thread)."""

    label = "D-Bus watcher"
    aio: AsyncioThread
    status: str
    _started: concurrent.futures.Future[None] | None

    def start(self) -> concurrent.futures.Future[None]:
        """Begin watching (idempotent); the Future is done once the first look is complete."""
        if self._started is None:
            self._started = self.aio.submit(self._start())
        return self._started

    def close(self, timeout_s: float = 2.0) -> None:
        if self.status == "closed":
            return
        self.status = "closed"
        if self.aio.running and self._started is not None:
            try:
                self.aio.run(self._close(), timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                logger.warning("%s: closing the bus connection failed: %s", self.label, exc)
        self._closed()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _closed(self) -> None:
        pass


class BusUnavailable(Exception):
    """No bus to talk to (no address, socket missing, authentication refused, or it timed out)."""


class CallFailed(Exception):
    """A D-Bus method call returned an error or did not answer in time."""


def session_bus_address() -> str | None:
    """DBUS_SESSION_BUS_ADDRESS, else the systemd user bus at $XDG_RUNTIME_DIR/bus, else None."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and Path(runtime_dir, "bus").exists():
        return f"unix:path={Path(runtime_dir, 'bus')}"
    return None


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/var/run/dbus/system_bus_socket"


async def connect(
    address: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S, unix_fds: bool = False
) -> MessageBus:
    """Connect to the bus at `address`; BusUnavailable (with the reason) if that is not possible.
    `unix_fds`: negotiate file-descriptor passing (logind's Inhibit returns one)."""
    if not address:
        raise BusUnavailable("no D-Bus session bus address (DBUS_SESSION_BUS_ADDRESS is not set)")
    try:
        bus = MessageBus(bus_address=address, bus_type=BusType.SESSION, negotiate_unix_fd=unix_fds)
        return await asyncio.wait_for(bus.connect(), timeout_s)
    except TimeoutError as exc:
        raise BusUnavailable(f"D-Bus at {address} did not answer within {timeout_s:g} s") from exc
    except Exception as exc:
        raise BusUnavailable(f"cannot connect to D-Bus at {address}: {exc}") from exc


async def call(
    bus: MessageBus,
    *,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Any]:
    """Call a method and return the reply's body; CallFailed on an error reply or after `timeout_s`."""
    reply = await call_for_reply(
        bus,
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body,
        timeout_s=timeout_s,
    )
    return list(reply.body)


async def call_for_reply(
    bus: MessageBus,
    *,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Message:
    """Like call(), but returns the whole reply (for the file descriptors it may carry)."""
    message = Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
        flags=MessageFlag.NO_AUTOSTART,
    )
    try:
        reply = await asyncio.wait_for(bus.call(message), timeout_s)
    except TimeoutError as exc:
        raise CallFailed(f"{destination} {interface}.{member}: no answer within {timeout_s:g} s") from exc
    except Exception as exc:
        raise CallFailed(f"{destination} {interface}.{member}: {exc}") from exc
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else ""
        raise CallFailed(f"{destination} {interface}.{member}: {reply.error_name}: {text}")
    return reply


async def call_bus(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
    """A method of the bus itself (org.freedesktop.DBus); returns the first value of the reply or None."""
    values = await call(
        bus,
        destination=DBUS_NAME,
        path=DBUS_PATH,
        interface=DBUS_NAME,
        member=member,
        signature=signature,
        body=body,
    )
    return values[0] if values else None


async def add_match(bus: MessageBus, rule: str) -> None:
    """Subscribe to signals matching `rule` (a match rule never activates a service)."""
    await call_bus(bus, "AddMatch", "s", [rule])


async def name_owner(bus: MessageBus, name: str) -> str | None:
    """The unique name that owns `name` now, or None. Asks NameHasOwner first: never activates anything."""
    if not await call_bus(bus, "NameHasOwner", "s", [name]):
        return None
    try:
        owner = await call_bus(bus, "GetNameOwner", "s", [name])
    except CallFailed:  # it went away between the two calls
        return None
    return str(owner) if owner else None
