"""A server that is down, hangs up or answers garbage: a clear status, one ServerDown event per outage,
retries with backoff (2 s doubling to 60 s), never an error storm, never a crash; the HTTP client's errors."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.core.holders import ModelState
from app.core.servers.base import JsonHttpClient, ServerBadAnswer, ServerUnreachable
from app.core.servers.llama_cpp import LlamaCppHolder
from app.core.servers.llama_swap import LlamaSwapHolder
from app.core.servers.ollama import OllamaHolder
from app.core.units import GiB
from tests.fixtures.servers.llama_cpp_standin import LlamaCppRouterStandIn
from tests.fixtures.servers.llama_swap_standin import LlamaSwapStandIn
from tests.fixtures.servers.ollama_standin import OllamaStandIn, PulledModel
from tests.fixtures.servers.standin import StandInServer
from tests.fixtures.servers.world import ServerWorld, kinds, poll_for

LLAMA = PulledModel("llama3.1:8b", 8 * GiB, "46e0c10c039e")


@pytest.fixture
def ollama(world: ServerWorld) -> OllamaStandIn:
    standin = OllamaStandIn(world.runners("ollama"), [LLAMA], wall_clock=world.wall_clock)
    world.add(standin)
    return standin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the wire ------------------------------------------------------------------------------------


def test_a_refused_connection_is_unreachable_and_says_so() -> None:
    client = JsonHttpClient(f"http://127.0.0.1:{free_port()}", label="Ollama")
    with pytest.raises(ServerUnreachable, match="connection refused"):
        client.get_json("/api/ps")


def test_a_server_that_never_answers_times_out_quickly() -> None:
    stop = threading.Event()

    class Silent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stop.wait(5)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        client = JsonHttpClient(f"http://127.0.0.1:{httpd.server_address[1]}", timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="no complete answer"):
            client.get_json("/api/ps")
        assert time.monotonic() - started < 1.5
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        ("garbage", ServerBadAnswer, "not JSON"),
        ("error", ServerBadAnswer, "HTTP 500"),
        ("hang_up", ServerUnreachable, "connection broke"),
    ],
)
def test_bad_answers_become_clear_errors(
    ollama: OllamaStandIn, mode: str, error: type[Exception], words: str
) -> None:
    ollama.mode = mode
    with pytest.raises(error, match=words):
        JsonHttpClient(ollama.url).get_json("/api/ps")


def test_a_url_that_is_not_http_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="'localhost:11434'"):
        JsonHttpClient("localhost:11434")


# --- the adapter over a simulated minute ---------------------------------------------------------


def test_a_server_that_is_down_is_asked_a_few_times_a_minute_with_one_event(world: ServerWorld) -> None:
    standin = world.add(OllamaStandIn(world.runners("ollama"), [LLAMA], wall_clock=world.wall_clock))
    standin.mode = "hang_up"  # it counts every request, then drops the connection
    holder = world.holder(OllamaHolder, standin, standin.runners.processes)

    events = poll_for(holder, world, 60.0)  # 600 polls at 10 Hz

    # tries at 0, 2, 6, 14, 30 s (then 62 s): the engine's 10 Hz polling does not reach the server
    assert standin.count() == 5
    (down,) = kinds(events, "ServerDown")
    assert down.server == "ollama" and down.url == standin.url and down.retry_in_s == 2.0
    assert "connection broke" in down.message
    status = holder.server_status()
    assert status.up is False and status.retry_at == pytest.approx(62.0, abs=0.3)
    assert "does not answer" in (status.message or "")

    standin.mode = "normal"
    standin.client_load(LLAMA.name)
    events = poll_for(holder, world, 3.0)
    (up,) = kinds(events, "ServerUp")
    assert up.down_for_s == pytest.approx(62.0, abs=0.3)
    assert [m.name for m in holder.models()] == [LLAMA.name]
    assert holder.server_status().up is True


def test_a_server_that_answers_garbage_is_shown_as_such_and_not_stormed(world: ServerWorld) -> None:
    standin = world.add(OllamaStandIn(world.runners("ollama"), [LLAMA], wall_clock=world.wall_clock))
    holder = world.holder(OllamaHolder, standin, standin.runners.processes)
    standin.client_load(LLAMA.name)
    holder.poll()
    holder.evict([LLAMA.name], "game")
    standin.mode = "garbage"

    events = poll_for(holder, world, 60.0)

    assert standin.count("GET", "/api/ps") <= 1 + 6
    (down,) = kinds(events, "ServerDown")
    assert "not JSON" in down.message and "text/html" in down.message
    # what we evicted is still shown, restorable, with the reason the server cannot be reached
    (model,) = holder.models()
    assert model.state == ModelState.EVICTED
    assert "answers, but not as its API does" in (model.last_error or "")


@pytest.mark.parametrize("kind", ["ollama", "llama_cpp", "llama_swap"])
def test_json_of_the_wrong_shape_is_a_clear_status_for_every_adapter(world: ServerWorld, kind: str) -> None:
    runners = world.runners(kind)
    standin: StandInServer
    if kind == "ollama":
        standin = OllamaStandIn(runners, [LLAMA], wall_clock=world.wall_clock)
        cls: Any = OllamaHolder
        words = "'models'"
    elif kind == "llama_cpp":
        standin = LlamaCppRouterStandIn(runners, {"m": ("/models/m.gguf", GiB)})
        cls, words = LlamaCppHolder, "'data'"
    else:
        standin = LlamaSwapStandIn(runners, {"m": GiB})
        cls, words = LlamaSwapHolder, "'running'"
    world.add(standin)
    standin.mode = "wrong_shape"
    holder = world.holder(cls, standin, runners.processes)
    events = poll_for(holder, world, 1.0)
    (down,) = kinds(events, "ServerDown")
    assert words in down.message
    assert holder.models() == []


def test_a_restore_while_the_server_is_down_waits_with_a_reason(
    world: ServerWorld, ollama: OllamaStandIn
) -> None:
    holder = world.holder(OllamaHolder, ollama, ollama.runners.processes)
    ollama.client_load(LLAMA.name)
    holder.poll()
    holder.evict([LLAMA.name], "game")
    ollama.stop()  # really down: connection refused
    poll_for(holder, world, 3.0)
    holder.start_load(LLAMA.name)
    (model,) = holder.models()
    assert model.state == ModelState.EVICTED
    assert "not loaded" in (model.last_error or "") and "connection refused" in (model.last_error or "")
