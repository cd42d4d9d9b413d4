"""The layer inside the real Vulkan loader (lavapipe): what it sends, that it waits for the answer, and that
nothing the service does (absent, stale, hung, slow to accept) holds a program past the deadline."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.vulkan.build import ARCHES, LayerBuildError, build_layer, elf_class
from app.core.vulkan.report import LayerReport, PeerCredentials
from app.core.vulkan.server import LayerSocketServer
from tests.fixtures.vulkan_world import VulkanWorld

# lavapipe creates a device in a few ms; a loaded 2-core machine may take far longer to start the process,
# so bounds are on vkCreateDevice's own time, with room for scheduling.
SLACK_S = 0.25


class Service:
    """The project's socket server with a scripted handler: records reports, holds each for `hold_s`."""

    def __init__(self, world: VulkanWorld, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.reports: list[tuple[LayerReport, PeerCredentials]] = []
        self._lock = threading.Lock()
        self.server = LayerSocketServer(world.socket_path, self._handle)

    def _handle(self, report: LayerReport, peer: PeerCredentials) -> None:
        with self._lock:
            self.reports.append((report, peer))
        time.sleep(self.hold_s)


@pytest.fixture
def service(vulkan_world: VulkanWorld) -> Iterator[Service]:
    svc = Service(vulkan_world)
    svc.server.start()
    yield svc
    svc.server.close()


def test_no_service_no_delay_and_the_device_works(vulkan_world: VulkanWorld) -> None:
    run = vulkan_world.run("--fill-percent", "1", "--block-mib", "8")
    assert run.returncode == 0, run.stderr
    assert run.devices[0]["create_result"] == 0 and run.devices[0]["alloc_failed"] == 0
    assert run.create_s[0] < SLACK_S


def test_report_names_the_process_and_the_device_and_waits_for_the_answer(
    vulkan_world: VulkanWorld, service: Service
) -> None:
    service.hold_s = 0.4
    run = vulkan_world.run("--fill-percent", "1", "--block-mib", "8", "--", 'arg "with" quotes\\\ttab')
    assert run.returncode == 0, run.stderr
    assert 0.4 <= run.create_s[0] < 0.4 + SLACK_S, "vkCreateDevice returns once the service answered"
    assert run.devices[0]["alloc_ok"] >= 1 and run.devices[0]["alloc_failed"] == 0, "the device works after"
    [(report, peer)] = service.reports
    assert report.exe == str(vulkan_world.standin)
    assert report.cmdline[-1] == 'arg "with" quotes\\\ttab', "the command line survives JSON escaping"
    assert report.device.startswith("llvmpipe")
    assert report.uuid is not None and report.uuid.startswith("GPU-") and len(report.uuid) == 40
    assert report.timeout_ms == 750  # the default deadline
    assert peer.pid > 0 and peer.uid == os.getuid()


def test_vulkan_1_0_instance_reports_the_name_without_a_uuid(
    vulkan_world: VulkanWorld, service: Service
) -> None:
    run = vulkan_world.run("--api", "1.0")
    assert run.returncode == 0, run.stderr
    [(report, _)] = service.reports
    assert report.uuid is None and report.device.startswith("llvmpipe")


def test_many_instances_and_devices_from_threads_are_each_reported(
    vulkan_world: VulkanWorld, service: Service
) -> None:
    """Per-instance and per-device dispatch under threads. (The loader holds its own lock through
    vkCreateDevice, so one process's devices are reported one after another: docs/vulkan-layer.md.)"""
    service.hold_s = 0.05
    run = vulkan_world.run(
        "--threads", "6", "--devices-per-thread", "2", "--fill-percent", "1", "--block-mib", "8"
    )
    assert run.returncode == 0, run.stderr
    assert len(run.devices) == 12 and all(d["create_result"] == 0 for d in run.devices)
    assert all(d["alloc_failed"] == 0 and d["alloc_ok"] for d in run.devices), "every device works"
    assert len(service.reports) == 12
    assert all(s >= 0.05 for s in run.create_s), "every vkCreateDevice waited for its answer"
    assert len({peer.pid for _, peer in service.reports}) == 1


def test_several_programs_are_answered_at_the_same_time(vulkan_world: VulkanWorld, service: Service) -> None:
    service.hold_s = 0.5
    games = [vulkan_world.start() for _ in range(4)]
    outputs = [game.communicate(timeout=60) for game in games]
    assert all(game.returncode == 0 for game in games), [err for _, err in outputs]
    create_s = [json.loads(out.splitlines()[0])["create_s"] for out, _ in outputs]
    assert len(service.reports) == 4
    # each waited its own 0.5 s; answered one after another, the last would have waited 2 s
    assert all(0.5 <= s < 0.5 + 2 * SLACK_S for s in create_s), create_s


def test_deadline_bounds_a_service_that_never_answers(vulkan_world: VulkanWorld) -> None:
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(vulkan_world.socket_path))
    hung.listen(16)  # the kernel completes connections; nobody ever reads or answers
    try:
        run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="300")
        threads = vulkan_world.run("--threads", "3", VRAM_STEWARD_LAYER_TIMEOUT_MS="300")
    finally:
        hung.close()
    assert run.returncode == 0, run.stderr
    assert 0.3 <= run.create_s[0] < 0.3 + SLACK_S, run.create_s
    # the loader's lock queues one process's vkCreateDevice calls: three threads, three deadlines at most
    assert threads.returncode == 0 and max(threads.create_s) < 3 * 0.3 + SLACK_S, threads.create_s


def test_deadline_is_capped(vulkan_world: VulkanWorld) -> None:
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(vulkan_world.socket_path))
    hung.listen(1)
    try:
        run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="999999")
    finally:
        hung.close()
    assert run.returncode == 0 and 5.0 <= run.create_s[0] < 5.0 + SLACK_S, run.create_s


def test_full_backlog_does_not_wait(vulkan_world: VulkanWorld) -> None:
    """A listener that never accepts and whose queue is full: connect fails at once (no blocking connect)."""
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(str(vulkan_world.socket_path))
    hung.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(vulkan_world.socket_path))
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="2000")
    finally:
        for filler in fillers:
            filler.close()
        hung.close()
    assert run.returncode == 0 and run.create_s[0] < SLACK_S, run.create_s


def test_stale_socket_and_wrong_file_are_passed_at_once(vulkan_world: VulkanWorld) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(vulkan_world.socket_path))
    stale.close()  # the file stays; nobody listens: ECONNREFUSED
    run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="2000")
    assert run.returncode == 0 and run.create_s[0] < SLACK_S, run.create_s
    vulkan_world.socket_path.unlink()
    vulkan_world.socket_path.write_text("not a socket")
    run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="2000")
    assert run.returncode == 0 and run.create_s[0] < SLACK_S, run.create_s


def test_engine_gone_mid_wait_lets_the_program_go(vulkan_world: VulkanWorld) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(vulkan_world.socket_path))
    listener.listen(4)
    game = vulkan_world.start(VRAM_STEWARD_LAYER_TIMEOUT_MS="3000")
    try:
        listener.settimeout(30)
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()  # the engine died without answering
        out, err = game.communicate(timeout=30)
    finally:
        listener.close()
        if game.poll() is None:
            game.kill()
    assert game.returncode == 0, err
    assert '"create_result":0' in out


def test_disable_variable_turns_the_layer_off(vulkan_world: VulkanWorld, service: Service) -> None:
    service.hold_s = 1.0
    run = vulkan_world.run(VRAM_STEWARD_LAYER_DISABLE="1")
    assert run.returncode == 0, run.stderr
    assert service.reports == [] and run.create_s[0] < SLACK_S


def test_timeout_zero_reports_nothing(vulkan_world: VulkanWorld, service: Service) -> None:
    run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="0")
    assert run.returncode == 0 and service.reports == []


def test_explicit_socket_variable_wins(vulkan_world: VulkanWorld) -> None:
    other = Path(tempfile.mkdtemp(prefix="vs-sock-")) / "other.sock"
    seen: list[LayerReport] = []
    server = LayerSocketServer(other, lambda report, peer: seen.append(report))
    server.start()
    try:
        run = vulkan_world.run(VRAM_STEWARD_LAYER_SOCKET=str(other))
    finally:
        server.close()
    assert run.returncode == 0 and len(seen) == 1


@pytest.mark.parametrize("arch", ARCHES)
def test_builds_are_the_right_word_size(arch: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    try:
        library = build_layer(arch, out_dir=tmp_path_factory.mktemp(f"build{arch}"))
    except LayerBuildError as exc:
        if arch == "32":
            pytest.skip(f"NOT TESTED: the 32-bit layer ({exc.message}; apt-get install gcc-multilib)")
        raise
    assert elf_class(library) == arch
