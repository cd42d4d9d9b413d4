"""The `command` and `systemd` holders with real processes: a stand-in app (a Python script) started and
stopped by real command lines; its VRAM on the simulated GPU while it lives (the stand-in NVML below).

systemd: a real `systemd --user` cannot run on the test machines: PID 1 is not systemd, and the user manager
refuses to start ("not booted with systemd"); tricked past that in a private mount namespace, it moves every
process of the machine into its init.scope (docs/servers.md). So the systemd holder is driven through a fake
`systemctl` executable that records its calls and starts/stops a real process in a fake cgroup folder.
A real unit was NOT tested.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.core.holders import HolderRole, ModelState
from app.core.servers.generic import CommandHolder, SystemdHolder, run_command
from app.core.servers.holder import run_at_once
from app.core.settings import ServerConfig
from app.core.units import GiB
from tests.fixtures.servers.world import ServerWorld, kinds

APP_BYTES = 4 * GiB

APP = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""

# starts the app detached (its own session) and exits, like `docker start` or a launcher script
LAUNCH = """
import subprocess, sys
subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""

STOP = """
import os, signal, sys, time
import psutil
pid = int(open(sys.argv[1]).read())
try:
    proc = psutil.Process(pid)
    proc.terminate()
    proc.wait(5)
except psutil.NoSuchProcess:
    pass
"""


class LiveProcessVram:
    """The stand-in NVML side: every live process whose command line holds `marker` holds APP_BYTES on GPU 0
    of the simulated world (allocated when it appears, freed when it is gone)."""

    def __init__(self, world: ServerWorld, marker: str) -> None:
        self.world = world
        self.marker = marker
        self.holding: set[int] = set()

    def live(self) -> set[int]:
        out = set()
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(self.marker in a for a in cmdline):
                out.add(proc.info["pid"])
        return out

    def settle(self) -> None:
        live = self.live()
        for pid in live - self.holding:
            self.world.sim.allocate(0, pid, "python3", APP_BYTES)
        for pid in self.holding - live:
            self.world.sim.free(0, pid)
        self.holding = live

    def stop(self) -> None:
        pass


@pytest.fixture
def app_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, text in (("standin_app.py", APP), ("launch.py", LAUNCH), ("stop.py", STOP)):
        (tmp_path / name).write_text(text)
        files[name] = tmp_path / name
    files["pidfile"] = tmp_path / "app.pid"
    return files


@pytest.fixture
def world() -> Any:
    w = ServerWorld()
    yield w
    w.close()


def kill_leftovers(marker: str) -> None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(marker in a for a in proc.info["cmdline"] or []):
            proc.kill()


def command_holder(world: ServerWorld, config: ServerConfig, **options: Any) -> CommandHolder:
    return CommandHolder(
        config,
        backend=world.backend,
        clock=world.clock,
        sleep=world.sleep,
        run_in_background=run_at_once,
        **options,
    )


def command_config(files: dict[str, Path], marker: str, **changes: Any) -> ServerConfig:
    py = shlex.quote(sys.executable)
    fields: dict[str, Any] = {
        "kind": "command",
        "start": f"{py} {files['launch.py']} {files['standin_app.py']} {files['pidfile']} {marker}",
        "stop": f"{py} {files['stop.py']} {files['pidfile']}",
        "match": marker,
        "timeout_s": 10.0,
    }
    fields.update(changes)
    return ServerConfig(**fields)


def poll(holder: CommandHolder | SystemdHolder, world: ServerWorld, times: int = 3) -> list[Any]:
    events: list[Any] = []
    for _ in range(times):
        events.extend(holder.poll())
        world.clock.advance(2.5)
    return events


def test_command_holder_starts_stops_verifies_and_stops_again_while_held(
    world: ServerWorld, app_files: dict[str, Path]
) -> None:
    marker = f"vs-test-app-{os.getpid()}"
    world.standins.append(LiveProcessVram(world, marker))  # type: ignore[arg-type]
    holder = command_holder(world, command_config(app_files, marker))
    try:
        assert holder.role == HolderRole.MANAGED
        assert poll(holder, world) == [] and holder.models() == []  # not running: holds nothing

        holder.start_load(marker)  # the engine's resume: runs the start command
        events = poll(holder, world)
        (model,) = holder.models()
        assert model.state == ModelState.RESIDENT and model.size_bytes == APP_BYTES
        assert kinds(events, "VramAllocated")[0].bytes == APP_BYTES
        app_pid = int(app_files["pidfile"].read_text())
        assert holder.pids() == {app_pid}  # classified `managed`, not a foreign process

        freed_before = world.free_bytes()
        events = list(holder.evict([marker], "game"))  # runs the stop command, then verifies through NVML
        events += poll(holder, world, 1)
        (dealloc,) = kinds(events, "VramDeallocated")
        assert dealloc.residue_bytes == 0 and dealloc.reason == "game"
        assert not psutil.pid_exists(app_pid) or psutil.Process(app_pid).status() == psutil.STATUS_ZOMBIE
        assert world.free_bytes() == freed_before + APP_BYTES
        assert holder.models()[0].state == ModelState.EVICTED

        # a game holds the GPU; the user starts the app again: it is stopped again at the next listing
        holder.set_hold("game")
        subprocess.run(shlex.split(holder.config.start), check=True, timeout=10)
        deadline = time.monotonic() + 10
        while not LiveProcessVram(world, marker).live() and time.monotonic() < deadline:
            time.sleep(0.05)
        events = poll(holder, world, 2)
        (again,) = kinds(events, "ModelReloadedWhileHeld")
        assert again.evicted_again and again.reason == "game"
        assert kinds(events, "VramDeallocated")[0].residue_bytes == 0
        assert LiveProcessVram(world, marker).live() == set()

        holder.set_hold(None)
        holder.start_load(marker)
        poll(holder, world)
        assert holder.models()[0].state == ModelState.RESIDENT
    finally:
        holder.close()
        kill_leftovers(marker)


def test_command_failures_are_reported_with_their_output(
    world: ServerWorld, app_files: dict[str, Path]
) -> None:
    marker = f"vs-test-fail-{os.getpid()}"
    world.standins.append(LiveProcessVram(world, marker))  # type: ignore[arg-type]
    py = shlex.quote(sys.executable)
    bad_stop = f"{py} -c \"import sys; print('Error: No such container: comfy'); sys.exit(3)\""
    holder = command_holder(world, command_config(app_files, marker, stop=bad_stop))
    try:
        holder.start_load(marker)
        poll(holder, world)
        events = list(holder.evict([marker], "game"))
        (error,) = kinds(events, "EngineError")
        assert "exit 3" in error.message and "No such container: comfy" in error.message
        assert holder.models()[0].state == ModelState.RESIDENT  # still there: nothing was freed
        assert LiveProcessVram(world, marker).live()
    finally:
        kill_leftovers(marker)

    missing = command_holder(world, command_config(app_files, marker, start="/nonexistent/start-it"))
    missing.start_load(marker)
    poll(missing, world)
    (model,) = missing.models()
    assert model.state == ModelState.FAILED and "could not be started" in (model.last_error or "")


def test_a_stop_command_past_its_deadline_is_killed_with_its_group() -> None:
    started = time.monotonic()
    result = run_command(
        [sys.executable, "-c", "import time; print('stopping...', flush=True); time.sleep(60)"], timeout_s=1.0
    )
    assert result.timed_out and not result.left_running
    assert time.monotonic() - started < 6
    assert not psutil.pid_exists(result.pid) or psutil.Process(result.pid).status() == psutil.STATUS_ZOMBIE
    assert "did not finish in time" in result.describe() and "stopping..." in result.describe()


def test_a_start_command_that_is_the_app_itself_is_left_running(tmp_path: Path) -> None:
    result = run_command(
        [sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5, keep_running=True
    )
    try:
        assert result.left_running and psutil.pid_exists(result.pid)
    finally:
        psutil.Process(result.pid).kill()


# --- systemd, through a fake systemctl ---------------------------------------------------------------

FAKE_SYSTEMCTL = """#!{python}
# A stand-in for systemctl: records its arguments, keeps the unit's state in files, and runs the unit's
# "service" as a real process whose pid it writes to the unit's cgroup.procs.
import os, subprocess, sys, signal
state = {state!r}
args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as f:
    f.write(" ".join(args) + "\\n")
user = args[:1] == ["--user"]
args = args[1:] if user else args
if not user and os.path.exists(os.path.join(state, "deny-system")):
    print("Failed to stop unit: Interactive authentication required.", file=sys.stderr)
    sys.exit(1)
verb, unit = args[0], args[-1]
group = "/user.slice/user-1000.slice/user@1000.service/app.slice/" + unit
procs = os.path.join(state, "cgroup", group.lstrip("/"), "cgroup.procs")
running = os.path.exists(procs) and open(procs).read().strip()
if verb == "show":
    print("ActiveState=" + ("active" if running else "inactive"))
    print("ControlGroup=" + (group if running else ""))
    print("MainPID=" + (running.split()[0] if running else "0"))
elif verb == "start":
    if not running:
        os.makedirs(os.path.dirname(procs), exist_ok=True)
        p = subprocess.Popen([{python!r}, "-c", "import time; time.sleep(120)", {marker!r}],
                             start_new_session=True)
        open(procs, "w").write(str(p.pid) + "\\n")
elif verb == "stop":
    if running:
        pid = int(running.split()[0])
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0) if False else None
        import time
        for _ in range(100):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().split(") ")[1][0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.02)
        os.remove(procs)
"""


def fake_systemctl(tmp_path: Path, marker: str) -> Path:
    state = tmp_path / "systemd"
    state.mkdir()
    script = tmp_path / "systemctl"
    script.write_text(FAKE_SYSTEMCTL.format(python=sys.executable, state=str(state), marker=marker))
    script.chmod(0o755)
    return script


def systemd_holder(world: ServerWorld, tmp_path: Path, config: ServerConfig) -> SystemdHolder:
    return SystemdHolder(
        config,
        backend=world.backend,
        clock=world.clock,
        sleep=world.sleep,
        run_in_background=run_at_once,
        systemctl=str(tmp_path / "systemctl"),
        cgroup_root=tmp_path / "systemd" / "cgroup",
    )


def test_systemd_user_unit_stop_and_start_through_systemctl(world: ServerWorld, tmp_path: Path) -> None:
    marker = f"vs-test-unit-{os.getpid()}"
    fake_systemctl(tmp_path, marker)
    world.standins.append(LiveProcessVram(world, marker))  # type: ignore[arg-type]
    config = ServerConfig(kind="systemd", unit="comfyui.service", user=True, timeout_s=10.0)
    holder = systemd_holder(world, tmp_path, config)
    try:
        assert poll(holder, world) == [] and holder.models() == []
        holder.start_load("comfyui.service")
        events = poll(holder, world)
        (model,) = holder.models()
        assert model.name == "comfyui.service" and model.state == ModelState.RESIDENT
        assert model.size_bytes == APP_BYTES and kinds(events, "VramAllocated")
        (pid,) = holder.pids()  # from the unit's cgroup.procs
        assert pid in LiveProcessVram(world, marker).live()

        events = list(holder.evict(["comfyui.service"], "game")) + poll(holder, world, 1)
        assert kinds(events, "VramDeallocated")[0].residue_bytes == 0
        assert LiveProcessVram(world, marker).live() == set()
        calls = (tmp_path / "systemd" / "calls").read_text().splitlines()
        assert "--user start comfyui.service" in calls and "--user stop comfyui.service" in calls
        assert all(c.startswith("--user ") for c in calls)  # a user unit: never the system manager
    finally:
        kill_leftovers(marker)


def test_a_system_unit_refused_by_polkit_says_how_to_allow_it(world: ServerWorld, tmp_path: Path) -> None:
    marker = f"vs-test-sys-{os.getpid()}"
    fake_systemctl(tmp_path, marker)
    (tmp_path / "systemd" / "deny-system").write_text("")
    holder = systemd_holder(world, tmp_path, ServerConfig(kind="systemd", unit="ollama.service", user=False))
    events = poll(holder, world, 1)  # `systemctl show` refused: the holder is down, with why
    (down,) = kinds(events, "ServerDown")
    assert "Interactive authentication required" in down.message
    holder.start_load("ollama.service")
    assert "Interactive authentication required" in (holder.models()[0].last_error or "")
    holder._up = True  # as if `show` had worked: the start itself is refused
    holder.start_load("ollama.service")
    poll(holder, world, 1)
    error = holder.models()[0].last_error or ""
    assert "polkit" in error and "user = true" in error
    calls = (tmp_path / "systemd" / "calls").read_text().splitlines()
    assert "start ollama.service" in calls and not any("sudo" in c or "pkexec" in c for c in calls)
