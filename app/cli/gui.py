"""`vram-steward gui [--simulate SCENARIO]` (also what `vram-steward` with no command runs): the tray app.

With no display at all it does not touch Qt (Qt aborts the process when it cannot reach a display): it says
so and runs the headless daemon instead. With no NVIDIA GPU it runs a simulation and says so. A settings
file that does not load starts the app on the defaults, with the red icon and a window naming each problem.

Standing conditions are notices (app.ui.presenter.Notice): a short line for the tray ("Simulation: no
NVIDIA GPU", "Control API off: port 8765 busy") and the whole story for the dashboard and the terminal.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.ui.presenter import Notice

logger = logging.getLogger(__name__)

SIMULATION_SCENARIOS = ("game-launch", "desktop-idle")
HEADLESS_PLATFORMS = {"offscreen", "minimal", "vnc", "eglfs", "linuxfb"}


def register(sub: Any) -> None:
    p = sub.add_parser("gui", help="the tray app (the default command)")
    p.add_argument("--simulate", metavar="SCENARIO", help="run on a simulated GPU (a scenario name or file)")
    p.add_argument("--no-api", action="store_true", help="do not start the local HTTP API")
    p.set_defaults(func=run)


def display_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why Qt could not open a window here, or None when it can. Checked before any QApplication exists."""
    env = os.environ if env is None else env
    platform = env.get("QT_QPA_PLATFORM", "").split(":")[0].split(";")[0].strip()
    if platform in HEADLESS_PLATFORMS:
        return None
    if sys.platform in ("win32", "darwin"):
        return None
    wayland = env.get("WAYLAND_DISPLAY", "")
    if wayland and platform in ("", "wayland"):
        socket = Path(wayland) if wayland.startswith("/") else Path(env.get("XDG_RUNTIME_DIR", "")) / wayland
        if socket.exists():
            return None
        if platform == "wayland":
            return f"the Wayland display {wayland} does not answer (no socket at {socket})"
    display = env.get("DISPLAY", "")
    if not display:
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return x11_problem(display)


def x11_problem(display: str) -> str | None:
    """Connect to the X server through libxcb, as Qt's xcb plugin would, and disconnect again."""
    library = ctypes.util.find_library("xcb")
    if library is None:
        return f"cannot reach the X display {display}: libxcb is not installed"
    xcb = ctypes.CDLL(library)
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)
    try:
        if connection is None or xcb.xcb_connection_has_error(connection):
            return f"cannot connect to the X display {display}"
    finally:
        if connection is not None:
            xcb.xcb_disconnect(connection)
    return None


def gpu_problem() -> str | None:
    """None when NVML sees an NVIDIA GPU; otherwise why not, in words."""
    try:
        from app.core.gpu.backend import open_backend

        backend = open_backend(None)
    except Exception as exc:  # no NVML binding, a broken driver: the same answer for the user
        return f"NVIDIA monitoring is not available ({exc})"
    try:
        if backend.name == "none":
            return backend.sample().message or "NVML reports no NVIDIA GPU"
        return None
    finally:
        backend.close()


def simulation_scenario() -> str:
    from app.core.gpu.scenario import shipped_scenario_names

    names = shipped_scenario_names()
    for name in SIMULATION_SCENARIOS:
        if name in names:
            return name
    return names[0] if names else SIMULATION_SCENARIOS[0]


def choose_backend(args: argparse.Namespace) -> list[Notice]:
    """Sets args.simulate when there is no NVIDIA GPU; returns the notices to show."""
    if getattr(args, "simulate", None):
        return [
            Notice(
                "Simulation: no real GPU touched",
                f"Simulation: scenario {args.simulate} (no real GPU is touched).",
            )
        ]
    problem = gpu_problem()
    if problem is None:
        return []
    args.simulate = simulation_scenario()
    return [
        Notice(
            "Simulation: no NVIDIA GPU",
            f"No NVIDIA GPU found: running a simulation (scenario {args.simulate}). {problem}",
        )
    ]


def run(args: argparse.Namespace) -> int:
    problem = display_problem()
    reason = f"No display: {problem}"
    if problem is None:
        from app.ui.qt_compat import binding_problem

        problem = binding_problem()
        reason = f"Cannot start the tray app: {problem}"
    if problem is not None:
        notices = choose_backend(args)
        print(f"{reason.rstrip('.')}. Running the headless daemon instead.", flush=True)
        from app.cli.daemon import run_daemon

        return run_daemon(args, notice="\n".join(n.detail for n in notices) or None)
    return run_gui(args)


def run_gui(args: argparse.Namespace) -> int:
    from PySide6.QtWidgets import QApplication

    from app.core.errors import VramError
    from app.core.first_run import take_first_run_notice
    from app.core.instance import AlreadyRunning, acquire_engine_lock, private_runtime_dir
    from app.ui.single_instance import SingleInstance, hand_over_to_running

    # Before loading: on the first run this writes the commented default file, which is then loaded.
    welcome = take_first_run_notice() if getattr(args, "config", None) is None else None
    settings, settings_problems = load_settings_or_defaults(args)
    app = QApplication.instance() or QApplication(["vram-steward"])
    assert isinstance(app, QApplication)
    app.setApplicationName("vram-steward")
    app.setApplicationDisplayName("VRAM Steward")
    app.setDesktopFileName("vram-steward")
    app.setQuitOnLastWindowClosed(False)
    try:
        private_runtime_dir()  # the 0700 folder of the tray's socket and the engine lock
    except (VramError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if hand_over_to_running():
        print("VRAM Steward is already running: brought its dashboard to the front.", flush=True)
        return 0
    try:
        lock = acquire_engine_lock("tray")
    except AlreadyRunning as exc:  # a daemon (or a tray that did not answer) runs: say so and whom to stop
        show_cannot_start(exc)
        return 1
    try:
        return _run_tray(app, args, settings, welcome, SingleInstance, settings_problems)
    finally:
        lock.release()


def load_settings_or_defaults(args: argparse.Namespace) -> tuple[Any, tuple[str, ...]]:
    """The settings, or the defaults and each problem of a file that does not load (the tray app then
    starts anyway: red icon, a window naming the problems; the file is never overwritten)."""
    from app.core.config import load_settings
    from app.core.errors import VramError
    from app.core.paths import default_config_file
    from app.core.settings import Settings
    from app.ui.settings_problems import problems_of

    path = getattr(args, "config", None)
    try:
        return load_settings(path), ()
    except VramError as exc:
        problems = problems_of(exc)
        where = Path(path) if path is not None else default_config_file()
        print(f"error: {exc.user_message()}", file=sys.stderr, flush=True)
        logger.error("the settings file %s does not load; running with the defaults", where)
        return Settings(source=where), problems


def show_cannot_start(exc: Any) -> None:
    """Why the tray app does not start: on stderr, and in a dialog where a display shows one."""
    text = exc.user_message()
    print(f"error: {text}", file=sys.stderr, flush=True)
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].strip()
    if platform in HEADLESS_PLATFORMS:
        return
    from PySide6.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Icon.Warning, "VRAM Steward is already running", exc.message)
    box.setInformativeText("\n".join(exc.suggestions))
    box.exec()


def _run_tray(
    app: Any,
    args: argparse.Namespace,
    settings: Any,
    welcome: str | None,
    single: Any,
    settings_problems: tuple[str, ...] = (),
) -> int:
    instance = single()
    instance.listen()

    notices = choose_backend(args)
    runtime, api_problem = _build_runtime(settings, args, notices)
    if runtime is None:
        return 2
    config_path = getattr(args, "config", None) or settings.source
    steward_app = make_steward_app(
        runtime, settings, config_path, notices=notices, welcome=welcome, settings_problems=settings_problems
    )
    instance.show_requested.connect(steward_app.show_dashboard)
    for text in (welcome, *(n.detail for n in notices)):
        if text:
            print(text, flush=True)
    steward_app.start()
    if api_problem is not None:  # visible, not "harmless": the CLI and clients cannot reach this engine
        steward_app.tray.show_message("VRAM Steward: the local API did not start", api_problem)
    keep = quit_on_signals(steward_app.quit)
    logger.info("tray app running (pid %d); SIGTERM, SIGINT and SIGHUP quit it in order", os.getpid())
    try:
        return int(app.exec())
    finally:
        steward_app.shutdown()
        instance.close()
        del keep


def make_steward_app(
    runtime: Any,
    settings: Any,
    config_path: Path | None,
    *,
    notices: list[Notice],
    welcome: str | None = None,
    clock: Any = None,
    settings_problems: tuple[str, ...] = (),
) -> Any:
    """The tray app on a built runtime: its notifier, the engine's worker thread (not started yet) and the
    windows. `StewardApp.start()` shows it; tools/ui_screenshots.py builds it the same way."""
    from app.ui.application import GuiNotifications, StewardApp
    from app.ui.worker import StewardWorker, runtime_services_stopper

    notifications = GuiNotifications(runtime)  # starts the asyncio loop when the API did not
    stop_api_and_loop = runtime_services_stopper(runtime)

    def stop_services() -> None:
        """After the engine released its VRAM: the notifier first, while its loop still runs."""
        notifications.close()
        stop_api_and_loop()

    worker = StewardWorker(runtime.steward, stop_services=stop_services)
    discovery = runtime.discovery
    if discovery is not None:  # apps found on the discovery thread: queued to the GUI like engine events
        discovery.subscribe(lambda app: worker.engine_event.emit(app.event(at=runtime.steward.clock())))
    extra = {"clock": clock} if clock is not None else {}
    steward_app = StewardApp(
        worker,
        settings,
        config_path,
        notices=notices,
        welcome=welcome,
        notifications=notifications,
        settings_problems=settings_problems,
        **extra,
    )
    for found in discovery.found if discovery is not None else ():  # found before the GUI listened
        worker.engine_event.emit(found.event(at=runtime.steward.clock()))
    _watch_settings_file(steward_app, config_path or settings.source, simulated=runtime.simulated)
    return steward_app


def _watch_settings_file(steward_app: Any, path: Path | None, *, simulated: bool) -> None:
    """Edits of the settings file while the tray runs are applied (a stat every 2 s on the GUI thread)."""
    from PySide6.QtCore import QTimer

    from app.core import paths
    from app.core.settings_watch import POLL_INTERVAL_S, SettingsFileWatcher

    if path is None and simulated:
        return  # a simulation on the defaults: no file of the user's is involved
    watcher = SettingsFileWatcher(
        Path(path) if path is not None else paths.default_config_file(),
        lambda: steward_app.settings,
        steward_app.settings_file_changed,
    )
    timer = QTimer(steward_app)
    timer.setInterval(int(POLL_INTERVAL_S * 1000))

    def poll() -> None:
        outcome = watcher.poll()
        if outcome != "unchanged":  # a broken edit shows until the file loads again
            steward_app.settings_edit_failed(watcher.problem if outcome == "broken" else None)

    timer.timeout.connect(poll)
    timer.start()
    steward_app.settings_watcher = watcher  # kept alive with the app; tests read it


def quit_on_signals(quit_app: Any) -> Any:
    """Ctrl+C and SIGTERM quit in order. Qt's loop does not run Python signal handlers by itself: the C
    handler writes to a socket that a QSocketNotifier watches, which wakes the loop so the handler runs."""
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno())
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read)
    notifier.activated.connect(lambda *_: reader.recv(64))

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %d: quitting", signum)
        quit_app()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)
    return (reader, writer, notifier)


def _build_runtime(settings: Any, args: argparse.Namespace, notices: list[Notice]) -> tuple[Any, str | None]:
    """The runtime, and what to tell the user when it runs without its API (the port is taken)."""
    from app.core.api.endpoint import ApiPortUnavailable
    from app.core.errors import VramError
    from app.core.wiring import build_runtime

    simulate = getattr(args, "simulate", None)
    with_api = not getattr(args, "no_api", False)
    api_problem: str | None = None
    try:
        return build_runtime(settings, simulate=simulate, with_api=with_api), None
    except ApiPortUnavailable as exc:
        problem = ApiPortUnavailable(exc.host, exc.port, exc.cause, config_file=settings.source)
        api_problem = problem.user_message()
        logger.warning("%s", api_problem)
        busy = "busy" if exc.cause.errno == errno.EADDRINUSE else "unavailable"
        notices.append(Notice(f"Control API off: port {exc.port} {busy}", api_problem))
    except OSError as exc:
        if not with_api:
            print(f"error: {exc}", file=sys.stderr)
            return None, None
        api_problem = (
            f"The local API did not start ({exc}); `vram-steward status|pause|resume` cannot reach it."
        )
        logger.warning("%s", api_problem)
        notices.append(Notice("Control API off", api_problem))
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return None, None
    try:
        return build_runtime(settings, simulate=simulate, with_api=False), api_problem
    except (OSError, VramError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, None
