"""Discovery against stand-ins listening on loopback ports the test picks (the port table is injected): apps
are recognised by their answers, a random HTTP server is not, nothing but loopback is probed, and a silent
listener costs one deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.core.config import add_server, load_settings
from app.core.notify.text import MANAGE_APP_PREFIX, notification_for
from app.core.servers.discovery import KNOWN_APPS, DiscoveryWatcher, discover, probe
from app.core.settings import ServerConfig
from tests.fixtures.servers import answers
from tests.fixtures.servers.answers import Answers
from tests.fixtures.servers.standin import GARBAGE, Reply, StandInServer


def table(**ports: int) -> list[Any]:
    """KNOWN_APPS with the test's ports for the kinds named (the others left out)."""
    return [replace(app, port=ports[app.kind]) for app in KNOWN_APPS if app.kind in ports]


@pytest.fixture
def servers() -> Iterator[list[StandInServer]]:
    started: list[StandInServer] = []
    yield started
    for s in started:
        s.stop()


def test_apps_are_identified_by_their_answers(servers: list[StandInServer]) -> None:
    comfy = Answers({"/system_stats": Reply.json({"system": {"comfyui_version": "0.3.60"}, "devices": []})})
    ollama = Answers({"/": Reply.text("Ollama is running")})
    vllm = Answers({"/v1/models": Reply.json({"object": "list", "data": [{"id": "m", "owned_by": "vllm"}]})})
    random_http = Answers({"/": GARBAGE, "/system_stats": GARBAGE, "/v1/models": GARBAGE})
    servers += [comfy, ollama, vllm, random_http]
    probes = table(
        comfyui=comfy.port, ollama=ollama.port, vllm=vllm.port, sglang=vllm.port, llama_cpp=random_http.port
    )
    found = discover((), probes=probes, process_ports=None)
    assert {(f.kind, f.port) for f in found} == {
        ("comfyui", comfy.port),
        ("ollama", ollama.port),
        ("vllm", vllm.port),
    }
    assert all(f.url.startswith("http://127.0.0.1:") for f in found)
    assert random_http.count("GET") == 1  # asked once, as llama.cpp; its answer is not llama.cpp's

    # an app already in [[servers]] is not reported again
    configured = [ServerConfig(kind="comfyui", url=f"http://127.0.0.1:{comfy.port}")]
    again = discover(configured, probes=probes, process_ports=None)
    assert "comfyui" not in {f.kind for f in again}


def test_a_process_names_its_port(servers: list[StandInServer]) -> None:
    kobold = Answers({"/api/extra/version": Reply.json({"result": "KoboldCpp", "version": "1.102"})})
    servers.append(kobold)
    found = discover((), probes=table(koboldcpp=1), process_ports=lambda: {"koboldcpp": {kobold.port}})
    assert [(f.kind, f.port) for f in found] == [("koboldcpp", kobold.port)]


def test_only_loopback_is_ever_probed() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        discover((), host="192.168.1.10", process_ports=None)
    with pytest.raises(ValueError, match="loopback only"):
        probe("example.com", 80, "/")


def test_a_silent_listener_costs_one_deadline() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    port = listener.getsockname()[1]
    try:
        probes = table(llama_swap=port, localai=port, llama_cpp=port)  # three apps share the port
        started = time.monotonic()
        assert discover((), probes=probes, timeout_s=0.3, process_ports=None) == []
        assert time.monotonic() - started < 1.0  # one probe's deadline, not three
    finally:
        listener.close()


def test_found_apps_are_reported_once_and_offered_as_a_notification(tmp_path: Path) -> None:
    from app.core.servers.discovery import FoundApp

    app = FoundApp("comfyui", "ComfyUI", "http://127.0.0.1:8188", 8188)
    watcher = DiscoveryWatcher(lambda: (), discover_fn=lambda configured: [app])
    got: list[FoundApp] = []
    watcher.subscribe(got.append)
    watcher.run_once()
    watcher.run_once()
    assert got == [app]
    text = notification_for(app.event(at=1.0))
    assert text is not None and text.title == "Found ComfyUI on port 8188 - manage it while you game?"
    (action,) = text.actions
    assert action.label == "Manage it" and action.key == f"{MANAGE_APP_PREFIX}comfyui http://127.0.0.1:8188"

    # "Manage it" writes the entry, keeping the file's comments
    settings = tmp_path / "config.toml"
    settings.write_text(
        'schema_version = 2\n# my GPU\ngpu_device = 0\n\n[[servers]]\n# my Ollama\nkind = "ollama"\n'
        'url = "http://127.0.0.1:11434"\n'
    )
    add_server(settings, app.server_config())
    text_after = settings.read_text()
    assert "# my GPU" in text_after and "# my Ollama" in text_after
    assert [s.kind for s in load_settings(settings).servers] == ["ollama", "comfyui"]


def test_the_watcher_thread_runs_off_the_callers_thread() -> None:
    ran = threading.Event()

    def slow(configured: Any) -> list[Any]:
        ran.set()
        time.sleep(0.2)
        return []

    watcher = DiscoveryWatcher(lambda: (), discover_fn=slow, check_s=0.05)
    started = time.monotonic()
    watcher.start()
    assert time.monotonic() - started < 0.1  # start() returns at once
    assert ran.wait(2)
    watcher.close()


def test_managed_apps_are_listed_as_managed_when_asked(servers: list[StandInServer]) -> None:
    comfy, ollama = answers.comfyui(), answers.ollama()
    servers += [comfy, ollama]
    probes = table(comfyui=comfy.port, ollama=ollama.port)
    configured = [ServerConfig(kind="ollama", url=f"http://localhost:{ollama.port}")]
    found = discover(configured, probes=probes, process_ports=None, include_managed=True)
    assert {(f.kind, f.port, f.managed) for f in found} == {
        ("comfyui", comfy.port, False),
        ("ollama", ollama.port, True),
    }


def test_an_entry_on_a_port_of_its_own_is_asked_as_its_kind(servers: list[StandInServer]) -> None:
    kobold = answers.koboldcpp()
    servers.append(kobold)
    configured = [ServerConfig(kind="koboldcpp", url=kobold.url)]
    found = discover(configured, probes=table(koboldcpp=1), process_ports=None, include_managed=True)
    assert [(f.kind, f.port, f.managed) for f in found] == [("koboldcpp", kobold.port, True)]
    assert kobold.count("GET") == 1  # asked as KoboldCpp first, and only that


def test_extra_ports_are_asked_as_every_known_app(servers: list[StandInServer]) -> None:
    comfy = answers.comfyui()
    servers.append(comfy)
    probes = table(ollama=1, comfyui=2)  # neither default port answers here
    found = discover((), probes=probes, process_ports=None, extra_ports=[comfy.port])
    assert [(f.kind, f.url) for f in found] == [("comfyui", f"http://127.0.0.1:{comfy.port}")]
    with pytest.raises(ValueError, match="not a TCP port: 70000"):
        discover((), probes=probes, process_ports=None, extra_ports=[70000])


def test_the_watcher_reports_what_it_found_with_managed_as_of_now(servers: list[StandInServer]) -> None:
    comfy, ollama = answers.comfyui(), answers.ollama()
    servers += [comfy, ollama]
    probes = table(comfyui=comfy.port, ollama=ollama.port)
    settings: list[ServerConfig] = [ServerConfig(kind="ollama", url=ollama.url)]
    now = [1000.0]
    watcher = DiscoveryWatcher(
        lambda: tuple(settings),
        discover_fn=lambda configured: discover(
            configured, probes=probes, process_ports=None, include_managed=True
        ),
        wall_clock=lambda: now[0],
    )
    offered: list[Any] = []
    watcher.subscribe(offered.append)
    assert watcher.report() == {"last_run_at": None, "apps": []}
    watcher.run_once()
    assert [a.kind for a in offered] == ["comfyui"]  # the managed Ollama is not offered
    assert [a.kind for a in watcher.found] == ["comfyui"]
    report = watcher.report()
    assert report["last_run_at"] == 1000.0
    assert sorted(report["apps"], key=lambda a: a["port"]) == sorted(
        [
            {
                "kind": "comfyui",
                "name": "ComfyUI",
                "url": comfy.url,
                "port": comfy.port,
                "managed": False,
                "found_at": 1000.0,
            },
            {
                "kind": "ollama",
                "name": "Ollama",
                "url": ollama.url,
                "port": ollama.port,
                "managed": True,
                "found_at": 1000.0,
            },
        ],
        key=lambda a: a["port"],
    )
    # "Manage it" on ComfyUI: managed from that moment on, still found when it was first found
    settings.append(ServerConfig(kind="comfyui", url=comfy.url))
    now[0] = 1300.0
    assert {a.kind: a.managed for a in watcher.discovered()} == {"comfyui": True, "ollama": True}
    watcher.run_once()
    assert {a.kind: a.found_at for a in watcher.discovered()} == {"comfyui": 1000.0, "ollama": 1000.0}
    # an app that stops answering leaves the list; found again, it is new
    comfy.stop()
    now[0] = 1600.0
    watcher.run_once()
    assert [a.kind for a in watcher.discovered()] == ["ollama"]
    comfy.start()
    now[0] = 1900.0
    watcher.run_once()
    assert {a.kind: a.found_at for a in watcher.discovered()} == {"comfyui": 1900.0, "ollama": 1000.0}
    assert [a.kind for a in offered] == ["comfyui"]  # never offered twice
