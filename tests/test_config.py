from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from authchat.config import SECTIONS, Config, load_config
from authchat.errors import ConfigError

from conftest import Runner, assert_one_line_error

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(None, env={"AUTHCHAT_HOME": str(tmp_path)})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 5555)
    assert config.server.registration == "open"
    assert config.auth.bcrypt_cost == 12
    assert config.auth.min_password_length == 15
    assert config.tls.enabled is True
    assert config.limits.max_frame_bytes == 16 * 1024
    assert config.data_dir == tmp_path
    assert config.database_path == tmp_path / "authchat.db"


def test_example_documents_every_key_with_its_default(tmp_path: Path) -> None:
    example = tomllib.loads(EXAMPLE.read_text("utf-8"))
    assert set(example) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        assert example[section] == defaults, section
    # and every key has a comment line right above it (or above its group)
    text = EXAMPLE.read_text("utf-8")
    assert text.count("\n#") >= sum(len(dataclasses.fields(c)) for c in SECTIONS.values()) - 6
    env = {"AUTHCHAT_HOME": str(tmp_path)}
    assert load_config(EXAMPLE, env=env) == load_config(None, env=env)


def test_every_key_has_an_environment_variable(tmp_path: Path) -> None:
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if isinstance(default, bool):
                raw, expected = ("false", False) if default else ("true", True)
            elif isinstance(default, (int, float)):
                raw, expected = str(default + 1), default + 1
            elif f.metadata.get("choices"):
                expected = f.metadata["choices"][-1]
                raw = expected
            else:
                raw = expected = str(tmp_path / f.name)
            name = f"AUTHCHAT_{section.upper()}_{f.name.upper()}"
            config = load_config(None, env={"AUTHCHAT_HOME": str(tmp_path), name: raw})
            assert getattr(getattr(config, section), f.name) == expected, name


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", "[server]\nport = 1000\nhost = '0.0.0.0'\n"
                 "[auth]\nbcrypt_cost = 10\n")
    env = {"AUTHCHAT_HOME": str(tmp_path), "AUTHCHAT_SERVER_PORT": "2000"}
    config = load_config(conf, env=env, overrides={"server.port": 3000, "server.host": None})
    assert config.server.port == 3000          # flag beats environment
    assert config.server.host == "0.0.0.0"     # unset flag (None) leaves the file's value
    assert config.auth.bcrypt_cost == 10       # file beats default
    assert load_config(conf, env=env).server.port == 2000  # environment beats file
    assert config.limits.max_clients == 256    # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", "[server]\nport = 4444\n")
    env = {"AUTHCHAT_HOME": str(tmp_path), "AUTHCHAT_CONFIG": str(conf)}
    assert load_config(None, env=env).server.port == 4444


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    conf = write(tmp_path / "etc" / "c.toml", "[storage]\ndata_dir = 'data'\n")
    config = load_config(conf, env={})
    assert config.data_dir == tmp_path / "etc" / "data"
    assert config.database_path == tmp_path / "etc" / "data" / "authchat.db"


def test_explicit_data_dir_beats_authchat_home(tmp_path: Path) -> None:
    env = {"AUTHCHAT_HOME": str(tmp_path / "a"), "AUTHCHAT_STORAGE_DATA_DIR": str(tmp_path / "b")}
    assert load_config(None, env=env).data_dir == tmp_path / "b"


def test_default_data_dir_is_the_platform_user_data_dir(tmp_path: Path) -> None:
    config = load_config(None, env={})
    assert config.data_dir.name == "authchat"
    assert config.data_dir.is_absolute()


@pytest.mark.parametrize("text, fragment", [
    ("[server]\nprot = 1\n", "server.prot"),
    ("[serve]\nport = 1\n", "unknown section [serve]"),
    ("[server]\nport = 'x'\n", "server.port: expected an integer"),
    ("[server]\nport = 70000\n", "server.port: must be between 0 and 65535"),
    ("[auth]\nbcrypt_cost = 3\n", "auth.bcrypt_cost: must be between 4 and 16"),
    ("[auth]\nmin_password_length = 7\n", "auth.min_password_length"),
    ("[tls]\nenabled = 1\n", "tls.enabled: expected true or false"),
    ("[server]\nregistration = 'sometimes'\n", "must be one of open, invite, closed"),
    ("[limits]\nping_interval_s = nan\n", "limits.ping_interval_s: expected a number"),
    ("[limits]\nping_interval_s = inf\n", "limits.ping_interval_s: expected a number"),
    ("[server\n", "not valid TOML"),
    ("server = 1\n", "server must be a table"),
])
def test_invalid_file_names_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    conf = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(conf, env={})
    message = str(info.value)
    assert str(conf) in message and fragment in message
    assert "\n" not in message


def test_invalid_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="AUTHCHAT_AUTH_BCRYPT_COST: must be between"):
        load_config(None, env={"AUTHCHAT_AUTH_BCRYPT_COST": "99"})
    with pytest.raises(ConfigError, match="environment AUTHCHAT_LIMITS_MAX_CLIENT: unknown"):
        load_config(None, env={"AUTHCHAT_LIMITS_MAX_CLIENT": "9"})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml", env={})


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(None, env={"AUTHCHAT_HOME": str(tmp_path)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    assert isinstance(config, Config)


def test_cli_reports_bad_config_in_one_line_with_status_2(run_cli: Runner, tmp_path: Path) -> None:
    conf = write(tmp_path / "bad.toml", "[auth]\nbcrypt_cost = 'high'\n")
    result = run_cli("--config", str(conf), "users", "list")
    assert_one_line_error(result, 2, f"{conf}: auth.bcrypt_cost: expected an integer")


def test_cli_help_works_with_a_broken_config(run_cli: Runner, tmp_path: Path) -> None:
    conf = write(tmp_path / "bad.toml", "[nope]\n")
    result = run_cli("--config", str(conf), "users", "list", "--help")
    assert result.returncode == 0 and "List accounts" in result.stdout


def test_every_command_reads_the_same_database(run_cli: Runner, tmp_path: Path, home: Path) -> None:
    conf = write(tmp_path / "c.toml", "[storage]\ndatabase = 'shared.db'\n")
    run_cli("--config", str(conf), "db", "migrate", check=True)
    status = run_cli("--config", str(conf), "db", "status", check=True)
    assert str(tmp_path / "shared.db") in status.stdout
    assert (tmp_path / "shared.db").exists() and not (home / "authchat.db").exists()
    assert os.stat(tmp_path / "shared.db").st_mode & 0o777 == 0o600
