"""Find the AI apps a user runs without being told: each known app on its default loopback port (and on the
`--port` its process was started with), identified by what its answer looks like, never by the port alone.

Rules: only loopback is ever probed (127.0.0.1; `discover` refuses any other host); a probe is one GET with a
deadline on the whole exchange (connect, headers, body) and a size cap; a port where nothing listens costs
one refused connect; a port whose listener stays silent is given up after its first probe. Apps already in a
`[[servers]]` entry are not offered again; `include_managed` lists them too, marked managed (what
`vram-steward discover` and `GET /v1/discovered` show).

Default ports, from each app's own documentation or source:
- Ollama 11434: ollama/docs/faq.md ("Ollama binds 127.0.0.1 port 11434 by default"); `GET /` answers
  "Ollama is running" (server/routes.go).
- LM Studio 1234: lmstudio.ai/docs, "Running LM Studio as a service" (`lms server start`, port 1234);
  `GET /api/v1/models` -> {"models": [...]} (lmstudio-ai/docs 1_developer/2_rest/list.md).
- ComfyUI 8188: docs.comfy.org/development/comfyui-server/startup-flags (`--port`, default 8188);
  `GET /system_stats` -> {"system": {...}, "devices": [...]} (server.py).
- A1111 / Forge 7860: stable-diffusion-webui's README and wiki (Gradio's 7860; the API needs `--api`);
  `GET /sdapi/v1/memory` -> {"ram": {...}, "cuda": {...}} (modules/api/api.py).
- KoboldCpp 5001: koboldcpp.py `--port` (default 5001); `GET /api/extra/version` -> {"result": "KoboldCpp"}.
- text-generation-webui 5000: its docs/12 - OpenAI API.md (`--api`, `--api-port` default 5000);
  `GET /v1/internal/model/info` -> {"model_name", "lora_names"}.
- vLLM 8000: docs.vllm.ai, `vllm serve` (`--port`, default 8000); `GET /v1/models` cards owned_by "vllm".
- SGLang 30000: docs.sglang.ai, server arguments (`--port`, default 30000); cards owned_by "sglang".
- InvokeAI 9090: invokeai.yaml `port: 9090` (InvokeAI configuration docs); `GET /api/v1/app/version` ->
  {"version", "highlights"} (app/api/routers/app_info.py).
- LocalAI 8080: localai.io, "Run LocalAI" (`--address :8080`); `GET /system` -> {"backends", "loaded_models"}.
- llama.cpp 8080: tools/server/README.md (`--port`, default 8080); `GET /v1/models` cards owned_by
  "llamacpp".
- llama-swap 8080: its README (`--listen :8080`); `GET /running` -> {"running": [...]}.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.events import AppFound
from app.core.gpu.backend import GpuBackend
from app.core.loopback import is_loopback
from app.core.servers.runners import RunnerProcess, app_processes
from app.core.settings import ServerConfig

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 0.5  # the whole GET: a local app answers in milliseconds
PROBE_MAX_BYTES = 64 * 1024  # an identifying answer is small; a larger one is cut (and parsed as cut)
DISCOVERY_INTERVAL_S = 300.0  # "rarely": every 5 minutes ...
NEW_PROCESS_CHECK_S = 10.0  # ... and when a new compute process shows up in NVML (checked this often)
MIN_GAP_S = 30.0  # but never more often than this


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None


def _owned_by(owner: str) -> Callable[[Answer], bool]:
    """An OpenAI-style `GET /v1/models` answer whose model cards say who serves them."""

    def identify(answer: Answer) -> bool:
        data = answer.json()
        cards = data.get("data") if isinstance(data, dict) else None
        return (
            isinstance(cards, list)
            and bool(cards)
            and all(isinstance(c, dict) and c.get("owned_by") == owner for c in cards)
        )

    return identify


def _dict_with(*keys: str) -> Callable[[Answer], bool]:
    def identify(answer: Answer) -> bool:
        data = answer.json()
        return isinstance(data, dict) and all(k in data for k in keys)

    return identify


@dataclass(frozen=True)
class AppProbe:
    """How to recognise one app: its kind (as in `[[servers]]`), default port, and one GET and its check."""

    kind: str
    display_name: str
    port: int
    path: str
    identify: Callable[[Answer], bool]


def _ollama(answer: Answer) -> bool:
    return answer.status == 200 and answer.body.strip() == b"Ollama is running"


def _lm_studio(answer: Answer) -> bool:
    data = answer.json()
    models = data.get("models") if isinstance(data, dict) else None
    return isinstance(models, list) and all(
        isinstance(m, dict) and "key" in m and "type" in m for m in models
    )


def _koboldcpp(answer: Answer) -> bool:
    data = answer.json()
    return isinstance(data, dict) and data.get("result") == "KoboldCpp"


def _comfyui(answer: Answer) -> bool:
    data = answer.json()
    return (
        isinstance(data, dict)
        and isinstance(data.get("system"), dict)
        and isinstance(data.get("devices"), list)
    )


KNOWN_APPS: tuple[AppProbe, ...] = (
    AppProbe("ollama", "Ollama", 11434, "/", _ollama),
    AppProbe("lm_studio", "LM Studio", 1234, "/api/v1/models", _lm_studio),
    AppProbe("comfyui", "ComfyUI", 8188, "/system_stats", _comfyui),
    AppProbe(
        "a1111", "Stable Diffusion web UI (A1111/Forge)", 7860, "/sdapi/v1/memory", _dict_with("ram", "cuda")
    ),
    AppProbe("koboldcpp", "KoboldCpp", 5001, "/api/extra/version", _koboldcpp),
    AppProbe(
        "text_generation_webui",
        "text-generation-webui",
        5000,
        "/v1/internal/model/info",
        _dict_with("model_name", "lora_names"),
    ),
    AppProbe("vllm", "vLLM", 8000, "/v1/models", _owned_by("vllm")),
    AppProbe("sglang", "SGLang", 30000, "/v1/models", _owned_by("sglang")),
    AppProbe("invokeai", "InvokeAI", 9090, "/api/v1/app/version", _dict_with("version", "highlights")),
    # three apps default to 8080: the most telling answer first (llama-swap also proxies /v1/models)
    AppProbe("llama_swap", "llama-swap", 8080, "/running", _dict_with("running")),
    AppProbe("localai", "LocalAI", 8080, "/system", _dict_with("backends", "loaded_models")),
    AppProbe("llama_cpp", "llama.cpp server", 8080, "/v1/models", _owned_by("llamacpp")),
)


@dataclass(frozen=True)
class FoundApp:
    """An app that answered as itself on a loopback port; `managed`: a `[[servers]]` entry names its port."""

    kind: str
    display_name: str
    url: str
    port: int
    managed: bool = False

    def event(self, at: float) -> AppFound:
        """The event that offers it to the user (a notification with "Manage it", the dashboard)."""
        return AppFound(
            at=at, server_kind=self.kind, display_name=self.display_name, url=self.url, port=self.port
        )

    def server_config(self) -> ServerConfig:
        """The `[[servers]]` entry that manages it."""
        return ServerConfig(kind=self.kind, url=self.url)


@dataclass(frozen=True)
class DiscoveredApp:
    """What a discovery watcher found and when: for the API (`GET /v1/discovered`) and the dashboard.
    `managed` is as of the moment it is asked (an app accepted since it was found is managed)."""

    kind: str
    display_name: str
    url: str
    port: int
    managed: bool
    found_at: float  # wall clock (Unix seconds): when this run of finding it began

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.display_name,
            "url": self.url,
            "port": self.port,
            "managed": self.managed,
            "found_at": self.found_at,
        }


class ProbeFailed(Exception):
    """Nothing usable came back: refused, silent past the deadline, or not HTTP."""


def probe(host: str, port: int, path: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> Answer:
    """One GET to a loopback address, with a deadline on the whole exchange and the answer cut at
    PROBE_MAX_BYTES. Raises ValueError for a host that is not loopback, ProbeFailed when nothing usable
    came back."""
    if not is_loopback(host):
        raise ValueError(f"discovery probes loopback only, not {host!r}")
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    cut = threading.Event()

    def cut_off() -> None:
        cut.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout_s, cut_off)
    timer.daemon = True
    timer.start()
    try:
        connection.request("GET", path, headers={"Accept": "application/json", "Connection": "close"})
        response = connection.getresponse()
        body = b""
        while len(body) < PROBE_MAX_BYTES and not cut.is_set():
            piece = response.read1(PROBE_MAX_BYTES - len(body))
            if not piece:
                break
            body += piece
        status = response.status
    except (http.client.HTTPException, OSError) as exc:
        raise ProbeFailed(f"GET http://{host}:{port}{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        timer.cancel()
        connection.close()
    if cut.is_set():
        raise ProbeFailed(f"GET http://{host}:{port}{path}: no complete answer within {timeout_s:g} s")
    return Answer(status, body)


def _url_host(host: str) -> str:
    """An IPv6 address in brackets, as a URL writes it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _listening(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _loopback_port(config: ServerConfig) -> int | None:
    """The port of an entry's loopback URL (None: no URL, another host, or no port)."""
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(config.url)
        if parts.hostname and is_loopback(parts.hostname) and parts.port:
            return parts.port
    return None


def _configured_ports(configured: Iterable[ServerConfig]) -> set[int]:
    return {port for config in configured if (port := _loopback_port(config)) is not None}


def is_managed(app: FoundApp, configured: Iterable[ServerConfig]) -> bool:
    """Whether a `[[servers]]` entry already names the loopback port the app answered on."""
    return app.port in _configured_ports(configured)


ProcessPorts = Callable[[], dict[str, set[int]]]


def app_process_ports() -> dict[str, set[int]]:
    """kind -> the `--port`s its processes were started with (psutil; each app's recogniser in runners.py)."""
    from app.core.servers import ADAPTERS  # the finders live with the adapters

    out: dict[str, set[int]] = {}
    for kind, (_, find) in ADAPTERS.items():
        try:
            found: list[RunnerProcess] = find()
        except Exception:
            logger.debug("listing %s processes failed", kind, exc_info=True)
            continue
        ports = {p.port for p in found if p.port is not None}
        if ports:
            out[kind] = ports
    try:
        routers = llama_server_router_ports()
    except Exception:
        logger.debug("listing llama-server processes failed", exc_info=True)
        routers = set()
    if routers:
        out.setdefault("llama_cpp", set()).update(routers)
    return out


def _is_llama_server(name: str, cmdline: tuple[str, ...]) -> bool:
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower().startswith("llama-server")


def llama_server_router_ports() -> set[int]:
    """The `--port`s of the `llama-server` processes that no other llama-server started: routers (and lone
    servers), not the per-model instances a router starts on ports of its own (the adapter's runner finder
    lists only those instances, without a port)."""
    import psutil

    ports: set[int] = set()
    for process in app_processes(_is_llama_server):
        if process.port is None:
            continue
        try:
            parent = psutil.Process(process.pid).parent()
            if parent is not None and _is_llama_server(parent.name(), ()):
                continue  # an instance of a router
        except psutil.Error:
            continue
        ports.add(process.port)
    return ports


def discover(
    configured: Collection[ServerConfig] = (),
    *,
    probes: Sequence[AppProbe] = KNOWN_APPS,
    host: str = "127.0.0.1",
    timeout_s: float = PROBE_TIMEOUT_S,
    process_ports: ProcessPorts | None = app_process_ports,
    include_managed: bool = False,
    extra_ports: Iterable[int] = (),
) -> list[FoundApp]:
    """The known apps answering on loopback that no `[[servers]]` entry names yet; with `include_managed`,
    also those an entry names (marked `managed`; each entry's loopback port is asked as its kind first).
    `extra_ports` are asked as every known app (`vram-steward discover --port`).
    Blocks for at most about (listening ports x probes on them x timeout_s): run it off the engine thread."""
    if not is_loopback(host):
        raise ValueError(f"discovery probes loopback only, not {host!r}")
    candidates: dict[int, list[AppProbe]] = {}
    for app in probes:
        candidates.setdefault(app.port, []).append(app)
    for port in extra_ports:
        if not 0 < port < 65536:
            raise ValueError(f"not a TCP port: {port}")
        listed = candidates.setdefault(port, [])
        listed.extend([app for app in probes if app not in listed])
    by_kind = {app.kind: app for app in probes}

    def ask_first(kind: str, port: int) -> None:
        known = by_kind.get("a1111" if kind == "forge" else kind)
        if known is not None and known not in candidates.setdefault(port, []):
            candidates[port].insert(0, known)

    if process_ports is not None:
        for kind, ports in process_ports().items():
            for port in ports:
                ask_first(kind, port)  # the process said which app it is: ask that first
    managed_ports = _configured_ports(configured)
    if include_managed:
        for config in configured:
            entry_port = _loopback_port(config)
            if entry_port is not None:
                ask_first(config.kind, entry_port)  # the entry says which app it is
    found: list[FoundApp] = []
    for port, apps in candidates.items():
        managed = port in managed_ports
        if (managed and not include_managed) or not _listening(host, port, timeout_s):
            continue
        for app in apps:
            try:
                answer = probe(host, port, app.path, timeout_s=timeout_s)
            except ProbeFailed as exc:
                logger.debug("discovery: %s", exc)
                if "no complete answer" in str(exc):
                    break  # a silent listener answers no one: do not wait on it again
                continue
            if app.identify(answer):
                url = f"http://{_url_host(host)}:{port}"
                found.append(FoundApp(app.kind, app.display_name, url, port, managed))
                break
    return found


def discover_all(configured: Collection[ServerConfig]) -> list[FoundApp]:
    """`discover`, managed apps included: what a watcher runs."""
    return discover(configured, include_managed=True)


class DiscoveryWatcher:
    """Runs `discover` on its own daemon thread: at start, every DISCOVERY_INTERVAL_S, and soon after a new
    compute process appears in NVML (never more often than MIN_GAP_S). Each app found for the first time that
    no entry manages is handed to the subscribers (on this thread); nothing here touches the engine.
    `discovered()` lists everything the last run found, managed or not (the API and the dashboard)."""

    def __init__(
        self,
        configured: Callable[[], Collection[ServerConfig]],
        *,
        compute_pids: Callable[[], set[int]] | None = None,
        discover_fn: Callable[[Collection[ServerConfig]], list[FoundApp]] = discover_all,
        interval_s: float = DISCOVERY_INTERVAL_S,
        check_s: float = NEW_PROCESS_CHECK_S,
        min_gap_s: float = MIN_GAP_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._configured = configured
        self._compute_pids = compute_pids
        self._discover = discover_fn
        self._interval_s = interval_s
        self._check_s = check_s
        self._min_gap_s = min_gap_s
        self._wall_clock = wall_clock
        self._subscribers: list[Callable[[FoundApp], None]] = []
        self._reported: set[tuple[str, str]] = set()
        self._found: tuple[FoundApp, ...] = ()
        self._all: tuple[FoundApp, ...] = ()  # the last run's, managed ones too
        self._first_found: dict[tuple[str, str], float] = {}  # (kind, url) -> when, while it keeps answering
        self._last_run_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_backend(
        cls, configured: Callable[[], Collection[ServerConfig]], backend: GpuBackend
    ) -> DiscoveryWatcher:
        """A watcher that also looks again when NVML lists a compute process it had not seen."""

        def compute_pids() -> set[int]:
            snapshot = backend.sample()
            return {p.pid for gpu in snapshot.gpus for p in gpu.processes}

        return cls(configured, compute_pids=compute_pids)

    @property
    def found(self) -> tuple[FoundApp, ...]:
        """What the last run found (apps not configured yet)."""
        return self._found

    @property
    def last_run_at(self) -> float | None:
        """When the last run began (wall clock, Unix seconds); None before the first."""
        return self._last_run_at

    def discovered(self) -> tuple[DiscoveredApp, ...]:
        """Every app the last run found, managed ones too, with when it was first found (in the streak of
        runs that kept finding it); `managed` against the settings now. Safe from any thread."""
        with self._lock:
            found, first = self._all, dict(self._first_found)
        configured = self._configured()
        return tuple(
            DiscoveredApp(
                kind=app.kind,
                display_name=app.display_name,
                url=app.url,
                port=app.port,
                managed=is_managed(app, configured),
                found_at=first.get((app.kind, app.url), 0.0),
            )
            for app in found
        )

    def report(self) -> dict[str, Any]:
        """`discovered()` as JSON, with when the last run began: what `GET /v1/discovered` answers."""
        return {"last_run_at": self._last_run_at, "apps": [app.to_json() for app in self.discovered()]}

    def subscribe(self, on_found: Callable[[FoundApp], None]) -> None:
        with self._lock:
            self._subscribers.append(on_found)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run_once(self) -> list[FoundApp]:
        """One discovery now (on the calling thread); returns and reports what is new and not managed."""
        started = self._wall_clock()
        try:
            configured = self._configured()
            found = self._discover(configured)
        except Exception:
            logger.exception("discovering apps failed")
            return []
        unmanaged = [f for f in found if not f.managed and not is_managed(f, configured)]
        with self._lock:
            self._all = tuple(found)
            self._first_found = {
                key: self._first_found.get(key, started) for key in ((f.kind, f.url) for f in found)
            }
            self._last_run_at = started
        self._found = tuple(unmanaged)
        new = [f for f in unmanaged if (f.kind, f.url) not in self._reported]
        for app in new:
            self._reported.add((app.kind, app.url))
            logger.info("found %s at %s (not managed yet)", app.display_name, app.url)
            with self._lock:
                subscribers = list(self._subscribers)
            for subscriber in subscribers:
                try:
                    subscriber(app)
                except Exception:
                    logger.exception("a discovery subscriber failed")
        return new

    def _run(self) -> None:
        seen = self._pids()
        last = time.monotonic()
        self.run_once()
        while not self._stop.wait(self._check_s):
            now = time.monotonic()
            pids = self._pids()
            appeared = bool(pids - seen)
            seen = pids
            if now - last >= self._interval_s or (appeared and now - last >= self._min_gap_s):
                last = now
                self.run_once()

    def _pids(self) -> set[int]:
        if self._compute_pids is None:
            return set()
        try:
            return self._compute_pids()
        except Exception:
            logger.debug("reading compute processes failed", exc_info=True)
            return set()
