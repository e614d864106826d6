"""Test clients and servers: real sockets on loopback, real TLS, no sleeps.

Every socket has a timeout, so a test that waits for something that never
comes fails with TimeoutError instead of hanging.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import resource
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from authchat.config import Config, load_config
from authchat.server import Server
from authchat.store import Store

from conftest import GOOD_PASSWORD, TEST_COST, cli_env

READ_TIMEOUT_S = 10.0
PRESENCE = ("join", "leave")
# The error codes docs/protocol.md documents, read from its table.
DOCUMENTED_CODES = frozenset(re.findall(
    r"^\| `([a-z_]+)` \|", (Path(__file__).parents[1] / "docs" / "protocol.md").read_text(),
    re.MULTILINE))


def server_config(home: Path, **settings: Any) -> Config:
    """A Config for a test server: ephemeral port, cost 4, plaintext unless asked."""
    env = {"AUTHCHAT_HOME": str(home), "AUTHCHAT_AUTH_BCRYPT_COST": str(TEST_COST)}
    overrides = {"server.port": 0, "tls.enabled": False}
    overrides.update({key.replace("__", "."): value for key, value in settings.items()})
    return load_config(None, env=env, overrides=overrides)


def start_server(home: Path, **settings: Any) -> Server:
    config = server_config(home, **settings)
    server = Server(config, Store.from_config(config))
    server.start()
    return server


class Client:
    """One protocol client over a real (optionally TLS) socket."""

    def __init__(self, address: tuple[str, int], *, cafile: Path | None = None,
                 source_ip: str | None = None, timeout: float = READ_TIMEOUT_S,
                 rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock.settimeout(timeout)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source_ip is not None:
            sock.bind((source_ip, 0))
        sock.connect(address)
        if cafile is not None:
            context = ssl.create_default_context(cafile=str(cafile))
            sock = context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self._buffer = b""

    def send(self, frame: dict[str, Any] | bytes) -> None:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
        self.sock.sendall(data)

    def recv_line(self, timeout: float | None = None) -> bytes:
        """The next line, or b"" once the server has closed the connection."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def recv(self, timeout: float | None = None, skip: Iterable[str] = ()) -> dict[str, Any]:
        """The next frame whose type is not in `skip`."""
        while True:
            line = self.recv_line(timeout)
            if not line:
                raise EOFError("server closed the connection")
            if not line.endswith(b"\n"):  # the server died while writing it
                raise EOFError(f"connection cut in the middle of a frame: {line[:80]!r}")
            frame: dict[str, Any] = json.loads(line)
            if frame.get("type") not in skip:
                return frame

    def expect(self, kind: str, skip: Iterable[str] = PRESENCE, **fields: Any) -> dict[str, Any]:
        frame = self.recv(skip=skip)
        assert frame.get("type") == kind, f"expected {kind}, got {frame}"
        for key, value in fields.items():
            assert frame.get(key) == value, f"{key}: expected {value!r} in {frame}"
        return frame

    def expect_error(self, code: str, **fields: Any) -> dict[str, Any]:
        return self.expect("error", code=code, **fields)

    def expect_closed(self, timeout: float = READ_TIMEOUT_S) -> None:
        """Read (and drop) frames until the server closes; fail if it does not in time."""
        deadline = time.monotonic() + timeout
        try:
            while self.recv_line(max(0.01, deadline - time.monotonic())):
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass  # closed abruptly is closed too

    def hello(self) -> dict[str, Any]:
        return self.expect("hello")

    def login(self, username: str, password: str = GOOD_PASSWORD) -> dict[str, Any]:
        self.hello()
        self.send({"type": "login", "username": username, "password": password})
        return self.expect("welcome")

    def close(self) -> None:
        self.sock.close()


def run_in_pty(args: list[str], env: dict[str, str], answers: list[tuple[bytes, bytes]],
               timeout: float = 30) -> tuple[int, str]:
    """Run `authchat ARGS` with a pty as its terminal; (exit status, what it showed).

    `answers` are (prompt, reply) pairs taken in order: a reply is typed once
    its prompt has appeared once more than it had been answered, so a prompt
    asked again (a mismatched confirmation) gets the next reply.
    """
    # Not pty.fork(): forking this multi-threaded process (servers run in
    # threads here) can deadlock the child. setsid(1) starts the command in a
    # session of its own with the pty as its controlling terminal, which is
    # what a password prompt reads from.
    fd, terminal = os.openpty()
    child = subprocess.Popen(["setsid", "--ctty", "--wait", sys.executable, "-m", "authchat",
                              *args], stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    transcript, pending, answered = b"", list(answers), Counter[bytes]()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        transcript += chunk
        while pending and transcript.count(pending[0][0]) > answered[pending[0][0]]:
            prompt, reply = pending.pop(0)
            answered[prompt] += 1
            os.write(fd, reply)
    try:
        status = child.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if child.poll() is None:  # still asking for something: end it, then fail
            child.kill()
            child.wait()
        os.close(fd)
    return status, transcript.decode(errors="replace")


PEM = serialization.Encoding.PEM


class CertificateAuthority:
    """An issuer of certificates for one test: a CA made here, or an existing
    certificate and key (to forge what that key could sign).

    Certificates and keys are written to the test's own directory, never kept.
    """

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey | None = None,
                 name: x509.Name | None = None) -> None:
        self.directory = directory
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.name = name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        directory.mkdir(parents=True, exist_ok=True)
        self.cafile = directory / "ca.pem"
        if key is None:
            self.cafile.write_bytes(self._sign(self._ca_certificate()).public_bytes(PEM))

    @classmethod
    def from_pair(cls, directory: Path, cert: Path, key: Path) -> CertificateAuthority:
        """Sign as the holder of this certificate and key would."""
        private_key = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject
        return cls(directory, private_key, subject)

    def issue(self, stem: str, *names: str, expired: bool = False,
              self_signed: bool = False) -> tuple[Path, Path]:
        """A server certificate for `names` (host names or IP addresses), written
        as STEM-cert.pem and STEM-key.pem (0600); returns their paths. With
        `self_signed`, its own key signs it, not this authority's."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        issuer = CertificateAuthority(self.directory, key, subject) if self_signed else self
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) \
            if expired else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
        builder = (
            issuer._builder(subject, key.public_key(), start, end)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False))
        cert_path = self.directory / f"{stem}-cert.pem"
        key_path = self.directory / f"{stem}-key.pem"
        cert_path.write_bytes(issuer._sign(builder).public_bytes(PEM))
        key_path.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)  # the server refuses a key others can read
        return cert_path, key_path

    def _ca_certificate(self) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (self._builder(self.name, self.key.public_key(), now - datetime.timedelta(days=1),
                              now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 start: datetime.datetime, end: datetime.datetime) -> x509.CertificateBuilder:
        # The key identifiers are what Python 3.13's strict verification asks for.
        return (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(self.name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False))

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Wait for server-side state that has no event to wait on; False on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def add_user(server: Server, name: str, role: str = "user") -> None:
    server.store.create_user(name, GOOD_PASSWORD, actor="test", role=role, allow_reserved=True)


def login_reply(address: tuple[str, int], username: str, password: str = GOOD_PASSWORD,
                source_ip: str | None = None) -> dict[str, Any]:
    """Connect, try one login, and hang up: the server's reply (a welcome or an error)."""
    client = Client(address, source_ip=source_ip)
    try:
        client.hello()
        client.send({"type": "login", "username": username, "password": password})
        return client.recv()
    finally:
        client.close()


def logged_in(server: Server, name: str, **kwargs: Any) -> Client:
    client = Client(server.address, **kwargs)
    client.login(name)
    return client


class ServerProcess:
    """`authchat serve` as a real process, on an ephemeral port."""

    LISTENING = re.compile(rb"listening on (\S+) port (\d+)")

    def __init__(self, home: Path, *args: str, max_file_bytes: int | None = None,
                 **env: str) -> None:
        def limit_file_size() -> None:  # in the child, before exec
            if max_file_bytes is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "authchat", "serve", "--port", "0", *args],
            env=cli_env(home, **env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, preexec_fn=limit_file_size)
        self.pid = self.proc.pid
        self.log = b""
        self.address = self._wait_listening()
        # Keep reading the log: a server whose stderr pipe fills up would block
        # on its next log line, and a long test would measure that, not the server.
        self._drainer = threading.Thread(target=self._drain_log, daemon=True)
        self._drainer.start()

    def _wait_listening(self) -> tuple[str, int]:
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), True)
        while True:
            line = self.proc.stderr.readline()  # the server logs this line within seconds
            if not line:
                raise RuntimeError(f"server exited: {self.log.decode(errors='replace')}")
            self.log += line
            match = self.LISTENING.search(line)
            if match:
                return match[1].decode(), int(match[2])

    def _drain_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log += line

    def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self._reap(10)

    def _reap(self, timeout: float) -> int:
        """Wait for the process to end and for its last log lines."""
        status = self.proc.wait(timeout=timeout)
        self._drainer.join(timeout)
        return status


def add_users(home: Path, *names: str, role: str = "user") -> None:
    """Create accounts in the database a server process in `home` uses."""
    store = Store.from_config(server_config(home))
    try:
        store.migrate()
        for name in names:
            store.create_user(name, GOOD_PASSWORD, actor="test", role=role, allow_reserved=True)
    finally:
        store.close()


def proc_status(pid: int) -> dict[str, int]:
    """A process's resident memory (KiB), threads, open descriptors and sockets, from /proc."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed while we looked
            pass
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(targets), "sockets": sum(t.startswith("socket:") for t in targets)}


def thread_cpu_ticks(pid: int) -> dict[int, int]:
    """CPU time (clock ticks, user + system) each thread of a process has used."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended while we looked
            continue
        fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks
