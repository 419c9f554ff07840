"""Numbered, append-only schema migrations (sql/NNN_name.sql), each applied in its own transaction.

A shipped migration is never edited: stores in the wild already ran it. Changing the schema means adding the
next numbered file. The schema_version table records every migration applied, so a store opened by an older
modescope that does not know the latest one is refused instead of being misread.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from modescope.errors import ModescopeError

SQL_DIR = Path(__file__).parent / "sql"
_NAME = re.compile(r"^(\d{3})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """The shipped migrations in order; their numbers must run 1, 2, 3, ... without gaps."""
    found = []
    for path in SQL_DIR.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"store migrations must be numbered 1..N without gaps, found {numbers}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())


def statements(sql: str) -> list[str]:
    """Split a script into statements; sqlite3's own tokenizer decides where each ends (quotes, triggers)."""
    found, pending = [], ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip() and not _only_comments(pending):
        raise RuntimeError(f"store migration ends with an incomplete statement: {pending.strip()[:80]!r}")
    return found


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


def current_version(conn: sqlite3.Connection) -> int:
    """The highest migration applied; 0 for a new, empty database."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, where: Path) -> None:
    """Bring the database up to the latest schema, refusing one written by a newer modescope.

    The connection must be in autocommit mode (isolation_level=None): each migration runs in an explicit
    BEGIN IMMEDIATE transaction, and the version is read again inside it, so two processes opening a new
    store at once do not both apply the same migration. (executescript() is not used: it commits first.)
    """
    for migration in migrations():
        if current_version(conn) >= migration.version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if current_version(conn) < migration.version:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version"
                    " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)"
                )
                for statement in statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    version = current_version(conn)
    if version > latest_version():
        raise ModescopeError(
            f"the results store {where} has schema version {version}, newer than this modescope knows "
            f"({latest_version()}); upgrade modescope to read it"
        )
