"""`vram-steward --self-test` from the source tree (the bundle runs the same code in test_bundle.py).

Each run is a real process: an offscreen QApplication, nvmlInit (absent here: no driver), CuPy imported
in a spawned process, a spawned residency host, and the notifier against a private bus with or without a
real notification server (dunst).
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.selftest import ABSENT, FAIL, OK, CheckResult
from tests.fixtures.dbus_session import PrivateBus
from tests.packaging.conftest import NotificationServer, SelfTestRun, home_env, run_self_test

SOURCE = [sys.executable, "-m", "app"]
PARTS = ("qt", "nvml", "cupy", "residency host", "notifier", "config dirs", "default config", "bundled data")


def assert_machine_parts_pass(run: SelfTestRun) -> None:
    """What every machine, GPU or not, must report as working."""
    for part in ("qt", "cupy", "config dirs", "default config", "bundled data"):
        assert run.status(part) == OK, run.stdout + run.stderr
    assert run.status("nvml") in (OK, ABSENT), run.stdout
    assert run.status("residency host") in (OK, ABSENT), run.stdout


def test_a_line_stays_one_line_whatever_the_error_text() -> None:
    result = CheckResult("cupy", FAIL, "ImportError:\n=========\nFailed to import CuPy.\n\n" + "x" * 1000)
    line = result.line()
    assert "\n" not in line and "====" not in line
    assert line.startswith("cupy: FAIL (ImportError: Failed to import CuPy. xxx")
    assert line.endswith("...)") and len(line) < 450
    assert CheckResult("qt", OK).line() == "qt: ok"


def test_without_a_session_bus_every_part_reports_and_the_notifier_is_absent(tmp_path: Path) -> None:
    run = run_self_test(SOURCE, home_env(tmp_path))

    assert run.returncode == 0, run.stdout + run.stderr
    assert list(run.lines)[: len(PARTS)] == list(PARTS)
    assert_machine_parts_pass(run)
    assert run.lines["notifier"].startswith("absent (no D-Bus session bus")
    assert run.lines["config dirs"] == (
        f"ok (config {tmp_path}/.config/vram-steward, state {tmp_path}/.local/state/vram-steward, "
        f"log {tmp_path}/.local/state/vram-steward/log)"
    )
    assert "self-test: all good" in run.stdout
    assert not (
        tmp_path / ".cupy"
    ).exists()  # CuPy's kernel cache goes to our cache dir (purged on uninstall)


def test_no_gpu_here_means_the_host_still_spawns_and_answers(tmp_path: Path) -> None:
    run = run_self_test(SOURCE, home_env(tmp_path))

    if run.status("nvml") == OK:  # a GPU machine: the host opened a CUDA context
        assert run.lines["residency host"].startswith("ok (pid "), run.stdout
    else:
        assert run.lines["residency host"].startswith("absent (no GPU: "), run.stdout
        assert "spawn and pipe to pid" in run.lines["residency host"]


def test_a_bus_without_a_notification_server_is_absent_not_a_failure(
    tmp_path: Path, private_bus: PrivateBus
) -> None:
    run = run_self_test(SOURCE, home_env(tmp_path, DBUS_SESSION_BUS_ADDRESS=private_bus.address))

    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        run.lines["notifier"] == f"absent (no notification server on the session bus {private_bus.address})"
    )


def test_with_a_notification_server_it_sends_one_that_dunst_shows(
    tmp_path: Path, notification_server: NotificationServer
) -> None:
    run = run_self_test(SOURCE, home_env(tmp_path, **notification_server.env()))

    assert run.returncode == 0, run.stdout + run.stderr
    assert run.status("notifier") == OK
    assert run.lines["notifier"].endswith(": one notification sent)")
    assert notification_server.summaries() == ["VRAM Steward self-test"]


def test_a_part_that_fails_makes_the_exit_code_1(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a config dir under a plain file cannot be created, even by root

    run = run_self_test(SOURCE, home_env(tmp_path, VRAM_STEWARD_CONFIG_DIR=str(blocker / "config")))

    assert run.returncode == 1
    assert run.lines["config dirs"].startswith(f"FAIL (the config dir {blocker}/config is not writable")
    assert run.status("qt") == OK  # the other parts still ran
    assert "self-test: 1 part(s) FAILED" in run.stdout
