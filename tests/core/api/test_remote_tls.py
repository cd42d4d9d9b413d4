"""allow_remote_api: a real engine listening on every interface, reached through this machine's own
non-loopback address (another machine's view): TLS only, with a self-signed certificate made at first use
(0600, its fingerprint in the endpoint file) or the user's; clients pin the fingerprint and send nothing to
a server that shows another certificate; /healthz and /metrics need the token from other machines."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import StewardClient
from app.client_channel import CertificateMismatch
from app.core.api import tls
from app.core.config import Settings, load_settings
from app.core.errors import VramError
from tests.fixtures.api_server import ApiHandle, start_api

REMOTE = Settings(api_host="0.0.0.0", api_port=0, allow_remote_api=True)


def _lan_address() -> str | None:
    """An address of this machine that is not loopback, to connect from "another machine"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


LAN = _lan_address()
needs_lan = pytest.mark.skipif(LAN is None, reason="this machine has no non-loopback IPv4 address")


def _port(api: ApiHandle) -> int:
    assert api.runtime.api is not None and api.runtime.api.bound_port is not None
    return api.runtime.api.bound_port


def _https(address: str, port: int, path: str, token: str | None = None) -> tuple[int, bytes, bytes]:
    """One request over TLS, accepting any certificate; returns (status, body, the certificate's DER)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(address, port, timeout=10, context=context)
    headers = {"Host": f"{address}:{port}"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True) or b""
        return answer.status, answer.read(), der
    finally:
        conn.close()


@pytest.fixture
def remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[ApiHandle]:
    if LAN is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    caplog.set_level("WARNING", logger="app.core.api")
    monkeypatch.setenv("VRAM_STEWARD_RUNTIME_DIR", str(tmp_path / "run"))
    api = start_api(tmp_path, monkeypatch, settings=REMOTE)
    yield api
    api.stop()


@needs_lan
def test_the_remote_api_speaks_tls_only_with_a_self_signed_certificate_made_at_first_use(
    remote: ApiHandle, caplog: pytest.LogCaptureFixture
) -> None:
    assert LAN is not None
    port = _port(remote)
    endpoint = json.loads((remote.state_dir / "api-endpoint.json").read_text())
    cert = remote.state_dir / "api-tls-cert.pem"
    key = remote.state_dir / "api-tls-key.pem"
    for path in (cert, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status, body, der = _https(LAN, port, "/v1/status", remote.token)
    assert status == 200 and json.loads(body)["backend"] == "simulated"
    assert endpoint["tls_fingerprint"] == tls.fingerprint_of_der(der) == tls.fingerprint_of_pem_file(cert)
    started = "\n".join(record.getMessage() for record in caplog.get_records("setup"))
    assert f"fingerprint {endpoint['tls_fingerprint']}" in started  # logged at start
    assert "TLS only" in started and "cleartext" not in started
    # plain HTTP to the same port gets no answer: the token would cross the network in cleartext
    with socket.create_connection((LAN, port), timeout=10) as plain:
        plain.sendall(f"GET /healthz HTTP/1.1\r\nHost: {LAN}:{port}\r\n\r\n".encode())
        try:
            answer = plain.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]


@needs_lan
def test_healthz_and_metrics_need_the_token_from_other_machines(remote: ApiHandle) -> None:
    assert LAN is not None
    port = _port(remote)
    for path in ("/healthz", "/metrics"):
        status, body, _ = _https(LAN, port, path)
        assert status == 401, (path, body[:200])
        assert _https(LAN, port, path, remote.token)[0] == 200
        assert _https("127.0.0.1", port, path)[0] == 200  # a Prometheus on this machine: as before


@needs_lan
def test_a_client_pins_the_fingerprint_from_the_endpoint_file(remote: ApiHandle) -> None:
    assert LAN is not None
    port = _port(remote)
    pinned = StewardClient(channel="tcp", state_dir=remote.state_dir)  # fingerprint from the endpoint file
    assert pinned.base_url is not None and pinned.base_url.startswith("https://")
    assert pinned.status()["backend"] == "simulated"
    endpoint = json.loads((remote.state_dir / "api-endpoint.json").read_text())
    from_lan = StewardClient(
        f"https://{LAN}:{port}", remote.token, fingerprint=endpoint["tls_fingerprint"].upper()
    )
    assert from_lan.status()["backend"] == "simulated"
    unpinned = StewardClient(f"https://{LAN}:{port}", remote.token)  # default CA check: self-signed fails
    with pytest.raises(VramError):
        unpinned.status()
    # the CLI's own channel stays the Unix socket, no TLS needed there
    assert StewardClient(state_dir=remote.state_dir).channel == "unix"


@needs_lan
def test_status_shows_the_fingerprint(remote: ApiHandle) -> None:
    from app.cli.status import ask_engine, engine_line

    status, why = ask_engine()
    assert status is not None, why
    endpoint = json.loads((remote.state_dir / "api-endpoint.json").read_text())
    engine = status["engine"]
    assert engine["channel"] == "unix" and engine["tls_fingerprint"] == endpoint["tls_fingerprint"]
    assert f"Its TLS certificate: {endpoint['tls_fingerprint']}" in engine_line(engine)


class FakeTlsServer:
    """Someone on the network standing in for the engine, with a certificate of its own: records what it
    receives after the handshake."""

    def __init__(self, tmp_path: Path) -> None:
        cert_pem, key_pem = tls._generate("127.0.0.1", datetime.datetime.now(datetime.UTC))
        (tmp_path / "fake-cert.pem").write_bytes(cert_pem)
        (tmp_path / "fake-key.pem").write_bytes(key_pem)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tmp_path / "fake-cert.pem", tmp_path / "fake-key.pem")
        self.fingerprint = tls.fingerprint_of_pem_file(tmp_path / "fake-cert.pem")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received = b""
        self.handshakes = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls_conn:
                self.handshakes += 1
                tls_conn.settimeout(2)
                while chunk := tls_conn.recv(65536):
                    self.received += chunk
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(12)


def test_a_server_with_another_certificate_gets_no_token(tmp_path: Path) -> None:
    fake = FakeTlsServer(tmp_path)
    expected = "sha256:" + "ab" * 32  # what the engine's endpoint file said
    try:
        client = StewardClient(f"https://127.0.0.1:{fake.port}", "secret-token", fingerprint=expected)
        with pytest.raises(CertificateMismatch) as caught:
            client.status()
    finally:
        fake.close()
    assert fake.handshakes == 1 and fake.received == b"", fake.received[:200]
    assert caught.value.details == {"expected": expected, "got": fake.fingerprint}
    assert "not sending the API token" in caught.value.message


@needs_lan
def test_the_user_s_certificate_is_served_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert LAN is not None
    cert_pem, key_pem = tls._generate(LAN, datetime.datetime.now(datetime.UTC))
    (tmp_path / "mine.pem").write_bytes(cert_pem)
    (tmp_path / "mine.key").write_bytes(key_pem)
    os.chmod(tmp_path / "mine.key", 0o600)
    settings = Settings(
        api_host="0.0.0.0",
        api_port=0,
        allow_remote_api=True,
        api_tls_cert=str(tmp_path / "mine.pem"),
        api_tls_key=str(tmp_path / "mine.key"),
    )
    monkeypatch.setenv("VRAM_STEWARD_RUNTIME_DIR", str(tmp_path / "run"))
    api = start_api(tmp_path, monkeypatch, settings=settings)
    try:
        _, _, der = _https(LAN, _port(api), "/healthz", api.token)
        assert tls.fingerprint_of_der(der) == tls.fingerprint_of_pem_file(tmp_path / "mine.pem")
        assert not (api.state_dir / "api-tls-cert.pem").exists(), "no self-signed one was made"
    finally:
        api.stop()


def test_config_check_names_missing_or_unpaired_tls_files(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'schema_version = 2\napi_tls_cert = "{tmp_path / "nowhere.pem"}"\napi_tls_key = "k.pem"\n'
    )
    with pytest.raises(VramError) as caught:
        load_settings(config)
    text = caught.value.user_message()
    assert f"{tmp_path / 'nowhere.pem'} does not exist" in text and "api_tls_cert" in text
    assert f"{tmp_path / 'k.pem'} does not exist" in text and "api_tls_key" in text  # relative to the config
    config.write_text(f'schema_version = 2\napi_tls_cert = "{tmp_path / "c.pem"}"\n')
    with pytest.raises(VramError) as caught:
        load_settings(config)
    assert "api_tls_key" in caught.value.user_message()
    assert "set together with api_tls_cert" in caught.value.user_message()
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    config.write_text('schema_version = 2\napi_tls_cert = "c.pem"\napi_tls_key = "k.pem"\n')
    settings = load_settings(config)
    assert settings.api_tls_cert == str(tmp_path / "c.pem") and settings.api_tls_key == str(
        tmp_path / "k.pem"
    )


def test_a_stored_self_signed_certificate_is_reused_until_near_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRAM_STEWARD_STATE_DIR", str(tmp_path / "state"))
    now = datetime.datetime.now(datetime.UTC)
    first = tls.self_signed_identity("192.0.2.2", now=now)
    assert tls.self_signed_identity("192.0.2.2", now=now).fingerprint == first.fingerprint
    later = now + datetime.timedelta(days=tls.SELF_SIGNED_DAYS - 10)
    renewed = tls.self_signed_identity("192.0.2.2", now=later).fingerprint
    os.chmod(first.key_file, 0o644)  # a key others could read is not trusted: a new pair is made
    again = tls.self_signed_identity("192.0.2.2", now=later)
    assert again.fingerprint != renewed and stat.S_IMODE(again.key_file.stat().st_mode) == 0o600
