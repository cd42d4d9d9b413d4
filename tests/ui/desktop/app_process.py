"""The tray app as a real process on a test desktop: `python -m app --config FILE gui --simulate SCENARIO
--no-api`, its output in a file, its state (the audit log) in a folder of the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fixtures.desktop_session import DesktopSession

REPO = Path(__file__).resolve().parents[3]


@dataclass
class AppProcess:
    process: subprocess.Popen[str]
    config: Path
    log: Path
    state_dir: Path

    def output(self) -> str:
        return self.log.read_text()

    def audit(self) -> list[dict[str, Any]]:
        """Every event the engine wrote to its audit log so far, oldest first."""
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def start_app(
    desktop: DesktopSession, tmp_path: Path, *, scenario: str, config_text: str, name: str = "app"
) -> AppProcess:
    folder = tmp_path / name
    folder.mkdir()
    scenario_file = folder / "scenario.toml"
    scenario_file.write_text(scenario)
    config = folder / "config.toml"
    config.write_text(config_text)
    log = folder / "output.txt"
    state_dir = folder / "state"
    env = desktop.env()
    env["PYTHONUNBUFFERED"] = "1"
    env["VRAM_STEWARD_STATE_DIR"] = str(state_dir)
    env["VRAM_STEWARD_LOG_DIR"] = str(folder / "logs")
    command = [sys.executable, "-m", "app", "--config", str(config), "gui", "--simulate", str(scenario_file)]
    process = subprocess.Popen(
        [*command, "--no-api"],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    return AppProcess(process, config, log, state_dir)
