"""Configuration: one typed, frozen `Config`, loaded once and validated at start.

Precedence, lowest first: the dataclass defaults, the TOML file (`--config FILE`
or `$AUTHCHAT_CONFIG`), environment variables `AUTHCHAT_<SECTION>_<KEY>`, then
command-line flags. Every key of every section can be set in each of the three
places. An unknown key, a wrong type or an out-of-range value raises
`ConfigError` naming the key and where it came from, so a typo fails at start
instead of being ignored.

This module knows nothing of sockets, the database or click.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "AUTHCHAT_"
ENV_CONFIG = "AUTHCHAT_CONFIG"
ENV_HOME = "AUTHCHAT_HOME"
DATABASE_FILENAME = "authchat.db"

KIB = 1024
MIB = 1024 * KIB


def _opt(default: Any, *, low: float | None = None, high: float | None = None,
         choices: tuple[str, ...] | None = None, path: bool = False) -> Any:
    """A config field with its validation rules kept next to its default."""
    rules = {"low": low, "high": high, "choices": choices, "path": path}
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = _opt(5555, low=0, high=65535)
    registration: str = _opt("open", choices=("open", "invite", "closed"))
    allow_plaintext: bool = False


@dataclass(frozen=True)
class StorageConfig:
    # Empty means: $AUTHCHAT_HOME, else the platform's user data directory.
    data_dir: str = _opt("", path=True)
    # Empty means: <data_dir>/authchat.db.
    database: str = _opt("", path=True)


@dataclass(frozen=True)
class AuthConfig:
    bcrypt_cost: int = _opt(12, low=4, high=16)
    min_password_length: int = _opt(15, low=8, high=1024)
    # 0 means one per CPU core.
    max_concurrent_hashes: int = _opt(0, low=0, high=256)
    # Hashes one address may have waiting or running at once.
    max_hashes_per_ip: int = _opt(2, low=1, high=1024)
    # How long a session token logs in without the password; 0: none is given.
    session_token_days: float = _opt(30.0, low=0, high=3650)
    # Session tokens one account keeps; a new one ends the oldest past this.
    session_tokens_per_user: int = _opt(20, low=1, high=10_000)


@dataclass(frozen=True)
class TLSConfig:
    enabled: bool = True
    # Empty cert and key: a self-signed pair is generated in the data directory.
    cert: str = _opt("", path=True)
    key: str = _opt("", path=True)
    min_version: str = _opt("1.2", choices=("1.2", "1.3"))


@dataclass(frozen=True)
class LimitsConfig:
    max_frame_bytes: int = _opt(16 * KIB, low=1 * KIB, high=1 * MIB)
    max_text_length: int = _opt(2000, low=1, high=100_000)
    handshake_timeout_s: float = _opt(10.0, low=0.1, high=600)
    max_clients: int = _opt(256, low=1, high=100_000)
    max_unauthenticated: int = _opt(64, low=1, high=100_000)
    max_unauthenticated_per_ip: int = _opt(4, low=1, high=100_000)
    max_connections_per_ip: int = _opt(16, low=1, high=100_000)
    connections_per_ip_per_minute: int = _opt(30, low=1, high=1_000_000)
    max_sessions_per_user: int = _opt(5, low=1, high=1000)
    outbound_queue_bytes: int = _opt(1 * MIB, low=16 * KIB, high=1024 * MIB)
    messages_per_second: float = _opt(5.0, low=0.01, high=100_000)
    message_burst: int = _opt(10, low=1, high=100_000)
    failed_logins_per_ip_per_minute: int = _opt(10, low=1, high=100_000)
    failed_logins_per_account: int = _opt(5, low=1, high=100_000)
    failed_logins_per_account_per_hour: int = _opt(100, low=1, high=1_000_000)
    remember_logins_days: float = _opt(30.0, low=0, high=3650)
    registrations_per_ip_per_hour: int = _opt(5, low=1, high=100_000)
    ping_interval_s: float = _opt(60.0, low=0.1, high=86_400)
    ping_timeout_s: float = _opt(120.0, low=0.2, high=86_400)


@dataclass(frozen=True)
class HistoryConfig:
    # Store every room message and DM: scrollback on join, paging, offline DMs.
    enabled: bool = True
    # Room messages a session is shown when it logs in.
    on_join: int = _opt(50, low=0, high=200)
    # Retention; 0 turns a rule off.
    keep_days: float = _opt(365.0, low=0, high=100_000)
    max_messages: int = _opt(1_000_000, low=0, high=2**62)
    prune_interval_s: float = _opt(3600.0, low=0.1, high=30 * 86_400)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _opt("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # Empty means standard error.
    file: str = _opt("", path=True)
    # A log file is rotated at this size, keeping this many old ones, so a
    # flood of failed logins cannot fill the disk.
    file_max_bytes: int = _opt(10 * 1024 * 1024, low=4096, high=2**40)
    file_backups: int = _opt(5, low=1, high=1000)


@dataclass(frozen=True)
class ClientConfig:
    host: str = "127.0.0.1"
    port: int = _opt(5555, low=1, high=65535)
    tls: bool = True
    # A CA bundle to verify the server with, instead of the system's.
    cafile: str = _opt("", path=True)
    # Pin the server's SHA-256 certificate fingerprint.
    fingerprint: str = ""
    # Accept any certificate: no protection against interception.
    insecure: bool = False
    # Empty means: known_servers in the platform's user config directory.
    known_servers: str = _opt("", path=True)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    client: ClientConfig = field(default_factory=ClientConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def database_path(self) -> Path:
        return Path(self.storage.database)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "auth": AuthConfig,
    "tls": TLSConfig,
    "limits": LimitsConfig,
    "history": HistoryConfig,
    "logging": LoggingConfig,
    "client": ClientConfig,
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config from defaults, file, environment and flags.

    `overrides` maps "section.key" to a value from a command-line flag; None
    values are ignored so click options can pass their unset defaults through.

    Raises:
        ConfigError: naming the key and its source, for any invalid setting.
    """
    env = os.environ if env is None else env
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    if path is None and env.get(ENV_CONFIG):
        path = env[ENV_CONFIG]
    if path is not None:
        _merge_file(values, Path(path))
    _merge_env(values, env)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            _set(values, section, key, value, f"option for {dotted}", Path.cwd())
    config = Config(**{name: SECTIONS[name](**{k: v for k, (v, _) in vals.items()})
                       for name, vals in values.items()})
    return _resolve_storage(config, env)


def _merge_file(values: dict[str, dict[str, Any]], path: Path) -> None:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    base = path.resolve().parent
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        for key, value in table.items():
            _set(values, section, key, value, str(path), base)


def _merge_env(values: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    for section, cls in SECTIONS.items():
        prefix = f"{ENV_PREFIX}{section.upper()}_"
        known = {f.name for f in dataclasses.fields(cls)}
        for name, raw in env.items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix):].lower()
            if key not in known:
                raise ConfigError(f"environment {name}: unknown setting {section}.{key}")
            where = f"environment {name}"
            _set(values, section, key, _parse_text(raw, _field(section, key), where), where,
                 Path.cwd(), where=where)


def _field(section: str, key: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f
    raise KeyError(key)


def _set(values: dict[str, dict[str, Any]], section: str, key: str, value: Any,
         source: str, base: Path, where: str | None = None) -> None:
    """Validate one value and record it; relative paths are taken from `base`.

    `where` is how error messages name the setting (default: source and key).
    """
    try:
        f = _field(section, key)
    except KeyError:
        raise ConfigError(f"{source}: unknown setting {section}.{key}") from None
    where = where or f"{source}: {section}.{key}"
    value = _check_type(value, f, where)
    _check_range(value, f, where)
    if f.metadata.get("path") and value:
        value = str(base / Path(value).expanduser())
    values[section][key] = (value, source)


def _check_type(value: Any, f: dataclasses.Field[Any], where: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)  # nan passes no range check; inf is no setting
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{where}: expected {_KIND_WORDS[kind]}, got {value!r}")
    return value


_KIND_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _check_range(value: Any, f: dataclasses.Field[Any], where: str) -> None:
    low, high, choices = f.metadata.get("low"), f.metadata.get("high"), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}: must be between {low:g} and {high:g}, got {value!r}")


def _parse_text(raw: str, f: dataclasses.Field[Any], where: str) -> Any:
    """Turn an environment variable's text into the field's type."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    text = raw.strip()
    try:
        if kind == "bool":
            return {"1": True, "true": True, "yes": True, "on": True,
                    "0": False, "false": False, "no": False, "off": False}[text.lower()]
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except (KeyError, ValueError):
        raise ConfigError(f"{where}: expected {_KIND_WORDS[kind]}, got {raw!r}") from None
    return raw


def _resolve_storage(config: Config, env: Mapping[str, str]) -> Config:
    """Fill in the data directory and database path the defaults leave empty."""
    data_dir = config.storage.data_dir or env.get(ENV_HOME) or default_data_dir()
    data_dir = str(Path(data_dir).expanduser().absolute())
    database = config.storage.database or str(Path(data_dir) / DATABASE_FILENAME)
    storage = StorageConfig(data_dir=data_dir, database=database)
    return dataclasses.replace(config, storage=storage)


def default_data_dir() -> str:
    # platformdirs knows each OS's convention (XDG on Linux, Application Support
    # on macOS, %LOCALAPPDATA% on Windows); imported here so only callers that
    # need the default pay for it.
    import platformdirs

    return platformdirs.user_data_dir("authchat", appauthor=False)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with the leaf readable only by its owner.

    An existing directory is left as it is: the operator chose its permissions.
    """
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
