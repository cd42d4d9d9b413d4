"""`vram-steward models ... --simulate`: the in-process one-shot demonstration, end to end."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from residency_world import expected_digest, scenario_text, write_model

from app.__main__ import main
from app.cli.models import ProgressBar
from app.core.units import MiB


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, bytes]:
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VRAM_STEWARD_LOG_DIR", str(tmp_path / "logs"))
    data = write_model(tmp_path / "llama.bin", 3 * MiB)
    config = tmp_path / "config.toml"
    config.write_text(
        'schema_version = 2\nreserved_system_vram = "1 MiB"\n'
        f'[[models]]\nname = "llama"\npath = "{tmp_path / "llama.bin"}"\ngpu = 0\n'
    )
    scenario = tmp_path / "gpu.toml"
    scenario.write_text(scenario_text(total="64 MiB"))
    return config, scenario, data


def test_load_prints_progress_the_seal_and_zero_residue(setup, capsys: pytest.CaptureFixture[str]) -> None:
    config, scenario, data = setup
    assert main(["--config", str(config), "models", "load", "llama", "--simulate", str(scenario)]) == 0
    out = capsys.readouterr().out
    assert "100.0%" in out and re.search(r" \d+\.\d [KMGT]iB/s ", out)  # not a tty: plain progress lines
    assert f"digest {expected_digest(data, 1 * MiB)[:16]}" in out
    assert "file changed since the last seal: no" in out
    assert "VRAM still held by VRAM Steward on GPU 0: 0 B" in out
    # the manifest was kept: list shows its digest
    assert main(["--config", str(config), "models", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert row["name"] == "llama" and row["size_bytes"] == len(data)
    assert row["last_digest"] == expected_digest(data, 1 * MiB)


def test_verify_and_unload_run_through(setup, capsys: pytest.CaptureFixture[str]) -> None:
    config, scenario, _ = setup
    assert main(["--config", str(config), "models", "verify", "llama", "--simulate", str(scenario)]) == 0
    assert "Verified llama: VRAM matches" in capsys.readouterr().out
    assert main(["--config", str(config), "models", "unload", "llama", "--simulate", str(scenario)]) == 0
    assert "Freed llama" in capsys.readouterr().out


def test_errors_are_clear_and_exit_non_zero(
    setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, scenario, _ = setup
    assert main(["--config", str(config), "models", "load", "nope", "--simulate", str(scenario)]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
    assert main(["--config", str(config), "models", "load"]) == 2
    small = tmp_path / "small.toml"
    small.write_text(scenario_text(total="3 MiB"))
    assert main(["--config", str(config), "models", "load", "llama", "--simulate", str(small)]) == 1
    err = capsys.readouterr().err
    assert "Not enough free VRAM on GPU 0" in err and "need 3.0 MiB" in err
    (tmp_path / "llama.bin").unlink()
    assert main(["--config", str(config), "models", "load", "llama", "--simulate", str(scenario)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_progress_bar_on_a_terminal_shows_bytes_rate_and_eta() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    now = [0.0]
    out = Tty()
    bar = ProgressBar(out, label="m", clock=lambda: now[0])
    now[0] = 1.0
    bar.update(2_000_000_000, 8_000_000_000)
    bar.finish()
    text = out.getvalue()
    assert text.startswith("\rm [#######") and " 25.0% 1.9 GiB / 7.5 GiB 1.9 GiB/s ETA 3.0 s" in text
    assert text.endswith("\n")
