"""Find the processes that hold a model server's VRAM, from the process table (psutil), so the classifier can
give them the role `managed` (their VRAM is ours to free, never a foreign trigger) and eviction can check
that their memory really came back.

- Ollama: `ollama serve` starts one runner per loaded model: `ollama runner --model <blob> ...` (older)
  or `ollama runner --ollama-engine ...` (newer); process name "ollama", first argument "runner".
- llama.cpp's server in router mode: the router (`llama-server` without a model) spawns one `llama-server`
  child per loaded model; the router itself holds no VRAM.
- llama-swap: starts each model's upstream command (usually llama-server) as its child.
- ComfyUI, A1111/Forge, InvokeAI, LocalAI, KoboldCpp: the app's own process (by name or script) and its
  descendants, tagged with the `--port` it was started with (`app_processes`).

A listing costs a few milliseconds, so the adapters do it at most once per server refresh (every ~2 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerProcess:
    pid: int
    name: str
    cmdline: tuple[str, ...]
    port: int | None = None  # the `--port` its app was started with (None: not known); see app_processes

    def has_argument(self, value: str) -> bool:
        """Whether `value` is one of the arguments (or the value part of an `--opt=value` argument)."""
        return any(arg == value or arg.endswith("=" + value) for arg in self.cmdline[1:])

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid})"


FindRunners = Callable[[], list[RunnerProcess]]


def _listing() -> list[tuple[int, int, str, tuple[str, ...]]]:
    """(pid, ppid, name, cmdline) of every process we may read."""
    out = []
    for proc in psutil.process_iter(["pid", "ppid", "name", "cmdline"]):
        info = proc.info
        try:
            out.append(
                (
                    int(info["pid"]),
                    int(info["ppid"] or 0),
                    str(info["name"] or ""),
                    tuple(info["cmdline"] or ()),
                )
            )
        except (TypeError, ValueError):
            continue
    return out


def _base(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower().removesuffix(".exe")


def ollama_runners() -> list[RunnerProcess]:
    """Ollama's runner processes: name "ollama", first argument "runner" (before 0.4: a separate
    `ollama_llama_server` binary)."""
    return [
        RunnerProcess(pid, name, cmdline)
        for pid, _, name, cmdline in _listing()
        if (_base(name).startswith("ollama") and len(cmdline) > 1 and cmdline[1] == "runner")
        or _base(name).startswith("ollama_llama_se")  # the kernel keeps 15 characters of a process name
    ]


def llama_server_instances() -> list[RunnerProcess]:
    """The `llama-server` processes that a `llama-server` router started (children of another one)."""
    listing = _listing()
    servers = {pid for pid, _, name, _ in listing if _base(name).startswith("llama-server")}
    return [
        RunnerProcess(pid, name, cmdline)
        for pid, ppid, name, cmdline in listing
        if pid in servers and ppid in servers
    ]


def llama_swap_upstreams() -> list[RunnerProcess]:
    """Every descendant of a `llama-swap` process: the upstream servers it started."""
    listing = _listing()
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in listing:
        children.setdefault(ppid, []).append(pid)
    roots = [pid for pid, _, name, _ in listing if _base(name).startswith("llama-swap")]
    wanted = set(_descendants(roots, children))
    return [RunnerProcess(pid, name, cmdline) for pid, _, name, cmdline in listing if pid in wanted]


def _descendants(roots: Iterable[int], children: dict[int, list[int]]) -> list[int]:
    out: list[int] = []
    stack = [c for r in roots for c in children.get(r, [])]
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


# --- AI apps whose own processes hold the VRAM (ComfyUI, A1111/Forge, InvokeAI, LocalAI, KoboldCpp) -------


def port_argument(cmdline: tuple[str, ...]) -> int | None:
    """The value of `--port N` / `--port=N` among the arguments; None when absent or not a number."""
    for index, arg in enumerate(cmdline):
        value = None
        if arg == "--port" and index + 1 < len(cmdline):
            value = cmdline[index + 1]
        elif arg.startswith("--port="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def app_processes(is_app: Callable[[str, tuple[str, ...]], bool]) -> list[RunnerProcess]:
    """The processes `is_app(name, cmdline)` recognises, with all their descendants (workers, a restarted
    child, backend processes), each tagged with the `--port` its app process was started with, so that an
    adapter keeps only those of the instance it talks to (ServerHolder drops a runner whose port is known
    and differs from its URL's)."""
    listing = _listing()
    children: dict[int, list[int]] = {}
    for pid, ppid, _, _ in listing:
        children.setdefault(ppid, []).append(pid)
    roots = {pid: port_argument(cmdline) for pid, _, name, cmdline in listing if is_app(name, cmdline)}
    port_of: dict[int, int | None] = dict(roots)
    for root, port in roots.items():
        for pid in _descendants([root], children):
            port_of.setdefault(pid, port)
    return [
        RunnerProcess(pid, name, cmdline, port_of[pid]) for pid, _, name, cmdline in listing if pid in port_of
    ]


def _script(cmdline: tuple[str, ...]) -> list[str]:
    """The arguments as lower-case paths with forward slashes (for matching a script's name)."""
    return [arg.replace("\\", "/").lower() for arg in cmdline]


def _is_comfyui(name: str, cmdline: tuple[str, ...]) -> bool:
    """ComfyUI: `python .../ComfyUI/main.py`, `comfy launch` (comfy-cli) or the desktop app's `ComfyUI`."""
    args = _script(cmdline)
    return (
        _base(name) == "comfyui"
        or any(a.endswith("/main.py") and "comfy" in a.rsplit("/", 2)[-2] for a in args if "/" in a)
        or (len(args) > 1 and _base(args[0]) == "comfy" and args[1] == "launch")
    )


def _is_webui(name: str, cmdline: tuple[str, ...]) -> bool:
    """A1111 and Forge: `python launch.py` or `webui.py` of stable-diffusion-webui(-forge)."""
    args = _script(cmdline)
    return any(
        _base(a) in ("launch.py", "webui.py") and ("webui" in a or "forge" in a or "/" not in a) for a in args
    )


def _is_invokeai(name: str, cmdline: tuple[str, ...]) -> bool:
    """InvokeAI: the `invokeai-web` entry point (the launcher starts it too)."""
    return _base(name).startswith("invokeai-web") or any(_base(a) == "invokeai-web" for a in _script(cmdline))


def _is_localai(name: str, cmdline: tuple[str, ...]) -> bool:
    """LocalAI: the `local-ai` binary; its backends (one gRPC process per model) are its descendants."""
    return _base(name) in ("local-ai", "localai") or bool(cmdline and _base(cmdline[0]) == "local-ai")


def _is_koboldcpp(name: str, cmdline: tuple[str, ...]) -> bool:
    """KoboldCpp: the `koboldcpp` binary or `koboldcpp.py`; in admin mode it reloads in a child process."""
    return _base(name).startswith("koboldcpp") or any(_base(a) == "koboldcpp.py" for a in _script(cmdline))


def comfyui_processes() -> list[RunnerProcess]:
    return app_processes(_is_comfyui)


def webui_processes() -> list[RunnerProcess]:
    return app_processes(_is_webui)


def invokeai_processes() -> list[RunnerProcess]:
    return app_processes(_is_invokeai)


def localai_processes() -> list[RunnerProcess]:
    return app_processes(_is_localai)


def koboldcpp_processes() -> list[RunnerProcess]:
    return app_processes(_is_koboldcpp)


# --- LM Studio, text-generation-webui, vLLM, SGLang: their processes stay after a free ------------------


def _is_lm_studio(name: str, cmdline: tuple[str, ...]) -> bool:
    """LM Studio: the app (`lm-studio`, its AppImage) or its headless daemon `llmster`; the engine runs in a
    `node` helper under ~/.cache/lm-studio/.internal/utils/ or ~/.lmstudio/ (a descendant, or found by its
    path), which holds the models' VRAM and stays when a model is unloaded."""
    first = cmdline[0].replace("\\", "/") if cmdline else ""
    return _base(name).startswith(("lm-studio", "lm studio", "lmstudio", "llmster")) or any(
        part in first for part in ("lm-studio/", ".lmstudio/", "LM-Studio", "LM Studio")
    )


def _is_text_generation_webui(name: str, cmdline: tuple[str, ...]) -> bool:
    """text-generation-webui: `python server.py --api ...` in its folder, or its one_click.py launcher; the
    llama.cpp loader runs a `llama-server` child per loaded model (a descendant)."""
    args = _script(cmdline)
    return any(_base(a) in ("server.py", "one_click.py") for a in args[1:]) and (
        "--api" in args or any("text-generation-webui" in a or "textgen" in a for a in args)
    )


def _is_vllm(name: str, cmdline: tuple[str, ...]) -> bool:
    """vLLM: `vllm serve ...` or `python -m vllm.entrypoints.openai.api_server ...`; the engine core and
    workers (process titles `VLLM::EngineCore`, `VLLM::Worker_TP0`) hold the VRAM and stay while it sleeps."""
    return (
        _base(name).startswith("vllm")
        or (len(cmdline) > 1 and _base(cmdline[0]) == "vllm" and cmdline[1] == "serve")
        or any(a.startswith("vllm.entrypoints") for a in cmdline)
    )


def _is_sglang(name: str, cmdline: tuple[str, ...]) -> bool:
    """SGLang: `python -m sglang.launch_server ...` or `sglang serve ...`; the scheduler (`sglang::scheduler`)
    holds the VRAM and stays while its memory is released."""
    return (
        _base(name).startswith("sglang")
        or (len(cmdline) > 1 and _base(cmdline[0]) == "sglang" and cmdline[1] == "serve")
        or "sglang.launch_server" in cmdline
    )


def lm_studio_processes() -> list[RunnerProcess]:
    return app_processes(_is_lm_studio)


def text_generation_webui_processes() -> list[RunnerProcess]:
    return app_processes(_is_text_generation_webui)


def vllm_processes() -> list[RunnerProcess]:
    return app_processes(_is_vllm)


def sglang_processes() -> list[RunnerProcess]:
    return app_processes(_is_sglang)
