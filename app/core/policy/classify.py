"""Classify every GPU process as self, managed, desktop, game or other, and measure the foreign VRAM that the
contention policy watches (DESIGN.md, "Contention policy").

Foreign VRAM is everything that is not ours (self) or a model server's we manage (managed). Part of it is
tolerated: the desktop. The display server, the compositor, browsers and the other desktop programs named
in DESKTOP_PROCESS_NAMES are tolerated whatever they use, from the first sample on (only the headroom rule
applies to them: README's promise that they are never a trigger); a process of the learned baseline (small
and present when monitoring started) is tolerated up to the VRAM it used when we first saw it; a process
under a per-app "ignore" rule is tolerated whatever it uses (and the policy counts its VRAM as free, so it
never triggers); games and other processes are not tolerated at all. `foreign_bytes - baseline_bytes` is
therefore "how much the foreign processes grew beyond the desktop", which is what the pressure threshold is
compared with. Measuring per
process (rather than one total taken at start) means a browser that exits does not leave slack that hides
a game starting later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import psutil

from app.core.gpu.snapshot import BackendState, GpuProcess, GpuSnapshot, GpuState, TelemetrySnapshot
from app.core.policy.roles import Role
from app.core.policy.signals import GameSignal
from app.core.settings import AppRule, Settings
from app.core.units import MiB, format_bytes

logger = logging.getLogger(__name__)

# Executable names (lower case, no ".exe") of processes that are always on a desktop's GPU: display servers,
# compositors, browsers (their GPU processes run the same executable), Electron apps, GPU terminals.
DESKTOP_PROCESS_NAMES: frozenset[str] = frozenset(
    {
        # display servers and compositors
        "xorg", "x", "xwayland", "gnome-shell", "kwin_x11", "kwin_wayland", "kwin", "plasmashell",
        "mutter", "sway", "hyprland", "picom", "compton", "weston", "wayfire", "river", "labwc", "niri",
        "cosmic-comp", "xfwm4", "marco", "muffin", "cinnamon", "budgie-wm", "enlightenment", "openbox",
        "i3", "dwm", "gnome-remote-desktop-daemon", "xdg-desktop-portal-gnome", "ksmserver", "krunner",
        # browsers (and their GPU / web processes)
        "firefox", "firefox-bin", "firefox-esr", "librewolf", "chrome", "chromium", "chromium-browser",
        "google-chrome", "google-chrome-stable", "brave", "brave-browser", "msedge", "microsoft-edge",
        "opera", "vivaldi", "vivaldi-bin", "epiphany", "webkitwebprocess", "webkitgpuprocess",
        # Electron and similar apps
        "code", "code-oss", "codium", "cursor", "electron", "discord", "vesktop", "slack", "steam",
        "steamwebhelper", "spotify", "obsidian", "teams", "teams-for-linux", "signal-desktop",
        "element-desktop", "zoom", "telegram-desktop",
        # terminals that draw with the GPU
        "alacritty", "kitty", "wezterm-gui", "foot",
    }
)  # fmt: skip

# A CUDA context plus the allocator's rounding: how much more than our models NVML may show for our host.
CONTEXT_SLACK_BYTES = 600 * MiB
# How much less than expected still counts as "ours" when matching by size (NVML rounds to MiB).
SIZE_MATCH_BELOW_BYTES = 64 * MiB

NOT_VISIBLE_NOTE = "our PID is not visible to NVML (container or Flatpak): matching our allocations by size"


def executable_name(name: str | None) -> str:
    """The comparable executable name of an NVML process name or a path: "/usr/lib/xorg/Xorg" -> "xorg",
    "C:\\Games\\Cyberpunk2077.exe" -> "cyberpunk2077", "/opt/google/chrome/chrome --type=gpu-process"
    -> "chrome"."""
    if not name:
        return ""
    text = name.strip()
    if " -" in text:  # NVML sometimes reports the command line; arguments start with a dash
        text = text.split(" -", 1)[0].rstrip()
    base = text.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base.removesuffix(".exe")


def match_app_rule(rules: Sequence[AppRule], *, exe: str | None, app_id: str | None) -> AppRule | None:
    """The first per-app rule naming this executable or Steam AppId ("steam:1091500"), or None."""
    exe_name = executable_name(exe)
    for rule in rules:
        match = rule.match.strip()
        if match.lower().startswith("steam:"):
            if app_id is not None and match[len("steam:") :].strip() == str(app_id).strip():
                return rule
        elif exe_name and executable_name(match) == exe_name:
            return rule
    return None


@dataclass(frozen=True)
class Classification:
    """The roles of one sample's processes and the foreign VRAM per GPU. Read-only once made."""

    roles: Mapping[tuple[int, int], Role]  # (gpu index, pid) -> role
    notes: tuple[str, ...] = ()
    foreign_bytes_by_gpu: Mapping[int, int] = field(default_factory=dict)
    baseline_bytes_by_gpu: Mapping[int, int] = field(default_factory=dict)
    growth_bytes: Mapping[tuple[int, int], int] = field(default_factory=dict)  # per foreign process
    ignored_bytes_by_gpu: Mapping[int, int] = field(default_factory=dict)

    def role(self, gpu: int, pid: int) -> Role | None:
        return self.roles.get((gpu, pid))

    def foreign_bytes(self, gpu: int) -> int:
        """VRAM of the processes that are neither self nor managed (no figure from NVML counts as 0)."""
        return self.foreign_bytes_by_gpu.get(gpu, 0)

    def baseline_bytes(self, gpu: int) -> int:
        """The part of foreign_bytes that is tolerated: the desktop as first seen, and ignored apps."""
        return self.baseline_bytes_by_gpu.get(gpu, 0)

    def growth(self, gpu: int) -> int:
        """Foreign VRAM beyond the baseline: what the pressure threshold is compared with."""
        return self.foreign_bytes(gpu) - self.baseline_bytes(gpu)

    def ignored_bytes(self, gpu: int) -> int:
        """VRAM of processes under a per-app "ignore" rule: never a trigger, not even by taking headroom."""
        return self.ignored_bytes_by_gpu.get(gpu, 0)


def _psutil_parent_pid(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except (psutil.Error, OSError):
        return None


class ProcessClassifier:
    """Gives each GPU process a role, and learns the desktop's baseline from the first sample of each GPU.

    Not thread-safe: the engine's worker thread owns it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float],
        own_pid: int | None = None,
        parent_pid: Callable[[int], int | None] = _psutil_parent_pid,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._parent_pid = parent_pid
        self._parents: dict[int, int | None] = {}
        self._learned_gpus: set[int] = set()
        self._baseline: set[tuple[int, int]] = set()  # the learned baseline: (gpu, pid)
        self._first_seen_bytes: dict[tuple[int, int], int] = {}  # desktop processes
        self._named_by_game: set[int] = set()  # pids a game signal ever named: never baseline

    def update_settings(self, settings: Settings) -> None:
        self._settings = settings

    def baseline_pids(self, gpu: int) -> frozenset[int]:
        """PIDs of the learned baseline on this GPU (for status and tests)."""
        return frozenset(pid for g, pid in self._baseline if g == gpu)

    def classify(
        self,
        snapshot: TelemetrySnapshot,
        *,
        self_pids: set[int],
        managed_pids: set[int],
        games: Sequence[GameSignal],
        our_expected_bytes: Mapping[int, int] | None = None,
    ) -> Classification:
        if snapshot.state not in (BackendState.OK, BackendState.SIMULATED):
            return Classification(roles={})
        ours = set(self_pids) | {self._own_pid}
        game_pids = {g.pid for g in games if g.pid is not None}
        game_exes = {executable_name(g.exe): g for g in games if executable_name(g.exe)}
        self._named_by_game |= game_pids
        present: set[tuple[int, int]] = set()
        roles: dict[tuple[int, int], Role] = {}
        notes: list[str] = []
        foreign: dict[int, int] = {}
        baseline: dict[int, int] = {}
        ignored_bytes: dict[int, int] = {}
        growth: dict[tuple[int, int], int] = {}
        ignored: set[tuple[int, int]] = set()

        for gpu in snapshot.gpus:
            if gpu.state != GpuState.OK:
                continue
            first_sample = gpu.index not in self._learned_gpus
            for proc in gpu.processes:
                key = (gpu.index, proc.pid)
                present.add(key)
                signal = next((g for g in games if g.pid == proc.pid), None) or game_exes.get(
                    executable_name(proc.name)
                )
                if signal is not None:
                    self._named_by_game.add(proc.pid)
                    self._baseline.discard(key)
                roles[key], is_ignored = self._role(proc, key, ours, managed_pids, signal, first_sample)
                if is_ignored:
                    ignored.add(key)
            if first_sample:
                self._learned_gpus.add(gpu.index)
            self._apply_container_fallback(gpu, roles, (our_expected_bytes or {}).get(gpu.index, 0), notes)
            foreign[gpu.index], baseline[gpu.index], ignored_bytes[gpu.index] = self._measure(
                gpu, roles, ignored, growth, notes
            )

        self._forget_absent(present, snapshot)
        return Classification(
            roles=roles,
            notes=tuple(notes),
            foreign_bytes_by_gpu=foreign,
            baseline_bytes_by_gpu=baseline,
            growth_bytes=growth,
            ignored_bytes_by_gpu=ignored_bytes,
        )

    def _role(
        self,
        proc: GpuProcess,
        key: tuple[int, int],
        ours: set[int],
        managed_pids: set[int],
        signal: GameSignal | None,
        first_sample: bool,
    ) -> tuple[Role, bool]:
        """The process's role, and whether an "ignore" rule made it desktop."""
        if proc.pid in ours or self._parent_of(proc.pid) == self._own_pid:
            return Role.SELF, False
        if proc.pid in managed_pids:
            return Role.MANAGED, False
        used = proc.used_bytes or 0
        rule = match_app_rule(
            self._settings.app_rules, exe=proc.name, app_id=signal.app_id if signal is not None else None
        )
        if rule is not None and rule.action == "ignore":
            return Role.DESKTOP, True
        if (rule is not None and rule.action == "evict") or signal is not None:
            return Role.GAME, False
        if executable_name(proc.name) in DESKTOP_PROCESS_NAMES:
            self._first_seen_bytes.setdefault(key, used)
            return Role.DESKTOP, False
        if (
            first_sample
            and used < self._settings.baseline_max_process_vram
            and proc.pid not in self._named_by_game
        ):
            self._baseline.add(key)
            self._first_seen_bytes.setdefault(key, used)
        if key in self._baseline:
            return Role.DESKTOP, False
        return Role.OTHER, False

    def _parent_of(self, pid: int) -> int | None:
        if pid not in self._parents:
            self._parents[pid] = self._parent_pid(pid)
        return self._parents[pid]

    def _apply_container_fallback(
        self, gpu: GpuSnapshot, roles: dict[tuple[int, int], Role], expected_bytes: int, notes: list[str]
    ) -> None:
        """We hold VRAM on this GPU but NVML lists none of our PIDs (it reports host PIDs, which differ in a
        container or a Flatpak): take the unknown process whose VRAM matches ours as ours."""
        if expected_bytes <= 0 or any(roles.get((gpu.index, p.pid)) == Role.SELF for p in gpu.processes):
            return
        low, high = expected_bytes - SIZE_MATCH_BELOW_BYTES, expected_bytes + CONTEXT_SLACK_BYTES
        candidates = [
            p
            for p in gpu.processes
            if p.used_bytes is not None
            and low <= p.used_bytes <= high
            and (
                roles[(gpu.index, p.pid)] == Role.OTHER
                or (
                    (gpu.index, p.pid) in self._baseline
                    and executable_name(p.name) not in DESKTOP_PROCESS_NAMES
                )
            )
        ]
        if not candidates:
            notes.append(
                f"GPU {gpu.index}: {NOT_VISIBLE_NOTE}, but no process uses about "
                f"{format_bytes(expected_bytes)}; our VRAM counts as foreign until one does"
            )
            return
        best = min(candidates, key=lambda p: abs((p.used_bytes or 0) - expected_bytes))
        roles[(gpu.index, best.pid)] = Role.SELF
        self._baseline.discard((gpu.index, best.pid))
        notes.append(
            f"GPU {gpu.index}: {NOT_VISIBLE_NOTE} (pid {best.pid} {best.name!r} uses "
            f"{format_bytes(best.used_bytes)}, we expect {format_bytes(expected_bytes)})"
        )

    def _measure(
        self,
        gpu: GpuSnapshot,
        roles: Mapping[tuple[int, int], Role],
        ignored: set[tuple[int, int]],
        growth: dict[tuple[int, int], int],
        notes: list[str],
    ) -> tuple[int, int, int]:
        """(foreign bytes, tolerated baseline bytes, bytes of ignored processes) on one GPU."""
        foreign = tolerated = ignored_bytes = 0
        unmeasured: list[str] = []
        cap = self._settings.baseline_max_process_vram
        for proc in gpu.processes:
            key = (gpu.index, proc.pid)
            role = roles[key]
            if role in (Role.SELF, Role.MANAGED):
                continue
            if proc.used_bytes is None:
                unmeasured.append(f"{proc.name} (pid {proc.pid})")
            used = proc.used_bytes or 0
            foreign += used
            allowed = 0
            if key in ignored:
                allowed = used
                ignored_bytes += used
            elif role == Role.DESKTOP and executable_name(proc.name) in DESKTOP_PROCESS_NAMES:
                allowed = used  # the display server, compositor and browsers never count as growth
            elif role == Role.DESKTOP:  # the learned baseline: each process against its own first size
                allowed = min(used, self._first_seen_bytes.get(key, used), cap)
            tolerated += allowed
            growth[key] = used - allowed
        if unmeasured:
            reasons = (p.used_unavailable_reason for p in gpu.processes if p.used_unavailable_reason)
            reason = next(reasons, None)
            notes.append(
                f"GPU {gpu.index}: NVML gives no VRAM figure for {', '.join(unmeasured)}"
                f"{f' ({reason})' if reason else ''}; counted as 0, free VRAM still tells the truth"
            )
        return foreign, tolerated, ignored_bytes

    def _forget_absent(self, present: set[tuple[int, int]], snapshot: TelemetrySnapshot) -> None:
        """Drop what we remember about processes that left (a reused PID must not inherit a role)."""
        watched = {g.index for g in snapshot.gpus if g.state == GpuState.OK}
        self._baseline = {k for k in self._baseline if k in present or k[0] not in watched}
        self._first_seen_bytes = {
            k: v for k, v in self._first_seen_bytes.items() if k in present or k[0] not in watched
        }
        live_pids = {pid for _, pid in present}
        self._parents = {pid: parent for pid, parent in self._parents.items() if pid in live_pids}
