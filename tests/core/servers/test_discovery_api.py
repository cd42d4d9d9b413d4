"""`GET /v1/discovered` on the real API server: what a discovery watcher found among stand-ins on loopback
ports the test picks, managed or not; and that a simulation (which probes nothing) says discovery is off.
The daemon's own wiring of the watcher to the API is tested with a real llama-server
(test_real_llama_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.core.servers.discovery import KNOWN_APPS, DiscoveryWatcher, discover
from app.core.settings import ServerConfig
from tests.fixtures.api_server import ApiHandle, start_api
from tests.fixtures.servers import answers
from tests.fixtures.servers.answers import Answers


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHandle]:
    handle = start_api(tmp_path, monkeypatch)
    yield handle
    handle.stop()


@pytest.fixture
def stand_ins() -> Iterator[tuple[Answers, Answers]]:
    comfy, ollama = answers.comfyui(), answers.ollama()
    yield comfy, ollama
    comfy.stop()
    ollama.stop()


def test_a_simulation_has_no_discovery(api: ApiHandle) -> None:
    status, _, body = api.call("/v1/discovered")
    assert status == 200
    assert body == {"enabled": False, "last_run_at": None, "apps": []}
    assert api.call("/v1/discovered", token=False)[0] == 401  # behind the token like every /v1 path


def test_it_lists_what_the_watcher_found(api: ApiHandle, stand_ins: tuple[Answers, Answers]) -> None:
    comfy, ollama = stand_ins
    probes = [replace(app, port={"comfyui": comfy.port, "ollama": ollama.port}[app.kind])
              for app in KNOWN_APPS if app.kind in ("comfyui", "ollama")]  # fmt: skip
    configured = (ServerConfig(kind="ollama", url=ollama.url),)
    watcher = DiscoveryWatcher(
        lambda: configured,
        discover_fn=lambda c: discover(c, probes=probes, process_ports=None, include_managed=True),
        wall_clock=lambda: 1_765_000_000.0,
    )
    assert api.runtime.api is not None
    api.runtime.api.discovery_report = watcher.report

    status, _, body = api.call("/v1/discovered")
    assert status == 200 and body == {"enabled": True, "last_run_at": None, "apps": []}  # not run yet

    watcher.run_once()
    status, _, body = api.call("/v1/discovered")
    assert status == 200
    assert body["enabled"] is True and body["last_run_at"] == 1_765_000_000.0
    assert {
        (a["kind"], a["name"], a["url"], a["port"], a["managed"], a["found_at"]) for a in body["apps"]
    } == {
        ("comfyui", "ComfyUI", comfy.url, comfy.port, False, 1_765_000_000.0),
        ("ollama", "Ollama", ollama.url, ollama.port, True, 1_765_000_000.0),
    }
