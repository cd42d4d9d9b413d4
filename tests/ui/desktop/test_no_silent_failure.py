"""Issue 16, no silent failure, on a real desktop (Xvfb, a StatusNotifierItem watcher, dunst), driven over
D-Bus only:
- a settings file that does not load starts the app anyway: on the defaults, with the red icon, saying so;
- the tray host restarts (status-notifier-watcher killed and started again): the icon comes back;
- the notification server is killed: the next notification's failure is logged and shown in the tray (a
  balloon on a StatusNotifierItem desktop goes to the same dead server, so it is not "delivered" either)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.aio import MessageBus

from tests.fixtures.dbus_session import wait_until
from tests.fixtures.desktop_session import ITEM_INTERFACE, WATCHER_NAME, DesktopSession
from tests.ui.desktop.app_process import start_app

GAME_AT_S = 22.0
SCENARIO = f"""\
description = "test: one game on a 12 GiB card"
duration_s = 120

[[gpus]]
index = 0
name = "NVIDIA GeForce RTX 3060"
uuid = "GPU-5e1a0c7e-0000-4000-8000-000000003060"
total = "12 GiB"
reserved = "256 MiB"

[[models]]
name = "llama-3.1-8b-instruct-q4"
size = "4 GiB"

[[timeline]]
at = {GAME_AT_S}
event = "process_start"
pid = 4242
name = "Cyberpunk2077.exe"
used = "2 GiB"
kind = "graphics"

[[timeline]]
at = {GAME_AT_S}
event = "game_signal_start"
name = "Cyberpunk 2077"
source = "gamemode"
pid = 4242
"""

# Two problems: a word where a switch belongs, a negative cooldown.
BROKEN_CONFIG = """\
schema_version = 2
auto_evict = "yes please"
resume_cooldown_secs = -5
"""


def _icon_rgb(bus_address: str, item: str) -> tuple[float, float, float]:
    """The average colour of the item's largest icon pixmap (ARGB32, network byte order), as a panel
    would paint it."""

    async def read() -> tuple[float, float, float]:
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            service, _, path = item.partition("/")
            path = "/" + path if path else "/StatusNotifierItem"
            proxy = bus.get_proxy_object(service, path, await bus.introspect(service, path))
            pixmaps = await proxy.get_interface(ITEM_INTERFACE).get_icon_pixmap()
        finally:
            bus.disconnect()
        width, height, data = max(pixmaps, key=lambda p: p[0] * p[1])
        pixels = [data[i : i + 4] for i in range(0, width * height * 4, 4)]
        opaque = [p for p in pixels if p[0] > 128]
        n = max(len(opaque), 1)
        return (sum(p[1] for p in opaque) / n, sum(p[2] for p in opaque) / n, sum(p[3] for p in opaque) / n)

    return asyncio.run(read())


def _live_tooltip(panel: Any, predicate: Callable[[str], bool], *, timeout_s: float) -> tuple[str, str]:
    """The registered item whose tooltip satisfies `predicate`, and that tooltip; an item that went away
    between the listing and the read (re-registered on a new connection) is looked up again."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for item in panel.items():
            try:
                last = panel.tooltip(item)
            except Exception:  # its connection closed since the listing: a newer one registered
                continue
            if predicate(last):
                return item, last
        time.sleep(0.2)
    raise AssertionError(f"no tray item's tooltip matched within {timeout_s} s; last seen: {last!r}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_broken_settings_tray_host_restart_and_a_dead_notification_server_are_all_visible(
    desktop: DesktopSession, tmp_path: Path
) -> None:
    dunst = desktop.dunst
    assert dunst is not None
    panel = desktop.panel()
    app = start_app(desktop, tmp_path, scenario=SCENARIO, config_text=BROKEN_CONFIG)
    started = time.monotonic()
    try:
        # A broken settings file: the app runs on the defaults, red, and says so (the detail names each
        # problem in the settings-problems window and the dashboard; the terminal has them too).
        item = panel.wait_for_item(timeout_s=20)
        tooltip = panel.wait_for_tooltip(item, lambda t: "Models resident" in t, timeout_s=15)
        assert "Settings file broken: using defaults (2 problems)" in tooltip, tooltip
        red, green, blue = _icon_rgb(desktop.bus.address, item)
        assert red > 150 and green < 100 and blue < 100, (red, green, blue)  # the error icon (#c62828)
        assert app.config.read_text() == BROKEN_CONFIG  # never overwritten
        assert "auto_evict" in app.output() and "resume_cooldown_secs" in app.output()

        # The tray host restarts: it forgets every icon; ours registers again.
        desktop.watcher.terminate()
        desktop.watcher.wait(5)
        assert wait_until(lambda: not desktop.bus.name_has_owner(WATCHER_NAME), 5)
        watcher = subprocess.Popen(
            ["status-notifier-watcher"],
            env=desktop.bus.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        desktop.extra.append(watcher)
        assert wait_until(lambda: desktop.bus.name_has_owner(WATCHER_NAME), 10)
        # the app registers its icon again on a new bus connection (the item's name changes, and Qt may
        # have registered once by itself before): the item is looked up afresh at each poll
        item, _ = _live_tooltip(panel, lambda t: "Models resident" in t, timeout_s=15)

        # The notification server dies; the game's notification reaches no one: logged, and shown.
        dunst.stop()
        assert time.monotonic() - started < GAME_AT_S, "too slow: the game started before dunst was stopped"
        _live_tooltip(panel, lambda t: "Models freed for a game" in t, timeout_s=GAME_AT_S + 10)
        item, tooltip = _live_tooltip(panel, lambda t: "Notifications are not shown" in t, timeout_s=10)
        assert wait_until(lambda: "notification not shown" in app.output(), 5), app.output()
        assert "Cyberpunk 2077 started" in app.output()  # the log still has what it said
        menu = [e.label for e in panel.menu(item)]
        assert "Notifications are not shown" in menu, menu

        panel.click(item, "Quit")
        assert app.process.wait(timeout=15) == 0, app.output()
    finally:
        app.stop()
    assert "Traceback" not in app.output(), app.output()
