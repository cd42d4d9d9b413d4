"""Settings-file polish: what a user's editor or a slip of the hand produces gets a precise message, and
reading never rewrites the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import ConfigErrors, load_settings


def problems_of(path: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    return [(p.key, str(p.details["value"]), p.expected) for p in caught.value.problems]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbfschema_version = 2\nauto_evict = false\n")
    assert load_settings(path).auto_evict is False


def test_a_top_level_key_below_a_table_says_to_move_it_up(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x")
    path = tmp_path / "config.toml"
    path.write_text(f'schema_version = 2\n\n[[models]]\nname = "m"\npath = "{model}"\nauto_evict = false\n')
    ((key, _value, expected),) = problems_of(path)
    assert key == "models[0].auto_evict"
    assert "move it above the first [[models]] line" in expected


def test_a_huge_value_is_cut_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('schema_version = 2\napi_host = "' + "x" * 5000 + '"\n')
    with pytest.raises(ConfigErrors) as caught:
        load_settings(path)
    message = str(caught.value.problems[0])
    assert len(message) < 600 and "characters)" in message


def test_a_model_path_that_is_not_a_regular_file_says_so(tmp_path: Path) -> None:
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    path = tmp_path / "config.toml"
    path.write_text(f'schema_version = 2\n\n[[models]]\nname = "m"\npath = "{fifo}"\n')
    ((_key, _value, expected),) = problems_of(path)
    assert "is not a regular file" in expected and "missing" not in expected


@pytest.mark.parametrize("command", [["config", "show"], ["models", "list"]])
def test_read_only_commands_never_rewrite_an_old_file(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "config.toml"
    old = "# my settings\nreserved_system_vram_mb = 3072\n"  # schema 1 (no schema_version)
    path.write_text(old)
    env = {**os.environ, "VRAM_STEWARD_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "app", "--config", str(path), *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert path.read_text() == old
    assert not list(tmp_path.glob("config.toml.*")), "no backup either: nothing was migrated"
