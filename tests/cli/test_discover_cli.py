"""`vram-steward discover` as a user runs it (a real `python -m app` process), against stand-ins answering as
ComfyUI and Ollama on loopback ports the test picks (asked through `--port`, or through a `[[servers]]`
entry): what it lists, which are managed, and `--manage` / `--all` writing entries with comments kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import load_settings
from tests.fixtures.engine_procs import engine_env, run_app
from tests.fixtures.servers import answers
from tests.fixtures.servers.answers import Answers


@pytest.fixture
def comfy() -> Iterator[Answers]:
    server = answers.comfyui()
    yield server
    server.stop()


@pytest.fixture
def ollama() -> Iterator[Answers]:
    server = answers.ollama()
    yield server
    server.stop()


@pytest.fixture
def config(tmp_path: Path, ollama: Answers) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'schema_version = 2\n# my GPU\ngpu_device = 0\n\n[[servers]]\n# my Ollama\nkind = "ollama"\n'
        f'url = "http://127.0.0.1:{ollama.port}"\n'
    )
    return path


def discover(tmp_path: Path, config: Path, *args: str) -> tuple[int, str, str]:
    done = run_app(tmp_path, "--config", str(config), "discover", *args, env=engine_env(tmp_path))
    return done.returncode, done.stdout, done.stderr


def test_it_lists_what_answers_and_which_are_managed(tmp_path: Path, config: Path, comfy: Answers) -> None:
    code, out, err = discover(tmp_path, config, "--port", str(comfy.port), "--json")
    assert code == 0, err
    apps = {a["kind"]: a for a in json.loads(out)["apps"]}
    assert apps["comfyui"] == {
        "kind": "comfyui",
        "name": "ComfyUI",
        "url": f"http://127.0.0.1:{comfy.port}",
        "port": comfy.port,
        "managed": False,
    }
    assert apps["ollama"]["managed"] is True  # the entry's own port, asked as Ollama

    code, out, err = discover(tmp_path, config, "--port", str(comfy.port))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("comfyui", "ollama"))}
    assert rows["comfyui"].endswith("no") and rows["ollama"].endswith("yes")
    assert f"vram-steward discover --manage comfyui@http://127.0.0.1:{comfy.port}" in out


def test_manage_writes_the_entry_keeping_comments(tmp_path: Path, config: Path, comfy: Answers) -> None:
    url = f"http://127.0.0.1:{comfy.port}"
    code, out, err = discover(tmp_path, config, "--port", str(comfy.port), "--manage", f"comfyui@{url}")
    assert code == 0, err
    assert f"Saved in {config}" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("comfyui")] == ["added"]
    text = config.read_text()
    assert "# my GPU" in text and "# my Ollama" in text
    servers = load_settings(config).servers
    assert [(s.kind, s.url) for s in servers] == [("ollama", servers[0].url), ("comfyui", url)]

    # asked again: managed now, and managing it again changes nothing
    code, out, err = discover(tmp_path, config, "--port", str(comfy.port), "--manage", f"comfyui@{url}")
    assert code == 0, err
    assert "is managed already" in out
    assert config.read_text() == text


def test_all_manages_every_app_found(tmp_path: Path, config: Path, comfy: Answers) -> None:
    code, out, err = discover(tmp_path, config, "--port", str(comfy.port), "--all", "--json")
    assert code == 0, err
    assert [a["kind"] for a in json.loads(out)["added"]] == ["comfyui"]
    assert [s.kind for s in load_settings(config).servers] == ["ollama", "comfyui"]


def test_what_it_cannot_manage_is_refused_with_the_reason(
    tmp_path: Path, config: Path, comfy: Answers
) -> None:
    before = config.read_text()
    code, _, err = discover(tmp_path, config, "--manage", "comfyui")
    assert code == 2 and "expected KIND@URL" in err
    code, _, err = discover(tmp_path, config, "--manage", "comfyui@http://192.168.1.20:8188")
    assert code == 2 and "loopback" in err
    # nothing answers as ComfyUI there (the stand-in's port is not asked without --port)
    code, _, err = discover(tmp_path, config, "--manage", f"comfyui@http://127.0.0.1:{comfy.port}")
    assert code == 1 and f"no comfyui answered at http://127.0.0.1:{comfy.port}" in err
    assert "ollama@http://127.0.0.1:" in err  # what was found instead
    assert config.read_text() == before


def test_no_settings_file_yet(tmp_path: Path, comfy: Answers) -> None:
    missing = tmp_path / "new" / "settings.toml"
    code, out, err = discover(tmp_path, missing, "--port", str(comfy.port), "--all")
    assert code == 0, err
    assert f"Saved in {missing}" in out
    assert [s.kind for s in load_settings(missing).servers] == ["comfyui"]
