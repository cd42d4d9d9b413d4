"""The app's folders and files are private to the user (real files, real processes): folders 0700, the log,
settings and audit files 0600, looser ones tightened with a log line, temp files of killed writes cleared,
and the audit log loses no event when several processes rotate it at once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core import atomic
from app.core.private import secure_app_dirs

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VRAM_STEWARD_STATE_DIR": str(tmp_path / "state"),
        "VRAM_STEWARD_LOG_DIR": str(tmp_path / "log"),
        "VRAM_STEWARD_CONFIG_DIR": str(tmp_path / "config"),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


START = (
    "import logging; from app.core.logs import setup_logging; setup_logging(); logging.getLogger().info('hi')"
)


def test_new_folders_and_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    run_python("import os; os.umask(0o022); " + START, tmp_path)
    for folder in ("state", "log", "config"):
        assert mode(tmp_path / folder) == 0o700, folder
    assert mode(tmp_path / "log" / "vram-steward.log") == 0o600
    # the settings file and every other file written through write_atomic
    run_python(
        "import os; os.umask(0o022)\n"
        "from app.core.config import ensure_default_config; ensure_default_config()",
        tmp_path,
    )
    assert mode(tmp_path / "config" / "config.toml") == 0o600


def test_existing_open_folders_and_files_are_tightened_with_a_log_line(tmp_path: Path) -> None:
    for folder in ("state", "log", "config"):
        (tmp_path / folder).mkdir(mode=0o755)
        os.chmod(tmp_path / folder, 0o755)
    files = [
        tmp_path / "config" / "config.toml",
        tmp_path / "log" / "vram-steward.log",
        tmp_path / "state" / "audit.jsonl",
    ]
    for file in files:
        file.write_text("x\n")
        os.chmod(file, 0o644)
    result = run_python(START, tmp_path)
    for folder in ("state", "log", "config"):
        assert mode(tmp_path / folder) == 0o700, folder
    for file in files:
        assert mode(file) == 0o600, file
    assert result.stderr.count("tightened") == 6, result.stderr


def test_temp_files_of_killed_writes_are_cleared_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VRAM_STEWARD_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("VRAM_STEWARD_LOG_DIR", str(tmp_path / "log"))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # a writer killed with -9 between creating its temp file and renaming it
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, time, app.core.atomic as a\n"
            "a.os.replace = lambda *x: time.sleep(60)\n"
            f"a.write_atomic({str(state / 'api-endpoint.json')!r}, '{{}}')",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    deadline = time.monotonic() + 20
    while not [p for p in state.iterdir() if p.name.endswith(".tmp")]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    writer.kill()
    writer.wait()
    orphan = next(p for p in state.iterdir() if p.name.endswith(".tmp"))
    old = time.time() - atomic.STALE_TEMP_S - 10
    os.utime(orphan, (old, old))
    young = state / ".settings.toml.0123456789abcdef.tmp"  # a write in progress in another process
    young.write_text("half")
    unrelated = state / "notes.tmp"
    unrelated.write_text("mine")
    secure_app_dirs()
    assert not orphan.exists()
    assert young.exists() and unrelated.exists()


WRITER = """
import sys, time
from app.core.events import AuditLog, Paused
log = AuditLog(__import__("pathlib").Path(sys.argv[1]), max_bytes=3000, backups=400)
start_at, name, count = float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
while time.time() < start_at:
    pass
for i in range(count):
    log.write(Paused(at=float(i), by=f"{name}-{i}"))
"""


def test_the_audit_log_drops_no_event_when_processes_race_on_rotation(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    writers, per_writer = 4, 300
    start_at = time.time() + 1.5  # every writer starts at once, to race on each rotation
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(start_at), f"w{n}", str(per_writer)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
        for n in range(writers)
    ]
    for proc in procs:
        assert proc.wait(120) == 0
    seen: list[str] = []
    for file in path.parent.glob("audit.jsonl*"):
        if file.name.endswith(".lock"):
            continue
        seen.extend(json.loads(line)["by"] for line in file.read_text().splitlines() if line.strip())
    rotated = len(list(path.parent.glob("audit.jsonl.*")))
    assert rotated > 20  # many rotations happened, each a chance to race
    assert rotated < 400  # and none fell off the end: every event must still be there
    assert len(seen) == len(set(seen)) == writers * per_writer
