"""Fixtures for the packaging tests: the PyInstaller bundle (built once, cached by a hash of its inputs),
a throw-away HOME, and a real notification server (dunst on Xvfb, on a private D-Bus session bus).

Debian packages: xvfb, dbus, dunst, desktop-file-utils (tools/install-system-deps.sh installs them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.dbus_session import PrivateBus, start_private_bus
from tests.fixtures.notify_desktop import Dunst, missing_binaries, start_xvfb

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "bundle-cache"
BUILD_TIMEOUT_S = 900
KEEP_OLD_ENTRIES = 1  # about 500 MB each
# What the bundle is made of: a change in any of these builds it again.
BUNDLE_INPUTS = ("app", "resources/vram-steward.desktop", "packaging", "pyproject.toml")  # icons: app/data


def bundle_key() -> str:
    """A hash of the bundle's inputs: the sources, the spec and scripts, and the installed packages."""
    digest = hashlib.sha256()
    for name in BUNDLE_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    site = Path(sys.prefix)
    digest.update(
        "\n".join(sorted(p.name for p in site.glob("lib/python*/site-packages/*.dist-info"))).encode()
    )
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Bundle:
    folder: Path  # dist/vram-steward: the executable and _internal/
    key: str  # bundle_key() of the sources it was built from
    build_s: float  # 0.0 when it came from the cache

    @property
    def executable(self) -> Path:
        return self.folder / "vram-steward"


def cached_bundle() -> Path | None:
    """The bundle for the current sources if a previous run built it, else None (never builds)."""
    folder = CACHE / bundle_key() / "dist" / "vram-steward"
    return folder if (folder.parent.parent / "complete").exists() else None


def build_bundle(key: str | None = None) -> Bundle:
    """Build with packaging/build.sh into build/bundle-cache/<key>/ (key: bundle_key() now), or reuse a
    finished one. A lock file keeps concurrent test runs from building into the same folder; of the older
    entries only the newest KEEP_OLD_ENTRIES stay (another test run may still be using one)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = key or bundle_key()
    entry = CACHE / key
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (entry / "complete").exists():
            return Bundle(entry / "dist" / "vram-steward", key, 0.0)
        old = sorted(
            (e for e in CACHE.iterdir() if e.is_dir() and e.name != key),
            key=lambda e: e.stat().st_mtime,
            reverse=True,
        )
        for stale in old[KEEP_OLD_ENTRIES:]:
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)
        started = time.monotonic()
        result = subprocess.run(
            [
                "nice",
                "bash",
                str(ROOT / "packaging" / "build.sh"),
                "--no-self-test",
                "--dist",
                str(entry / "dist"),
                "--work",
                str(entry / "work"),
            ],
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
        build_s = time.monotonic() - started
        if result.returncode != 0:
            pytest.fail(
                f"packaging/build.sh failed (exit {result.returncode}) after {build_s:.0f} s:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
            )
        shutil.rmtree(entry / "work", ignore_errors=True)
        (entry / "complete").write_text(json.dumps({"build_s": round(build_s, 1)}))
        return Bundle(entry / "dist" / "vram-steward", key, build_s)


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        pytest.fail(f"PyInstaller is not installed: {sys.executable} -m pip install 'pyinstaller>=6.10'")
    return build_bundle()


# --- a throw-away HOME ----------------------------------------------------------------------------

XDG_VARIABLES = (
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "VRAM_STEWARD_CONFIG_DIR",
    "VRAM_STEWARD_STATE_DIR",
    "VRAM_STEWARD_LOG_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
)


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose HOME is `home`, with no XDG or app overrides and no session bus."""
    env = {k: v for k, v in os.environ.items() if k not in XDG_VARIABLES}
    env.update(HOME=str(home), USER="tester", QT_QPA_PLATFORM="offscreen", **extra)
    return env


# --- a real notification server -------------------------------------------------------------------


@dataclass
class NotificationServer:
    """dunst (tests/fixtures/notify_desktop.py) as the self-test sees it: a session bus and a display."""

    dunst: Dunst

    def env(self) -> dict[str, str]:
        return {"DBUS_SESSION_BUS_ADDRESS": self.dunst.bus.address, "DISPLAY": self.dunst.display}

    def summaries(self) -> list[str]:
        """The summaries of every notification dunst has shown, oldest first."""
        return [entry["summary"] for entry in self.dunst.history()]


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[PrivateBus]:
    bus = start_private_bus(tmp_path)
    yield bus
    bus.stop()


@pytest.fixture
def notification_server(tmp_path: Path, private_bus: PrivateBus) -> Iterator[NotificationServer]:
    """dunst on its own Xvfb, owning org.freedesktop.Notifications on a private bus."""
    missing = missing_binaries("Xvfb", "dunst", "dunstctl")
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: bash tools/install-system-deps.sh")
    xvfb = start_xvfb()
    dunst = Dunst(private_bus, xvfb.display, tmp_path)
    try:
        dunst.start()
        yield NotificationServer(dunst)
    finally:
        dunst.stop()
        xvfb.stop()


# --- running the self-test -------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfTestRun:
    returncode: int
    lines: dict[str, str]  # part -> the rest of its line ("ok (...)", "absent (...)", "FAIL (...)")
    stdout: str
    stderr: str

    def status(self, part: str) -> str:
        assert part in self.lines, f"no line for {part!r} in:\n{self.stdout}\n{self.stderr}"
        return self.lines[part].split(" ", 1)[0]


def run_self_test(command: list[str], env: dict[str, str], *, timeout_s: float = 180) -> SelfTestRun:
    result = subprocess.run(
        [*command, "--self-test"], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    lines = {}
    for line in result.stdout.splitlines():
        part, sep, rest = line.partition(": ")
        if sep:
            lines[part] = rest
    return SelfTestRun(result.returncode, lines, result.stdout, result.stderr)
