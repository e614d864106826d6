"""The interactive chat screen in a real terminal: tmux runs it, we type and read."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from authchat.tls import CERT_FILENAME

from conftest import GOOD_PASSWORD, cli_env
from helpers import Client, add_user, eventually, start_server

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed: the interactive screen needs a real terminal to test")


class Tmux:
    """One tmux session on a private socket, running one command."""

    def __init__(self, tmp_path: Path, command: list[str], env: dict[str, str]) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self._tmux("new-session", "-d", "-s", "chat", "-x", "110", "-y", "30",
                   shlex.join(command), env=env)
        self._tmux("set-option", "-t", "chat", "remain-on-exit", "on")

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(["tmux", "-S", self.socket, *args], env=env, text=True,
                                capture_output=True, timeout=10, check=True)
        return result.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "chat")

    def everything(self) -> str:
        """All the pane has shown, scrolled-off lines included."""
        return self._tmux("capture-pane", "-p", "-S", "-", "-t", "chat")

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """The screen once it shows `text`; fails with the screen if it never does."""
        return self.wait_until(lambda screen: text in screen, repr(text), timeout)

    def wait_until(self, shows: Callable[[str], bool], text: str, timeout: float = 15) -> str:
        """The screen once `shows(screen)`; fails with the screen if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if shows(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text} never appeared on:\n{screen}")
            time.sleep(0.05)

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "chat", "Enter")

    def key(self, name: str) -> None:
        self._tmux("send-keys", "-t", "chat", name)

    def exited(self) -> bool:
        return self._tmux("display-message", "-p", "-t", "chat", "#{pane_dead}").strip() == "1"

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=10)


def input_line(screen: str) -> str:
    """The prompt line: the last line starting with '> ' above the toolbar."""
    return [line for line in screen.splitlines() if line.startswith("> ")][-1]


@pytest.mark.slow
def test_chatting_in_a_real_terminal(tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home, tls__enabled=True)
    port, fingerprint = server.address[1], server.fingerprint
    add_user(server, "alice")
    add_user(server, "bob")
    env = cli_env(tmp_path / "client", XDG_CONFIG_HOME=str(tmp_path / "xdg"),
                  TERM="xterm-256color")
    term = Tmux(tmp_path, [sys.executable, "-m", "authchat", "connect", "alice", "--port",
                           str(port), "--fingerprint", fingerprint], env)
    bob: Client | None = None
    try:
        term.wait_for("Password:")
        term.type(GOOD_PASSWORD)
        term.wait_for("logged in as alice")
        screen = term.wait_for("[connected]")  # the status bar
        assert GOOD_PASSWORD not in screen
        assert f"alice @ 127.0.0.1:{port}  TLS {fingerprint[:17]}" in screen

        bob = Client(server.address, cafile=home / CERT_FILENAME)
        bob.login("bob")
        term.wait_for("--> bob joined")

        # Typing is not garbled by a message arriving in the middle of it.
        term.type("typing in progr", enter=False)
        term.wait_for("> typing in progr")
        bob.send({"type": "say", "text": "hi alice"})
        bob.expect("message", text="hi alice")  # bob's own echo
        term.wait_for("<bob> hi alice")
        screen = term.wait_for("> typing in progr")  # redrawn below the new line, intact
        lines = screen.splitlines()
        assert lines.index(input_line(screen)) > [n for n, line in enumerate(lines)
                                                  if "<bob> hi alice" in line][0]
        assert input_line(screen) == "> typing in progr"
        term.type("ess")
        bob.expect("message", text="typing in progress", **{"from": "alice"})
        term.wait_for("<alice> typing in progress")

        term.type("/who")
        term.wait_for("online (2): alice, bob")
        term.type("/dm bob the plan")
        bob.expect("dm", text="the plan", **{"from": "alice"})
        term.wait_for("[alice -> bob] the plan")
        term.type("/nonsense")
        term.wait_for("unknown command /nonsense")

        term.key("Up")  # history: the last line typed comes back
        assert input_line(term.wait_for("> /nonsense")) == "> /nonsense"
        term.key("C-u")

        # A server restart: the screen says so, and says when it is back.
        server.shutdown()
        term.wait_for("the server is shutting down")
        term.wait_for("reconnecting in")
        server = start_server(home, tls__enabled=True, server__port=port)
        term.wait_for("reconnected", timeout=30)
        term.type("after the restart")
        term.wait_for("<alice> after the restart")

        term.type("/quit")
        deadline = time.monotonic() + 10
        while not term.exited():
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.05)
    finally:
        term.kill()
        if bob is not None:
            bob.close()
        server.shutdown()


def wait_exited(term: Tmux) -> None:
    deadline = time.monotonic() + 10
    while not term.exited():
        assert time.monotonic() < deadline, term.screen()
        time.sleep(0.05)


def authchat_in(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "authchat", *args]


def client_env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "client", XDG_CONFIG_HOME=str(tmp_path / "xdg"),
                   TERM="xterm-256color")


@pytest.mark.slow
def test_a_slow_trust_answer_then_a_password_checked_before_it_is_sent(tmp_path: Path) -> None:
    """Trust is asked before the password and costs no login however long it
    takes; a password that breaks the rules is asked again, never sent."""
    server = start_server(tmp_path / "server", tls__enabled=True,
                          limits__handshake_timeout_s=1.0)
    port = str(server.address[1])
    env = client_env(tmp_path)
    term = Tmux(tmp_path, authchat_in(tmp_path, "register", "carol", "--port", port), env)
    try:
        screen = term.wait_for("remember it? [y/N]")
        assert server.fingerprint in screen and "Password" not in screen
        # The person checks the fingerprint with the operator: meanwhile the
        # server holds no connection of theirs whose login clock could run out.
        assert eventually(lambda: server.connection_count() == 0, timeout=10)
        term.type("y")
        term.wait_for("Password:")
        term.type("too short")
        term.wait_for("Error: password must be at least 15 characters")
        # Asked again: typed only once the prompt is back (it drops what came early).
        term.wait_until(lambda screen: screen.count("Password:") == 2, "a second prompt")
        term.type(GOOD_PASSWORD)
        term.wait_for("Repeat for confirmation:")
        term.type(GOOD_PASSWORD)
        term.wait_for(f"registered carol on 127.0.0.1:{port}")
        assert GOOD_PASSWORD not in term.everything()
        assert server.store.authenticate("carol", GOOD_PASSWORD)
    finally:
        term.kill()
        server.shutdown()
    # Nothing listens there now: said at once, with no password asked for. (A
    # shell stays in the pane after it: tmux can drop the last output of a
    # command that exits this fast.)
    term = Tmux(tmp_path, ["sh", "-c", '"$@"; echo "exit status $?"; read line', "sh",
                           *authchat_in(tmp_path, "connect", "carol", "--port", port)], env)
    try:
        screen = term.wait_for("exit status 1")
        assert f"Error: cannot connect to 127.0.0.1:{port}" in screen
        assert "Password" not in screen
    finally:
        term.kill()


@pytest.mark.slow
def test_a_restart_repeats_nothing_and_an_end_is_said_once(tmp_path: Path) -> None:
    home = tmp_path / "server"
    server = start_server(home, tls__enabled=True)
    port = server.address[1]
    add_user(server, "alice")
    add_user(server, "bob")
    bob = Client(server.address, cafile=home / CERT_FILENAME)
    bob.login("bob")
    bob.send({"type": "say", "text": "said before alice came"})
    bob.expect("message")
    bob.close()
    term = Tmux(tmp_path, authchat_in(tmp_path, "connect", "alice", "--port", str(port),
                                      "--fingerprint", server.fingerprint), client_env(tmp_path))
    try:
        term.wait_for("Password:")
        term.type(GOOD_PASSWORD)
        term.wait_for("<bob> said before alice came")
        term.type("said by alice")
        term.wait_for("<alice> said by alice")

        server.shutdown()
        term.wait_for("reconnecting in")
        server = start_server(home, tls__enabled=True, server__port=port)
        term.wait_for("reconnected", timeout=30)
        term.type("after the restart")
        term.wait_for("<alice> after the restart")
        everything = term.everything()
        # The server gives the last messages again; none is shown twice.
        assert everything.count("said before alice came") == 1, everything
        assert everything.count("<alice> said by alice") == 1, everything

        # Ctrl-C keeps the line typed so far, and says how to leave.
        term.type("half a thought", enter=False)
        term.wait_for("> half a thought")
        term.key("C-c")

        def hint_above_the_line_kept(screen: str) -> bool:
            lines = screen.splitlines()
            hint = [n for n, line in enumerate(lines) if "to leave, type /quit" in line]
            kept = [n for n, line in enumerate(lines) if line == "> half a thought"]
            return bool(hint and kept and hint[-1] < kept[-1])

        term.wait_until(hint_above_the_line_kept, "the hint above the kept line")
        assert input_line(term.screen()) == "> half a thought" and not term.exited()
        term.key("C-u")

        # An admin disables the account: it is said once, in one sentence.
        server.store.set_disabled("alice", True, actor="test")
        term.wait_for("this account is disabled", timeout=20)
        wait_exited(term)
        everything = term.everything()
        assert everything.count("account is disabled") == 1, everything
        assert "has been disabled" not in everything
    finally:
        term.kill()
        server.shutdown()
