"""TLS settings, the self-signed certificate, and fingerprints.

The server context follows Mozilla's "intermediate" profile: TLS 1.2 or 1.3,
only the six AEAD/ECDHE TLS 1.2 suites, no renegotiation, no compression.
When no certificate is configured a self-signed ECDSA P-256 pair is made in
the data directory on first start (key 0600) and reused, so a fresh install
is encrypted from the first connection; clients pin its SHA-256 fingerprint.

Clients verify against the system CAs or a given CA file, or pin a
fingerprint: given on the command line, or remembered on first use in a
known-servers file, as ssh does with known_hosts. That file also notes the
servers an authority vouched for, so that a self-signed certificate there
later is a change, not a first use.

This module builds contexts and files; it never accepts, reads or writes a socket.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, ensure_private_dir
from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

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
    # The file itself, not its directory: it is what a client's --cafile takes.
    log.info("generated a self-signed TLS certificate %s (key %s)", cert, key)


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
        # A leaf, not a CA: whoever trusts it (--cafile, a trust store) trusts
        # this server, and nothing else its key could sign. OpenSSL accepts a
        # self-signed leaf as its own trust anchor, under Python 3.13's
        # VERIFY_X509_STRICT too (RFC 6818 exempts self-issued leaves).
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
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


# -- the client side ----------------------------------------------------------

KNOWN_SERVERS_FILENAME = "known_servers"
_HEX_FINGERPRINT = re.compile(r"[0-9A-F]{64}")


def default_known_servers() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("authchat", appauthor=False)) / KNOWN_SERVERS_FILENAME


def client_context(*, verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ for a client; `verify` checks the chain (system CAs or `cafile`) and name.

    Without `verify` the caller must pin the certificate's fingerprint itself.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint in the form `fingerprint()` prints, from any common spelling.

    Raises:
        ValueError: not 64 hex digits.
    """
    digits = text.strip().upper().removeprefix("SHA256:").replace(":", "").replace(" ", "")
    if not _HEX_FINGERPRINT.fullmatch(digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def same_fingerprint(a: str, b: str) -> bool:
    return hmac.compare_digest(normalize_fingerprint(a), normalize_fingerprint(b))


def is_self_signed(der: bytes) -> bool:
    """Whether a DER certificate names itself as its issuer and carries its own key's signature."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    try:
        certificate = x509.load_der_x509_certificate(der)
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):  # another issuer, or not a certificate
        return False
    return True


def self_signed_problem(der: bytes, host: str) -> str | None:
    """What OpenSSL does not check in a self-signed certificate it already
    refused for being self-signed: "expired", "not yet valid" or "another
    name" (not issued for `host`), or None if there is nothing wrong but that.
    Trust on first use is offered for that alone."""
    from cryptography import x509

    certificate = x509.load_der_x509_certificate(der)
    now = datetime.datetime.now(datetime.UTC)
    if now > certificate.not_valid_after_utc:
        return "expired"
    if now < certificate.not_valid_before_utc:
        return "not yet valid"
    return None if _issued_for(certificate, host) else "another name"


def certificate_names(der: bytes) -> list[str]:
    """The host names and addresses a DER certificate is issued for."""
    from cryptography import x509

    names = _alternative_names(x509.load_der_x509_certificate(der))
    if names is None:
        return []
    return names.get_values_for_type(x509.DNSName) + \
        [str(address) for address in names.get_values_for_type(x509.IPAddress)]


def _alternative_names(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _issued_for(certificate: x509.Certificate, host: str) -> bool:
    """Whether the certificate's subject alternative names cover `host`
    (a wildcard stands for one whole label at the left)."""
    from cryptography import x509

    names = _alternative_names(certificate)
    if names is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.lower().rstrip(".")
        return any(_dns_name_matches(name.lower(), wanted)
                   for name in names.get_values_for_type(x509.DNSName))
    return address in names.get_values_for_type(x509.IPAddress)


def _dns_name_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


VOUCHED = "ca"  # the known-servers field that marks a server an authority vouched for


@dataclass(frozen=True)
class KnownServer:
    """What the known-servers file says of one host:port: a pinned
    fingerprint, or that an authority vouched for it."""

    pin: str | None = None
    vouched: bool = False
    vouched_fingerprint: str | None = None  # the certificate it vouched for


class KnownServers:
    """Pinned certificate fingerprints per host:port, in a file like ssh's
    known_hosts, and the servers an authority has vouched for.

    One line per server (`[::1]:5555` for IPv6):

        host:port FINGERPRINT      pinned: only this certificate is accepted
        host:port ca FINGERPRINT   an authority vouched for it (FINGERPRINT is
                                   the certificate it vouched for, for the record)

    A vouched-for server is not pinned, since authorities renew certificates
    often; it is noted so that a self-signed certificate there later is
    refused as a change instead of being offered for trust on first use.
    Older versions read only two-field lines, so they skip the `ca` ones.
    The first line for a server counts; lines starting with # are comments.
    Edit the file to forget a server.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def lookup(self, host: str, port: int) -> KnownServer | None:
        key = server_key(host, port)
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) == 3 and fields[0] == key and fields[1] == VOUCHED:
                return KnownServer(vouched=True,
                                   vouched_fingerprint=normalize_fingerprint(fields[2]))
            if len(fields) == 2 and fields[0] == key:
                return KnownServer(pin=fields[1])
        return None

    def get(self, host: str, port: int) -> str | None:
        """The fingerprint pinned for host:port, if any."""
        known = self.lookup(host, port)
        return known.pin if known else None

    def remember(self, host: str, port: int, fingerprint_text: str) -> None:
        """Pin this fingerprint for host:port."""
        self._append(f"{server_key(host, port)} {normalize_fingerprint(fingerprint_text)}")

    def remember_vouched(self, host: str, port: int, fingerprint_text: str) -> None:
        """Note that an authority vouched for host:port (for this certificate)."""
        self._append(f"{server_key(host, port)} {VOUCHED} "
                     f"{normalize_fingerprint(fingerprint_text)}")

    def _append(self, line: str) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a+b") as f:
            # A file edited by hand may lack its last newline: the new line
            # must not be glued to that one, or neither would be found.
            end = f.seek(0, os.SEEK_END)
            if end > 0:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write((line + "\n").encode("utf-8"))  # O_APPEND: at the end, whatever the seek


def server_key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
