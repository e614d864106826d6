"""The servers under test, each started and stopped by the suite itself, on loopback.

Every one runs as a child process whose PID the suite knows, so its CPU time
and memory can be read from /proc and it can be ended by that PID alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
BENCH_PASSWORD = "benchmark password for every user"
START_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerUnderTest:
    name = "?"
    driver = "?"
    tls = False
    setup_threads = 16  # clients each load worker connects at once, before the clock

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self, users: int) -> None:
        """Anything to do before start-up: accounts, config files."""

    def start(self, users: int) -> None:
        self.prepare(users)
        with open(self.dir / "server.log", "wb") as log:  # the server keeps its own copy
            self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.dir / 'server.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)  # the server is still starting; bounded by the deadline
        raise RuntimeError(f"{self.name} did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def memory_kib(self) -> dict[str, int]:
        """Current and peak resident memory, in KiB."""
        found = self._status("VmRSS", "VmHWM")
        return {"rss_kib": found.get("VmRSS", 0), "peak_rss_kib": found.get("VmHWM", 0)}

    def thread_count(self) -> int:
        return self._status("Threads").get("Threads", 0)

    def fd_count(self) -> int:
        """Open file descriptors: sockets, the database and its journal files, pipes."""
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def _status(self, *keys: str) -> dict[str, int]:
        """The numeric fields `keys` of /proc/PID/status (memory ones are in KiB)."""
        assert self.proc is not None
        found = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0])
        return found


class Authchat(ServerUnderTest):
    name = "authchat"
    driver = "authchat"
    setup_threads = 4  # below the bcrypt queue (cores x 5): more would be told to wait

    def __init__(self, tls: bool = False, bcrypt_cost: int = 4, history: bool = True) -> None:
        self.tls = tls
        self.bcrypt_cost = bcrypt_cost
        self.history = history  # off: the baseline that shows what storing messages costs
        self.name = ("authchat-tls" if tls else "authchat") + ("" if history else "-nohist")
        super().__init__()

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCHAT_")}
        limits = {  # the suite measures speed, not the abuse limits: raise them all
            "MAX_CLIENTS": 100_000, "MAX_UNAUTHENTICATED": 100_000,
            "MAX_UNAUTHENTICATED_PER_IP": 100_000, "CONNECTIONS_PER_IP_PER_MINUTE": 1_000_000,
            "MAX_CONNECTIONS_PER_IP": 100_000, "MAX_SESSIONS_PER_USER": 1000,
            "MESSAGES_PER_SECOND": 100_000, "MESSAGE_BURST": 100_000,
            "FAILED_LOGINS_PER_IP_PER_MINUTE": 100_000, "FAILED_LOGINS_PER_ACCOUNT": 100_000,
            "FAILED_LOGINS_PER_ACCOUNT_PER_HOUR": 1_000_000,
            "HANDSHAKE_TIMEOUT_S": 120,
        }
        env.update({f"AUTHCHAT_LIMITS_{k}": str(v) for k, v in limits.items()})
        env.update(AUTHCHAT_HOME=str(self.dir), AUTHCHAT_LOGGING_LEVEL="WARNING",
                   AUTHCHAT_AUTH_BCRYPT_COST=str(self.bcrypt_cost),
                   AUTHCHAT_AUTH_MAX_HASHES_PER_IP="1024",  # every client is 127.0.0.1
                   AUTHCHAT_HISTORY_ENABLED="true" if self.history else "false")
        return env

    def prepare(self, users: int) -> None:
        env = self.environment()
        script = (
            "from authchat.config import load_config; from authchat.store import Store\n"
            "from bench.drivers import account\n"
            "store = Store.from_config(load_config(None))\nstore.migrate()\n"
            f"for n in range({users}):\n"
            f"    store.create_user(account(n), {BENCH_PASSWORD!r}, actor='bench')\n")
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600,
                       cwd=REPOSITORY)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "authchat", "serve", "--port", str(self.port),
                "--tls" if self.tls else "--no-tls"]


class Toy(ServerUnderTest):
    name = "toy"
    driver = "toy"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.toy_server", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPOSITORY)
        return env


class _Irc(ServerUnderTest):
    driver = "irc"
    binary = "?"
    config = "?"

    @classmethod
    def path(cls) -> str | None:
        """The server's executable; Debian puts daemons in /usr/sbin, not always on PATH."""
        return shutil.which(cls.binary) or shutil.which(cls.binary, path=SBIN)

    @classmethod
    def installed(cls) -> bool:
        return cls.path() is not None

    def prepare(self, users: int) -> None:
        text = (CONFIGS / self.config).read_text()
        (self.dir / self.config.removesuffix(".in")).write_text(
            text.replace("{port}", str(self.port)).replace("{dir}", str(self.dir)))
        (self.dir / "motd.txt").write_text("benchmark\n")


class Ngircd(_Irc):
    name = "ngircd"
    setup_threads = 4  # its listen backlog is short: a crowd of connects times out
    binary = "ngircd"
    config = "ngircd.conf.in"

    def command(self) -> list[str]:
        return [str(self.path()), "--nodaemon", "--config", str(self.dir / "ngircd.conf")]


class Inspircd(_Irc):
    name = "inspircd"
    setup_threads = 64  # it finishes a registration only on its once-a-second tick
    binary = "inspircd"
    config = "inspircd.conf.in"

    def command(self) -> list[str]:
        # --runasroot: CI and these machines run as root; it listens on loopback only.
        return [str(self.path()), "--nofork", "--runasroot",
                f"--config={self.dir / 'inspircd.conf'}"]
