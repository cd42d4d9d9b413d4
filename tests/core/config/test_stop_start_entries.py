"""`[[servers]]` entries of kind "command" and "systemd": they load without a url, and `config check`
names the file, key, value and what was expected for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import ConfigErrors, load_settings


def load(tmp_path: Path, body: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text("schema_version = 2\n" + body)
    return load_settings(path)


def problems(tmp_path: Path, body: str) -> list[tuple[str, object, str]]:
    with pytest.raises(ConfigErrors) as caught:
        load(tmp_path, body)
    for p in caught.value.problems:
        assert p.path.endswith("config.toml") and p.line is not None
    return [(p.key, p.value, p.expected) for p in caught.value.problems]


def test_command_and_systemd_entries_load(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[[servers]]\nkind = "command"\nstop = "docker stop comfy"\nstart = "docker start comfy"\n'
        'match = "comfy"\ntimeout_s = 20\n\n'
        '[[servers]]\nkind = "systemd"\nunit = "ollama.service"\nuser = false\n',
    )
    command, unit = settings.servers  # type: ignore[attr-defined]
    assert (command.stop, command.start, command.match, command.timeout_s, command.url) == (
        "docker stop comfy",
        "docker start comfy",
        "comfy",
        20.0,
        "",
    )
    assert (unit.unit, unit.user, unit.timeout_s) == ("ollama.service", False, 30.0)


def test_precise_messages(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[[servers]]\nkind = "command"\nstart = "run \'it"\nunit = "x.service"\n\n'
        '[[servers]]\nkind = "systemd"\nunit = "--now"\n\n'
        '[[servers]]\nkind = "ollama"\nunit = "ollama.service"\n',
    )
    by_key = {key: (value, expected) for key, value, expected in found}
    assert "balanced quotes" in by_key["servers[0].start"][1]
    assert 'required for kind = "command"' in by_key["servers[0].stop"][1]
    assert by_key["servers[0].unit"] == (
        "x.service",
        'a key that kind = "command" uses: kind, stop, start, match, timeout_s',
    )
    assert by_key["servers[1].unit"][0] == "--now" and 'no leading "-"' in by_key["servers[1].unit"][1]
    assert 'kind = "ollama" uses' in by_key["servers[2].unit"][1]
    assert 'required for kind = "ollama"' in by_key["servers[2].url"][1]


def test_systemd_without_unit(tmp_path: Path) -> None:
    ((key, _, expected),) = problems(tmp_path, '[[servers]]\nkind = "systemd"\n')
    assert key == "servers[0].unit" and "required" in expected


def test_freeze_entries_load_and_need_a_match(tmp_path: Path) -> None:
    settings = load(tmp_path, '[[servers]]\nkind = "freeze"\nname = "ComfyUI"\nmatch = "ComfyUI/main.py"\n')
    (entry,) = settings.servers  # type: ignore[attr-defined]
    assert (entry.kind, entry.name, entry.match, entry.url) == ("freeze", "ComfyUI", "ComfyUI/main.py", "")
    found = problems(tmp_path, '[[servers]]\nkind = "freeze"\nname = "ComfyUI"\nunit = "x.service"\n')
    keys = {key for key, _, _ in found}
    assert "servers[0].match" in keys and "servers[0].unit" in keys
    (match_problem,) = [p for p in found if p[0] == "servers[0].match"]
    assert "ComfyUI/main.py" in match_problem[2]
