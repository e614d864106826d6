"""SQLite for the store: apsw, with the few calls the store makes.

Why not the standard library's sqlite3: it uses whatever SQLite Python was
built against, which on a current Debian is 3.40.1, and every SQLite from
3.7.0 to 3.51.2 has the WAL-reset bug (fixed in 3.51.3): two connections
writing or checkpointing one WAL database at once can damage it, and the
server and the admin CLI are exactly that. apsw ships its own SQLite, kept
within days of each release, in wheels for every supported Python and
platform, so every install runs a current one.

apsw's API is SQLite's own; this module gives the store the small part of
the DB-API shape it was written against (`execute` returning a cursor with
`rowcount` and `lastrowid`, rows readable by column name), so that the SQL
reads the same everywhere in the package. Only store/ and schema.py import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apsw

Error = apsw.Error
IntegrityError = apsw.ConstraintError  # a UNIQUE, CHECK or trigger's RAISE(ABORT)
BUSY_ERRORS = (apsw.BusyError, apsw.LockedError)
complete_statement = apsw.complete
sqlite_version = apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(part) for part in sqlite_version.split("."))

Params = Sequence[Any] | dict[str, Any]


class Row:
    """One result row, by position or by column name, and as a mapping."""

    __slots__ = ("_values", "_columns")

    def __init__(self, values: tuple[Any, ...], columns: dict[str, int]) -> None:
        self._values = values
        self._columns = columns

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._columns[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._columns)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._columns, self._values, strict=True))!r})"


class Cursor:
    """The rows of one statement, and what a write statement changed."""

    def __init__(self, cursor: apsw.Cursor, rowcount: int, lastrowid: int) -> None:
        self._cursor = cursor
        self._columns: dict[str, int] | None = None
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def _row(self, values: tuple[Any, ...]) -> Row:
        if self._columns is None:
            self._columns = {name: n for n, (name, _) in
                             enumerate(self._cursor.get_description())}
        return Row(values, self._columns)

    def __iter__(self) -> Iterator[Row]:
        return (self._row(values) for values in self._cursor)

    def fetchone(self) -> Row | None:
        values = self._cursor.fetchone()
        return None if values is None else self._row(values)

    def one(self) -> Row:
        """The row of a statement that always has one (an aggregate, a PRAGMA,
        a row just written)."""
        row = self.fetchone()
        if row is None:
            raise Error(f"no row from {self._cursor.expanded_sql!r}")
        return row

    def fetchall(self) -> list[Row]:
        return list(self)

    def close(self) -> None:
        """Let go of the statement now: an unfinished read holds back the WAL's
        checkpoints."""
        self._cursor.close()


class Connection:
    """One SQLite connection in autocommit mode: transactions are the store's
    explicit BEGIN IMMEDIATE … COMMIT."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._conn = apsw.Connection(str(path))
        self._conn.set_busy_timeout(busy_timeout_ms)

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        cursor = self._conn.execute(sql, params)
        # What a write changed, read before any later statement can change it.
        return Cursor(cursor, self._conn.changes(), self._conn.last_insert_rowid())

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self._conn.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn.in_transaction)

    def close(self) -> None:
        self._conn.close()


def connect(path: Path, busy_timeout_ms: int) -> Connection:
    return Connection(path, busy_timeout_ms)
