"""Fixtures for the settings tests: private platform dirs, and the `config` CLI run in-process."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli import config_cmd


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the platform dirs at a temp folder so no test reads or writes the user's real settings."""
    home = tmp_path / "platform"
    for name in ("CONFIG", "STATE", "LOG"):
        monkeypatch.setenv(f"VRAM_STEWARD_{name}_DIR", str(home / name.lower()))
    return home


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def config_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `vram-steward [--config FILE] config ...` in-process, with the app's top-level options."""

    def run(*argv: str) -> CliResult:
        parser = argparse.ArgumentParser(prog="vram-steward")
        parser.add_argument("--config", type=Path)
        parser.add_argument("-v", "--verbose", action="store_true")
        config_cmd.register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(list(argv))
        capsys.readouterr()
        code = args.func(args)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
