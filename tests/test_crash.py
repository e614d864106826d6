"""Crash safety: SIGKILL the server or an admin command anywhere, lose nothing.

SECURITY.md §2, "Nothing lost" (T-N1). Every account change and its audit row
are committed in one transaction, so whatever moment a process dies at, the
audit log replayed from its first row must give exactly the users table: a
users row without its `user.create` row, or a change without its audit row,
is a half-written account. A change is acknowledged (`welcome`, exit status
0) only after its COMMIT, so every acknowledged change must still be there
after a restart.

Kills are cued by what the victim has observably done (welcomes sent, its
password read from its pipe, the database open, SQLite's write lock taken or
given back as /proc/locks shows it), never by a sleep. Only processes these
tests started are killed, each by its own PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from authchat.config import DATABASE_FILENAME
from authchat.store import sqlite

from conftest import CLI_TIMEOUT_S, Runner, cli_env
from helpers import Client, ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"

UNANSWERED = "unanswered"  # the server died before it replied
TIMED_OUT = "timed out"    # neither a reply nor a closed connection: a hang
# Fewer than the bcrypt queue holds even on one core, so none is turned away as busy.
LOGIN_WORKERS = 4

STORM_SIZE = 100
# One storm per entry: the server is killed the moment that many welcomes are
# out, early, midway and late in the storm.
KILL_AFTER_WELCOMES = (5, 30, 55, 80)
STORM_SETTINGS = {
    # A hundred registrations arrive at once: make room for all of them among
    # the connections not yet logged in and in the bcrypt queue, which by
    # default turns most of them away as busy on a 2-core machine.
    "AUTHCHAT_LIMITS_MAX_UNAUTHENTICATED": "200",
    "AUTHCHAT_AUTH_MAX_CONCURRENT_HASHES": "20",
    "AUTHCHAT_LIMITS_REGISTRATIONS_PER_IP_PER_HOUR": "1000",
}

# When an admin command is killed. HASHING runs the command with a real bcrypt
# cost, so the hash it computes after reading its password takes long enough
# for the kill to land inside it. WRITE_LOCK lands inside its transaction;
# AFTER_COMMIT just after the lock is given back, where a change split over two
# transactions would be caught half-written.
NEVER, AT_START, DB_OPEN, HASHING, WRITE_LOCK, AFTER_COMMIT = (
    "never", "at start", "database open", "hashing", "holding the write lock",
    "after its commit")
HASHING_COST = "12"
# Two rounds, so that the commands to be killed while they write compete with
# fewer others for the CPU that the watching loop needs to catch them at it.
ADMIN_ROUNDS = (
    (("add", NEVER), ("add", AT_START), ("add", DB_OPEN), ("add", HASHING),
     ("passwd", NEVER), ("passwd", AT_START), ("passwd", DB_OPEN), ("passwd", HASHING),
     ("passwd", HASHING), ("disable", NEVER), ("disable", DB_OPEN), ("role", NEVER),
     ("delete", NEVER), ("delete", DB_OPEN)),
    (("add", NEVER), ("add", WRITE_LOCK), ("add", WRITE_LOCK), ("add", WRITE_LOCK),
     ("add", AFTER_COMMIT), ("add", AFTER_COMMIT),
     ("passwd", NEVER), ("passwd", WRITE_LOCK), ("passwd", WRITE_LOCK),
     ("passwd", AFTER_COMMIT), ("passwd", AFTER_COMMIT),
     ("disable", WRITE_LOCK), ("disable", WRITE_LOCK), ("disable", AFTER_COMMIT),
     ("role", WRITE_LOCK), ("role", AFTER_COMMIT),
     ("delete", NEVER), ("delete", WRITE_LOCK), ("delete", WRITE_LOCK),
     ("delete", AFTER_COMMIT)),
)
LIVE_REGISTRATIONS_MAX = 60
# SQLite's WAL write lock is byte 120 of the -shm file (WAL_WRITE_LOCK).
WAL_WRITE_LOCK_BYTE = "120"


def new_password() -> str:
    # Hex digits only, so it can never contain one of these tests' usernames.
    return "pw " + os.urandom(12).hex()


def reap(server: ServerProcess) -> int:
    """Wait for a server already sent SIGKILL; returns its exit status, with
    its log complete. (Popen signals no process that has already ended.)"""
    return server.terminate()


def server_log(server: ServerProcess) -> str:
    return server.log.decode(errors="replace")


# -- what the database holds ---------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """The accounts, checked against the audit log that created them."""

    accounts: dict[str, tuple[str, bool]]  # lower-cased name -> (role, disabled)
    audit: list[tuple[str, str]]           # (action, lower-cased target), oldest first

    def audited(self, action: str, name: str) -> bool:
        return (action, name) in self.audit


def database_snapshot(home: Path) -> Snapshot:
    """Check the file is sound and no account is half-written; returns what it holds."""
    conn = sqlite.connect(home / DATABASE_FILENAME, busy_timeout_ms=10_000)
    try:
        assert [tuple(r) for r in conn.execute("PRAGMA integrity_check")] == [("ok",)]
        accounts = {name.lower(): (role, bool(disabled)) for name, role, disabled
                    in conn.execute("SELECT username, role, disabled FROM users")}
        rows = [tuple(r) for r in
                conn.execute("SELECT action, target, detail FROM audit_log ORDER BY id")]
    finally:
        conn.close()
    assert accounts == replay_audit(rows), "the users table and the audit log disagree"
    return Snapshot(accounts, [(action, target.lower()) for action, target, _ in rows])


def replay_audit(rows: list[tuple[str, str, str]]) -> dict[str, tuple[str, bool]]:
    """The accounts the audit log says exist, with their role and disabled flag."""
    accounts: dict[str, tuple[str, bool]] = {}
    for action, target, detail in rows:
        name = target.lower()
        if action == "user.create":
            assert name not in accounts, f"{name} created twice"
            accounts[name] = (json.loads(detail)["role"], False)
        elif action == "user.delete":
            del accounts[name]
        elif action in ("user.disable", "user.enable"):
            accounts[name] = (accounts[name][0], action == "user.disable")
        elif action == "user.role":
            accounts[name] = (json.loads(detail)["role"], accounts[name][1])
        # user.passwd changes only the hash, which logging in checks.
    return accounts


# -- protocol clients ------------------------------------------------------------

def reply_outcome(client: Client) -> str:
    """`welcome`, the error code, UNANSWERED if the server died, TIMED_OUT if it hung."""
    try:
        reply = client.recv()
    except (EOFError, ConnectionError):
        return UNANSWERED
    except TimeoutError:
        return TIMED_OUT
    return "welcome" if reply["type"] == "welcome" else str(reply.get("code"))


def request_outcome(address: tuple[str, int], kind: str, name: str, password: str,
                    source_ip: str) -> str:
    """Connect, then `login` or `register`; returns the outcome."""
    client = Client(address, source_ip=source_ip)
    try:
        client.hello()
        client.send({"type": kind, "username": name, "password": password})
        return reply_outcome(client)
    finally:
        client.close()


def login_outcomes(address: tuple[str, int], credentials: dict[str, str]) -> dict[str, str]:
    """Log every account in, several at once, each from its own loopback
    address so that no per-address limit or throttle decides the outcome."""
    with ThreadPoolExecutor(LOGIN_WORKERS) as pool:
        futures = {name: pool.submit(request_outcome, address, "login", name, password,
                                     f"127.0.2.{1 + n % 250}")
                   for n, (name, password) in enumerate(sorted(credentials.items()))}
    return {name: future.result() for name, future in futures.items()}


# -- 1. a registration storm, killed -------------------------------------------------

def greeted_clients(server: ServerProcess) -> list[Client]:
    """STORM_SIZE connections past `hello`, each from its own loopback address."""
    clients = []
    for n in range(STORM_SIZE):
        clients.append(Client(server.address, source_ip=f"127.0.0.{2 + n}"))
        clients[-1].hello()
    return clients


def registration_storm(server: ServerProcess, storm: int, kill_after: int,
                       passwords: dict[str, str]) -> dict[str, str]:
    """STORM_SIZE registrations at once, one per connection; the server gets
    SIGKILL the moment the `kill_after`th welcome arrives. Returns each
    name's outcome."""
    names = [f"storm{storm}-{n}" for n in range(STORM_SIZE)]
    passwords.update((name, new_password()) for name in names)
    outcomes: dict[str, str] = {}
    lock = threading.Lock()
    go = threading.Barrier(STORM_SIZE)

    def register(client: Client, name: str) -> None:
        go.wait()
        client.send({"type": "register", "username": name, "password": passwords[name]})
        outcome = reply_outcome(client)
        client.close()
        with lock:
            outcomes[name] = outcome
            welcomes = sum(1 for o in outcomes.values() if o == "welcome")
        if outcome == "welcome" and welcomes == kill_after:
            server.proc.kill()  # right here: some but not all welcomes are out

    threads = [threading.Thread(target=register, args=pair)
               for pair in zip(greeted_clients(server), names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def check_after_restart(server: ServerProcess, home: Path, passwords: dict[str, str],
                        welcomed: set[str], logged_in: set[str]) -> None:
    """Nothing acknowledged is missing, nothing is half-written, and every
    account, acknowledged or not, logs in with its password."""
    accounts = database_snapshot(home).accounts
    assert welcomed <= accounts.keys(), f"welcomed but lost: {welcomed - accounts.keys()}"
    assert accounts.keys() <= passwords.keys()  # no account nobody asked for
    unchecked = {name: passwords[name] for name in accounts.keys() - logged_in}
    outcomes = login_outcomes(server.address, unchecked)
    assert outcomes == {name: "welcome" for name in unchecked}
    logged_in.update(unchecked)


@pytest.mark.slow
def test_acknowledged_registrations_survive_kill_9_mid_storm(home: Path) -> None:
    passwords: dict[str, str] = {}
    welcomed: set[str] = set()
    logged_in: set[str] = set()
    for storm, kill_after in enumerate(KILL_AFTER_WELCOMES):
        server = ServerProcess(home, "--no-tls", **STORM_SETTINGS)
        try:
            check_after_restart(server, home, passwords, welcomed, logged_in)
            outcomes = registration_storm(server, storm, kill_after, passwords)
        finally:
            server.kill()  # for a failure before the storm's own kill
        assert reap(server) == -signal.SIGKILL, server_log(server)  # our kill, not a crash
        assert "Traceback" not in server_log(server)
        answers = list(outcomes.values())
        assert set(answers) <= {"welcome", UNANSWERED}, outcomes  # no refusal, no hang
        assert answers.count("welcome") >= kill_after
        assert UNANSWERED in answers  # the kill landed mid-storm
        welcomed.update(name for name, o in outcomes.items() if o == "welcome")
    server = ServerProcess(home, "--no-tls", **STORM_SETTINGS)
    try:
        check_after_restart(server, home, passwords, welcomed, logged_in)
    finally:
        status = server.terminate()
    assert status == 0, server_log(server)
    assert "Traceback" not in server_log(server)


# -- 2. admin commands, killed -----------------------------------------------------

@dataclass
class AdminCommand:
    verb: str          # add, passwd, disable, role or delete
    target: str
    kill_when: str     # NEVER, AT_START, DB_OPEN, HASHING, WRITE_LOCK or AFTER_COMMIT
    password: str | None = None  # what it reads on standard input
    seen_writing: bool = False   # seen holding the write lock (for AFTER_COMMIT)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stderr: str = ""

    def args(self) -> list[str]:
        return {"add": ["users", "add", self.target, "--password-stdin"],
                "passwd": ["users", "passwd", self.target, "--password-stdin"],
                "disable": ["users", "disable", self.target],
                "role": ["users", "role", self.target, "admin"],
                "delete": ["users", "delete", self.target, "--yes"]}[self.verb]

    def start(self, home: Path) -> None:
        env = cli_env(home)
        if self.kill_when == HASHING:
            env["AUTHCHAT_AUTH_BCRYPT_COST"] = HASHING_COST
        self.process = subprocess.Popen(
            [sys.executable, "-m", "authchat", *self.args()], env=env,
            stdin=subprocess.PIPE if self.password else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if self.password:
            assert self.process.stdin is not None
            self.process.stdin.write(self.password.encode() + b"\n")
            self.process.stdin.flush()  # kept open: HASHING watches it drain
        if self.kill_when == AT_START:
            self.process.kill()

    @property
    def killed(self) -> bool:
        assert self.process is not None
        return self.process.returncode == -signal.SIGKILL

    def finish(self) -> None:
        assert self.process is not None
        _, err = self.process.communicate(timeout=CLI_TIMEOUT_S)
        self.stderr = err.decode(errors="replace")

    def took_effect(self, snapshot: Snapshot) -> bool:
        accounts, name = snapshot.accounts, self.target
        if self.verb == "add":
            return name in accounts
        if self.verb == "passwd":
            return snapshot.audited("user.passwd", name)
        if self.verb == "disable":
            return accounts[name][1]
        if self.verb == "role":
            return accounts[name][0] == "admin"
        return name not in accounts  # delete


def write_lock_holders(shm: Path) -> set[int]:
    """PIDs holding SQLite's WAL write lock on this database, from /proc/locks."""
    inode = str(os.stat(shm).st_ino)
    holders = set()
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()  # N: POSIX ADVISORY WRITE pid maj:min:inode start end
            if "->" in fields or len(fields) < 8:
                continue  # a waiter, not a holder
            if fields[3] == "WRITE" and fields[5].rsplit(":", 1)[-1] == inode \
                    and fields[6] == WAL_WRITE_LOCK_BYTE:
                holders.add(int(fields[4]))
    return holders


def has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except FileNotFoundError:
            pass
    return False


def password_read(command: AdminCommand) -> bool:
    """Whether the command has read its password: the pipe to it is empty."""
    assert command.process is not None and command.process.stdin is not None
    unread = fcntl.ioctl(command.process.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", unread)[0] == 0


def at_cue(command: AdminCommand, lock_holders: set[int], database: Path) -> bool:
    assert command.process is not None
    pid = command.process.pid
    if command.kill_when == WRITE_LOCK:
        return pid in lock_holders
    if command.kill_when == AFTER_COMMIT:
        if pid in lock_holders:
            command.seen_writing = True
            return False
        return command.seen_writing
    if command.kill_when == DB_OPEN:
        return has_open(pid, database)
    return command.kill_when == HASHING and password_read(command)


def kill_on_cue(commands: list[AdminCommand], database: Path, timeout: float = 60) -> None:
    """Watch every command still to be killed and SIGKILL each one at its cue.

    A tight loop on purpose: a transaction holds the write lock for about a
    millisecond. A command that exits before its cue simply ran to the end.
    """
    waiting = [c for c in commands if c.kill_when not in (NEVER, AT_START)]
    deadline = time.monotonic() + timeout
    while waiting:
        assert time.monotonic() < deadline, [c.args() for c in waiting]
        holders = write_lock_holders(Path(f"{database}-shm"))
        for command in list(waiting):
            assert command.process is not None
            if command.process.poll() is not None:
                waiting.remove(command)
            elif at_cue(command, holders, database):
                command.process.kill()
                waiting.remove(command)


def admin_rounds() -> list[list[AdminCommand]]:
    """ADMIN_ROUNDS, each command on an account of its own, so that each one's
    effect can be told apart from every other's."""
    rounds = []
    for r, plan in enumerate(ADMIN_ROUNDS):
        commands = []
        for n, (verb, kill_when) in enumerate(plan):
            target = f"added{r}-{n}" if verb == "add" else f"acct{r}-{n}"
            password = new_password() if verb in ("add", "passwd") else None
            commands.append(AdminCommand(verb, target, kill_when, password))
        rounds.append(commands)
    return rounds


def run_round(commands: list[AdminCommand], home: Path) -> None:
    for command in commands:
        command.start(home)
    kill_on_cue(commands, (home / DATABASE_FILENAME).resolve())
    for command in commands:
        command.finish()


def register_accounts(server: ServerProcess, names: list[str],
                      passwords: dict[str, str]) -> None:
    for n, name in enumerate(names):
        passwords[name] = new_password()
        outcome = request_outcome(server.address, "register", name, passwords[name],
                                  f"127.0.3.{1 + n}")
        assert outcome == "welcome", (name, outcome)


def keep_registering(server: ServerProcess, done: threading.Event,
                     passwords: dict[str, str]) -> list[str]:
    """Register accounts over the network until `done`; returns each outcome."""
    outcomes = []
    while not done.is_set() and len(outcomes) < LIVE_REGISTRATIONS_MAX:
        name = f"live{len(outcomes)}"
        passwords[name] = new_password()
        source_ip = f"127.0.4.{1 + len(outcomes) % 250}"
        outcomes.append(request_outcome(server.address, "register", name, passwords[name],
                                        source_ip))
    return outcomes


def expected_logins(commands: list[AdminCommand], snapshot: Snapshot,
                    passwords: dict[str, str]) -> dict[str, tuple[str, str]]:
    """For every account: the password it must log in with now, and the reply.

    A `passwd` that committed (its audit row says so) changed the password; one
    that did not left the old one. A disabled account still proves its password:
    the server says `account_disabled` only after a correct one.
    """
    current = dict(passwords)
    for command in commands:
        if command.verb == "add" or (command.verb == "passwd"
                                     and snapshot.audited("user.passwd", command.target)):
            assert command.password is not None
            current[command.target] = command.password
    return {name: (current[name], "account_disabled" if disabled else "welcome")
            for name, (_, disabled) in snapshot.accounts.items()}


def check_admin_outcomes(commands: list[AdminCommand], snapshot: Snapshot) -> None:
    """Every command that was not killed succeeded quietly and took full effect."""
    for command in commands:
        assert command.process is not None
        if command.killed:
            continue  # all or nothing: database_snapshot held it to its audit rows
        assert (command.process.returncode, command.stderr) == (0, ""), command
        assert command.took_effect(snapshot), command


def check_passwords(server: ServerProcess, commands: list[AdminCommand], snapshot: Snapshot,
                    passwords: dict[str, str]) -> None:
    """Every account logs in with the password it should have now, and a
    completed `passwd` left the old password useless."""
    expected = expected_logins(commands, snapshot, passwords)
    outcomes = login_outcomes(server.address, {n: pw for n, (pw, _) in expected.items()})
    assert outcomes == {name: reply for name, (_, reply) in expected.items()}
    replaced = {c.target: passwords[c.target] for c in commands
                if c.verb == "passwd" and not c.killed}
    assert set(login_outcomes(server.address, replaced).values()) == {"bad_credentials"}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="cues kills on Linux's /proc")
def test_admin_commands_killed_midway_apply_fully_or_not_at_all(
        home: Path, run_cli: Runner) -> None:
    server = ServerProcess(home, "--no-tls", AUTHCHAT_LIMITS_REGISTRATIONS_PER_IP_PER_HOUR="1000")
    try:
        passwords: dict[str, str] = {}
        rounds = admin_rounds()
        commands = [command for plan in rounds for command in plan]
        register_accounts(server, [c.target for c in commands if c.verb != "add"], passwords)
        done = threading.Event()
        with ThreadPoolExecutor(1) as background:  # the server writes meanwhile
            live = background.submit(keep_registering, server, done, passwords)
            try:
                for round_commands in rounds:
                    run_round(round_commands, home)
            finally:
                done.set()
        assert set(live.result()) == {"welcome"}

        snapshot = database_snapshot(home)
        check_admin_outcomes(commands, snapshot)
        killed = {c.kill_when for c in commands if c.killed}
        assert {AT_START, DB_OPEN, HASHING, WRITE_LOCK} <= killed  # the cues were hit
        assert {f"live{n}" for n in range(len(live.result()))} <= snapshot.accounts.keys()
        check_passwords(server, commands, snapshot, passwords)

        # Still writable by the CLI and by the server after all those kills.
        after = new_password()
        run_cli("users", "add", "afterwards", "--password-stdin", input=after + "\n",
                check=True)
        assert request_outcome(server.address, "login", "afterwards", after,
                               "127.0.0.1") == "welcome"
        assert request_outcome(server.address, "register", "lastone", new_password(),
                               "127.0.0.1") == "welcome"
        database_snapshot(home)
    finally:
        status = server.terminate()
    assert status == 0, server_log(server)
    assert "Traceback" not in server_log(server), server_log(server)
    assert "locked" not in server_log(server), server_log(server)


# -- 3. durability settings, as documented ---------------------------------------------

DURABILITY_SETTINGS = {"journal_mode": "wal", "synchronous": "2", "busy_timeout": "5000",
                       "foreign_keys": "1"}


def readme_section(title: str) -> str:
    text = README.read_text("utf-8")
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#)", text, re.M | re.S)
    assert match, f"README.md has no {title!r} section"
    return match[1]


def test_db_status_shows_the_documented_durability_settings(run_cli: Runner) -> None:
    result = run_cli("db", "status", check=True)
    shown = dict(re.findall(r"^(\w+):\s+(\S+)$", result.stdout, re.M))
    assert {name: shown.get(name) for name in DURABILITY_SETTINGS} == DURABILITY_SETTINGS
    documented = readme_section("Durability")
    for name, value in DURABILITY_SETTINGS.items():
        assert f"`{name}: {value}`" in documented, name
