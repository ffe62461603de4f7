"""The benchmark database in PostgreSQL, for a lab whose machines share one server.

A small adapter gives :class:`memprobe.store.database.Database` the part of the ``sqlite3`` connection it
uses, so both stores share one code path, one schema and one set of migrations:

- ``?`` placeholders become ``%s`` (bound client-side, so ``? IS NULL`` works), ``IS ?``
  becomes ``IS NOT DISTINCT FROM``, ``INSERT OR IGNORE`` becomes ``ON CONFLICT DO NOTHING``,
  and every ``INSERT`` returns its ``id`` as ``lastrowid``;
- ``BEGIN IMMEDIATE`` is ``BEGIN`` plus one transaction-scoped advisory lock: writers from
  every node queue, as SQLite's writers do, and each measurement is still committed as taken;
- ``PRAGMA user_version`` lives in a one-row ``memprobe_schema`` table; the DDL's
  ``INTEGER PRIMARY KEY`` becomes an identity column, ``INTEGER`` ``BIGINT`` (byte counts),
  ``REAL`` ``DOUBLE PRECISION``;
- driver errors surface as ``sqlite3`` errors, so the callers' handling is unchanged.

URLs are shown with the password removed, in every message.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from memprobe.core.errors import DatabaseError, InvalidInputError
from memprobe.core.input_files import shown

URL_SCHEMES = ("postgresql://", "postgres://")
_WRITE_LOCK = 0x6D656D70  # "memp": one advisory lock that every memprobe writer takes
_PLACEHOLDER = re.compile(r"\?")
_IS_PLACEHOLDER = re.compile(r"\bIS \?")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_USER_INFO = re.compile(r"(://).*@")  # up to the last @: a malformed URL's password may hold anything


def is_url(text: object) -> bool:
    return isinstance(text, str) and text.startswith(URL_SCHEMES)


def url_scheme(text: object) -> str | None:
    """The scheme of ``text`` when it reads as a URL (``name://``), else None: a file path."""
    match = _SCHEME.match(text) if isinstance(text, str) else None
    return match.group(1) if match else None


def check_url(url: str, what: str = "--db") -> None:
    """Refuse a ``postgresql://`` URL that cannot name a server, before anything connects.

    Raises:
        DatabaseError: an unclosed IPv6 host, or a port that is not a number from 0 to 65535
            (the message hides the password).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError as error:
        raise DatabaseError(
            f"{what} {shown(masked(url))} is not a valid database URL ({error}): "
            "give postgresql://USER@HOST[:PORT]/DATABASE"
        ) from None


def masked(url: str) -> str:
    """``url`` with whatever stands before its ``@`` hidden: a malformed URL has no password to redact."""
    return _USER_INFO.sub(r"\1***@", url)


def redacted(url: str) -> str:
    """``url`` without its password (``user:***@host``), fit for any message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _host(url: str) -> str:
    parts = urlsplit(url)
    if parts.hostname:
        return parts.hostname + (f":{parts.port}" if parts.port else "")
    for option in parts.query.split("&"):
        if option.startswith("host="):
            return option.removeprefix("host=")
    return "localhost"


class Row(tuple[Any, ...]):
    """A row read by position or by column name, like ``sqlite3.Row``."""

    _names: tuple[str, ...]

    def __new__(cls, names: tuple[str, ...], values: Sequence[Any]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"No item with that key: {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


class Cursor:
    """What an ``execute`` returns: its rows and, for an INSERT, the new row's id."""

    def __init__(self, rows: list[Row], lastrowid: int | None) -> None:
        self._rows = rows
        self.lastrowid = lastrowid

    def fetchall(self) -> list[Row]:
        return self._rows

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None


class PostgresConnection:
    """A PostgreSQL connection that answers the subset of ``sqlite3.Connection`` memprobe uses."""

    def __init__(self, url: str, connection: Any) -> None:
        self.location = redacted(url)
        self._connection = connection

    def execute(self, query: str, parameters: Sequence[Any] = ()) -> Cursor:
        bound = "?" in query
        result = Cursor([], None)
        for statement in _translated(query):
            result = self._run(statement, parameters if bound else ())
        return result

    def close(self) -> None:
        self._connection.close()

    def _run(self, statement: str, parameters: Sequence[Any]) -> Cursor:
        import psycopg

        try:
            with self._connection.cursor() as cursor:
                cursor.execute(statement, tuple(parameters) or None)
                if cursor.description is None:
                    return Cursor([], None)
                names = tuple(column.name for column in cursor.description)
                rows = [Row(names, values) for values in cursor.fetchall()]
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected) as error:
            raise sqlite3.OperationalError(f"database is locked ({_first_line(error)})") from None
        except psycopg.OperationalError as error:
            raise sqlite3.OperationalError(f"{self.location}: {_first_line(error)}") from None
        except psycopg.Error as error:
            raise sqlite3.DatabaseError(f"{self.location}: {_first_line(error)}") from None
        lastrowid = int(rows[0][0]) if statement.startswith("INSERT") and rows else None
        return Cursor(rows, lastrowid)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _translated(query: str) -> list[str]:
    """The PostgreSQL statements that do what the SQLite ``query`` does."""
    text = query.strip()
    if text == "BEGIN IMMEDIATE":
        return ["BEGIN", f"SELECT pg_advisory_xact_lock({_WRITE_LOCK})"]
    if text.startswith("PRAGMA"):
        return _pragma(text)
    if "?" in text:  # bound client-side: a literal % must be doubled
        text = _IS_PLACEHOLDER.sub("IS NOT DISTINCT FROM ?", text.replace("%", "%%"))
        text = _PLACEHOLDER.sub("%s", text)
    if text.startswith("INSERT OR IGNORE INTO"):
        text = "INSERT INTO" + text.removeprefix("INSERT OR IGNORE INTO") + " ON CONFLICT DO NOTHING"
    if text.startswith("INSERT"):
        text += " RETURNING id"
    return [text]


def _pragma(text: str) -> list[str]:
    setting = re.fullmatch(r"PRAGMA user_version = (\d+)", text)
    if setting:
        return [f"UPDATE memprobe_schema SET version = {int(setting.group(1))}"]
    if text == "PRAGMA user_version":
        return ["SELECT version FROM memprobe_schema"]
    if text == "PRAGMA query_only = ON":
        return ["SET default_transaction_read_only = on"]
    return []  # busy_timeout, journal_mode: the server's own concern


def ddl(script: str) -> str:
    """A migration written for SQLite, in PostgreSQL's types."""
    text = script.replace("INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)


def connect(url: str, *, readonly: bool) -> PostgresConnection:
    """Connect to the server at ``url``; for writing, bring its schema up to date.

    A read never changes the server: an older schema is read as it is where reading can fill in
    what later migrations added (``READ_AS_IS_FROM``), else refused with the command to run.

    Raises:
        InvalidInputError: psycopg is not installed.
        DatabaseError: the URL is malformed; the server cannot be reached or refuses; its schema
            is newer, or the database holds another program's tables.
    """
    check_url(url)
    try:
        import psycopg
    except ImportError:
        raise InvalidInputError(
            "a postgresql:// --db needs psycopg: pip install 'memprobe[postgres]'"
        ) from None
    try:
        raw = psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=10)
    except (psycopg.Error, ValueError) as error:
        reason = _first_line(error).replace(url, redacted(url))
        raise DatabaseError(
            f"cannot connect to PostgreSQL at {_host(url)}: {_without_password(reason, url)}; check --db"
        ) from None
    connection = PostgresConnection(url, raw)
    try:
        if readonly:
            connection.execute("PRAGMA query_only = ON")
            _check_readable(connection)
        else:
            _migrate(connection)
    except sqlite3.DatabaseError as error:
        connection.close()
        raise DatabaseError(f"{connection.location} is not a usable memprobe database ({error})") from None
    except BaseException:
        connection.close()
        raise
    return connection


def _without_password(text: str, url: str) -> str:
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def _migrate(connection: PostgresConnection) -> None:
    """Apply the migrations this server lacks, under the writers' lock (another node may be at it)."""
    from memprobe.store import schema
    from memprobe.store.schema import apply_migrations

    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS memprobe_schema (version BIGINT NOT NULL)")
        row = connection.execute("PRAGMA user_version").fetchone()
        if row is None:
            _refuse_foreign(connection)
            connection._run("INSERT INTO memprobe_schema (version) VALUES (0)", ())
        version = int(row[0]) if row is not None else 0
        if version > schema.SCHEMA_VERSION:
            raise DatabaseError(
                f"database {connection.location} has schema version {version}, newer than this "
                f"memprobe understands ({schema.SCHEMA_VERSION}): upgrade memprobe"
            )
        _check_columns(connection, version)
        apply_migrations(connection, version, ddl, _columns)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _check_readable(connection: PostgresConnection) -> None:
    """Refuse to read a server without memprobe's schema, or with one too old to read as it is."""
    from memprobe.store import schema

    has_schema = connection.execute("SELECT to_regclass('memprobe_schema') IS NOT NULL").fetchone()
    row = connection.execute("PRAGMA user_version").fetchone() if has_schema and has_schema[0] else None
    if row is None:
        raise DatabaseError(
            f"{connection.location} holds no memprobe database yet: run `memprobe calibrate --db URL` "
            "(or `memprobe db migrate --db URL`) first"
        )
    version = int(row[0])
    if version > schema.SCHEMA_VERSION:
        raise DatabaseError(
            f"database {connection.location} has schema version {version}, newer than this "
            f"memprobe understands ({schema.SCHEMA_VERSION}): upgrade memprobe"
        )
    if version < schema.READ_AS_IS_FROM:
        raise DatabaseError(
            f"database {connection.location} has schema version {version}, older than this memprobe's "
            f"({schema.SCHEMA_VERSION}), and a read does not migrate it: run `memprobe db migrate --db URL` "
            "(or any command that writes) first"
        )
    _check_columns(connection, version)


def _check_columns(connection: PostgresConnection, version: int) -> None:
    """Refuse a server whose tables lack a column of its recorded schema version."""
    from memprobe.store.schema import check_columns

    check_columns(connection.location, _columns(connection), version)


def _columns(connection: PostgresConnection) -> dict[str, set[str]]:
    """The columns of each table in the server's current schema."""
    present: dict[str, set[str]] = {}
    for table, column in connection.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
    ).fetchall():
        present.setdefault(table, set()).add(column)
    return present


def _refuse_foreign(connection: PostgresConnection) -> None:
    rows = connection.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_name IN ('environments', 'measurements', 'calibrations')"
    ).fetchall()
    if rows:
        raise DatabaseError(
            f"{connection.location} holds tables named like memprobe's but is not a memprobe database: "
            "use another database"
        )
