"""Screenshots of the tray app on a real X desktop, for docs/screenshots/ (README).

Starts a throw-away desktop (Xvfb, a private D-Bus session bus, status-notifier-watcher so the tray icon
exists, dunst for the notifications: tests/fixtures/desktop_session.py), builds the tray app the way
`vram-steward gui --simulate game-launch --no-api` does (app/cli/gui.py make_steward_app), runs the
scenario five times faster than real time, and takes the pictures from the X server's screen (what
`import -window root` would give), cropped to each window:

    .venv/bin/python tools/ui_screenshots.py [OUT_DIR]      (default: docs/screenshots)

Needs the Debian packages xvfb, dbus, dunst and haskell-status-notifier-item-utils. About 40 s.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PySide6.QtCore import QRect  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from tests.fixtures.desktop_session import missing_desktop_parts, start_desktop_session  # noqa: E402

SPEED = 5.0  # scenario seconds per real second
SCREEN_CORNER = (1180, 790)  # where a panel's tray would be: the popup and the menu open there
NOTIFICATION_AREA = (880, 0, 400, 260)  # x, y, width, height: dunst's corner (top right)


def main(out: Path) -> int:
    problem = missing_desktop_parts()
    if problem is not None:
        print(f"cannot take the screenshots: {problem}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="vram-steward-shots-"))
    session = start_desktop_session(workdir)
    try:
        os.environ.update(session.env())
        for name in ("CONFIG", "STATE", "LOG"):
            os.environ[f"VRAM_STEWARD_{name}_DIR"] = str(workdir / name.lower())
        return shoot(out)
    finally:
        session.stop()


def shoot(out: Path) -> int:
    from argparse import Namespace

    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QCursor, QGuiApplication
    from PySide6.QtWidgets import QApplication, QSystemTrayIcon

    from app.cli.gui import choose_backend, make_steward_app
    from app.core.config import Settings
    from app.core.wiring import build_runtime

    qt = QApplication(["vram-steward"])
    qt.setApplicationDisplayName("VRAM Steward")
    qt.setQuitOnLastWindowClosed(False)
    if not QSystemTrayIcon.isSystemTrayAvailable():
        print("no system tray on the test desktop (is status-notifier-watcher running?)", file=sys.stderr)
        return 1
    started = time.monotonic()

    def clock() -> float:
        return (time.monotonic() - started) * SPEED

    settings = Settings()
    runtime = build_runtime(settings, simulate="game-launch", clock=clock, with_api=False, audit=False)
    # what `vram-steward gui --simulate game-launch` really shows: short in the tray, whole in the dashboard
    notices = choose_backend(Namespace(simulate="game-launch"))
    app = make_steward_app(runtime, settings, None, notices=notices, clock=clock)
    out.mkdir(parents=True, exist_ok=True)
    screen = QGuiApplication.primaryScreen()

    def wait_for(scenario_s: float) -> None:
        while clock() < scenario_s:
            qt.processEvents()
            time.sleep(0.01)

    def settle(real_s: float = 0.4) -> None:
        end = time.monotonic() + real_s
        while time.monotonic() < end:
            qt.processEvents()
            time.sleep(0.01)

    def save(name: str, area: QRect | None = None) -> None:
        settle()
        picture = screen.grabWindow(0)  # the root window: everything on the X screen
        if area is not None:
            picture = picture.copy(area)
        path = out / name
        picture.save(str(path))
        print(path)

    QCursor.setPos(*SCREEN_CORNER)
    app.start()
    app.dashboard.move(20, 20)
    app.dashboard.resize(820, 720)
    app.show_dashboard()

    wait_for(12.0)  # the model is resident
    app.tray.rebuild_menu()  # what opening the menu does
    app.tray.menu.popup(QPoint(*SCREEN_CORNER))
    save("tray-menu.png", app.tray.menu.geometry())
    app.tray.menu.hide()

    wait_for(32.0)  # the game runs; the models are out; dunst shows the notification
    app.show_popup()
    save("desktop.png")
    save("tray-popup.png", app.popup.geometry())
    save("notification.png", trimmed(screen.grabWindow(0).toImage(), QRect(*NOTIFICATION_AREA)))
    app.popup.hide()

    app.dashboard.tabs.setCurrentWidget(app.dashboard.processes)
    app.show_dashboard()
    save("dashboard-processes.png", app.dashboard.frameGeometry())

    wait_for(185.0)  # the game ended, the cooldown passed, the model came back
    app.dashboard.tabs.setCurrentWidget(app.dashboard.events)
    app.show_dashboard()
    save("dashboard.png", app.dashboard.frameGeometry())
    shoot_an_hour_dark_and_settings(app, save)
    app.quit()
    return 0


def shoot_an_hour_dark_and_settings(app: Any, save: Callable[..., None]) -> None:
    """The dashboard over an hour of a simulated evening (the real engine run on tools/simulated_hour.py's
    scenario, a second at a time), the same in a dark palette, and the settings dialog with an error."""
    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    from tools.simulated_hour import fill_history, simulated_hour

    fill_history(app.history, simulated_hour(app.settings))
    app.dashboard.tabs.setCurrentWidget(app.dashboard.holders)
    app.show_dashboard()
    app.dashboard.timeline.refresh()
    timeline = app.dashboard.timeline
    _, area = timeline._bands()[0]
    at = QPointF(area.left() + area.width() * 0.62, area.center().y())  # during the game
    move = QMouseEvent(
        QEvent.Type.MouseMove, at, timeline.mapToGlobal(at), Qt.MouseButton.NoButton,
        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
    )  # fmt: skip
    QApplication.sendEvent(timeline, move)
    save("dashboard-hour.png", app.dashboard.frameGeometry())
    qt = QApplication.instance()
    assert isinstance(qt, QApplication)
    light = qt.palette()
    qt.setPalette(dark_palette())
    app.dashboard.tabs.setCurrentWidget(app.dashboard.processes)
    save("dashboard-dark.png", app.dashboard.frameGeometry())
    qt.setPalette(light)
    app.show_settings()
    dialog = app.settings_dialog
    dialog.move(60, 60)
    dialog.editors["reserved_system_vram"].setText("lots")
    dialog.save()
    save("settings-error.png", dialog.frameGeometry())
    dialog.reject()


def dark_palette() -> Any:
    """A dark desktop theme's palette (what Breeze Dark or Adwaita-dark hand a Qt app)."""
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#202124", QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#17181a", QPalette.ColorRole.AlternateBase: "#26282b",
        QPalette.ColorRole.Text: "#e8eaed", QPalette.ColorRole.Button: "#303134",
        QPalette.ColorRole.ButtonText: "#e8eaed", QPalette.ColorRole.Mid: "#5f6368",
        QPalette.ColorRole.Highlight: "#8ab4f8", QPalette.ColorRole.HighlightedText: "#202124",
        QPalette.ColorRole.ToolTipBase: "#303134", QPalette.ColorRole.ToolTipText: "#e8eaed",
        QPalette.ColorRole.PlaceholderText: "#9aa0a6",
    }  # fmt: skip
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    return palette


def trimmed(image: QImage, area: QRect, margin: int = 6) -> QRect:
    """The part of `area` that differs from the screen's background (its top-left pixel), plus a margin."""
    background = image.pixel(area.topLeft())
    xs, ys = [], []
    for y in range(area.top(), area.bottom() + 1, 2):
        for x in range(area.left(), area.right() + 1, 2):
            if image.pixel(x, y) != background:
                xs.append(x)
                ys.append(y)
    if not xs:
        return area
    box = QRect(
        min(xs) - margin, min(ys) - margin, max(xs) - min(xs) + 2 * margin, max(ys) - min(ys) + 2 * margin
    )
    return box.intersected(area)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"))
