"""A real, unmodified llama.cpp `llama-server` (built from source by tools/build-llama-server.sh) in router
mode on CPU, with tiny real GGUF models the test writes: the `llama_cpp` adapter lists a model the server
really loaded, frees it (the server's instance process ends) and brings it back (it generates again); a real
daemon does the same through `vram-steward evict` and `resume`; discovery finds the server on the port the
test picked, by its answer, and lists it through `GET /v1/discovered`.

On CPU the server holds no VRAM, so these tests assert states, processes and answers only: the adapter alone
runs with no GPU backend; the daemon runs on the stand-in NVML (one GPU with a desktop on it, as the engine
acts only where it sees a GPU), which lists none of the server's processes. Verification of freed VRAM
through NVML is tested against the stand-ins (test_server_llama_cpp.py, test_server_verify_free.py).
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.core import events as ev
from app.core.gpu.null import NullBackend
from app.core.holders import ModelState
from app.core.servers.discovery import DiscoveryWatcher, FoundApp
from app.core.servers.llama_cpp import LlamaCppHolder
from app.core.servers.runners import llama_server_instances, port_argument
from app.core.settings import ServerConfig
from app.core.units import GiB, MiB
from tests.fixtures.engine_procs import engine_env, run_app, start_app, stop, wait_for_endpoint
from tests.fixtures.fake_nvml import STATE_ENV, gpu_line, proc_line
from tests.fixtures.llama_server import LlamaRouter, llama_server_binary
from tests.fixtures.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary() -> Path:
    return llama_server_binary()


@pytest.fixture
def router(binary: Path, tmp_path: Path) -> Iterator[LlamaRouter]:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_gguf(models / "tiny-a.gguf", seed=1)
    write_tiny_gguf(models / "tiny-b.gguf", seed=2)
    server = LlamaRouter(binary, models, tmp_path / "llama-server.log")
    server.start()
    yield server
    server.stop()


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0, step_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(step_s)


def holder_for(router: LlamaRouter) -> LlamaCppHolder:
    return LlamaCppHolder(
        ServerConfig(kind="llama_cpp", url=router.url),
        backend=NullBackend(),  # CPU only: no GPU to verify the free on
        find_runners=llama_server_instances,
        refresh_interval_s=0.0,
    )


def states(holder: LlamaCppHolder) -> dict[str, ModelState]:
    return {m.name: m.state for m in holder.models()}


def test_the_adapter_lists_frees_and_brings_back_a_real_model(router: LlamaRouter) -> None:
    assert router.status("tiny-a") == "unloaded" and router.status("tiny-b") == "unloaded"
    assert router.post("/models/load", {"model": "tiny-a"}) == {"success": True}  # a client loads it
    router.wait_status("tiny-a", "loaded")
    assert router.complete("tiny-a")  # really loaded: it generates
    (instance,) = router.instances()

    holder = holder_for(router)
    events: list[Any] = []

    def poll_until(check: Callable[[], bool], what: str) -> None:
        def step() -> bool:
            events.extend(holder.poll())
            return check()

        wait_for(what, step, timeout_s=60.0)

    poll_until(lambda: states(holder).get("tiny-a") == ModelState.RESIDENT, "tiny-a listed as resident")
    assert "tiny-b" not in states(holder)  # on the disk, not loaded: nothing to free
    assert instance.pid in holder.pids()  # its instance process counts as managed

    events.extend(holder.evict(["tiny-a"], "game"))
    poll_until(lambda: bool([e for e in events if isinstance(e, ev.VramDeallocated)]), "the free's outcome")
    (freed,) = [e for e in events if isinstance(e, ev.VramDeallocated)]
    assert freed.model == "tiny-a" and freed.reason == "game"
    assert states(holder)["tiny-a"] == ModelState.EVICTED
    assert router.status("tiny-a") == "unloaded"  # the server really let go of it ...
    wait_for("the instance process ends", lambda: not instance.is_running() or _zombie(instance), 30.0)

    holder.start_load("tiny-a")  # ... and loads it again when asked
    poll_until(lambda: states(holder).get("tiny-a") == ModelState.RESIDENT, "tiny-a brought back")
    assert router.status("tiny-a") == "loaded"
    assert router.complete("tiny-a")
    assert [i.pid for i in router.instances()] != [instance.pid]  # a new instance process


def _zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_discovery_finds_the_real_server_by_its_answer(router: LlamaRouter) -> None:
    router.post("/models/load", {"model": "tiny-b"})
    router.wait_status("tiny-b", "loaded")
    instance_ports = {port_argument(tuple(p.cmdline())) for p in router.instances()}
    assert instance_ports and router.port not in instance_ports

    # the real probes and the real process table: the router's `--port` is asked as llama.cpp
    watcher = DiscoveryWatcher(lambda: ())
    offered: list[FoundApp] = []
    watcher.subscribe(offered.append)
    found = watcher.run_once()
    assert [f for f in found if f.port == router.port] == [
        FoundApp("llama_cpp", "llama.cpp server", router.url, router.port)
    ]
    assert not [f for f in found if f.port in instance_ports]  # a router's instances are not apps
    assert [f.url for f in offered if f.port == router.port] == [router.url]

    # once an entry names it, it is listed as managed and not offered again
    managed = DiscoveryWatcher(lambda: (ServerConfig(kind="llama_cpp", url=router.url),))
    assert not [f for f in managed.run_once() if f.port == router.port]
    (listed,) = [a for a in managed.discovered() if a.port == router.port]
    assert listed.kind == "llama_cpp" and listed.managed


@pytest.mark.timeout(300)  # a daemon, two routers and model loads on a loaded 2-core machine
def test_a_real_daemon_evicts_and_resumes_it_through_the_cli(
    router: LlamaRouter,
    binary: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_nvml_library: tuple[Path, ctypes.CDLL],
) -> None:
    # a second router that no entry names: discovery finds it by its process's --port
    other_models = tmp_path / "other-models"
    other_models.mkdir()
    write_tiny_gguf(other_models / "tiny-c.gguf", seed=3)
    unmanaged = LlamaRouter(binary, other_models, tmp_path / "other.log")
    unmanaged.start()
    nvml_state = tmp_path / "nvml_state.txt"
    nvml_state.write_text(
        gpu_line(
            0, name="NVIDIA_RTX_4090", uuid="GPU-4090", total=24 * GiB, reserved=300 * MiB, used=320 * MiB
        )
        + proc_line(1201, 200 * MiB, kind="graphics", name="Xorg")
    )
    env = engine_env(
        tmp_path, LD_LIBRARY_PATH=str(fake_nvml_library[0].parent), **{STATE_ENV: str(nvml_state)}
    )
    try:
        _daemon_evicts_and_resumes(router, unmanaged, tmp_path, env, monkeypatch)
    finally:
        unmanaged.stop()


def _daemon_evicts_and_resumes(
    router: LlamaRouter,
    unmanaged: LlamaRouter,
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router.post("/models/load", {"model": "tiny-a"})
    router.wait_status("tiny-a", "loaded")
    config = tmp_path / "settings.toml"
    config.write_text(f'schema_version = 2\n\n[[servers]]\nkind = "llama_cpp"\nurl = "{router.url}"\n')
    daemon = start_app(tmp_path, "--config", str(config), "daemon", "--port", "0", env=env)
    output = ""
    try:
        wait_for_endpoint(tmp_path / "state", daemon.pid)

        def models() -> dict[str, Any]:
            done = run_app(tmp_path, "--config", str(config), "status", "--json", env=env)
            assert done.returncode == 0, done.stdout + done.stderr
            return {m["name"]: m for m in json.loads(done.stdout)["models"]}

        wait_for("the daemon lists tiny-a", lambda: models().get("tiny-a", {}).get("state") == "resident")

        done = run_app(tmp_path, "--config", str(config), "evict", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        router.wait_status("tiny-a", "unloaded", timeout_s=30)  # freed for real by the server
        wait_for("tiny-a shown evicted", lambda: models()["tiny-a"]["state"] == "evicted")

        done = run_app(tmp_path, "--config", str(config), "resume", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        router.wait_status("tiny-a", "loaded", timeout_s=90)  # brought back for real
        wait_for("tiny-a shown resident", lambda: models()["tiny-a"]["state"] == "resident")
        assert router.complete("tiny-a")

        # GET /v1/discovered: what the daemon's discovery found, managed or not
        for key, value in env.items():
            if key.startswith(("VRAM_STEWARD_", "XDG_")):
                monkeypatch.setenv(key, value)
        from app.client import StewardClient

        client = StewardClient()

        def discovered() -> dict[int, dict[str, Any]]:
            answer = client.request("GET", "/v1/discovered")
            assert answer["enabled"] is True
            return {a["port"]: a for a in answer["apps"]}

        wait_for("both routers discovered", lambda: {router.port, unmanaged.port} <= discovered().keys(), 30)
        apps = discovered()
        assert apps[router.port]["kind"] == "llama_cpp" and apps[router.port]["managed"] is True
        assert apps[unmanaged.port]["kind"] == "llama_cpp" and apps[unmanaged.port]["managed"] is False
        assert apps[unmanaged.port]["url"] == unmanaged.url and apps[unmanaged.port]["found_at"] > 0
    finally:
        output = stop(daemon)
    assert daemon.returncode == 0, output
    assert "No NVIDIA GPU found" not in output, output  # it ran on the stand-in NVML
