"""The `authchat` command line: thin click commands over config and store.

Errors are translated here, once: a domain error becomes one `Error: …` line
on stderr with exit status 1 (2 for bad configuration or a database that
stayed busy); nothing reaches the user as a traceback.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__, client
from .client import ClientOptions, script
from .config import Config, load_config
from .errors import AuthchatError, ConfigError, InvalidPassword, StoreBusy, UsernameTaken
from .logs import setup_logging
from .passwords import PasswordPolicy
from .protocol import timestamp
from .sanitize import escape, escape_json
from .server import Server
from .store import ROLES, DatabaseError, Store, User
from .store.messages import NO_ID, MessageLog
from .tls import default_known_servers
from .usernames import validate_username

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error shown as one line: `Error: …`, exit status 1."""


class CliSetupError(CliError):
    """Bad configuration, or a database that stayed busy: exit status 2."""

    exit_code = 2


class AuthchatGroup(click.Group):
    """The top-level group: turns every expected failure into a CliError."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, StoreBusy) as e:
            raise CliSetupError(str(e)) from None
        except AuthchatError as e:
            raise CliError(str(e)) from None
        except DatabaseError as e:
            raise CliError(f"database error: {e}") from None
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise CliError(f"{e.strerror or e}{where}") from None


# A group option (by its parameter name) -> the config key it overrides.
GROUP_OPTION_KEYS = {"data_dir": "storage.data_dir", "database": "storage.database"}


@dataclasses.dataclass
class Settings:
    """What the group options said; the Config is loaded on first use so that
    `--help` works even when the configuration is broken."""

    config_file: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    _config: Config | None = None

    def apply(self, option: str, value: str) -> None:
        """Take one group option's value: the last one given wins."""
        if option == "config_file":
            self.config_file = value
        else:
            self.overrides[GROUP_OPTION_KEYS[option]] = value
        self._config = None

    def config(self, **more: Any) -> Config:
        if self._config is None or more:
            self._config = load_config(self.config_file, overrides={**self.overrides, **more})
        return self._config

    def store(self) -> Store:
        store = Store.from_config(self.config())
        store.ensure_schema()
        return store


pass_settings = click.make_pass_decorator(Settings)


def password_stdin_option(f: F) -> F:
    return click.option("--password-stdin", is_flag=True,
                        help="Read the password from the first line of standard input.")(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


@click.group(cls=AuthchatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="authchat")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """authchat: a self-hosted, authenticated group-chat server."""
    ctx.ensure_object(Settings)  # made already if a group option was given here


# -- serve -----------------------------------------------------------------

@cli.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port to listen on (default 5555; 0 picks a free one).")
@click.option("--tls/--no-tls", "tls", default=None,
              help="Encrypt connections (default on; off needs a loopback host or "
                   "allow_plaintext).")
@pass_settings
def serve(settings: Settings, host: str | None, port: int | None, tls: bool | None) -> None:
    """Run the chat server until SIGINT or SIGTERM."""
    config = settings.config(**{"server.host": host, "server.port": port, "tls.enabled": tls})
    setup_logging(config)
    server = Server(config, Store.from_config(config))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    while not stop.wait(0.5):
        pass
    server.shutdown()


# -- the terminal client ------------------------------------------------------

def connection_options(f: F) -> F:
    """--host, --port, --tls/--no-tls, --cafile, --fingerprint, --insecure.

    Each falls back to the [client] config section and AUTHCHAT_CLIENT_*.
    """
    for option in reversed([
        click.option("--host", help="Server address (default 127.0.0.1)."),
        click.option("--port", type=click.IntRange(1, 65535), help="Server port (default 5555)."),
        click.option("--tls/--no-tls", "tls", default=None, help="Use TLS (default on)."),
        click.option("--cafile", metavar="FILE", help="Verify the server with this CA bundle."),
        click.option("--fingerprint", metavar="SHA256",
                     help="Trust the server whose certificate has this SHA-256 fingerprint."),
        click.option("--insecure", is_flag=True, default=None,
                     help="Trust any certificate, and allow plaintext to remote hosts. "
                          "Unsafe."),
    ]):
        f = option(f)
    return f


def _client_options(settings: Settings, host: str | None, port: int | None, tls: bool | None,
                    cafile: str | None, fingerprint: str | None,
                    insecure: bool | None) -> ClientOptions:
    config = settings.config(**{"client.host": host, "client.port": port, "client.tls": tls,
                                "client.cafile": cafile, "client.fingerprint": fingerprint,
                                "client.insecure": insecure}).client
    if config.insecure:
        click.secho("WARNING: --insecure: the server's identity is not checked; anyone on the "
                    "network path could read and change this session.", fg="red", err=True)
    return ClientOptions(
        host=config.host, port=config.port, tls=config.tls, cafile=config.cafile or None,
        fingerprint=config.fingerprint or None, insecure=config.insecure,
        known_servers=Path(config.known_servers) if config.known_servers
        else default_known_servers())


def _ask_trust(where: str, seen: str) -> bool:
    click.echo(f"The server {where} presents a self-signed certificate, which no authority "
               "vouches for.\n"
               f"Its SHA-256 fingerprint is:\n  {seen}\n"
               "Check it with the server's operator (the server logs it when it starts).",
               err=True)
    return click.confirm("Trust this server and remember it?", default=False, err=True)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _password_for(options: ClientOptions, username: str, from_stdin: bool, *,
                  new: bool, invite: str | None = None) -> str:
    """The password, from standard input, or asked for once the server is known
    to be there, trusted, and (for a new account) open to it; a new one is
    asked again until it meets the server's rules."""
    if from_stdin:
        return _read_new_password(True)
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password on; use --password-stdin")
    if new:
        validate_username(username)  # the server's rule for names it is sent
    hello = client.probe(options, _ask_trust if _interactive() else None)
    if not new:
        password: str = click.prompt("Password", hide_input=True, err=True)
        return password
    problem = client.registration_problem(hello, invite)
    if problem is not None:
        raise CliError(problem)
    return _ask_new_password(username, client.password_policy(hello))


def _ask_new_password(username: str, policy: PasswordPolicy) -> str:
    """A new password typed twice, asked again while it breaks `policy`.

    The loop is ours, not click.prompt's value_proc: for hidden input, the
    click releases before 2026 that pyproject admits print only "The value
    you entered was invalid", not the reason, which is the one thing to say.
    """
    while True:
        password: str = click.prompt("Password", hide_input=True, err=True)
        try:
            policy.check(password, username)
        except InvalidPassword as e:
            click.echo(f"Error: {e}", err=True)
            continue
        again: str = click.prompt("Repeat for confirmation", hide_input=True, err=True)
        if again == password:
            return password
        click.echo("Error: The two entered values do not match.", err=True)


@cli.command("register")
@click.argument("username")
@connection_options
@password_stdin_option
@click.option("--invite", metavar="TOKEN", help="Invite token, for servers that need one.")
@pass_settings
def register_command(settings: Settings, /, username: str, password_stdin: bool,
                     invite: str | None, **connection: Any) -> None:
    """Create an account on a server."""
    options = _client_options(settings, **connection)
    password = _password_for(options, username, password_stdin, new=True, invite=invite)
    link = client.open_link(options, _ask_trust if _interactive() else None)
    try:
        welcome = client.register(link, username, password, invite)
    finally:
        link.close()
    click.echo(f"registered {escape(welcome.username)} on {options.host}:{options.port}")


@cli.command("connect")
@click.argument("username")
@connection_options
@password_stdin_option
@click.option("--register", "register_first", is_flag=True,
              help="Create the account first if it does not exist yet.")
@click.option("--invite", metavar="TOKEN", help="Invite token, with --register.")
@click.option("--json", "as_json", is_flag=True,
              help="Scripting mode: print the raw protocol frames.")
@pass_settings
def connect_command(settings: Settings, /, username: str, password_stdin: bool,
                    register_first: bool, invite: str | None, as_json: bool,
                    **connection: Any) -> None:
    """Log in and chat (scripting mode when not on a terminal)."""
    options = _client_options(settings, **connection)
    password = _password_for(options, username, password_stdin, new=register_first,
                             invite=invite)
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not as_json
    printer = script.Printer(sys.stdout, as_json, username)
    chat = client.Chat(options, username, password, printer,
                       confirm=_ask_trust if _interactive() else None,
                       reconnect=interactive, register_first=register_first, invite=invite)
    chat.start()
    printer.me = chat.username
    if interactive:
        from .client import tui  # prompt_toolkit is only needed on a terminal

        screen = tui.Screen(chat)
        chat.on_event = screen.show
        status = screen.run()
    else:
        status = script.run(chat, sys.stdin, printer)
    if status:
        raise SystemExit(status)


@cli.command("gui")
@click.argument("username", required=False, default="")
@connection_options
@pass_settings
def gui_command(settings: Settings, /, username: str, **connection: Any) -> None:
    """Chat in a desktop window (the password is asked for there)."""
    options = _client_options(settings, **connection)
    try:
        from .client import gui  # tkinter is only needed for the window
    except ImportError as e:
        raise CliError(f"the desktop client needs tkinter, which this Python lacks ({e}); "
                       "the terminal client is `authchat connect`") from None
    status = gui.run(options, username)
    if status:
        raise SystemExit(status)


# -- users -----------------------------------------------------------------

@cli.group()
def users() -> None:
    """Manage accounts (safe while the server runs)."""


@users.command("add")
@click.argument("username")
@click.option("--admin", is_flag=True, help="Give the account the admin role.")
@password_stdin_option
@pass_settings
def users_add(settings: Settings, username: str, admin: bool, password_stdin: bool) -> None:
    """Create an account."""
    validate_username(username, allow_reserved=True)
    store = settings.store()
    if _exists(store, username):  # say so before asking for a password
        raise UsernameTaken(f"username taken: {username}")
    password = _read_new_password(password_stdin, username, settings)
    user = store.create_user(username, password, role="admin" if admin else "user",
                             actor=_actor(), allow_reserved=True)
    click.echo(f"created {user.role} {user.username}")


@users.command("list")
@json_option
@pass_settings
def users_list(settings: Settings, as_json: bool) -> None:
    """List accounts: name, role, status, created, last login."""
    accounts = settings.store().list_users()
    if as_json:
        click.echo(json.dumps([_user_json(u) for u in accounts], indent=2))
        return
    rows = [(u.username, u.role, _status(u), u.created_at,
             u.last_login_at or "never") for u in accounts]
    _print_table(("USERNAME", "ROLE", "STATUS", "CREATED", "LAST LOGIN"), rows)


@users.command("show")
@click.argument("username")
@json_option
@pass_settings
def users_show(settings: Settings, username: str, as_json: bool) -> None:
    """Show one account."""
    user = settings.store().get_user(username)
    if as_json:
        click.echo(json.dumps(_user_json(user), indent=2))
        return
    for key, value in _user_json(user).items():
        if key == "disabled":  # in the words `users list` uses; --json keeps the flag
            key, value = "status", _status(user)
        click.echo(f"{key + ':':<15}{'never' if value is None else value}")


@users.command("passwd")
@click.argument("username")
@password_stdin_option
@pass_settings
def users_passwd(settings: Settings, username: str, password_stdin: bool) -> None:
    """Set an account's password."""
    store = settings.store()
    user = store.get_user(username)
    password = _read_new_password(password_stdin, user.username, settings)
    store.set_password(user.username, password, actor=_actor())
    click.echo(f"password changed for {user.username}")


@users.command("role")
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
@pass_settings
def users_role(settings: Settings, username: str, role: str) -> None:
    """Make an account a user or an admin."""
    user = settings.store().set_role(username, role, actor=_actor())
    click.echo(f"{user.username} is now {user.role}")


@users.command("disable")
@click.argument("username")
@pass_settings
def users_disable(settings: Settings, username: str) -> None:
    """Disable an account: it can no longer log in."""
    user = settings.store().set_disabled(username, True, actor=_actor())
    click.echo(f"{user.username} is disabled")


@users.command("enable")
@click.argument("username")
@pass_settings
def users_enable(settings: Settings, username: str) -> None:
    """Enable a disabled account."""
    user = settings.store().set_disabled(username, False, actor=_actor())
    click.echo(f"{user.username} is enabled")


@users.command("delete")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def users_delete(settings: Settings, username: str, yes: bool) -> None:
    """Delete an account for good (its audit history stays)."""
    store = settings.store()
    user = store.get_user(username)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError("refusing to delete without confirmation; pass --yes")
        click.confirm(f"Delete {user.username} for good?", abort=True)
    store.delete_user(user.username, actor=_actor())
    click.echo(f"deleted {user.username}")


@users.group("sessions")
def users_sessions() -> None:
    """An account's session tokens (the remembered logins of its clients)."""


@users_sessions.command("revoke")
@click.argument("username")
@pass_settings
def users_sessions_revoke(settings: Settings, username: str) -> None:
    """End every session token of an account, so its clients need the password.

    Sessions open now go on until they disconnect; `users passwd` or
    `users disable` ends those too."""
    ended = settings.store().revoke_tokens(username, actor=_actor())
    name = settings.store().get_user(username).username
    click.echo(f"ended {ended} session token{'s' if ended != 1 else ''} of {name}")


@users.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000),
              help="How many of the newest entries to show.")
@json_option
@pass_settings
def users_audit(settings: Settings, limit: int, as_json: bool) -> None:
    """Show the audit log of account changes, oldest first."""
    entries = settings.store().audit_entries(limit)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return
    rows = [(e.ts, e.actor, e.action, e.target, json.dumps(e.detail) if e.detail else "")
            for e in entries]
    _print_table(("TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"), rows)


# -- invites ---------------------------------------------------------------

@cli.group()
def invites() -> None:
    """Manage registration invites (for registration = "invite")."""


@invites.command("create")
@click.option("--uses", default=1, show_default=True, type=click.IntRange(1, 1_000_000),
              help="How many registrations the invite allows.")
@click.option("--expires", default="7d", show_default=True, metavar="DURATION",
              help="Lifetime: a number with s, m, h, d or w, or 'never'.")
@click.option("--role", default="user", show_default=True, type=click.Choice(ROLES),
              help="Role of accounts registered with it.")
@pass_settings
def invites_create(settings: Settings, uses: int, expires: str, role: str) -> None:
    """Create an invite and print its token (shown only this once)."""
    lifetime = _parse_duration(expires)
    _invite, token = settings.store().create_invite(actor=_actor(), uses=uses,
                                                    expires_in=lifetime, role=role)
    click.echo(token)


@invites.command("list")
@json_option
@pass_settings
def invites_list(settings: Settings, as_json: bool) -> None:
    """List invites (tokens are not stored, so not shown)."""
    found = settings.store().list_invites()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in found], indent=2))
        return
    rows = [(str(i.id), i.role, f"{i.uses}/{i.max_uses}", i.expires_at or "never",
             "revoked" if i.revoked_at else "", i.created_by) for i in found]
    _print_table(("ID", "ROLE", "USED", "EXPIRES", "REVOKED", "CREATED BY"), rows)


@invites.command("revoke")
@click.argument("invite_id", metavar="ID", type=click.IntRange(1, NO_ID))
@pass_settings
def invites_revoke(settings: Settings, invite_id: int) -> None:
    """Revoke an invite so it can no longer be used."""
    settings.store().revoke_invite(invite_id, actor=_actor())
    click.echo(f"invite {invite_id} revoked")


# -- db --------------------------------------------------------------------

@cli.group()
def db() -> None:
    """Inspect and migrate the database."""


@db.command("migrate")
@pass_settings
def db_migrate(settings: Settings) -> None:
    """Apply pending schema migrations."""
    store = Store.from_config(settings.config())
    applied = store.migrate()
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    click.echo(f"schema version {store.schema_version()}")


@db.command("status")
@pass_settings
def db_status(settings: Settings) -> None:
    """Show the database path, schema version and settings."""
    store = Store.from_config(settings.config())
    click.echo(f"database:       {store.path}")
    click.echo(f"schema version: {store.schema_version()}")
    pending = store.pending_migrations()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
    click.echo(f"pending:        {names or 'none'}")
    for name, value in store.pragmas().items():
        click.echo(f"{name + ':':<16}{value}")


# -- history ---------------------------------------------------------------

@cli.group()
def history() -> None:
    """Export or purge the stored message history."""


@history.command("export")
@click.option("--since", metavar="DATE", help="Only messages from this UTC date or time on "
              "(2026-11-01 or 2026-11-01T12:00).")
@json_option
@pass_settings
def history_export(settings: Settings, since: str | None, as_json: bool) -> None:
    """Print stored messages and DMs, oldest first, one per line."""
    log = MessageLog(settings.store())
    for m in log.since(_utc_moment(since, "--since") if since else None):
        if as_json:
            click.echo(escape_json(json.dumps(dataclasses.asdict(m), ensure_ascii=False)))
        else:
            to = f" -> {escape(m.recipient)}" if m.recipient else ""
            click.echo(f"{m.ts} #{m.id} <{escape(m.sender)}{to}> {escape(m.text)}")


@history.command("purge")
@click.option("--before", metavar="DATE", required=True,
              help="Delete messages older than this UTC date or time.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_settings
def history_purge(settings: Settings, before: str, yes: bool) -> None:
    """Delete stored messages older than DATE (recorded in the audit log)."""
    cutoff = _utc_moment(before, "--before")
    if not yes:
        click.confirm(f"Delete every message before {cutoff}?", abort=True, err=True)
    deleted = MessageLog(settings.store()).purge_before(cutoff, actor=_actor())
    click.echo(f"{deleted} messages deleted")


# -- helpers ---------------------------------------------------------------

def _utc_moment(text: str, option: str) -> str:
    """A date or date-time (UTC unless it says otherwise), as messages' `ts` carries it."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date like 2026-11-01 or "
                                 "2026-11-01T12:00", param_hint=f"'{option}'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return timestamp(moment.astimezone(UTC))


def _actor() -> str:
    """Who the audit log says made a change from the command line."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        name = f"uid {os.getuid()}"
    return f"cli:{name}"


def _exists(store: Store, username: str) -> bool:
    try:
        store.get_user(username)
    except AuthchatError:
        return False
    return True


def _read_new_password(from_stdin: bool, username: str = "",
                       settings: Settings | None = None) -> str:
    """A new password from standard input (checked by whoever takes it), or
    typed twice at a prompt that asks again while it breaks the policy."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CliError("no password on standard input")
        return line.rstrip("\r\n")  # spaces are part of the password
    if not sys.stdin.isatty() or settings is None:
        raise CliError("no terminal to ask for the password on; use --password-stdin")
    policy = PasswordPolicy(settings.config().auth.min_password_length)
    return _ask_new_password(username, policy)


_DURATION = re.compile(r"(\d{1,9})([smhdw])")
MAX_DURATION = timedelta(days=100 * 365)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _parse_duration(text: str) -> timedelta | None:
    if text.strip().lower() == "never":
        return None
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match[1]) == 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h, 7d or never",
                                 param_hint="'--expires'")
    duration = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if duration > MAX_DURATION:
        raise click.BadParameter(f"{text!r} is more than 100 years; use never",
                                 param_hint="'--expires'")
    return duration


def _user_json(user: User) -> dict[str, Any]:
    return {"username": user.username, "role": user.role, "disabled": user.disabled,
            "created_at": user.created_at, "updated_at": user.updated_at,
            "last_login_at": user.last_login_at}


def _status(user: User) -> str:
    return "disabled" if user.disabled else "active"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- the group options, accepted after any subcommand too ---------------------

def _apply_group_option(ctx: click.Context, param: click.Parameter,
                        value: str | None) -> None:
    # Options are processed command by command, outermost first, so one given
    # after a subcommand is applied after one given before it, and wins.
    if value is not None:
        assert param.name is not None
        ctx.ensure_object(Settings).apply(param.name, value)


def _group_options() -> list[click.Option]:
    """--config, --data-dir and --database: new objects for each command."""
    shared: dict[str, Any] = {"expose_value": False, "callback": _apply_group_option}
    return [
        click.Option(["--config", "config_file"], metavar="FILE",
                     type=click.Path(dir_okay=False),
                     help="TOML configuration file (default: $AUTHCHAT_CONFIG, else none).",
                     **shared),
        click.Option(["--data-dir", "data_dir"], metavar="DIR",
                     help="Data directory (default: $AUTHCHAT_HOME, else the platform's "
                          "user data directory).", **shared),
        click.Option(["--database", "database"], metavar="FILE",
                     help="SQLite database (default: DATA_DIR/authchat.db).", **shared),
    ]


def _share_group_options(command: click.Command) -> None:
    """Give `command` and every command under it the group options, so that
    `authchat serve --config f.toml` works as `authchat --config f.toml serve` does."""
    command.params.extend(_group_options())
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _share_group_options(subcommand)


_share_group_options(cli)


def main() -> None:
    """The `authchat` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cli(prog_name="authchat")
