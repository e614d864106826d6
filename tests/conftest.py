"""Shared fixtures: real SQLite files in tmp dirs, the real CLI in subprocesses.

bcrypt's cost is lowered through configuration (AUTHCHAT_AUTH_BCRYPT_COST=4 or
Config(auth=AuthConfig(bcrypt_cost=4))), never by patching code, so the tests
run the production path, fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from authchat.config import Config, load_config
from authchat.store import Store

TEST_COST = 4
GOOD_PASSWORD = "correct horse battery staple"
CLI_TIMEOUT_S = 60


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(None, env={"AUTHCHAT_HOME": str(tmp_path / "home"),
                                  "AUTHCHAT_AUTH_BCRYPT_COST": str(TEST_COST)})


@pytest.fixture
def store(config: Config) -> Store:
    s = Store.from_config(config)
    s.migrate()
    yield s
    s.close()


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this machine's, minus any authchat
    settings, plus a private data directory and the test bcrypt cost."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCHAT_")}
    env.update(AUTHCHAT_HOME=str(home), AUTHCHAT_AUTH_BCRYPT_COST=str(TEST_COST))
    env.update(extra)  # a test may set another cost, through configuration too
    return env


Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def run_cli(home: Path) -> Runner:
    """Run `authchat ARGS…` as a real process; returns the CompletedProcess."""

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "authchat", *args], input=input, text=True,
            capture_output=True, env=env or cli_env(home), timeout=CLI_TIMEOUT_S,
            stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"authchat {' '.join(args)} failed: {result.stderr}")
        return result

    return run


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int,
                          fragment: str) -> None:
    """A CLI failure: the exit status, one `Error:` line on stderr, no traceback."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    assert fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def servers(tmp_path: Path):
    """Start in-process servers with `servers(**settings)`; all are shut down after the test.

    Settings are config keys with "__" for the dot: limits__max_clients=3.
    """
    from helpers import start_server

    started = []

    def start(**settings):
        server = start_server(tmp_path / "home", **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
