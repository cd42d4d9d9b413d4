"""TLS for the remote API (`allow_remote_api = true`, a non-loopback `api_host`): required, never optional.

The certificate is the user's (`api_tls_cert` and `api_tls_key` in the config) or, when none is set, a
self-signed one generated at first use and kept in the state dir (`api-tls-cert.pem`, `api-tls-key.pem`,
both 0600, reused while valid). Its SHA-256 fingerprint is logged at start, written to the endpoint file and
shown by `vram-steward status`: a remote client pins it (`StewardClient(fingerprint=...)`), so nobody on the
network can stand in for the engine and collect the token.

`cryptography` is imported only to generate a certificate; loading one needs only `ssl`.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from app.core import paths
from app.core.atomic import write_atomic
from app.core.errors import VramError
from app.core.private import private_dir

logger = logging.getLogger(__name__)

SELF_SIGNED_DAYS = 825  # what browsers and most clients accept for a leaf certificate
RENEW_BEFORE_S = 30 * 86_400  # a stored certificate this close to its end is replaced


class TlsUnavailable(VramError):
    """The remote API cannot have TLS: the user's certificate or key cannot be used, or none can be made."""

    code = "tls_unavailable"


@dataclass(frozen=True)
class TlsIdentity:
    cert_file: Path
    key_file: Path
    fingerprint: str  # "sha256:" + hex of the DER certificate's SHA-256
    self_signed: bool

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsUnavailable(
                f"the API's TLS certificate {self.cert_file} or key {self.key_file} cannot be loaded: {exc}",
                details={"cert": str(self.cert_file), "key": str(self.key_file)},
                suggestions=[
                    "Check that api_tls_cert is a PEM certificate and api_tls_key its PEM private key "
                    "(`vram-steward config check`), or remove both to use a self-signed certificate"
                ],
            ) from exc
        return context


def fingerprint_of_der(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fingerprint_of_pem_file(path: Path) -> str:
    return fingerprint_of_der(ssl.PEM_cert_to_DER_cert(path.read_text()))


def normalize_fingerprint(text: str) -> str:
    """ "sha256:AB:CD..." or "abcd..." (as openssl or a browser prints it) -> "sha256:abcd..."."""
    value = text.strip().lower()
    value = value.removeprefix("sha256:").removeprefix("sha256 fingerprint=")
    value = value.replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a SHA-256 fingerprint: {text!r}")
    return "sha256:" + value


def cert_file() -> Path:
    return paths.state_dir() / "api-tls-cert.pem"


def key_file() -> Path:
    return paths.state_dir() / "api-tls-key.pem"


def tls_identity(cert: str | Path | None, key: str | Path | None, host: str) -> TlsIdentity:
    """The user's certificate and key when both are given; else the stored self-signed one (made now when
    missing, expiring or not ours). Raises TlsUnavailable with what to fix."""
    if cert or key:
        if not (cert and key):
            raise TlsUnavailable(
                "api_tls_cert and api_tls_key go together: set both, or neither for a self-signed certificate"
            )
        cert_path, key_path = Path(str(cert)).expanduser(), Path(str(key)).expanduser()
        try:
            fingerprint = fingerprint_of_pem_file(cert_path)
        except (OSError, ValueError) as exc:
            raise TlsUnavailable(
                f"api_tls_cert {cert_path} cannot be read as a PEM certificate: {exc}",
                details={"cert": str(cert_path)},
            ) from exc
        identity = TlsIdentity(cert_path, key_path, fingerprint, self_signed=False)
        identity.server_context()  # the key matches and can be read: fail now, with the paths
        return identity
    return self_signed_identity(host)


def self_signed_identity(host: str, *, now: datetime.datetime | None = None) -> TlsIdentity:
    cert_path, key_path = cert_file(), key_file()
    private_dir(cert_path.parent)
    now = now or datetime.datetime.now(datetime.UTC)
    if _usable(cert_path, key_path, now):
        return TlsIdentity(cert_path, key_path, fingerprint_of_pem_file(cert_path), self_signed=True)
    cert_pem, key_pem = _generate(host, now)
    write_atomic(key_path, key_pem, mode=0o600)
    write_atomic(cert_path, cert_pem, mode=0o600)
    fingerprint = fingerprint_of_pem_file(cert_path)
    logger.warning("API: generated a self-signed TLS certificate %s, fingerprint %s", cert_path, fingerprint)
    return TlsIdentity(cert_path, key_path, fingerprint, self_signed=True)


def _usable(cert_path: Path, key_path: Path, now: datetime.datetime) -> bool:
    """A stored pair we can trust: regular files of ours, 0600, the certificate not near its end."""
    for path in (cert_path, key_path):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            logger.warning("API: %s is not a private file of yours: a new TLS certificate is made", path)
            return False
    try:
        from cryptography import x509

        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    remaining = certificate.not_valid_after_utc - now
    return remaining.total_seconds() > RENEW_BEFORE_S


def _generate(host: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:
        raise TlsUnavailable(
            "the remote API needs TLS, and making a self-signed certificate needs the `cryptography` package",
            suggestions=["pip install 'cryptography>=46.0.5'", "Or set api_tls_cert and api_tls_key"],
        ) from exc
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"VRAM Steward on {socket.gethostname()}")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    for address in {host, "127.0.0.1", "::1"}:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            continue
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem
