"""The admin CLI, run as real processes against a real database file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import click
import pytest

from authchat.config import load_config
from authchat.errors import BadCredentials
from authchat.store import Store, sqlite

from conftest import GOOD_PASSWORD, TEST_COST, Runner, assert_one_line_error, cli_env
from helpers import run_in_pty

OTHER_PASSWORD = "an entirely different phrase"


def add(run_cli: Runner, name: str, *flags: str, password: str = GOOD_PASSWORD) -> None:
    run_cli("users", "add", name, "--password-stdin", *flags, input=password + "\n", check=True)


def open_store(home: Path) -> Store:
    env = {"AUTHCHAT_HOME": str(home), "AUTHCHAT_AUTH_BCRYPT_COST": str(TEST_COST)}
    return Store.from_config(load_config(None, env=env))


def users_json(run_cli: Runner) -> list[dict[str, object]]:
    return json.loads(run_cli("users", "list", "--json", check=True).stdout)


# -- help and version --------------------------------------------------------

COMMANDS = [
    [], ["users"], ["users", "add"], ["users", "list"], ["users", "show"], ["users", "passwd"],
    ["users", "role"], ["users", "disable"], ["users", "enable"], ["users", "delete"],
    ["users", "audit"], ["users", "sessions"], ["users", "sessions", "revoke"], ["invites"], ["invites", "create"], ["invites", "list"],
    ["invites", "revoke"], ["db"], ["db", "migrate"], ["db", "status"],
]


def test_version(run_cli: Runner) -> None:
    from authchat import __version__

    result = run_cli("--version", check=True)
    assert result.stdout.strip() == f"authchat, version {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "authchat")
def test_help_on_every_command(run_cli: Runner, command: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [not toml")
    # a broken configuration is only read when a command needs it, never for --help
    result = run_cli(*command, "--config", str(broken), "--help", check=True)
    assert result.stdout.startswith("Usage: authchat")
    # a one-line description of the command itself follows the usage line
    description = result.stdout.split("\n\n")[1].strip()
    assert description and "\n" not in description, result.stdout
    for option in ("--config FILE", "--data-dir DIR", "--database FILE"):
        assert option in result.stdout, result.stdout


def test_every_command_takes_the_group_options() -> None:
    from authchat.cli import cli

    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}")

    for path, command in walk(cli, "authchat"):
        names = {opt for param in command.params for opt in param.opts}
        assert {"--config", "--data-dir", "--database"} <= names, path


def test_group_help_lists_subcommands_with_descriptions(run_cli: Runner) -> None:
    out = run_cli("users", "--help", check=True).stdout
    for name in ("add", "list", "show", "passwd", "role", "disable", "enable", "delete", "audit"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(None, 1)) == 2, line


# -- the group options, before or after the subcommand ------------------------

def test_group_options_work_after_the_subcommand_too(run_cli: Runner, home: Path,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[storage]\ndata_dir = "from-config"\n')
    elsewhere = tmp_path / "from-config"
    run_cli("users", "add", "--config", str(config), "bob", "--password-stdin",
            input=GOOD_PASSWORD + "\n", check=True)
    assert [u.username for u in open_store(elsewhere).list_users()] == ["bob"]
    assert users_json(run_cli) == []  # not in $AUTHCHAT_HOME
    for args in (["--config", str(config), "users", "list"],
                 ["users", "--config", str(config), "list"],
                 ["users", "list", "--config", str(config)],
                 ["users", "list", "--data-dir", str(elsewhere)],
                 ["users", "list", "--database", str(elsewhere / "authchat.db")]):
        listed = json.loads(run_cli(*args, "--json", check=True).stdout)
        assert [u["username"] for u in listed] == ["bob"], args
    assert_one_line_error(run_cli("users", "list", "--config", str(tmp_path / "missing.toml")),
                          2, "cannot read config file")


def test_a_group_option_after_the_subcommand_wins(run_cli: Runner, tmp_path: Path) -> None:
    before, after = tmp_path / "before.db", tmp_path / "after.db"
    run_cli("--database", str(before), "users", "--database", str(after), "add", "carol",
            "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    run_cli("--database", str(before), "users", "add", "--database", str(after), "dave",
            "--password-stdin", input=GOOD_PASSWORD + "\n", check=True)
    names = json.loads(run_cli("users", "list", "--database", str(after), "--json",
                               check=True).stdout)
    assert [u["username"] for u in names] == ["carol", "dave"]
    assert not before.exists()


# -- users -------------------------------------------------------------------

def test_users_add_list_show(run_cli: Runner, home: Path) -> None:
    result = run_cli("users", "add", "Alice", "--password-stdin", input=GOOD_PASSWORD + "\n")
    assert (result.returncode, result.stdout) == (0, "created user Alice\n")
    add(run_cli, "root", "--admin")  # reserved names are the operator's to give
    listed = users_json(run_cli)
    assert [(u["username"], u["role"], u["disabled"]) for u in listed] == [
        ("Alice", "user", False), ("root", "admin", False)]
    table = run_cli("users", "list", check=True).stdout.splitlines()
    assert table[0].split() == ["USERNAME", "ROLE", "STATUS", "CREATED", "LAST", "LOGIN"]
    assert table[1].split()[:3] == ["Alice", "user", "active"]
    assert table[1].split()[-1] == "never"
    shown = json.loads(run_cli("users", "show", "alice", "--json", check=True).stdout)
    assert shown["username"] == "Alice" and shown["last_login_at"] is None
    shown_text = run_cli("users", "show", "ALICE", check=True).stdout
    assert "role:          user\n" in shown_text
    assert "status:        active\n" in shown_text and "disabled" not in shown_text
    assert "last_login_at: never\n" in shown_text
    assert open_store(home).authenticate("alice", GOOD_PASSWORD).username == "Alice"


def test_users_add_errors(run_cli: Runner) -> None:
    add(run_cli, "Alice")
    assert_one_line_error(
        run_cli("users", "add", "alice", "--password-stdin", input=OTHER_PASSWORD + "\n"),
        1, "username taken: alice")
    assert_one_line_error(
        run_cli("users", "add", "bob", "--password-stdin", input="short\n"),
        1, "password must be at least 15 characters")
    assert_one_line_error(
        run_cli("users", "add", "bob", "--password-stdin", input="bob is my name and more\n"),
        1, "must not contain the username")
    assert_one_line_error(
        run_cli("users", "add", "b ob", "--password-stdin", input=GOOD_PASSWORD + "\n"),
        1, "invalid username")
    assert_one_line_error(run_cli("users", "add", "bob"), 1, "use --password-stdin")
    assert_one_line_error(run_cli("users", "add", "bob", "--password-stdin", input=""),
                          1, "no password on standard input")
    result = run_cli("users", "add", "bob", "--password", "x")
    assert result.returncode == 2 and "No such option" in result.stderr
    assert [u["username"] for u in users_json(run_cli)] == ["Alice"]


def test_password_from_stdin_keeps_its_spaces(run_cli: Runner, home: Path) -> None:
    add(run_cli, "alice", password="  spaces around the words  ")
    store = open_store(home)
    assert store.authenticate("alice", "  spaces around the words  ")
    with pytest.raises(Exception):
        store.authenticate("alice", "spaces around the words")


def test_users_passwd(run_cli: Runner, home: Path) -> None:
    add(run_cli, "alice")
    result = run_cli("users", "passwd", "ALICE", "--password-stdin", input=OTHER_PASSWORD + "\n")
    assert (result.returncode, result.stdout) == (0, "password changed for alice\n")
    assert open_store(home).authenticate("alice", OTHER_PASSWORD)
    assert_one_line_error(
        run_cli("users", "passwd", "ghost", "--password-stdin", input=OTHER_PASSWORD + "\n"),
        1, "no such user: ghost")
    assert_one_line_error(
        run_cli("users", "passwd", "alice", "--password-stdin", input="tiny\n"), 1, "at least 15")
    assert open_store(home).authenticate("alice", OTHER_PASSWORD)


def test_users_sessions_revoke_ends_the_accounts_tokens(run_cli: Runner, home: Path) -> None:
    add(run_cli, "alice")
    add(run_cli, "bob")
    store = open_store(home)
    tokens = [store.issue_token(store.authenticate(name, GOOD_PASSWORD),
                                lifetime=timedelta(days=1), keep=20)[0]
              for name in ("alice", "alice", "bob")]
    result = run_cli("users", "sessions", "revoke", "ALICE", check=True)
    assert result.stdout == "ended 2 session tokens of alice\n"
    for token in tokens[:2]:
        with pytest.raises(BadCredentials):
            store.resume(token)
    assert store.resume(tokens[2]).username == "bob"
    entry = store.audit_entries()[-1]
    assert (entry.action, entry.target, entry.detail) == (
        "user.sessions_revoke", "alice", {"session_tokens_ended": 2})
    again = run_cli("users", "sessions", "revoke", "alice", check=True)
    assert again.stdout == "ended 0 session tokens of alice\n"
    assert_one_line_error(run_cli("users", "sessions", "revoke", "ghost"), 1,
                          "no such user: ghost")


def test_users_role_disable_enable(run_cli: Runner, home: Path) -> None:
    add(run_cli, "alice")
    assert run_cli("users", "role", "alice", "admin", check=True).stdout == "alice is now admin\n"
    assert run_cli("users", "disable", "alice", check=True).stdout == "alice is disabled\n"
    assert (users_json(run_cli)[0]["role"], users_json(run_cli)[0]["disabled"]) == ("admin", True)
    assert "disabled" in run_cli("users", "list", check=True).stdout.splitlines()[1]
    # show says it in list's words; its --json keeps the flag scripts read
    assert "status:        disabled\n" in run_cli("users", "show", "alice", check=True).stdout
    shown = json.loads(run_cli("users", "show", "alice", "--json", check=True).stdout)
    assert shown["disabled"] is True and "status" not in shown
    assert run_cli("users", "enable", "alice", check=True).stdout == "alice is enabled\n"
    assert users_json(run_cli)[0]["disabled"] is False
    for command in (["role", "ghost", "user"], ["disable", "ghost"], ["enable", "ghost"],
                    ["show", "ghost"]):
        assert_one_line_error(run_cli("users", *command), 1, "no such user: ghost")
    result = run_cli("users", "role", "alice", "owner")
    assert result.returncode == 2 and "'owner' is not one of" in result.stderr


def test_users_delete(run_cli: Runner) -> None:
    add(run_cli, "alice")
    assert_one_line_error(run_cli("users", "delete", "alice"), 1, "pass --yes")
    assert len(users_json(run_cli)) == 1
    assert run_cli("users", "delete", "ALICE", "--yes", check=True).stdout == "deleted alice\n"
    assert users_json(run_cli) == []
    assert_one_line_error(run_cli("users", "delete", "alice", "--yes"), 1, "no such user")


def test_users_audit(run_cli: Runner) -> None:
    add(run_cli, "alice")
    run_cli("users", "role", "alice", "admin", check=True)
    run_cli("users", "delete", "alice", "--yes", check=True)
    entries = json.loads(run_cli("users", "audit", "--json", check=True).stdout)
    assert [(e["action"], e["target"]) for e in entries] == [
        ("user.create", "alice"), ("user.role", "alice"), ("user.delete", "alice")]
    assert all(e["actor"].startswith("cli:") for e in entries)
    text = run_cli("users", "audit", "--limit", "1", check=True).stdout.splitlines()
    assert text[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]
    assert len(text) == 2 and "user.delete" in text[1]
    result = run_cli("users", "audit", "--limit", "0")
    assert result.returncode == 2 and "--limit" in result.stderr


def test_interactive_password_is_hidden_and_asked_twice(home: Path) -> None:
    good, other = GOOD_PASSWORD.encode() + b"\r", OTHER_PASSWORD.encode() + b"\r"
    status, text = run_in_pty(["users", "add", "bob"], cli_env(home), [
        (b"Password:", good), (b"confirmation:", other),  # a mismatch...
        (b"Password:", good), (b"confirmation:", good)])  # ...and a second try
    assert status == 0, text
    assert "Password:" in text and "Repeat for confirmation:" in text
    assert "do not match" in text  # the mismatch was caught and asked again
    assert GOOD_PASSWORD not in text and OTHER_PASSWORD not in text  # never echoed
    assert "created user bob" in text
    assert open_store(home).authenticate("bob", GOOD_PASSWORD)


# -- invites -----------------------------------------------------------------

def test_invites_create_list_revoke(run_cli: Runner, home: Path) -> None:
    token = run_cli("invites", "create", "--uses", "3", "--expires", "2h", "--role", "admin",
                    check=True).stdout.strip()
    assert len(token) >= 32 and " " not in token
    listed = json.loads(run_cli("invites", "list", "--json", check=True).stdout)
    assert len(listed) == 1
    invite = listed[0]
    assert (invite["role"], invite["max_uses"], invite["uses"]) == ("admin", 3, 0)
    assert invite["expires_at"] and invite["revoked_at"] is None
    assert token not in json.dumps(listed)
    never = run_cli("invites", "create", "--expires", "never", check=True).stdout.strip()
    assert json.loads(run_cli("invites", "list", "--json").stdout)[1]["expires_at"] is None
    store = open_store(home)
    assert store.create_user("alice", GOOD_PASSWORD, actor="t", invite=token).role == "admin"
    assert run_cli("invites", "revoke", "2", check=True).stdout == "invite 2 revoked\n"
    text = run_cli("invites", "list", check=True).stdout.splitlines()
    assert text[0].split()[:3] == ["ID", "ROLE", "USED"]
    assert "1/3" in text[1] and "revoked" in text[2]
    with pytest.raises(Exception, match="invalid, used up or expired"):
        store.create_user("bob", GOOD_PASSWORD, actor="t", invite=never)


def test_invites_errors(run_cli: Runner) -> None:
    assert_one_line_error(run_cli("invites", "revoke", "42"), 1, "no such invite: 42")
    for bad in ("7", "0d", "soon", "-1d"):
        result = run_cli("invites", "create", "--expires", bad)
        assert result.returncode == 2 and "not a duration" in result.stderr, result.stderr
    result = run_cli("invites", "create", "--expires", "99999999999d")
    assert result.returncode == 2 and "not a duration" in result.stderr, result.stderr
    result = run_cli("invites", "create", "--expires", "9999999d")
    assert result.returncode == 2 and "more than 100 years" in result.stderr, result.stderr
    result = run_cli("invites", "revoke", "99999999999999999999999")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    result = run_cli("invites", "create", "--uses", "0")
    assert result.returncode == 2 and "--uses" in result.stderr
    result = run_cli("invites", "revoke", "one")
    assert result.returncode == 2 and "not a valid integer" in result.stderr
    assert json.loads(run_cli("invites", "list", "--json", check=True).stdout) == []


# -- db ----------------------------------------------------------------------

def test_db_status_and_migrate(run_cli: Runner, home: Path) -> None:
    before = run_cli("db", "status", check=True).stdout
    assert "schema version: 0" in before and "0001_initial" in before
    migrated = run_cli("db", "migrate", check=True).stdout
    assert migrated == ("applied 0001_initial\napplied 0002_password_version\n"
                        "applied 0003_messages\napplied 0004_room_batches\n"
                        "applied 0005_account_ids\napplied 0006_name_skeletons\n"
                        "applied 0007_session_tokens\nschema version 7\n")
    assert run_cli("db", "migrate", check=True).stdout == "schema version 7\n"
    after = run_cli("db", "status", check=True).stdout
    assert "schema version: 7" in after and "pending:        none" in after
    assert "journal_mode:   wal" in after and "synchronous:    2" in after
    assert f"database:       {home / 'authchat.db'}" in after


def test_newer_database_is_refused_everywhere(run_cli: Runner, home: Path) -> None:
    run_cli("db", "migrate", check=True)
    conn = sqlite.connect(home / "authchat.db", busy_timeout_ms=5000)
    conn.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 'x')")
    conn.close()
    for command in (["db", "migrate"], ["db", "status"], ["users", "list"]):
        assert_one_line_error(run_cli(*command), 1, "schema version 9999 is newer")


def test_database_errors_are_one_line(run_cli: Runner, home: Path) -> None:
    home.mkdir()
    (home / "authchat.db").write_bytes(b"this is not a database" * 100)
    assert_one_line_error(run_cli("users", "list"), 1, "database error")
