"""The one loopback check, behind `allow_remote_api` in the settings and in the API server alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from app.core.api.server import ApiServer
from app.core.config import ConfigErrors, load_settings
from app.core.errors import InvalidInput
from app.core.loopback import is_loopback

STAYS_HERE = [
    "localhost",
    "LocalHost",
    " localhost ",
    "localhost.",
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "[::1]",
    "0:0:0:0:0:0:0:1",
    "[0:0:0:0:0:0:0:1]",
    "::ffff:127.0.0.1",
    "[::ffff:127.0.0.1]",
]
REACHABLE_FROM_ELSEWHERE = [
    "",
    "0.0.0.0",
    "::",
    "[::]",
    "192.168.1.10",
    "10.0.0.1",
    "fe80::1",
    "[fe80::1]",
    "::ffff:192.168.1.10",
    "example.com",
    "localhost.example.com",
    "127.0.0.1.example.com",
    "[127.0.0.1]",  # brackets hold IPv6 only
    "[::1",
    "::1]",
    "127.0.0.1:8765",
]


@pytest.mark.parametrize("host", STAYS_HERE)
def test_loopback_names_and_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", REACHABLE_FROM_ELSEWHERE)
def test_everything_else_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_the_settings_and_the_api_server_use_this_one_check() -> None:
    from app.core import config
    from app.core.api import server

    assert config.is_loopback is is_loopback
    assert server.is_loopback is is_loopback


@pytest.mark.parametrize("host", STAYS_HERE)
def test_the_settings_accept_a_loopback_api_host(tmp_path: Path, host: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"api_host = {json.dumps(host)}\n", encoding="utf-8")
    assert load_settings(path).api_host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "[fe80::1]", "::ffff:192.168.1.10", "example.com"])
def test_the_settings_and_the_server_refuse_a_remote_host_unless_allowed(tmp_path: Path, host: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"api_host = {json.dumps(host)}\n", encoding="utf-8")
    with pytest.raises(ConfigErrors, match="api_host"):
        load_settings(path)
    with pytest.raises(InvalidInput, match="only loopback"):
        ApiServer(cast(Any, None), host=host, token="t")
