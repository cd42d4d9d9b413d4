"""Find the processes that hold a model server's VRAM, from the process table (psutil), so the classifier can
give them the role `managed` (their VRAM is ours to free, never a foreign trigger) and eviction can check
that their memory really came back.

- Ollama: `ollama serve` starts one runner per loaded model: `ollama runner --model <blob> ...` (older)
  or `ollama runner --ollama-engine ...` (newer); process name "ollama", first argument "runner".
- llama.cpp's server in router mode: the router (`llama-server` without a model) spawns one `llama-server`
  child per loaded model; the router itself holds no VRAM.
- llama-swap: starts each model's upstream command (usually llama-server) as its child.

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
