"""The PyInstaller bundle, built for real (packaging/build.sh) and started in self-test mode offscreen.

The build takes a minute or two (CuPy and PySide6 are large), so it happens once per session and is cached
under build/bundle-cache/<hash of the sources, spec and installed packages>: a rerun with nothing changed
starts at once. In the bundle the self-test really tests the packaging: the spawned processes (CuPy, the
residency host) start from the frozen executable, and every data file comes from the bundle.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import (
    Bundle,
    NotificationServer,
    build_bundle,
    bundle_key,
    home_env,
    run_self_test,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_the_bundle_passes_its_self_test_offscreen_and_notifies(
    bundle: Bundle, tmp_path: Path, notification_server: NotificationServer
) -> None:
    run = run_self_test([str(bundle.executable)], home_env(tmp_path, **notification_server.env()))

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.lines["qt"].startswith("ok (offscreen QApplication")
    assert run.status("nvml") in ("ok", "absent"), run.stdout
    assert run.lines["cupy"].startswith("ok (CuPy "), run.stdout
    if run.status("nvml") == "ok":
        assert run.status("residency host") == "ok", run.stdout
    else:  # no GPU: CuPy loads in the frozen host, CUDA does not start, the pipe still answers
        assert "CUDA could not start" in run.lines["residency host"], run.stdout
        assert "spawn and pipe to pid" in run.lines["residency host"]
    assert run.lines["notifier"].startswith("ok (desktop-notifier "), run.stdout
    assert notification_server.summaries() == ["VRAM Steward self-test"]
    assert run.lines["config dirs"].startswith(f"ok (config {tmp_path}/.config/vram-steward")
    assert run.status("default config") == "ok"
    assert run.status("bundled data") == "ok", run.stdout


def test_the_bundle_carries_its_data_files(bundle: Bundle) -> None:
    internal = bundle.folder / "_internal"
    for relative in (
        "app/data/default-config.toml",
        "app/data/scenarios/game-launch.toml",
        "app/data/icons/vram-steward.svg",
        "app/data/icons/vram-steward-256.png",
        "resources/vram-steward.desktop",
        "desktop_notifier/resources/python.png",
        "cupy/_core/include/cupy/carray.cuh",
        "app/data/vulkan_layer/vram_steward_layer.c",
        "app/data/vulkan_layer/lib64/libVkLayer_vram_steward.so",  # built: the bundle's users need no gcc
    ):
        assert (internal / relative).is_file(), f"{relative} is not in the bundle"
    assert not list(internal.glob("libQt6WebEngine*")), "QtWebEngine must not be bundled"
    assert not (internal / "pytest").exists()


def test_the_bundle_runs_the_cli_without_a_gpu(bundle: Bundle, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(bundle.executable), "status", "--json"],
        env=home_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["backend"] in ("none", "nvml")
    assert "schema_version" in status


def test_a_rebuild_of_the_same_sources_reuses_the_cached_bundle(bundle: Bundle) -> None:
    again = build_bundle(bundle.key)

    assert again.folder == bundle.folder
    assert again.build_s == 0.0
    assert bundle_key() == bundle_key()  # the key depends on the files only, not on when it is computed
