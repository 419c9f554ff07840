"""The SQLite store of experiment runs: one transaction per finished probe, so an interrupted run loses at most
the probe it was computing, and a rerun of the same suite resumes or reuses finished probes from the cache.

WAL mode lets a report read while a run writes; synchronous=NORMAL can lose the last commits on a power cut
but never corrupts the database, and a killed process loses nothing it committed. Several processes can write
one store at once: each write transaction takes the lock up front and waits its turn (see sqlite_failures.py),
and a write that fails (a full disk) is rolled back whole, with a one-line error that says how to resume.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import modescope.store.sqlite_failures as sqlite_failures
from modescope.errors import ModescopeError
from modescope.store.records import Artifact, Metric, ProbeOutput, RunInfo, StoredUnit, UnitRecord
from modescope.store.schema import migrate
from modescope.store.sqlite_failures import (
    damaged,
    is_storage_error,
    open_failure,
    read_failure,
    retry_busy,
    write_failure,
)

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_DIR = Path("modescope-results")
FILE_NAME = "results.sqlite"
FILE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
STATUSES = ("running", "finished", "failed")
EXPORT_FORMATS = ("parquet", "csv", "json")
METRIC_COLUMNS = ["run", "probe", "kind", "model", "metric", "value", "text"]
RUN_COLUMNS = ["id", "suite", "suite_hash", "status", "started", "finished", "models", "probes"]


def resolve_path(path: str | Path | None) -> Path:
    """The database file: a folder gets results.sqlite inside; a .sqlite/.db name or an existing file is it."""
    where = DEFAULT_DIR if path is None else Path(path).expanduser()
    if where.suffix.lower() in FILE_SUFFIXES or where.is_file():
        return where
    return where / FILE_NAME


class Store:
    """Runs, their models and probes (metrics, JSON payload, artifacts), and a cache of probe outputs by key."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = resolve_path(path)
        self._conn = _open(self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
        if isinstance(error, sqlite3.Error) and is_storage_error(error):
            # A read that met a damaged page or a failing disk (writes name their own errors): one line naming
            # the store, for the CLI to print, rather than a traceback.
            raise read_failure(error, self.path) from error

    @contextmanager
    def _write(self, run_id: int | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction, for the run `run_id` if it writes one. IMMEDIATE takes the write lock up front,
        so a busy store waits at the start (SQLite's timeout, then retry_busy's) rather than failing halfway
        through, and a reader never has to turn writer. A write the disk refuses rolls back whole and becomes
        a StoreWriteError that says how to continue the run."""
        try:
            retry_busy(lambda: self._conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as e:
            if not is_storage_error(e):
                raise
            raise write_failure(e, self.path, run_id) from e
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as e:
            self._roll_back()
            if isinstance(e, sqlite3.Error) and is_storage_error(e):
                raise write_failure(e, self.path, run_id) from e
            raise

    def _roll_back(self) -> None:
        if not self._conn.in_transaction:  # a failed COMMIT, or a disk error, may already have ended it
            return
        # The error that made us roll back is the one to report; SQLite rolls back by itself on a failed write.
        with suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    # Runs

    def create_run(self, suite: str, suite_hash: str, suite_text: str, models: list[dict[str, Any]]) -> int:
        """A new run in status "running"; models are kept in the given order with all their settings."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (suite, suite_hash, suite_text, status, started) VALUES (?, ?, ?, 'running', ?)",
                (suite, suite_hash, suite_text, time.time()),
            )
            run_id = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO models (run_id, position, name, settings) VALUES (?, ?, ?, ?)",
                [(run_id, k, str(m.get("name", "")), _dumps(m)) for k, m in enumerate(models)],
            )
        return run_id

    def resumable_run(self, suite_hash: str) -> int | None:
        """The latest run of this suite, if it did not finish (interrupted or failed); None otherwise.

        An older unfinished run behind a finished one is not offered: the finished run superseded it.
        """
        row = self._conn.execute(
            "SELECT id, status FROM runs WHERE suite_hash = ? ORDER BY id DESC LIMIT 1", (suite_hash,)
        ).fetchone()
        return int(row[0]) if row and row[1] != "finished" else None

    def run(self, run_id: int) -> RunInfo:
        row = self._conn.execute(
            "SELECT id, suite, suite_hash, status, started, finished, suite_text FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise self._unknown_run(run_id)
        models = self._conn.execute(
            "SELECT settings FROM models WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
        return RunInfo(
            id=row[0],
            suite=row[1],
            suite_hash=row[2],
            status=row[3],
            started=row[4],
            finished=row[5],
            models=[json.loads(m[0]) for m in models],
            suite_text=row[6],
        )

    def latest_run(self) -> int | None:
        row = self._conn.execute("SELECT max(id) FROM runs").fetchone()
        return None if row[0] is None else int(row[0])

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Mark a run finished or failed (with the time); "running" reopens it, e.g. when it is resumed."""
        if status not in STATUSES:
            raise ValueError(f"run status must be one of {', '.join(STATUSES)}, not {status!r}")
        finished = None if status == "running" else time.time()
        with self._write(run_id) as conn:
            cursor = conn.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, finished, run_id))
            if cursor.rowcount == 0:
                raise self._unknown_run(run_id)

    def _unknown_run(self, run_id: int) -> ModescopeError:
        ids = [str(r[0]) for r in self._conn.execute("SELECT id FROM runs ORDER BY id")]
        if not ids:
            return ModescopeError(f"no run {run_id} in {self.path}: it holds no runs yet")
        shown = ", ".join(ids) if len(ids) <= 20 else ", ".join(ids[:3]) + ", ..., " + ", ".join(ids[-10:])
        return ModescopeError(f"no run {run_id} in {self.path}; its runs are {shown} (see `modescope runs`)")

    # Probes

    def save_probe(
        self,
        run_id: int,
        name: str,
        kind: str,
        params: dict[str, Any],
        cache_key: str,
        seconds: float,
        output: ProbeOutput,
        from_cache: bool = False,
    ) -> None:
        """Store a finished probe and make it the cache entry for cache_key, all in one transaction.

        A probe name already in the run is replaced (keeping its place in the order), never duplicated.
        """
        # Serialize before taking the lock: a payload that is not JSON-able fails here, with nothing written.
        params_json, payload_json, notes_json = _dumps(params), _dumps(output.payload), _dumps(output.notes)
        with self._write(run_id) as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise self._unknown_run(run_id)
            old = conn.execute(
                "SELECT id, position, cache_key FROM probes WHERE run_id = ? AND name = ?", (run_id, name)
            ).fetchone()
            if old is None:
                row = conn.execute("SELECT coalesce(max(position) + 1, 0) FROM probes WHERE run_id = ?", (run_id,))
                position = int(row.fetchone()[0])
            else:
                position = old[1]
                # Cascades to its metrics, artifacts and any cache entry that pointed at it.
                conn.execute("DELETE FROM probes WHERE id = ?", (old[0],))
            cursor = conn.execute(
                "INSERT INTO probes (run_id, name, position, kind, params, cache_key, seconds, from_cache, payload,"
                " notes, saved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    name,
                    position,
                    kind,
                    params_json,
                    cache_key,
                    float(seconds),
                    int(from_cache),
                    payload_json,
                    notes_json,
                    time.time(),
                ),
            )
            probe_id = int(cursor.lastrowid or 0)
            _insert_pieces(conn, "", "probe_id", probe_id, output)
            conn.execute("INSERT OR REPLACE INTO cache (key, probe_id) VALUES (?, ?)", (cache_key, probe_id))
            if old is not None and old[2] != cache_key:
                _repoint_cache(conn, "", "probe_id", "probes", old[2])

    def finished_probes(self, run_id: int) -> list[str]:
        """Names of the probes stored for the run, in stored order."""
        rows = self._conn.execute("SELECT name FROM probes WHERE run_id = ? ORDER BY position", (run_id,))
        return [r[0] for r in rows]

    def cached(self, cache_key: str) -> ProbeOutput | None:
        """The output stored under this key by any run, or None."""
        row = self._conn.execute("SELECT probe_id FROM cache WHERE key = ?", (cache_key,)).fetchone()
        return None if row is None else self._output(row[0])

    def probe_output(self, run_id: int, name: str) -> ProbeOutput:
        row = self._conn.execute("SELECT id FROM probes WHERE run_id = ? AND name = ?", (run_id, name)).fetchone()
        if row is None:
            self.run(run_id)  # raises for an unknown run
            stored = ", ".join(self.finished_probes(run_id)) or "none"
            raise ModescopeError(f"run {run_id} has no probe '{name}'; its probes are: {stored}")
        return self._output(row[0])

    def _output(self, probe_id: int, prefix: str = "") -> ProbeOutput:
        """A stored output: a probe's (prefix "") or a unit's (prefix "unit_")."""
        owner, table = ("unit_id", "units") if prefix else ("probe_id", "probes")
        # One read transaction, so a concurrent replace cannot hand back metrics and artifacts of two versions.
        with self._read() as conn:
            payload, notes = conn.execute(f"SELECT payload, notes FROM {table} WHERE id = ?", (probe_id,)).fetchone()
            metrics = conn.execute(
                f"SELECT model, name, value, text FROM {prefix}metrics WHERE {owner} = ? ORDER BY position",
                (probe_id,),
            ).fetchall()
            artifacts = conn.execute(
                f"SELECT name, mime, data FROM {prefix}artifacts WHERE {owner} = ? ORDER BY rowid", (probe_id,)
            ).fetchall()
        return ProbeOutput(
            metrics=[Metric(*m) for m in metrics],
            payload=json.loads(payload),
            artifacts={n: Artifact(mime, bytes(data)) for n, mime, data in artifacts},
            notes=json.loads(notes),
        )

    # Units of prompt-set probes

    def save_unit(
        self,
        run_id: int,
        unit: UnitRecord,
        output: ProbeOutput,
        seconds: float,
        from_cache: bool = False,
    ) -> None:
        """Store one (probe, prompt, model) unit and make it the cache entry for its key, in one transaction;
        a unit already stored in the run is replaced, and a failure recorded for it is cleared."""
        payload_json, notes_json, meta_json = _dumps(output.payload), _dumps(output.notes), _dumps(unit.meta)
        key = (run_id, unit.probe, unit.prompt_id, unit.model)
        with self._write(run_id) as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise self._unknown_run(run_id)
            old = conn.execute(
                "SELECT cache_key FROM units WHERE run_id = ? AND probe = ? AND prompt_id = ? AND model = ?", key
            ).fetchone()
            conn.execute("DELETE FROM units WHERE run_id = ? AND probe = ? AND prompt_id = ? AND model = ?", key)
            conn.execute(
                "DELETE FROM unit_failures WHERE run_id = ? AND probe = ? AND prompt_id = ? AND model = ?", key
            )
            cursor = conn.execute(
                "INSERT INTO units (run_id, probe, prompt_id, model, position, prompt, meta, cache_key, seconds,"
                " from_cache, payload, notes, saved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *key,
                    unit.position,
                    unit.prompt,
                    meta_json,
                    unit.cache_key,
                    float(seconds),
                    int(from_cache),
                    payload_json,
                    notes_json,
                    time.time(),
                ),
            )
            unit_id = int(cursor.lastrowid or 0)
            _insert_pieces(conn, "unit_", "unit_id", unit_id, output)
            conn.execute("INSERT OR REPLACE INTO unit_cache (key, unit_id) VALUES (?, ?)", (unit.cache_key, unit_id))
            if old is not None and old[0] != unit.cache_key:
                _repoint_cache(conn, "unit_", "unit_id", "units", old[0])

    def cached_unit(self, cache_key: str) -> ProbeOutput | None:
        """The output stored under this unit key by any run, or None."""
        row = self._conn.execute("SELECT unit_id FROM unit_cache WHERE key = ?", (cache_key,)).fetchone()
        return None if row is None else self._output(row[0], "unit_")

    def finished_units(self, run_id: int, probe: str) -> set[tuple[str, str]]:
        """(prompt id, model) of every unit of the probe stored in the run."""
        rows = self._conn.execute("SELECT prompt_id, model FROM units WHERE run_id = ? AND probe = ?", (run_id, probe))
        return {(r[0], r[1]) for r in rows}

    def units(self, run_id: int, probe: str, with_artifacts: bool = False) -> list[StoredUnit]:
        """The probe's stored units in prompt order (then by model name), with their outputs; artifacts are
        left out unless asked for (they are the bulk of a unit)."""
        rows = self._conn.execute(
            "SELECT id, prompt_id, model, position, prompt, meta, cache_key, seconds, from_cache FROM units"
            " WHERE run_id = ? AND probe = ? ORDER BY position, model",
            (run_id, probe),
        ).fetchall()
        found = []
        for unit_id, prompt_id, model, position, prompt, meta, cache_key, seconds, from_cache in rows:
            output = self._output(unit_id, "unit_")
            if not with_artifacts:
                output.artifacts = {}
            record = UnitRecord(probe, prompt_id, model, position, prompt, json.loads(meta), cache_key)
            found.append(StoredUnit(record, output, seconds, bool(from_cache)))
        return found

    def unit_artifact(self, run_id: int, probe: str, prompt_id: str, model: str, name: str) -> Artifact | None:
        row = self._conn.execute(
            "SELECT a.mime, a.data FROM unit_artifacts a JOIN units u ON u.id = a.unit_id"
            " WHERE u.run_id = ? AND u.probe = ? AND u.prompt_id = ? AND u.model = ? AND a.name = ?",
            (run_id, probe, prompt_id, model, name),
        ).fetchone()
        return None if row is None else Artifact(row[0], bytes(row[1]))

    def record_failure(self, run_id: int, probe: str, prompt_id: str, model: str, error: str, attempts: int) -> None:
        """Keep a unit the executor gave up on, so the run lists it and --resume knows to compute it."""
        with self._write(run_id) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO unit_failures (run_id, probe, prompt_id, model, error, attempts, saved)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, probe, prompt_id, model, error, attempts, time.time()),
            )

    def failures(self, run_id: int) -> list[dict[str, Any]]:
        """The run's failed units: probe, prompt_id, model, error, attempts."""
        rows = self._conn.execute(
            "SELECT probe, prompt_id, model, error, attempts FROM unit_failures WHERE run_id = ? ORDER BY saved",
            (run_id,),
        )
        columns = ("probe", "prompt_id", "model", "error", "attempts")
        return [dict(zip(columns, row, strict=True)) for row in rows]

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A snapshot for several SELECTs (WAL readers never block the writer)."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    def probes(self, run_id: int) -> list[dict[str, Any]]:
        """The run's stored probes in order: name, kind, params, cache_key, seconds, from_cache, order."""
        rows = self._conn.execute(
            "SELECT name, kind, params, cache_key, seconds, from_cache, position FROM probes"
            " WHERE run_id = ? ORDER BY position",
            (run_id,),
        )
        return [
            {
                "name": name,
                "kind": kind,
                "params": json.loads(params),
                "cache_key": cache_key,
                "seconds": seconds,
                "from_cache": bool(from_cache),
                "order": position,
            }
            for name, kind, params, cache_key, seconds, from_cache, position in rows
        ]

    # Tables

    def runs(self) -> pd.DataFrame:
        """One row per run: id, suite, suite_hash, status, started, finished (unix times), models (their names,
        in order), probes (how many are stored)."""
        import pandas as pd

        with self._read() as conn:
            rows = conn.execute(
                "SELECT r.id, r.suite, r.suite_hash, r.status, r.started, r.finished,"
                " (SELECT count(*) FROM probes p WHERE p.run_id = r.id) FROM runs r ORDER BY r.id"
            ).fetchall()
            names: dict[int, list[str]] = {}
            for run_id, name in conn.execute("SELECT run_id, name FROM models ORDER BY run_id, position"):
                names.setdefault(run_id, []).append(name)
        records = [(*r[:6], names.get(r[0], []), r[6]) for r in rows]
        return pd.DataFrame.from_records(records, columns=RUN_COLUMNS)

    def metrics(self, run_id: int | None = None) -> pd.DataFrame:
        """Every metric in long format: run, probe, kind, model, metric, value (NaN when None), text."""
        import pandas as pd

        query = (
            "SELECT p.run_id, p.name, p.kind, m.model, m.name, m.value, m.text FROM metrics m"
            " JOIN probes p ON p.id = m.probe_id"
        )
        args: tuple[int, ...] = ()
        if run_id is not None:
            self.run(run_id)  # an unknown run is an error, not an empty table
            query += " WHERE p.run_id = ?"
            args = (run_id,)
        rows = self._conn.execute(query + " ORDER BY p.run_id, p.position, m.position", args).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=METRIC_COLUMNS)
        frame["value"] = frame["value"].astype("float64")  # None -> NaN, and float even when all are missing
        return frame

    # In a notebook

    def to_pandas(self, run_id: int | None = None) -> pd.DataFrame:
        """`metrics(run_id)`: every metric in long format, of one run or (None) of all runs."""
        return self.metrics(run_id)

    def to_dict(self) -> dict[str, Any]:
        """The store's path and its runs (id, suite, status, times, models, probe count) as records."""
        return {"path": str(self.path), "runs": _records(self.runs())}

    def _repr_html_(self) -> str:
        import html

        runs = self.runs()
        table = runs.to_html(index=False, escape=True, border=0) if len(runs) else "<p>No runs yet.</p>"
        hint = (
            "<code>ms.stored_run(store, id)</code> shows a run's report; <code>store.to_pandas(id)</code> its metrics"
        )
        return f"<p><b>modescope store</b> {html.escape(str(self.path))}: {len(runs)} runs. {hint}.</p>{table}"

    def export(self, run_id: int, format: str, path: Path) -> Path:
        """Write the run's metrics table as parquet, csv or json (json also holds the run's header and every
        probe's params, payload and notes). A folder as path gets run-<id>.<format> inside. Returns the file."""
        if format not in EXPORT_FORMATS:
            raise ModescopeError(f"unknown export format '{format}'; use one of: {', '.join(EXPORT_FORMATS)}")
        path = Path(path)
        target = path / f"run-{run_id}.{format}" if path.is_dir() else path
        table = self.metrics(run_id)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if format == "parquet":
                table.to_parquet(target, index=False)
            elif format == "csv":
                table.to_csv(target, index=False)
            else:
                target.write_text(_dumps(self._export_document(run_id, table), indent=1), encoding="utf-8")
        except OSError as e:
            raise ModescopeError(f"cannot write {target}: {e.strerror or e}") from e
        return target

    def _export_document(self, run_id: int, table: pd.DataFrame) -> dict[str, Any]:
        info = self.run(run_id)
        probes = self.probes(run_id)
        for probe in probes:
            output = self.probe_output(run_id, probe["name"])
            probe["payload"] = output.payload
            probe["notes"] = output.notes
            probe["artifacts"] = {n: a.mime for n, a in output.artifacts.items()}
        return {"run": asdict(info), "probes": probes, "metrics": _records(table)}


def _repoint_cache(conn: sqlite3.Connection, prefix: str, owner: str, rows: str, key: str) -> None:
    """A replaced probe (prefix "") or unit (prefix "unit_") may have been the cache entry for its old key,
    which another run may still hold: point the key at the newest row holding it rather than forget it (and
    recompute that output)."""
    conn.execute(
        f"INSERT OR IGNORE INTO {prefix}cache (key, {owner})"
        f" SELECT cache_key, max(id) FROM {rows} WHERE cache_key = ? GROUP BY cache_key",
        (key,),
    )


def _insert_pieces(conn: sqlite3.Connection, prefix: str, owner: str, owner_id: int, output: ProbeOutput) -> None:
    """The metrics and artifacts of a probe (prefix "") or a unit (prefix "unit_")."""
    conn.executemany(
        f"INSERT INTO {prefix}metrics ({owner}, position, model, name, value, text) VALUES (?, ?, ?, ?, ?, ?)",
        [(owner_id, k, m.model, m.name, _finite(m.value), m.text) for k, m in enumerate(output.metrics)],
    )
    conn.executemany(
        f"INSERT INTO {prefix}artifacts ({owner}, name, mime, data) VALUES (?, ?, ?, ?)",
        [(owner_id, n, a.mime, bytes(a.data)) for n, a in output.artifacts.items()],
    )


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    # astype(object) first, so values are plain Python ones (NaN becomes null when written)
    return [dict(zip(table.columns, row, strict=True)) for row in table.astype(object).itertuples(index=False)]


def _open(path: Path) -> sqlite3.Connection:
    """Connect, check the file is a modescope store (or new), set up WAL, and migrate; every way that can fail
    on the user's path is a ModescopeError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModescopeError(
            f"cannot create the folder {path.parent} for the results store {path}: {e.strerror or e}"
        ) from e
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implicit.
    try:
        conn = sqlite3.connect(path, timeout=sqlite_failures.BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise open_failure(e, path) from e
    try:
        # Checked before anything is written, so a file that is not a store is left exactly as it was.
        retry_busy(lambda: _check_is_store(conn, path))
        retry_busy(lambda: _set_up(conn, path))  # each step is repeatable: migrate re-reads the version
    except BaseException as e:
        conn.close()
        if isinstance(e, sqlite3.Error) and is_storage_error(e):
            raise open_failure(e, path) from e
        raise
    return conn


def _check_is_store(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse another program's SQLite database (migrating it would add our tables to it) and a store cut
    short (SQLite reads the missing end of a partial last page as zeros, and would write over it)."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if tables and "schema_version" not in tables:
        shown = ", ".join(tables[:6]) + (", ..." if len(tables) > 6 else "")
        raise ModescopeError(
            f"{path} is an SQLite database but not a modescope results store (its tables: {shown}); give another path"
        )
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    size = path.stat().st_size if path.exists() else 0
    if size % page_size:
        raise damaged(path, f"its {size} bytes are not a whole number of {page_size}-byte pages: it was cut short")


def _set_up(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
        raise ModescopeError(f"the results store {path} cannot use write-ahead logging (is it on a network drive?)")
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(conn, path)


def _finite(value: float | None) -> float | None:
    """Not-finite numbers are stored as NULL, like every JSON modescope writes."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Plain JSON values: not-finite floats become None, numpy arrays and scalars become lists and numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _jsonable(value.tolist())
    raise TypeError(f"cannot store a {type(value).__name__} as JSON: {value!r:.80}")


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False, indent=indent)
