"""TLS settings, the self-signed certificate, and fingerprints.

The server context follows Mozilla's "intermediate" profile: TLS 1.2 or 1.3,
only the six AEAD/ECDHE TLS 1.2 suites, no renegotiation, no compression.
When no certificate is configured a self-signed ECDSA P-256 pair is made in
the data directory on first start (key 0600) and reused, so a fresh install
is encrypted from the first connection; clients pin its SHA-256 fingerprint.

This module builds contexts and files; it never accepts, reads or writes a socket.
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
from pathlib import Path

from .config import Config, ensure_private_dir
from .errors import ConfigError

log = logging.getLogger(__name__)

CERT_FILENAME = "tls-cert.pem"
KEY_FILENAME = "tls-key.pem"
SELF_SIGNED_DAYS = 825
MOZILLA_INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])


def server_context(config: Config) -> tuple[ssl.SSLContext, str]:
    """The server's SSLContext and its certificate's SHA-256 fingerprint.

    Raises:
        ConfigError: a configured file is missing, unreadable, not a matching
            pair, or the key is readable by other users.
    """
    cert, key = certificate_paths(config)
    if not (config.tls.cert or config.tls.key):
        ensure_self_signed(cert, key)
    _refuse_shared_key(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = (ssl.TLSVersion.TLSv1_3 if config.tls.min_version == "1.3"
                               else ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(MOZILLA_INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load TLS certificate {cert} and key {key}: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    return context, fingerprint(cert.read_bytes())


def certificate_paths(config: Config) -> tuple[Path, Path]:
    if bool(config.tls.cert) != bool(config.tls.key):
        raise ConfigError("tls.cert and tls.key must be set together")
    if config.tls.cert:
        return Path(config.tls.cert), Path(config.tls.key)
    return config.data_dir / CERT_FILENAME, config.data_dir / KEY_FILENAME


def fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of the DER certificate, as colon-separated upper-case hex."""
    der = cert_pem_or_der
    if der.lstrip().startswith(b"-----BEGIN"):
        der = ssl.PEM_cert_to_DER_cert(cert_pem_or_der.decode("ascii"))
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def ensure_self_signed(cert: Path, key: Path) -> None:
    """Make a self-signed pair unless both files exist already."""
    if cert.exists() and key.exists():
        return
    ensure_private_dir(cert.parent)
    cert_pem, key_pem = _make_self_signed()
    _write_private(key, key_pem)
    _write_private(cert, cert_pem)
    log.info("generated a self-signed TLS certificate in %s", cert.parent)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _refuse_shared_key(key: Path) -> None:
    try:
        mode = key.stat().st_mode
    except OSError as e:
        raise ConfigError(f"cannot read TLS key {key}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"TLS key {key} is readable by other users; chmod 600 it")


def _make_self_signed() -> tuple[bytes, bytes]:
    # cryptography is imported here: only a first start without a configured
    # certificate needs it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname() or "localhost"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"authchat on {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.DNSName(hostname),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        # Self-signed and pinned: it is its own trust anchor, which strict
        # X.509 verification only accepts with these CA extensions.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            private_key.public_key()), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    key_pem = private_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem
