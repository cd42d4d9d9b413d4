"""`vram-steward models list|load NAME|unload NAME|verify NAME [--simulate SCENARIO]`.

A model loaded by a CLI process would die with it, so when VRAM Steward runs (tray or daemon) these commands
go to it through the local API (`send_to_running_instance`), with a progress bar that follows the load.
With no running instance, and always with --simulate, they run in-process as a one-shot demonstration
(`run_in_process`): load = seal with a progress bar, report, free; verify = seal, verify, free; unload =
seal, then unload and show what NVML says is left of ours.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from app.core.units import format_bytes, format_rate, format_usage

logger = logging.getLogger(__name__)

ACTIONS = ("list", "load", "unload", "verify")


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="list, load, unload or verify the built-in models")
    p.add_argument("action", choices=ACTIONS, help="what to do")
    p.add_argument("name", nargs="?", help="the model's name in the config (for load, unload, verify)")
    p.add_argument(
        "--simulate",
        metavar="SCENARIO",
        help="use a simulated GPU (a shipped scenario name or a scenario file); the file is still read",
    )
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        print(
            f"error: `models {args.action}` needs a model NAME (see `vram-steward models list`)",
            file=sys.stderr,
        )
        return 2
    routed = send_to_running_instance(args)
    if routed is not None:
        return routed
    return run_in_process(args)


def send_to_running_instance(args: argparse.Namespace, *, out: TextIO | None = None) -> int | None:
    """Route the command to the running instance through its local API and return the exit code, or None
    when no instance runs (then the command runs in-process). --simulate always runs in-process."""
    from app.client import NotRunning, StewardClient
    from app.core.errors import VramError

    if getattr(args, "simulate", None):
        return None
    out = out or sys.stdout
    try:
        client = StewardClient(timeout_s=30.0)
        client.request("GET", "/healthz")
    except NotRunning:
        return None
    try:
        if args.action == "list":
            models = client.models()
            if args.json:
                out.write(json.dumps(models, indent=2) + "\n")
            else:
                for m in models:
                    size = "?" if m.get("size_bytes") is None else format_bytes(int(m["size_bytes"]))
                    out.write(f"{m['name']:<32} {m['state']:<10} GPU {m['gpu']}  {size}\n")
            return 0
        if args.action == "unload":
            client.unload(args.name)
            out.write(f"{args.name}: unloaded by the running instance (it stays out until you load it)\n")
            return 0
        if args.action == "verify":
            result = client.verify(args.name)
            digest = str((result.get("result") or {}).get("digest", ""))[:16]
            out.write(f"Verified {args.name}: VRAM matches digest {digest}…\n")
            return 0
        client.load(args.name)
        return _follow_load(client, args.name, out)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1


def _follow_load(client: Any, name: str, out: TextIO, *, timeout_s: float = 3600.0) -> int:
    """Show the running instance's load of `name` with a progress bar until it is resident or failed."""
    bar = ProgressBar(out, label=name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        model = next((m for m in client.models() if m["name"] == name), None)
        if model is None:
            break
        if model["state"] == "loading" and model.get("progress_total_bytes"):
            bar.update(int(model.get("progress_done_bytes") or 0), int(model["progress_total_bytes"]))
        elif model["state"] == "resident":
            bar.finish()
            rate = model.get("load_bytes_per_s")
            extra = f" at {format_rate(float(rate))}" if rate else ""
            out.write(f"{name} is resident on GPU {model['gpu']}{extra} (held by the running instance)\n")
            return 0
        elif model["state"] in ("failed", "evicted", "unloaded"):
            bar.finish()
            out.write(f"{name}: {model['state']}: {model.get('last_error') or 'see `vram-steward status`'}\n")
            return 1
        time.sleep(0.2)
    bar.finish()
    return 1


def run_in_process(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run the command in this process, as a one-shot demonstration."""
    from app.cli.common import load_settings_or_exit
    from app.core.errors import VramError

    out = out or sys.stdout
    # reading is not a reason to rewrite the file: only `models list` reads alone, the rest act anyway
    settings = load_settings_or_exit(args, check_files=False, migrate=args.action != "list")
    if args.action == "list":
        return _list(settings, out, as_json=args.json)
    model = settings.model(args.name)
    if model is None:
        known = ", ".join(m.name for m in settings.models) or "none configured"
        print(f"error: no model named {args.name!r} in the config (known: {known})", file=sys.stderr)
        return 2
    try:
        session = _Session.open(settings, args.simulate)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    try:
        return session.run(args.action, args.name, out)
    except VramError as exc:
        print(f"error: {exc.user_message()}", file=sys.stderr)
        return 1
    finally:
        session.close()


def _list(settings: Any, out: TextIO, *, as_json: bool) -> int:
    from app.core import paths
    from app.core.residency.digest import ManifestStore

    store = ManifestStore(paths.state_dir() / "manifests")
    rows = []
    for m in settings.models:
        size = m.path.stat().st_size if m.path.is_file() else None
        manifest = store.load(m.name)
        rows.append(
            {
                "name": m.name,
                "gpu": m.gpu,
                "path": str(m.path),
                "size_bytes": size,
                "priority": m.priority,
                "last_digest": manifest.digest if manifest else None,
                "state": None,  # known to the running instance only (control channel)
            }
        )
    if as_json:
        out.write(json.dumps({"models": rows}, indent=2) + "\n")
        return 0
    if not rows:
        out.write("No models configured. Add [[models]] entries (name, path, gpu) to the config file.\n")
        return 0
    out.write(f"{'NAME':<24} {'GPU':>3} {'SIZE':>10}  {'LAST DIGEST':<14} PATH\n")
    for r in rows:
        size = format_bytes(r["size_bytes"]) if r["size_bytes"] is not None else "missing"
        digest = (r["last_digest"] or "-")[:12]
        out.write(f"{r['name']:<24} {r['gpu']:>3} {size:>10}  {digest:<14} {r['path']}\n")
    return 0


class _Session:
    """A manager with its backend, ledgers and launcher, for one command."""

    def __init__(self, manager: Any, backend: Any, observe: Callable[[], None], simulated: bool) -> None:
        self.manager = manager
        self.backend = backend
        self.observe = observe
        self.simulated = simulated

    @classmethod
    def open(cls, settings: Any, simulate: str | None) -> _Session:
        from app.core import paths
        from app.core.errors import GpuUnavailable
        from app.core.events import AuditLog
        from app.core.residency.host.process import HostLauncher, ProcessHostLauncher, ThreadHostLauncher
        from app.core.residency.ledger import Ledgers
        from app.core.residency.manager import ResidencyManager

        audit: AuditLog | None = None
        launcher: HostLauncher
        if simulate is not None:
            from app.core.gpu.simulated import SimulatedBackend
            from app.core.residency.simulated_device import SimulatedDevice

            sim = SimulatedBackend.from_file(simulate)
            backend: Any = sim
            clock: Callable[[], float] = sim.now
            launcher = ThreadHostLauncher(lambda gpu, pid: SimulatedDevice(gpu, backend=sim, pid=pid))
        else:
            from app.core.gpu import open_backend
            from app.core.gpu.snapshot import BackendState

            backend = open_backend(None)
            first = backend.sample()
            if first.state != BackendState.OK:
                backend.close()
                raise GpuUnavailable(
                    reason=first.message or "no NVIDIA GPU",
                    suggestion="Try a simulated GPU: vram-steward models load NAME --simulate game-launch",
                )
            clock = time.monotonic
            launcher = ProcessHostLauncher()
            audit = AuditLog(paths.audit_log_file())
        ledgers = Ledgers(headroom_bytes=settings.headroom_bytes, clock=clock)
        manager = ResidencyManager(
            settings,
            ledgers,
            launcher,
            clock=clock,
            audit_log=audit,
            measure_backend=backend,
            manifest_dir=paths.state_dir() / "manifests",
        )

        def observe() -> None:
            ledgers.observe_snapshot(backend.sample())

        return cls(manager, backend, observe, simulate is not None)

    def run(self, action: str, name: str, out: TextIO) -> int:
        self.observe()
        bar = ProgressBar(out, label=name)
        sealed = self.manager.load_blocking(name, progress=bar.update, timeout_s=None)
        bar.finish()
        if sealed is not None:
            out.write(
                f"Sealed {name} on GPU {sealed.gpu}: {format_bytes(sealed.bytes)} in {sealed.seconds:.2f} s "
                f"({format_rate(sealed.bytes_per_s)}), digest {sealed.digest[:16]}…\n"
                f"  file changed since the last seal: {'yes' if sealed.file_changed else 'no'}\n"
            )
        if action == "verify":
            verified = self.manager.verify_now(name)
            out.write(
                f"Verified {name}: VRAM matches digest {verified.digest[:16]}… ({verified.seconds:.2f} s)\n"
            )
        events = self.manager.unload(name)
        for event in events:
            residue = getattr(event, "residue_bytes", None)
            shown = "unknown" if residue is None else format_bytes(residue)
            out.write(f"Freed {name}: VRAM still held by VRAM Steward on GPU {event.gpu}: {shown}\n")
        if action in ("load", "verify"):
            out.write(
                "(One-shot demonstration: the model was freed as this command ends. Run `vram-steward` or "
                "`vram-steward daemon` to keep models resident.)\n"
            )
        return 0

    def close(self) -> None:
        try:
            self.manager.close()
        finally:
            self.backend.close()


class ProgressBar:
    """A text progress bar (bytes, GiB/s, ETA) on a terminal; a few plain lines otherwise."""

    def __init__(self, out: TextIO, *, label: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._label = label
        self._clock = clock
        self._started = clock()
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._next_quarter = 1
        self._last: tuple[int, int] | None = None

    def update(self, done: int, total: int) -> None:
        self._last = (done, total)
        if self._tty:
            self._out.write("\r" + self.render(done, total))
            self._out.flush()
            return
        while total and self._next_quarter <= 4 and done * 4 >= total * self._next_quarter:
            self._out.write(self.render(done, total) + "\n")
            self._next_quarter += 1

    def render(self, done: int, total: int, width: int = 30) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        fraction = done / total if total else 1.0
        filled = int(width * fraction)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.1f} s" if eta != float("inf") else "?"
        return (
            f"{self._label} [{'#' * filled}{'-' * (width - filled)}] {fraction * 100:5.1f}% "
            f"{format_usage(done, total)} {format_rate(rate)} ETA {eta_text}"
        )

    def finish(self) -> None:
        if self._tty and self._last is not None:
            self._out.write("\n")
            self._out.flush()
