"""A non-editable install must carry the migrations and work on its own."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import GOOD_PASSWORD, cli_env

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_runs_user_commands(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(dist), str(REPO)], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = dist.glob("authchat-*.whl")
    assert "authchat/migrations/0001_initial.sql" in zipfile.ZipFile(wheel).namelist()

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)],
                   check=True, timeout=300, cwd=tmp_path)
    authchat = env_dir / "bin" / "authchat"
    env = cli_env(tmp_path / "home")
    # run from an empty directory so nothing can come from the source tree
    run = dict(env=env, cwd=tmp_path, text=True, capture_output=True, timeout=60)
    added = subprocess.run([str(authchat), "users", "add", "alice", "--password-stdin"],
                           input=GOOD_PASSWORD + "\n", **run)
    assert (added.returncode, added.stdout) == (0, "created user alice\n"), added.stderr
    listed = subprocess.run([str(authchat), "users", "list"], **run)
    assert listed.returncode == 0 and "alice" in listed.stdout
    where = subprocess.run([str(python), "-c", "import authchat.store.schema as s; print(s.migrations_dir())"],
                           **run)
    assert str(env_dir) in where.stdout  # found inside the installed package
