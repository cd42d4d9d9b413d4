"""`vram-steward daemon [--simulate SCENARIO]`: the engine without Qt, events printed live."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from app.cli.common import load_settings_or_exit
from app.core.events import Event
from app.core.notify.messages import describe
from app.core.settings import Settings
from app.core.settings_watch import POLL_INTERVAL_S, SettingsFileWatcher


def register(sub: Any) -> None:
    p = sub.add_parser("daemon", help="run headless: watch the GPU, evict and resume, serve the local API")
    p.add_argument("--simulate", metavar="SCENARIO", help="run on a simulated GPU (a scenario name or file)")
    p.add_argument("--no-api", action="store_true", help="do not start the local HTTP API")
    p.add_argument("--port", type=int, help="API port (default: api_port from the config; 0: any free port)")
    p.add_argument("--quiet", action="store_true", help="do not print events to the terminal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_daemon(args, notice=None)


def run_daemon(args: argparse.Namespace, notice: str | None) -> int:
    """Refuses (exit 1) while another engine of this user runs, tray app or daemon; else runs until
    SIGINT, SIGTERM or SIGHUP, then shuts down in order (VRAM released first) and exits 0."""
    from app.core.instance import AlreadyRunning, acquire_engine_lock

    try:
        lock = acquire_engine_lock("daemon")
    except AlreadyRunning as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr, flush=True)
        return 1
    try:
        return _run_daemon(args, notice)
    finally:
        lock.release()


def _settings_watcher(runtime: Any, router: Any, port: int | None) -> SettingsFileWatcher | None:
    """Edits of the settings file (`config set`, `discover --manage`, an editor) applied while running."""
    import dataclasses

    from app.core import paths
    from app.core.engine.commands import ApplySettings

    if runtime.simulated and runtime.settings.source is None:
        return None  # a simulation on the defaults: no file of the user's is involved
    path = runtime.settings.source or paths.default_config_file()

    def apply(new: Settings) -> None:
        runtime.settings = new
        if router is not None:
            router.apply_settings(new)
        runtime.steward.submit(ApplySettings(new))

    def keep_port(new: Settings) -> Settings:  # `--port N` wins over the file, as at start
        return new if port is None else dataclasses.replace(new, api_port=port)

    return SettingsFileWatcher(path, lambda: runtime.settings, apply, transform=keep_port)


def _run_daemon(args: argparse.Namespace, notice: str | None) -> int:
    import dataclasses

    from app.core.api.endpoint import ApiPortUnavailable
    from app.core.first_run import take_first_run_notice
    from app.core.wiring import build_runtime

    welcome = take_first_run_notice() if getattr(args, "config", None) is None else None
    settings = load_settings_or_exit(args)
    if getattr(args, "port", None) is not None:
        settings = dataclasses.replace(settings, api_port=args.port)
    simulate = getattr(args, "simulate", None)
    for text in (welcome, notice):
        if text:
            print(text, flush=True)
    try:
        runtime = build_runtime(settings, simulate=simulate, with_api=not getattr(args, "no_api", False))
    except ApiPortUnavailable as exc:  # which port, which key to change: not a raw [Errno 98]
        problem = ApiPortUnavailable(exc.host, exc.port, exc.cause, config_file=settings.source)
        problem.suggestions.append("Or start the daemon with `--port N` (`--port 0`: any free port)")
        print(f"error: {problem.user_message()}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # a clear line, not a traceback, for what a user can fix
        from app.core.errors import VramError

        if isinstance(exc, (VramError, OSError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    from app.core.notify.notifier import attach_notifications

    router = attach_notifications(runtime)  # desktop notifications where a server runs, else the log
    if runtime.backend.name == "none":
        print(
            "No NVIDIA GPU found: watching nothing. Try `vram-steward daemon --simulate game-launch`.",
            flush=True,
        )
    elif runtime.simulated:
        print(f"SIMULATION: scenario {simulate} (no real GPU is touched)", flush=True)
    if not getattr(args, "quiet", False):

        def show(event: Event) -> None:
            if event.kind == "LoadProgress":
                return
            print(f"[{event.at:8.1f}s] {describe(event)}", flush=True)

        runtime.steward.subscribe(show)
    if runtime.api is not None:
        api = runtime.api
        scheme = "https" if api.tls is not None else "http"
        host = f"[{settings.api_host}]" if ":" in settings.api_host else settings.api_host
        print(f"API on {scheme}://{host}:{api.bound_port} (token in the state dir)", flush=True)
        if api.tls is not None:
            print(f"TLS certificate {api.tls.fingerprint} (pin it on the clients)", flush=True)
        if api.unix_socket is not None:
            print(f"API socket {api.unix_socket} (this user only)", flush=True)

    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if hasattr(signal, "SIGHUP"):  # the terminal closed, or `kill -HUP`: the same ordered stop
        signal.signal(signal.SIGHUP, on_signal)
    watcher = _settings_watcher(runtime, router, getattr(args, "port", None))
    runtime.start_worker()
    print("VRAM Steward daemon running; Ctrl+C to stop.", flush=True)
    next_check = time.monotonic() + POLL_INTERVAL_S
    while not done.wait(0.5):
        if runtime.worker is not None and not runtime.worker.is_alive():
            break
        if watcher is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + POLL_INTERVAL_S
            watcher.poll()
    print("stopping: releasing VRAM ...", flush=True)
    runtime.stop()
    print("stopped.", flush=True)
    return 0
