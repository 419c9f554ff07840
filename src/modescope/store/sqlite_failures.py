"""What the store does when SQLite cannot do what it is asked: wait out a lock another process holds, and
turn a full disk, an I/O error or a file that is not (or no longer) a modescope store into one clear
ModescopeError that names the store, instead of a traceback.

SQLite waits for a lock by itself (the connection's busy timeout), but not always: it returns SQLITE_BUSY at
once where it judges that waiting could deadlock, and it gives up when its timeout runs out (a writer
suspended with Ctrl-Z holds its lock until it resumes). `retry_busy` covers both by trying the whole step
again with growing, jittered pauses, up to BUSY_PATIENCE_S.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from modescope.errors import ModescopeError

BUSY_TIMEOUT_S = 10.0  # SQLite's own wait for a lock, per statement
BUSY_PATIENCE_S = 60.0  # how long retry_busy keeps trying one step, in all, before giving up

# Primary result codes that come from other processes, the disk or the file, never from a bug of ours (a
# constraint or SQL error is a bug: it keeps its traceback).
LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
DISK_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

T = TypeVar("T")


class StoreWriteError(ModescopeError):
    """A write to the store failed (disk full, I/O error, read-only, locked too long). Its transaction was
    rolled back, so everything committed before it is intact and a rerun can resume from there."""


def primary_code(error: BaseException) -> int:
    """SQLite's primary result code of an sqlite3 error (the extended code's low byte); 0 for anything else."""
    return (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF


def is_storage_error(error: BaseException) -> bool:
    """Whether an error comes from the file, the disk or another process rather than from our own code."""
    return isinstance(error, sqlite3.Error) and primary_code(error) in LOCK_CODES | DISK_CODES | DAMAGE_CODES


def is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and primary_code(error) in LOCK_CODES


def retry_busy(step: Callable[[], T]) -> T:
    """Run `step`, and again after a pause while SQLite says the store is locked, for up to BUSY_PATIENCE_S
    in all; then the last "database is locked" error is raised. `step` must be safe to repeat: it either
    took effect or failed as a whole (a BEGIN, or an idempotent setup in its own transaction)."""
    deadline = time.monotonic() + BUSY_PATIENCE_S
    pause = 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as error:
            if not is_busy(error) or time.monotonic() + pause > deadline:
                raise
        # Jitter, so that two processes that collided do not retry in lockstep and collide again.
        time.sleep(pause * random.uniform(0.5, 1.0))
        pause = min(2 * pause, 1.0)


def write_failure(error: sqlite3.Error, path: Path, run_id: int | None = None) -> ModescopeError:
    """The error for a write transaction that failed and was rolled back: what, why, and what is kept (with
    the run it was writing, how to continue that run)."""
    if primary_code(error) in DAMAGE_CODES:
        return damaged(path, str(error))
    kept = (
        "everything stored before is kept"
        if run_id is None
        else f"run {run_id} keeps everything stored before this: once that is fixed, rerun the same command "
        "with --resume to continue it"
    )
    return StoreWriteError(f"cannot write to the results store {path}: {why(error, path)}; {kept}")


def open_failure(error: sqlite3.Error, path: Path) -> ModescopeError:
    """The error for a store that could not be opened (or set up) at all."""
    code = primary_code(error)
    if code == sqlite3.SQLITE_NOTADB:
        return ModescopeError(f"{path} is not a modescope results store (not an SQLite database); give another path")
    if code in DAMAGE_CODES:
        return damaged(path, str(error))
    hint = " (is its folder writable?)" if code == sqlite3.SQLITE_CANTOPEN else ""
    return ModescopeError(f"cannot open the results store {path}: {why(error, path)}{hint}")


def read_failure(error: sqlite3.Error, path: Path) -> ModescopeError:
    """The error for a read that failed on an open store (a damaged page, a failing disk)."""
    if primary_code(error) in DAMAGE_CODES:
        return damaged(path, str(error))
    return ModescopeError(f"cannot read the results store {path}: {why(error, path)}")


def damaged(path: Path, detail: str) -> ModescopeError:
    return ModescopeError(
        f"{path} is not a modescope results store, or a damaged one ({detail}); "
        "give another path, or put back a copy of it"
    )


def why(error: sqlite3.Error, path: Path) -> str:
    """SQLite's message and code name, with what the disk and this process's limits say about them."""
    name = getattr(error, "sqlite_errorname", "")
    said = f"{error} ({name})" if name else str(error)
    code = primary_code(error)
    if code in LOCK_CODES:
        return f"{said}: another process held its lock too long (is a modescope stuck or suspended on it?)"
    if code == sqlite3.SQLITE_READONLY:
        return f"{said}: the file or its folder is read-only"
    if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        return f"{said}: " + ", ".join(_disk_facts(path))
    return said


def _disk_facts(path: Path) -> list[str]:
    """Why a write may fail with a full disk or an I/O error: the free space and the file-size limit."""
    from modescope.resources import size_text

    facts = []
    limit = _file_size_limit()
    if limit is not None:
        facts.append(f"this process may not write files over {size_text(limit)} (ulimit -f)")
    with suppress(OSError):
        facts.append(f"its disk has {size_text(shutil.disk_usage(path.parent).free)} free")
    return facts or ["is its disk full or failing?"]


def _file_size_limit() -> int | None:
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft
