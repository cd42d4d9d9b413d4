"""`vram-steward --self-test`: start every part this machine can run and print one line for each.

Each line is "<part>: ok (...)", "<part>: absent (why)" or "<part>: FAIL (why)". "absent" is what a machine
without that hardware or service should say (no NVIDIA GPU, no notification server) and is not a failure;
the exit code is 1 when any line says FAIL, else 0. Every check does the real thing: an offscreen
QApplication that renders the icons, nvmlInit (or its typed absence), CuPy imported in a spawned process,
a residency host started and answered, a notification sent when a server is on the session bus, files
written in the config, state and log dirs.

The bundle's own test (tests/packaging/test_bundle.py) runs this in the built executable, where the
multiprocessing spawn and the collected data files are what is really being tested.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from app.core.resources import APP_ICON, icons_dir, shipped_icon_names

OK, ABSENT, FAIL = "ok", "absent", "FAIL"
SPAWN_TIMEOUT_S = 90.0  # a cold start of the bundle on a slow disk imports PySide6-free code, CuPy, NumPy
DBUS_TIMEOUT_S = 3.0
MAX_DETAIL_CHARS = 400
CUDA_DID_NOT_START = "CUDA could not start"  # what the host says when CuPy imported but CUDA has no GPU


@dataclass(frozen=True)
class CheckResult:
    part: str
    status: str  # OK | ABSENT | FAIL
    detail: str = ""

    def line(self) -> str:
        """One line, whatever the detail holds (library errors come with banners and newlines)."""
        detail = " ".join(re.sub(r"={4,}", " ", self.detail).split())
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        return f"{self.part}: {self.status}" + (f" ({detail})" if detail else "")


class SelfTest:
    """The checks in order; later ones read what earlier ones found (the GPU count from NVML)."""

    def __init__(self, *, gpu: int = 0, spawn_timeout_s: float = SPAWN_TIMEOUT_S) -> None:
        self.gpu = gpu
        self.spawn_timeout_s = spawn_timeout_s
        self.gpu_count: int | None = None  # None: NVML did not answer
        self.qt_app: object = None

    def checks(self) -> list[tuple[str, Callable[[], CheckResult]]]:
        return [
            ("qt", self.check_qt),
            ("nvml", self.check_nvml),
            ("cupy", self.check_cupy),
            ("residency host", self.check_residency_host),
            ("notifier", self.check_notifier),
            ("config dirs", self.check_config_dirs),
            ("default config", self.check_default_config),
            ("bundled data", self.check_bundled_data),
        ]

    def run(self) -> Iterator[CheckResult]:
        for part, check in self.checks():
            started = time.monotonic()
            try:
                result = check()
            except Exception as exc:  # a check that crashes is a failure with its reason, never a traceback
                result = CheckResult(part, FAIL, f"{type(exc).__name__}: {exc}")
            elapsed_s = time.monotonic() - started
            if elapsed_s >= 1.0:
                result = CheckResult(
                    result.part, result.status, f"{result.detail}; {elapsed_s:.1f} s".lstrip("; ")
                )
            yield result

    # --- Qt --------------------------------------------------------------------------------------

    def check_qt(self) -> CheckResult:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # never a real display: Qt aborts when one is broken
        from PySide6.QtCore import Qt
        from PySide6.QtGui import QGuiApplication, QIcon, QImage, QPainter
        from PySide6.QtSvg import QSvgRenderer
        from PySide6.QtWidgets import QApplication

        self.qt_app = QApplication.instance() or QApplication(["vram-steward-self-test"])  # kept alive
        platform = QGuiApplication.platformName()
        svgs = sorted(icons_dir().glob("*.svg"))
        if not svgs:
            return CheckResult("qt", FAIL, f"no SVG icons in {icons_dir()}")
        for svg in svgs:
            renderer = QSvgRenderer(str(svg))
            image = QImage(64, 64, QImage.Format.Format_ARGB32)
            image.fill(Qt.GlobalColor.transparent)
            painter = QPainter(image)
            renderer.render(painter)
            painter.end()
            if not renderer.isValid() or _opaque_pixels(image) == 0:
                return CheckResult("qt", FAIL, f"{svg.name} rendered nothing (QtSvg)")
        # The tray loads its icons through QIcon, which needs the SVG icon-engine/image-format plugins.
        pixmap = QIcon(str(icons_dir() / f"{APP_ICON}.svg")).pixmap(32, 32)
        if pixmap.isNull():
            return CheckResult("qt", FAIL, "QIcon could not load an SVG: the Qt SVG plugins are missing")
        return CheckResult(
            "qt", OK, f"{platform} QApplication, Qt {_qt_version()}, {len(svgs)} SVG icons rendered"
        )

    # --- NVML ------------------------------------------------------------------------------------

    def check_nvml(self) -> CheckResult:
        from app.core.gpu.nvml import NvmlBackend
        from app.core.gpu.snapshot import BackendState

        backend = NvmlBackend()
        try:
            snapshot = backend.sample()
        finally:
            backend.close()
        if snapshot.state == BackendState.OK:
            self.gpu_count = len(snapshot.gpus)
            if not snapshot.gpus:
                return CheckResult("nvml", ABSENT, "NVML works but lists no GPU")
            names = ", ".join(f"{g.index}: {g.name}" for g in snapshot.gpus)
            return CheckResult("nvml", OK, f"{len(snapshot.gpus)} GPU(s): {names}")
        if snapshot.state == BackendState.NO_DRIVER:
            self.gpu_count = 0
            return CheckResult("nvml", ABSENT, snapshot.message or "no NVIDIA driver")
        return CheckResult("nvml", FAIL, f"{snapshot.state}: {snapshot.message}")

    # --- CuPy and the residency host (both in spawned processes, as in the app) -----------------

    def check_cupy(self) -> CheckResult:
        # `import cupy` creates its kernel cache (default ~/.cupy): keep it in our cache dir, which
        # `uninstall.sh --purge` removes. The spawned processes (this probe, the host) inherit it.
        os.environ.setdefault("CUPY_CACHE_DIR", str(cupy_cache_dir()))
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(target=cupy_probe, args=(theirs,), name="vram-steward-self-test-cupy")
        process.start()
        theirs.close()
        try:
            ours.send("import cupy")
            if not ours.poll(self.spawn_timeout_s):
                return CheckResult(
                    "cupy", FAIL, f"the spawned process did not answer in {self.spawn_timeout_s} s"
                )
            status, detail = ours.recv()
        finally:
            ours.close()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        if status != OK:
            return CheckResult("cupy", FAIL, f"import cupy failed in a spawned process: {detail}")
        return CheckResult("cupy", OK, f"CuPy {detail} imported in spawned pid {process.pid}")

    def check_residency_host(self) -> CheckResult:
        from app.core.residency.host import protocol as p
        from app.core.residency.host.process import ProcessHostLauncher

        handle = ProcessHostLauncher().launch(self.gpu)
        try:
            if not handle.conn.poll(self.spawn_timeout_s):
                return CheckResult(
                    "residency host",
                    FAIL,
                    f"the host (pid {handle.pid}) did not answer in {self.spawn_timeout_s} s",
                )
            reply = handle.conn.recv()
            if isinstance(reply, p.Ready):
                handle.conn.send(p.ShutdownRequest())
                bye = handle.conn.recv() if handle.conn.poll(30) else None
                if not isinstance(bye, p.Bye):
                    return CheckResult("residency host", FAIL, f"no Bye after ShutdownRequest (got {bye!r})")
                return CheckResult(
                    "residency host",
                    OK,
                    f"pid {reply.pid} opened GPU {reply.gpu} (a CUDA context), then shut down cleanly",
                )
            if isinstance(reply, p.Failed):
                if CUDA_DID_NOT_START not in reply.message or self.gpu_count:
                    return CheckResult("residency host", FAIL, f"pid {handle.pid}: {reply.message}")
                return CheckResult(
                    "residency host",
                    ABSENT,
                    f"no GPU: {_first_line(reply.message)}; spawn and pipe to pid {handle.pid} work",
                )
            return CheckResult("residency host", FAIL, f"unexpected first reply {reply!r}")
        finally:
            if not handle.join(10):
                handle.kill()
            handle.conn.close()

    # --- notifications ---------------------------------------------------------------------------

    def check_notifier(self) -> CheckResult:
        import desktop_notifier

        version = getattr(desktop_notifier, "__version__", "")
        address = session_bus_address()
        if address is None:
            return CheckResult(
                "notifier", ABSENT, "no D-Bus session bus: DBUS_SESSION_BUS_ADDRESS is not set"
            )
        return asyncio.run(_notify(address, version))

    # --- files -----------------------------------------------------------------------------------

    def check_config_dirs(self) -> CheckResult:
        from app.core import paths

        folders = {"config": paths.config_dir(), "state": paths.state_dir(), "log": paths.log_dir()}
        for name, folder in folders.items():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".self-test-") as probe:
                    probe.write(b"ok")
                    probe.flush()
            except OSError as exc:
                return CheckResult("config dirs", FAIL, f"the {name} dir {folder} is not writable: {exc}")
        return CheckResult("config dirs", OK, ", ".join(f"{k} {v}" for k, v in folders.items()))

    def check_default_config(self) -> CheckResult:
        from app.core.config import ensure_default_config, load_settings

        with tempfile.TemporaryDirectory(prefix="vram-steward-self-test-") as tmp:
            path = Path(tmp) / "config.toml"
            if not ensure_default_config(path):
                return CheckResult("default config", FAIL, f"ensure_default_config did not write {path}")
            settings = load_settings(path, check_files=True)
        return CheckResult(
            "default config",
            OK,
            f"created and loaded; auto_pause_for_gaming = {str(settings.auto_pause_for_gaming).lower()}",
        )

    def check_bundled_data(self) -> CheckResult:
        from app.core.config import default_config_text
        from app.core.gpu.scenario import load_scenario, shipped_scenario_names

        names = shipped_scenario_names()
        if not names:
            return CheckResult("bundled data", FAIL, "no scenarios in app/data/scenarios")
        for name in names:
            load_scenario(name)
        tomllib.loads(default_config_text())
        missing = [name for name in required_icons() if not (icons_dir() / name).is_file()]
        if missing:
            return CheckResult("bundled data", FAIL, f"missing in {icons_dir()}: {', '.join(missing)}")
        return CheckResult(
            "bundled data",
            OK,
            f"{len(names)} scenarios, default config, {len(required_icons())} icons",
        )


def required_icons() -> list[str]:
    """The app icon (SVG and PNGs) and every tray state's SVG, as the presenter names them too."""
    names = set(shipped_icon_names())
    try:
        from app.ui.presenter import STATES

        names.update(f"{info.icon}.svg" for info in STATES.values())
    except ImportError:  # the UI is optional for a headless build
        pass
    return sorted(names)


def cupy_probe(conn: Connection) -> None:
    """Runs in a spawned process: answer the parent's request with CuPy's version, or why it failed."""
    try:
        conn.recv()
        try:
            import cupy

            conn.send((OK, cupy.__version__))
        except Exception as exc:  # CuPy wraps the real reason ("Original error") in a banner: name the cause
            cause = exc.__cause__ or exc.__context__ or exc
            conn.send((FAIL, f"{type(cause).__name__}: {cause}"))
    finally:
        conn.close()


def cupy_cache_dir() -> Path:
    import platformdirs

    from app.core.paths import APP_NAME

    return Path(platformdirs.user_cache_dir(APP_NAME)) / "cupy-kernels"


def session_bus_address() -> str | None:
    """The session bus from the environment, or the systemd user bus socket, or None."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    socket = Path(runtime) / "bus"
    return f"unix:path={socket}" if socket.exists() else None


async def _notify(address: str, version: str) -> CheckResult:
    """One notification through the app's own backend (app/core/notify/notifier.py), as the app sends them."""
    from app.core.notify.notifier import DesktopNotifierBackend
    from app.core.notify.text import NotificationText

    backend = DesktopNotifierBackend(call_timeout_s=DBUS_TIMEOUT_S)
    try:
        if not await backend.available():
            return CheckResult("notifier", ABSENT, f"no notification server on the session bus {address}")
        text = NotificationText(
            title="VRAM Steward self-test",
            body="Notifications work.",
            coalesce_key="self-test",
            default_action=None,
        )
        sent = await backend.send(text, on_action=lambda key: None)
    except TimeoutError:
        return CheckResult("notifier", FAIL, f"the notification server did not answer in {DBUS_TIMEOUT_S} s")
    finally:
        await backend.close()
    if not sent:
        return CheckResult("notifier", FAIL, "the notification server refused the notification")
    return CheckResult("notifier", OK, f"desktop-notifier {version}: one notification sent".strip())


def _opaque_pixels(image: object) -> int:
    from PySide6.QtGui import QImage

    assert isinstance(image, QImage)
    return sum(
        1
        for y in range(0, image.height(), 4)
        for x in range(0, image.width(), 4)
        if image.pixelColor(x, y).alpha()
    )


def _qt_version() -> str:
    from PySide6.QtCore import qVersion

    return str(qVersion())


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def main() -> int:
    """Print one line per part as it finishes; 0 when nothing failed."""
    failed = 0
    for result in SelfTest().run():
        print(result.line(), flush=True)
        failed += result.status == FAIL
    print("self-test: " + ("all good" if not failed else f"{failed} part(s) FAILED"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
