"""The interactive chat screen in a real terminal: tmux runs it, we type and read."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from authchat.tls import CERT_FILENAME

from conftest import GOOD_PASSWORD, cli_env
from helpers import Client, add_user, start_server

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

    def wait_for(self, text: str, timeout: float = 15) -> str:
        """The screen once it shows `text`; fails with the screen if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared on:\n{screen}")
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
