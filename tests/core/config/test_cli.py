"""`vram-steward config path|init|show|check` on good files (the malformed ones are in test_corpus.py)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core import config, paths


def test_path_prints_the_default_or_the_named_file(config_cli: Callable[..., Any], tmp_path: Path) -> None:
    assert config_cli("config", "path").out == f"{paths.default_config_file()}\n"
    assert (
        config_cli("--config", str(tmp_path / "x.toml"), "config", "path").out == f"{tmp_path / 'x.toml'}\n"
    )


def test_init_writes_the_default_once(config_cli: Callable[..., Any]) -> None:
    first = config_cli("config", "init")
    assert first.code == 0 and "Wrote" in first.out
    assert paths.default_config_file().read_text() == config.default_config_text()
    paths.default_config_file().write_text("auto_evict = false\n")
    second = config_cli("config", "init")
    assert second.code == 0 and "already exists" in second.out
    assert paths.default_config_file().read_text() == "auto_evict = false\n"


def test_check_without_a_file_says_the_defaults_apply(config_cli: Callable[..., Any]) -> None:
    result = config_cli("config", "check")
    assert result.code == 0
    assert result.out.startswith(f"OK: {paths.default_config_file()} does not exist; the defaults apply")


def test_check_of_a_missing_named_file_fails(config_cli: Callable[..., Any], tmp_path: Path) -> None:
    result = config_cli("--config", str(tmp_path / "gone.toml"), "config", "check")
    assert result.code == 1
    assert f"{tmp_path / 'gone.toml'}: (file) = " in result.err and "config init" in result.err


def test_check_of_a_good_file_prints_ok_and_a_summary(config_cli: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_text("w")
    path = tmp_path / "c.toml"
    path.write_text(
        'auto_evict = false\n[[models]]\nname = "a"\npath = "a.gguf"\ngpu = 1\n'
        '[[servers]]\nkind = "ollama"\nurl = "http://127.0.0.1:11434"\n'
    )
    result = config_cli("config", "check", str(path))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == f"OK: {path}"
    assert "1 model(s) on GPU 1, 0 app rule(s), 1 server(s)" in lines[1]
    assert "auto_evict=off" in lines[2]


def test_check_prefers_the_positional_file_over_config(
    config_cli: Callable[..., Any], tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("auto_evict = true\n")
    bad.write_text("auto_evict = 1\n")
    assert config_cli("--config", str(bad), "config", "check", str(good)).code == 0
    assert config_cli("--config", str(bad), "config", "check").code == 1


def test_show_prints_the_effective_settings_as_toml(config_cli: Callable[..., Any]) -> None:
    paths.default_config_file().parent.mkdir(parents=True)
    paths.default_config_file().write_text(
        'reserved_system_vram = 3221225472\n[[app_rules]]\nmatch = "x"\naction = "ignore"\n'
    )
    result = config_cli("config", "show")
    assert result.code == 0
    shown = tomllib.loads(result.out)
    assert shown["reserved_system_vram"] == "3 GiB"
    assert shown["headroom_percent"] == 10.0 and shown["schema_version"] == config.SCHEMA_VERSION
    assert shown["app_rules"] == [{"match": "x", "action": "ignore"}]


def test_show_of_a_broken_file_lists_the_problems(config_cli: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("api_port = 70000\n")
    result = config_cli("--config", str(path), "config", "show")
    assert result.code == 1 and result.out == ""
    assert f"{path}:1: api_port = 70000: expected a whole number from 0 to 65535" in result.err


def test_config_without_an_action_prints_usage(config_cli: Callable[..., Any]) -> None:
    result = config_cli("config")
    assert result.code == 2 and "check,path,show,init" in result.err
