"""Generic stop and start for whatever has no adapter: `kind = "command"` (a stop and a start command line)
and `kind = "systemd"` (a user or system unit). Both are holders like the model-server adapters (they
subclass ServerHolder and reuse its machinery): what they hold is one item, named after the command's
processes or the unit, held while it runs; its VRAM is what its processes hold in NVML; a free stops it and
waits until NVML shows that memory back (residue reported); bringing it back starts it again; and while the
policy holds the GPU (a game), an item that comes back is stopped again at the next listing.

Commands run without a shell (`shlex.split`), with stdin closed and their output kept (the last 2 KiB, for
the error message), each in its own session with a deadline: a stop that overruns it is killed with its
whole process group. A start command that is still running at its deadline is taken to be the app itself
and is left running (its output keeps being read and dropped).

systemd units go through `systemctl [--user] stop|start UNIT`: a system unit is stopped with the user's own
rights, so polkit decides (it may ask, or refuse: the message then says to use a user unit or a polkit
rule); VRAM Steward never runs anything as root. The unit's processes are those of its cgroup
(`systemctl show -p ControlGroup`, then `cgroup.procs` under /sys/fs/cgroup, sub-groups included).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from app.core.gpu.backend import GpuBackend
from app.core.holders import ModelState
from app.core.servers.base import JsonHttpClient, ServerBadAnswer, ServerUnreachable
from app.core.servers.holder import ServedModel, ServerHolder
from app.core.servers.runners import RunnerProcess, app_processes
from app.core.servers.verify_free import measure
from app.core.settings import ServerConfig, Settings

logger = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 2048  # what an error message quotes of a command's output
KILL_GRACE_S = 2.0  # SIGTERM, then this long, then SIGKILL
SHOW_TIMEOUT_S = 5.0  # `systemctl show` (a listing) takes milliseconds; a hung bus must not hold a listing
CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNNING_STATES = frozenset({"active", "activating", "reloading", "deactivating"})
PROCESS_WAIT_INTERVAL_S = 0.1


@dataclass(frozen=True)
class CommandResult:
    """How one command ended. `returncode` None: still running at its deadline (see `timed_out`)."""

    argv: tuple[str, ...]
    pid: int
    returncode: int | None
    output: str  # the last OUTPUT_TAIL_BYTES of stdout and stderr together
    timed_out: bool = False
    left_running: bool = False  # timed out, and left running on purpose (a start command that is the app)

    def describe(self) -> str:
        """ "`docker stop comfy` failed (exit 1): Error: No such container: comfy"."""
        what = f"`{shlex.join(self.argv)}`"
        if self.timed_out and not self.left_running:
            text = f"{what} did not finish in time and was killed"
        else:
            text = f"{what} failed (exit {self.returncode})"
        tail = self.output.strip().splitlines()[-3:]
        return text + (": " + " / ".join(tail) if tail else "")


class _OutputTail:
    """Reads a pipe until its end on a daemon thread, keeping only the last bytes."""

    def __init__(self, stream: Any) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._drain, args=(stream,), name="command-output", daemon=True
        )
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            while piece := stream.read1(4096):
                with self._lock:
                    self._chunks.append(piece)
                    self._size += len(piece)
                    while self._size - len(self._chunks[0]) >= OUTPUT_TAIL_BYTES:
                        self._size -= len(self._chunks.popleft())
        with contextlib.suppress(OSError):
            stream.close()

    def text(self, wait_s: float = 0.5) -> str:
        self._thread.join(wait_s)  # the command ended: its last words are on their way
        with self._lock:
            data = b"".join(self._chunks)[-OUTPUT_TAIL_BYTES:]
        return data.decode("utf-8", errors="replace")


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float,
    keep_running: bool = False,
    until: Callable[[], bool] | None = None,
) -> CommandResult:
    """Run `argv` (no shell) in its own session and wait for it, at most `timeout_s`. Past the deadline it is
    killed with its process group, unless `keep_running`. `until`: a check polled while waiting; when it
    turns true, the command counts as done though still running (a start command whose app is up).
    Raises ServerBadAnswer when the program cannot be started at all."""
    args = tuple(argv)
    try:
        process = subprocess.Popen(  # the user's own command line, never through a shell
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise ServerBadAnswer(f"`{shlex.join(args)}` could not be started: {exc.strerror or exc}") from exc
    output = _OutputTail(process.stdout)
    deadline = time.monotonic() + timeout_s
    while True:
        step = PROCESS_WAIT_INTERVAL_S if until is not None else max(deadline - time.monotonic(), 0.0)
        try:
            returncode = process.wait(timeout=min(step, max(deadline - time.monotonic(), 0.0)))
        except subprocess.TimeoutExpired:
            if until is not None and until():
                _LEFT_RUNNING.append(process)
                return CommandResult(args, process.pid, None, "", left_running=True)
            if time.monotonic() < deadline:
                continue
        else:
            return CommandResult(args, process.pid, returncode, output.text())
        break
    if keep_running:
        _LEFT_RUNNING.append(process)
        logger.info("`%s` still runs after %.0f s: taken to be the app itself", shlex.join(args), timeout_s)
        return CommandResult(args, process.pid, None, "", timed_out=True, left_running=True)
    _kill_group(process)
    return CommandResult(args, process.pid, process.returncode, output.text(), timed_out=True)


_LEFT_RUNNING: list[subprocess.Popen[bytes]] = []  # start commands that are the app: reaped when they end


def reap_left_running() -> None:
    """Collect the exit status of start commands left running that have ended (no zombies left behind)."""
    for process in list(_LEFT_RUNNING):
        if process.poll() is not None:
            with contextlib.suppress(ValueError):
                _LEFT_RUNNING.remove(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


RunCommand = Callable[..., CommandResult]


class StopStartHolder(ServerHolder):
    """What the command and systemd holders share: one item, stopped by a free and started by a load."""

    runners_stay = False  # stopped, its processes end and give back all they held

    def __init__(
        self,
        config: ServerConfig,
        *,
        backend: GpuBackend,
        run: RunCommand = run_command,
        **options: Any,
    ) -> None:
        self._run = run
        options.pop("find_runners", None)  # its processes follow from its own settings
        super().__init__(config, backend=backend, find_runners=self.processes, **options)

    # --- what the two kinds implement ------------------------------------------------------------

    def item_name(self) -> str:
        raise NotImplementedError

    def processes(self) -> list[RunnerProcess]:
        """Its processes now (psutil / the unit's cgroup): their VRAM is what it holds."""
        raise NotImplementedError

    def is_running(self) -> bool:
        """Whether it runs now (on a background thread; may ask systemd)."""
        raise NotImplementedError

    def same_entry(self, config: ServerConfig) -> bool:
        """Whether `config` is this holder's entry, edited (for update_settings)."""
        raise NotImplementedError

    # --- ServerHolder -------------------------------------------------------------------------------

    def _make_client(self, config: ServerConfig, timeout_s: float) -> JsonHttpClient:
        # no HTTP API: ServerHolder keeps a client, this one is never asked anything
        return JsonHttpClient("http://127.0.0.1", timeout_s=timeout_s, label=self.display_name)

    def describe_where(self) -> str:
        return self.display_name

    def _list_models(self) -> list[ServedModel]:
        if not self.is_running():
            return []
        held = None
        processes = self.processes()
        if processes:
            with contextlib.suppress(Exception):  # telemetry trouble must not fail a listing
                held = measure(self._backend.sample(), {p.pid for p in processes})
        vram = held.total_bytes if held is not None and held.visible else None
        return [ServedModel(name=self.item_name(), state=ModelState.RESIDENT, vram_bytes=vram)]

    def update_settings(self, settings: Settings) -> None:
        """Its entry edited in place (a timeout, `match`) applies from the next command."""
        for config in settings.servers:
            if config.kind == self.config.kind and config != self.config and self.same_entry(config):
                self.config = config

    def verify_down(self, timeout_s: float) -> bool:
        """After a stop: wait (real time) until it no longer runs; False when it still does."""
        deadline = time.monotonic() + timeout_s
        while self.processes():
            if time.monotonic() >= deadline:
                return False
            time.sleep(PROCESS_WAIT_INTERVAL_S)
        return True


class CommandHolder(StopStartHolder):
    """`kind = "command"`: a stop and a start command line, and optionally `match` naming its processes."""

    name = "command"

    def __init__(self, config: ServerConfig, **options: Any) -> None:
        self.display_name = f"the command entry {config.match or shlex.split(config.start)[0]!r}"
        self._started_session: int | None = None  # the session of the last start command we ran
        self._believed_running = True  # without `match`: it runs until we stop it (we cannot tell)
        super().__init__(config, **options)

    def item_name(self) -> str:
        if self.config.match:
            return self.config.match
        return os.path.basename(shlex.split(self.config.start)[0])

    def same_entry(self, config: ServerConfig) -> bool:
        return (config.stop, config.start) == (self.config.stop, self.config.start) or (
            bool(config.match) and config.match == self.config.match
        )

    def processes(self) -> list[RunnerProcess]:
        """With `match`: the processes whose executable is named so or whose command line contains it, and
        their descendants. Without: those still in the session of the start command we ran last."""
        reap_left_running()
        match = self.config.match
        own = os.getpid()
        if match:
            found = app_processes(lambda name, cmdline: _matches(match, name, cmdline))
            return [p for p in found if p.pid != own]
        session = self._started_session
        if session is None:
            return []
        out = []
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            with contextlib.suppress(OSError):
                if proc.pid != own and os.getsid(proc.pid) == session:
                    out.append(
                        RunnerProcess(
                            proc.pid, str(proc.info["name"] or ""), tuple(proc.info["cmdline"] or ())
                        )
                    )
        return out

    def is_running(self) -> bool:
        if self.config.match:
            return bool(self.processes())
        return self._believed_running or bool(self.processes())

    def _unload(self, model: str) -> None:
        result = self._run(shlex.split(self.config.stop), timeout_s=self.config.timeout_s)
        if result.timed_out or result.returncode != 0:
            raise ServerBadAnswer(f"{self.display_name}: stopping it failed: {result.describe()}")
        self._believed_running = False
        if self.config.match and not self.verify_down(min(self.config.timeout_s, 10.0)):
            logger.warning("%s: its processes still run after the stop command", self.display_name)

    def _load(self, model: str) -> None:
        until = (lambda: bool(self.processes())) if self.config.match else None
        result = self._run(
            shlex.split(self.config.start), timeout_s=self.config.timeout_s, keep_running=True, until=until
        )
        if not result.left_running and result.returncode != 0:
            raise ServerBadAnswer(f"{self.display_name}: starting it failed: {result.describe()}")
        self._started_session = result.pid
        self._believed_running = True
        if self.config.match and not self.processes():
            raise ServerBadAnswer(
                f"{self.display_name}: `{self.config.start}` ran, but no process matching "
                f"{self.config.match!r} runs: check `match`"
            )


def _matches(match: str, name: str, cmdline: tuple[str, ...]) -> bool:
    """`match` names the process (its name or executable's base name) or is part of its command line."""
    base = os.path.basename(cmdline[0]) if cmdline else ""
    return match in (name, base) or match in " ".join(cmdline)


class SystemdHolder(StopStartHolder):
    """`kind = "systemd"`: a user unit (`systemctl --user`) or a system unit (the user's rights, polkit)."""

    name = "systemd"

    def __init__(
        self,
        config: ServerConfig,
        *,
        systemctl: str = "systemctl",
        cgroup_root: Path = CGROUP_ROOT,
        **options: Any,
    ) -> None:
        self.display_name = f"the {'user' if config.user else 'system'} unit {config.unit}"
        self._systemctl = systemctl
        self._cgroup_root = cgroup_root
        self._control_group: str | None = None  # from the last `systemctl show`
        self._main_pid: int | None = None
        super().__init__(config, **options)

    def item_name(self) -> str:
        return self.config.unit

    def same_entry(self, config: ServerConfig) -> bool:
        return (config.unit, config.user) == (self.config.unit, self.config.user)

    def systemctl(self, *args: str) -> list[str]:
        return [self._systemctl, *(["--user"] if self.config.user else []), *args]

    def is_running(self) -> bool:
        """`systemctl show`: its state, cgroup and main process. Raises ServerUnreachable when systemd cannot
        be asked (no user manager, no bus): the usual ServerDown and backoff follow."""
        argv = self.systemctl(
            "show", "-p", "ActiveState", "-p", "ControlGroup", "-p", "MainPID", self.config.unit
        )
        result = self._run(argv, timeout_s=min(self.config.timeout_s, SHOW_TIMEOUT_S))
        if result.timed_out or result.returncode != 0:
            raise ServerUnreachable(f"asking systemd about {self.config.unit} failed: {result.describe()}")
        props = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
        self._control_group = props.get("ControlGroup") or None
        main_pid = props.get("MainPID", "0")
        self._main_pid = int(main_pid) if main_pid.isdigit() and int(main_pid) > 0 else None
        return props.get("ActiveState", "") in RUNNING_STATES

    def processes(self) -> list[RunnerProcess]:
        """The processes of its cgroup (sub-groups included); its main process when that cannot be read."""
        pids = self._cgroup_pids()
        if not pids and self._main_pid is not None:
            pids = {self._main_pid}
        out = []
        for pid in sorted(pids):
            try:
                proc = psutil.Process(pid)
                out.append(RunnerProcess(pid, proc.name(), tuple(proc.cmdline())))
            except psutil.AccessDenied:
                out.append(RunnerProcess(pid, self.config.unit, ()))  # a system unit's: not ours to read
            except psutil.Error:
                continue  # gone meanwhile
        return out

    def _cgroup_pids(self) -> set[int]:
        group = self._control_group
        if not group:
            return set()
        top = self._cgroup_root / group.lstrip("/")
        pids: set[int] = set()
        for folder, _, files in os.walk(top):
            if "cgroup.procs" not in files:
                continue
            with contextlib.suppress(OSError):
                text = (Path(folder) / "cgroup.procs").read_text()
                pids.update(int(line) for line in text.split() if line.isdigit())
        return pids

    def _unload(self, model: str) -> None:
        self._systemctl_or_fail("stop")  # waits for the stop job: its cgroup is empty (NVML then verifies)
        self._main_pid = None

    def _load(self, model: str) -> None:
        self._systemctl_or_fail("start")

    def _systemctl_or_fail(self, verb: str) -> None:
        result = self._run(self.systemctl(verb, self.config.unit), timeout_s=self.config.timeout_s)
        if result.timed_out or result.returncode != 0:
            hint = ""
            if not self.config.user and any(
                word in result.output.lower()
                for word in ("authentication", "access denied", "not authorized")
            ):
                hint = (
                    " (VRAM Steward asks systemd with your own rights, never as root: allow it with a polkit "
                    "rule for org.freedesktop.systemd1.manage-units, or make it a user unit with user = true)"
                )
            raise ServerBadAnswer(f"{self.display_name}: {verb} failed: {result.describe()}{hint}")
