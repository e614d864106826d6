"""Schema migrations: part of the store layer, and all of its SQL files.

The schema lives in numbered files, migrations/0001_*.sql, 0002_*.sql, …,
applied in order, each in one transaction together with its row in
schema_migrations, so a migration is either wholly applied or not at all.
A database whose version is newer than the files this code ships is refused:
there is no silent downgrade.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import SchemaError
from . import sqlite

_MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_dir() -> Path:
    """Where the numbered SQL files are.

    An installed package carries them as authchat/migrations (pyproject maps
    the top-level folder there); a source checkout or an editable install
    keeps them at the top level of the repository.
    """
    packaged = resources.files("authchat") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "migrations"


def known_migrations() -> list[Migration]:
    found = []
    for path in sorted(migrations_dir().glob("*.sql")):
        match = _MIGRATION_NAME.fullmatch(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text("utf-8")))
    return found


def version(conn: sqlite.Connection) -> int:
    """The newest migration applied; 0 for a new database."""
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").one()
    except sqlite.Error as e:
        if "no such table" in str(e):
            return 0
        raise
    return int(row[0] or 0)


def pending(conn: sqlite.Connection) -> list[Migration]:
    """The migrations still to apply.

    Raises:
        SchemaError: the database is newer than this code knows.
    """
    current = version(conn)
    _refuse_newer(current)
    return [m for m in known_migrations() if m.version > current]


def apply(conn: sqlite.Connection, migration: Migration, now: str) -> bool:
    """Apply `migration` inside the caller's write transaction, unless it already is."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                 "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
    current = version(conn)
    _refuse_newer(current)
    if migration.version <= current:
        return False
    for statement in _split_statements(migration.sql):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                 (migration.version, migration.name, now))
    return True


def _refuse_newer(current: int) -> None:
    known = max((m.version for m in known_migrations()), default=0)
    if current > known:
        raise SchemaError(f"database schema version {current} is newer than this authchat "
                          f"knows ({known}); upgrade authchat instead of downgrading the database")


def _split_statements(sql: str) -> Iterator[str]:
    """Split a migration into statements, because executescript() would COMMIT
    on its own and break the one-transaction-per-migration rule."""
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite.complete_statement(statement):
            if statement.strip():
                yield statement
            statement = ""
    if statement.strip() and not _only_comments(statement):
        raise SchemaError("migration ends with an incomplete SQL statement")


def _only_comments(sql: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in sql.splitlines())
