"""packaging/install.sh and uninstall.sh in a throw-away HOME: what goes in comes out again, and nothing of
the user's is touched. Uses the real bundle when this checkout's one is built (test_bundle.py builds it),
else a minimal stand-in with the same layout (an executable and _internal/resources)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from app.core.resources import icons_dir
from app.ui.autostart import desktop_entry
from tests.packaging.conftest import ROOT, cached_bundle, home_env

INSTALL = ROOT / "packaging" / "install.sh"
UNINSTALL = ROOT / "packaging" / "uninstall.sh"
SIZES = (48, 128, 256)

Tree = dict[str, str]


def tree(home: Path) -> Tree:
    """Every path under `home` with what it is: a folder, a link (and its target), or a file (its hash)."""
    found: Tree = {}
    for folder, dirs, files in os.walk(home):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(home))
            if path.is_symlink():
                found[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return found


def fake_bundle(folder: Path) -> Path:
    """The bundle's layout with a shell script for the executable."""
    bundle = folder / "vram-steward"
    resources = bundle / "_internal" / "resources"
    icons = bundle / "_internal" / "app" / "data" / "icons"
    resources.mkdir(parents=True)
    icons.mkdir(parents=True)
    executable = bundle / "vram-steward"
    executable.write_text('#!/bin/sh\necho "vram-steward (stand-in bundle) $*"\n')
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    shutil.copy2(ROOT / "resources" / "vram-steward.desktop", resources)
    for icon in icons_dir().iterdir():
        shutil.copy2(icon, icons)
    return bundle


def sh(script: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], env=home_env(home), capture_output=True, text=True, timeout=300
    )


def installed_files(home: Path) -> list[Path]:
    share = home / ".local" / "share"
    return [
        home / ".local" / "lib" / "vram-steward" / "vram-steward",
        home / ".local" / "bin" / "vram-steward",
        share / "applications" / "vram-steward.desktop",
        share / "icons" / "hicolor" / "scalable" / "apps" / "vram-steward.svg",
        *(share / "icons" / "hicolor" / f"{s}x{s}" / "apps" / "vram-steward.png" for s in SIZES),
    ]


def users_home(home: Path) -> None:
    """A lived-in HOME: folders and files of other apps in the places we install to."""
    for path, text in {
        ".local/bin/other-tool": "#!/bin/sh\n",
        ".local/share/applications/other.desktop": "[Desktop Entry]\n",
        ".local/share/icons/hicolor/48x48/apps/other.png": "png",
        ".config/autostart/other.desktop": "[Desktop Entry]\n",
        ".config/other/settings.ini": "a=1\n",
        ".local/state/other/history": "x\n",
    }.items():
        (home / path).parent.mkdir(parents=True, exist_ok=True)
        (home / path).write_text(text)


def test_install_then_uninstall_into_an_empty_home_leaves_nothing_behind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bundle = cached_bundle() or fake_bundle(tmp_path / "dist")

    installed = sh(INSTALL, home, str(bundle))

    assert installed.returncode == 0, installed.stdout + installed.stderr
    for path in installed_files(home):
        assert path.is_file(), f"{path} missing after install"
    launcher = home / ".local" / "bin" / "vram-steward"
    assert os.readlink(launcher) == str(home / ".local" / "lib" / "vram-steward" / "vram-steward")
    version = subprocess.run(
        [str(launcher), "--version"], env=home_env(home), capture_output=True, text=True, timeout=120
    )
    assert version.returncode == 0 and "vram-steward" in version.stdout, version.stdout + version.stderr

    removed = sh(UNINSTALL, home)

    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert tree(home) == {}


def test_the_installed_menu_entry_names_the_launcher_by_path_and_is_valid(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert sh(INSTALL, home, str(fake_bundle(tmp_path / "dist"))).returncode == 0
    entry = home / ".local" / "share" / "applications" / "vram-steward.desktop"
    launcher = home / ".local" / "bin" / "vram-steward"

    text = entry.read_text()

    assert f"Exec={launcher} gui\n" in text and f"TryExec={launcher}\n" in text
    if shutil.which("desktop-file-validate") is None:
        pytest.fail("desktop-file-validate is not installed: apt-get install desktop-file-utils")
    result = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_uninstall_keeps_the_users_settings_until_purge_and_removes_the_autostart_entry(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    users_home(home)
    before = tree(home)
    bundle = fake_bundle(tmp_path / "dist")
    assert sh(INSTALL, home, str(bundle)).returncode == 0
    assert sh(INSTALL, home, str(bundle)).returncode == 0  # installing again replaces the first one
    # What running the app leaves: its settings, its state, the autostart entry the tray's toggle writes.
    config = home / ".config" / "vram-steward" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("schema_version = 2\n")
    (home / ".local" / "state" / "vram-steward").mkdir(parents=True)
    (home / ".local" / "state" / "vram-steward" / "audit.jsonl").write_text("{}\n")
    autostart = home / ".config" / "autostart" / "vram-steward.desktop"
    autostart.write_text(desktop_entry(str(home / ".local" / "bin" / "vram-steward")))

    kept = sh(UNINSTALL, home)

    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert not autostart.exists()
    assert set(tree(home)) - set(before) == {
        ".config/vram-steward",
        ".config/vram-steward/config.toml",
        ".local/state/vram-steward",
        ".local/state/vram-steward/audit.jsonl",
    }
    assert "your settings stay in" in kept.stdout

    purged = sh(UNINSTALL, home, "--purge")

    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert tree(home) == before


def test_a_launcher_that_is_not_ours_is_never_overwritten_or_removed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pip_script = home / ".local" / "bin" / "vram-steward"
    pip_script.parent.mkdir(parents=True)
    pip_script.write_text("#!/usr/bin/python3\n# pip --user console script\n")
    before = tree(home)

    refused = sh(INSTALL, home, str(fake_bundle(tmp_path / "dist")))
    uninstalled = sh(UNINSTALL, home)

    assert refused.returncode == 1
    assert "is not this installer's launcher" in refused.stderr and "pip uninstall" in refused.stderr
    assert uninstalled.returncode == 0
    assert "left" in uninstalled.stderr and "alone" in uninstalled.stderr
    assert tree(home) == before


def test_install_without_a_bundle_says_how_to_build_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()

    result = sh(INSTALL, home, str(tmp_path / "nothing-here"))

    assert result.returncode == 1
    assert "no bundle found" in result.stderr and "make bundle" in result.stderr
    assert tree(home) == {}
