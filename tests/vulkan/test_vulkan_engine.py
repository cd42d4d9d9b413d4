"""The whole path: a real daemon (simulated GPU whose UUID is lavapipe's, one 8 GiB model resident) answers
the layer in a stand-in game's vkCreateDevice on the real Vulkan loader."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.vulkan.signals import SOURCE
from tests.fixtures.engine_procs import engine_env, read_until, run_app, start_app, stop
from tests.fixtures.vulkan_world import VulkanWorld

SCENARIO = """
description = "one model on the GPU whose UUID the stand-in's device has"
duration_s = 3600
[[gpus]]
index = 0
name = "NVIDIA stand-in"
uuid = "{uuid}"
total = "12 GiB"
[[models]]
name = "m8"
size = "8 GiB"
"""
WINE = {"STEAM_COMPAT_DATA_PATH": "/tmp/compatdata/1091500"}  # what Proton sets: a Windows game


class Engine:
    def __init__(self, tmp_path: Path, world: VulkanWorld, uuid: str, config: str = "") -> None:
        self.tmp_path = tmp_path
        scenario = tmp_path / "scenario.toml"
        scenario.write_text(SCENARIO.format(uuid=uuid))
        (tmp_path / "config").mkdir(exist_ok=True)
        (tmp_path / "config" / "config.toml").write_text(config)
        self.env = engine_env(tmp_path, VRAM_STEWARD_RUNTIME_DIR=str(world.runtime_dir))
        self.proc = start_app(tmp_path, "daemon", "--simulate", str(scenario), "--port", "0", env=self.env)
        self.output = read_until(self.proc, "m8 resident on GPU 0", 60)
        assert "m8 resident on GPU 0" in self.output, self.output

    def status(self) -> Any:
        result = run_app(self.tmp_path, "status", "--json", env=self.env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def model_state(self) -> str:
        return str(self.status()["models"][0]["state"])

    def audit(self) -> list[dict[str, object]]:
        path = self.tmp_path / "state" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stop(self) -> str:
        return stop(self.proc)


def lavapipe_uuid(world: VulkanWorld) -> str:
    from app.core.vulkan.report import LayerReport, PeerCredentials
    from app.core.vulkan.server import LayerSocketServer

    seen: list[LayerReport] = []

    def record(report: LayerReport, peer: PeerCredentials) -> None:
        seen.append(report)

    server = LayerSocketServer(world.socket_path, record)
    server.start()
    try:
        world.run()
    finally:
        server.close()
    assert seen and seen[0].uuid, "the layer did not report lavapipe's UUID"
    return seen[0].uuid


@pytest.fixture
def engine(tmp_path: Path, vulkan_world: VulkanWorld) -> Iterator[Engine]:
    running = Engine(tmp_path, vulkan_world, lavapipe_uuid(vulkan_world))
    yield running
    running.stop()


def test_a_windows_game_waits_until_our_model_is_freed(engine: Engine, vulkan_world: VulkanWorld) -> None:
    run = vulkan_world.run("--fill-percent", "1", "--block-mib", "8", **WINE)
    assert run.returncode == 0, run.stderr
    device = run.devices[0]
    assert device["create_result"] == 0 and device["alloc_failed"] == 0
    assert float(device["create_s"]) < 0.75, "answered before the layer's deadline"
    events = engine.audit()
    evicted = [e for e in events if e["type"] == "ModelsEvicted"]
    starting = [e for e in events if e["type"] == "VulkanDeviceStarting"]
    assert evicted and starting, [e["type"] for e in events]
    assert starting[0]["outcome"] == "freed" and starting[0]["freed_bytes"] == 8 * 2**30
    assert starting[0]["gpu"] == 0 and starting[0]["program"] == "vk_standin_game"
    # the device was created only after the engine had freed the model
    assert float(evicted[0]["wall_time"]) <= float(device["created_at"])  # type: ignore[arg-type]
    state = json.loads((engine.tmp_path / "state" / "vulkan-layer.json").read_text())
    assert state["answer"] == "freed" and state["verdict"] == "wine"
    # one event stream: the report is among the engine's events (status, dashboard) and printed live
    recent = [e["type"] for e in engine.status()["events"]]
    assert "VulkanDeviceStarting" in recent, recent
    assert len(starting) == 1, "audited once (by the engine), not twice"


def test_the_signal_lasts_while_the_game_runs(engine: Engine, vulkan_world: VulkanWorld) -> None:
    game = vulkan_world.start("--hold-s", "3", **WINE)
    try:
        first = game.stdout.readline() if game.stdout else ""
        assert '"create_result":0' in first
        status = engine.status()
        games = status["games"]
        assert any(g["source"] == SOURCE and g["pid"] == game.pid for g in games), games
        assert engine.model_state() == "evicted"
    finally:
        game.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(g["source"] == SOURCE for g in engine.status()["games"]):
        time.sleep(0.2)
    assert not any(g["source"] == SOURCE for g in engine.status()["games"]), "the signal outlived the game"


def test_an_unknown_app_is_answered_at_once_and_frees_nothing(
    engine: Engine, vulkan_world: VulkanWorld
) -> None:
    run = vulkan_world.run()
    assert run.returncode == 0 and run.create_s[0] < 0.5
    state = json.loads((engine.tmp_path / "state" / "vulkan-layer.json").read_text())
    assert state["answer"] == "at once" and state["verdict"] == "unknown"
    assert engine.model_state() == "resident"


def test_unknown_apps_wait_when_the_setting_says_so(tmp_path: Path, vulkan_world: VulkanWorld) -> None:
    engine = Engine(
        tmp_path, vulkan_world, lavapipe_uuid(vulkan_world), config='vulkan_unknown_apps = "wait"\n'
    )
    try:
        run = vulkan_world.run()
        assert run.returncode == 0
        assert engine.model_state() == "evicted"
    finally:
        engine.stop()


def test_a_device_that_is_not_an_nvml_gpu_is_answered_at_once(
    tmp_path: Path, vulkan_world: VulkanWorld
) -> None:
    engine = Engine(tmp_path, vulkan_world, "GPU-00000000-1111-2222-3333-444444444444")
    try:
        run = vulkan_world.run(**WINE)
        assert run.returncode == 0 and run.create_s[0] < 0.5
        assert engine.model_state() == "resident", "lavapipe is not the NVIDIA GPU: nothing to free"
    finally:
        engine.stop()


def test_engine_stopped_or_killed_holds_nothing(tmp_path: Path, vulkan_world: VulkanWorld) -> None:
    engine = Engine(tmp_path, vulkan_world, lavapipe_uuid(vulkan_world))
    assert vulkan_world.socket_path.exists()
    engine.stop()
    assert not vulkan_world.socket_path.exists(), "a stopped engine removes its socket"
    run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="3000", **WINE)
    assert run.returncode == 0 and run.create_s[0] < 0.5

    killed = Engine(tmp_path, vulkan_world, lavapipe_uuid(vulkan_world))
    os.kill(killed.proc.pid, signal.SIGKILL)
    killed.proc.wait(30)
    assert vulkan_world.socket_path.exists(), "kill -9 leaves the socket behind: stale"
    run = vulkan_world.run(VRAM_STEWARD_LAYER_TIMEOUT_MS="3000", **WINE)
    assert run.returncode == 0 and run.create_s[0] < 0.5
    killed.stop()


def test_setting_off_closes_the_socket(tmp_path: Path, vulkan_world: VulkanWorld) -> None:
    engine = Engine(tmp_path, vulkan_world, "GPU-x", config="vulkan_layer_socket = false\n")
    try:
        assert not vulkan_world.socket_path.exists()
    finally:
        engine.stop()


def test_the_setting_opens_and_closes_the_socket_while_running(private_runtime_dir: Path) -> None:
    """Settings changed while running (the settings dialog) reach the source: no restart needed."""
    from app.core.settings import Settings
    from app.core.vulkan.signals import VulkanLayerSignals

    path = private_runtime_dir / "vulkan.sock"
    source = VulkanLayerSignals(Settings(vulkan_layer_socket=False), clock=time.monotonic, path=path)
    try:
        assert not source.serving and not path.exists()
        source.update_settings(Settings())
        assert source.serving and path.exists()
        source.update_settings(Settings(vulkan_layer_socket=False))
        assert not source.serving and not path.exists()
    finally:
        source.close()
