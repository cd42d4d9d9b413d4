"""The tray app's idle cost: CPU (% of one core) and RSS of the real GUI process, tray only and with the
dashboard open, against a bare QApplication measured in the same run (the RSS ratio's reference; its CPU
is next to nothing, so CPU is given as is).

Starts a throw-away desktop (Xvfb, a private D-Bus session bus, status-notifier-watcher, dunst:
tests/fixtures/desktop_session.py), then runs each mode in its own process, built the way
`vram-steward gui --simulate ... --no-api` builds the app (app/cli/gui.py make_steward_app), on the
`desktop-idle` scenario plus one resident 8 GiB model (so the engine polls at its busy 100 ms pace, the
worst idle case). The dashboard mode first fills the timeline with an hour of samples and markers, so
each repaint draws what a user who left it open for an hour sees. Each child measures itself
(`time.process_time()` covers all its threads) over `--seconds` after a `--warmup`:

    .venv/bin/python bench/gui_idle_bench.py [--seconds 60] [--warmup 10]

Targets (issue #16): under 1 % of a core and under 150 MB RSS, tray only and with the dashboard open.
Needs the Debian packages xvfb, dbus, dunst and haskell-status-notifier-item-utils.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("reference", "tray", "dashboard")
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 150.0
MODEL = '\n[[models]]\nname = "llama-3.1-8b-instruct-q8_0"\nsize = "8 GiB"\n'


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_scenario(folder: Path) -> Path:
    """desktop-idle (Xorg, gnome-shell, firefox on 12 GiB) with one 8 GiB model of ours, for hours."""
    from app.core.gpu.scenario import shipped_scenarios_dir

    text = (shipped_scenarios_dir() / "desktop-idle.toml").read_text()
    text = text.replace("duration_s = 600", "duration_s = 86400") + MODEL
    path = folder / "bench-idle-with-model.toml"
    path.write_text(text)
    return path


def child(mode: str, seconds: float, warmup: float, scenario: Path) -> None:
    """One mode, measured from inside; prints one JSON line."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    qt = QApplication(["vram-steward"])
    qt.setQuitOnLastWindowClosed(False)
    keep: list[object] = []
    if mode != "reference":
        from app.cli.gui import make_steward_app
        from app.core.config import Settings
        from app.core.wiring import build_runtime

        settings = Settings()
        runtime = build_runtime(settings, simulate=scenario, with_api=False, audit=False)
        app = make_steward_app(runtime, settings, None, notices=["Simulation: bench"])
        app.start()
        if mode == "dashboard":
            fill_an_hour(app)
            app.dashboard.resize(820, 720)
            app.show_dashboard()
        keep.append(app)
    marks: dict[str, float] = {}

    def start() -> None:
        marks["cpu"], marks["wall"] = time.process_time(), time.monotonic()

    def stop() -> None:
        cpu = time.process_time() - marks["cpu"]
        wall = time.monotonic() - marks["wall"]
        renders = getattr(keep[0], "renders", 0) if keep else 0
        print(
            json.dumps(
                {"mode": mode, "cpu_percent": 100 * cpu / wall, "rss_mb": rss_mb(), "renders": renders}
            )
        )
        sys.stdout.flush()
        if keep:
            keep[0].quit()  # type: ignore[attr-defined]
        qt.quit()

    QTimer.singleShot(int(warmup * 1000), start)
    QTimer.singleShot(int((warmup + seconds) * 1000), stop)
    qt.exec()


def fill_an_hour(app: object) -> None:
    """An hour of one-a-second samples (a model resident, a game in the middle) and two markers."""
    from app.core.units import GiB
    from app.ui.timeline import DAY_STEP_S, Sample

    history = app.history  # type: ignore[attr-defined]
    now = history.clock()
    total = 12 * GiB
    series = history.samples.setdefault(0, __import__("collections").deque(maxlen=3602))
    day = history.day_samples.setdefault(0, __import__("collections").deque(maxlen=1442))
    for i in range(3600, 0, -1):
        at = now - i
        gaming = 1200 < i < 2400
        sample = Sample(at, total, (0 if gaming else 8 * GiB, 600 << 20, 10 * GiB if gaming else 0))
        series.append(sample)
        if not day or at - day[-1].at >= DAY_STEP_S:
            day.append(sample)
    from app.ui.timeline import Marker

    history.markers.extend([Marker(now - 2400, 0, "evicted"), Marker(now - 1170, 0, "resumed")])


def run_children(seconds: float, warmup: float) -> list[dict[str, float]]:
    from tests.fixtures.desktop_session import missing_desktop_parts, start_desktop_session

    problem = missing_desktop_parts()
    if problem is not None:
        raise SystemExit(f"cannot measure the GUI: {problem}")
    workdir = Path(tempfile.mkdtemp(prefix="vram-steward-gui-bench-"))
    session = start_desktop_session(workdir)
    try:
        env = session.env(dict(os.environ))
        for name in ("CONFIG", "STATE", "LOG"):
            env[f"VRAM_STEWARD_{name}_DIR"] = str(workdir / name.lower())
        scenario = bench_scenario(workdir)
        results = []
        for mode in MODES:
            command = [sys.executable, __file__, "--child", mode, "--seconds", str(seconds)]
            command += ["--warmup", str(warmup), "--scenario", str(scenario)]
            out = subprocess.run(
                command,
                env=env, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False,
            )  # fmt: skip
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode != 0 or not lines:
                raise SystemExit(f"{mode} failed ({out.returncode}):\n{out.stderr[-3000:]}")
            results.append(json.loads(lines[-1]))
        return results
    finally:
        session.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--scenario", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.warmup, args.scenario)
        return 0
    results = run_children(args.seconds, args.warmup)
    reference = results[0]
    print(f"GUI idle cost over {args.seconds:.0f} s after {args.warmup:.0f} s ({time.strftime('%Y-%m-%d')})")
    print(f"{'mode':<11} {'CPU % core':>10} {'RSS MB':>8} {'RSS x ref':>9} {'renders':>8}  target")
    failed = False
    for r in results:
        rss_ratio = r["rss_mb"] / reference["rss_mb"]
        ok = r["cpu_percent"] < TARGET_CPU_PERCENT and r["rss_mb"] < TARGET_RSS_MB
        verdict = "" if r["mode"] == "reference" else ("met" if ok else "MISSED")
        failed |= r["mode"] != "reference" and not ok
        print(
            f"{r['mode']:<11} {r['cpu_percent']:>10.3f} {r['rss_mb']:>8.1f} {rss_ratio:>9.2f}"
            f" {int(r['renders']):>8}  {verdict}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
