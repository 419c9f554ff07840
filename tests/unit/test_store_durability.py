"""The store under stress: two `modescope run` processes on one store, locks held by others, a disk that fills
up in the middle of a probe, and files that are not (or no longer) modescope stores. Toy models only."""

from __future__ import annotations

import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from modescope.errors import ModescopeError
from modescope.store import Store, StoreWriteError, UnitRecord, sqlite_failures
from modescope.store.records import Artifact, Metric, ProbeOutput
from modescope.store.schema import latest_version
from modescope.suites.runner import plan_suite, run_suite
from tests.unit.test_cli import assert_user_error, invoke

PROMPTS = 8
MODELS = ("toy:base", "toy:tuned")
PROMPT_LIST = ", ".join(f'"Q: number {k}?\\nA:"' for k in range(PROMPTS))
# A prompt-set probe stores one unit per prompt and model (each with a ~35 kB figure), then its aggregate; the
# one-prompt probe is stored whole.
SUITE = f"""
name = "durable"

[[models]]
name = "toy:base"

[[models]]
name = "toy:tuned"

[[probes]]
name = "numbers"
kind = "distribution"
prompts = [{PROMPT_LIST}]
integers = [0, 20]

[[probes]]
name = "one"
kind = "distribution"
prompt = "Q: a number?\\nA:"
integers = [0, 20]
"""
UNITS = PROMPTS * len(MODELS)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    return path


def run_command(suite: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modescope.cli", "run", str(suite), "--store", str(store), *extra]


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def results(store: Store, run_id: int) -> dict[str, Any]:
    """Everything a run computed, without cache flags and timings: every probe's and unit's metrics, payload
    (less its "seconds") and artifact names."""
    found: dict[str, Any] = {}
    for probe in store.probes(run_id):
        output = store.probe_output(run_id, probe["name"])
        found[probe["name"]] = (output.metrics, timeless(output.payload), sorted(output.artifacts))
    for unit in store.units(run_id, "numbers", with_artifacts=True):
        output = unit.output
        key = f"{unit.record.prompt_id}/{unit.record.model}"
        found[key] = (output.metrics, timeless(output.payload), sorted(output.artifacts))
    return found


def timeless(value: Any) -> Any:
    """A payload without the time each part took (the one thing two runs of a probe differ in)."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- two writers at once -----------------------------------------------------------------------------------


def test_two_runs_at_once_on_one_store_both_finish_with_nothing_lost(suite: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    children = [
        subprocess.Popen(run_command(suite, store_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [child.communicate(timeout=300)[1] for child in children]
    assert [child.returncode for child in children] == [0, 0], errors
    with Store(store_dir) as store:
        assert integrity(store.path) == "ok"
        assert sorted(store.runs()["id"]) == [1, 2]
        saved: dict[int, list[float]] = {}
        for run_id in (1, 2):
            assert store.run(run_id).status == "finished"
            assert sorted(store.finished_probes(run_id)) == ["numbers", "one"]
            units = store.units(run_id, "numbers")
            assert len(units) == UNITS and {u.record.model for u in units} == set(MODELS)
            assert len({(u.record.prompt_id, u.record.model) for u in units}) == UNITS
            with closing(sqlite3.connect(store.path)) as conn:
                saved[run_id] = [r[0] for r in conn.execute("SELECT saved FROM units WHERE run_id = ?", (run_id,))]
        # the two processes really wrote at the same time: their units' commits interleave
        assert min(saved[2]) < max(saved[1]) and min(saved[1]) < max(saved[2])
        assert results(store, 1) == results(store, 2)
        third = run_suite(plan_suite(str(suite)), store)
        assert all(p["from_cache"] for p in store.probes(third)) and len(store.probes(third)) == 2
        assert results(store, third) == {k: v for k, v in results(store, 1).items() if "/" not in k}
    assert integrity(store_dir / "results.sqlite") == "ok"


def test_many_writers_hammering_one_store_lose_nothing(tmp_path: Path) -> None:
    """Six connections (one Store each, in threads: sqlite3 lets go of the GIL while it works) save units as
    fast as they can. A write transaction that began as a reader would fail here at once with "database is
    locked", as SQLite will not wait where waiting could deadlock."""
    with Store(tmp_path) as store:
        run_id = store.create_run("s", "h", "", [])
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            with Store(tmp_path) as mine:
                for k in range(40):
                    unit = UnitRecord("p", f"{worker}-{k}", "m", k, "prompt", {}, f"key{worker}-{k}")
                    output = ProbeOutput([Metric("m", "x", float(k))], {"k": k}, {"f": Artifact("x", bytes(3000))})
                    mine.save_unit(run_id, unit, output, 0.0)
        except BaseException as error:  # a thread's error would be lost: the assertion below reports it
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store(tmp_path) as store:
        units = store.units(run_id, "p")
        assert sorted(u.record.prompt_id for u in units) == sorted(f"{w}-{k}" for w in range(6) for k in range(40))
        assert all(u.output.payload == {"k": u.record.position} for u in units)
        assert integrity(store.path) == "ok"


@contextmanager
def write_lock_held(path: Path, seconds: float | None = None) -> Iterator[None]:
    """Another connection holds the store's write lock, for `seconds` (then commits) or for the whole block."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, lambda: other.execute("COMMIT")) if seconds is not None else None
    if release:
        release.start()
    try:
        yield
    finally:
        if release:
            release.join()
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def test_a_lock_held_past_sqlites_own_timeout_is_waited_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite gives up after 50 ms; the store's own retries keep trying until the other writer lets go.
    monkeypatch.setattr(sqlite_failures, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "results.sqlite"
    with write_lock_held(path, seconds=0.6):  # a brand-new store: its migration needs the lock too
        started = time.monotonic()
        store = Store(path)
        assert time.monotonic() - started > 0.5
    with store:
        run_id = store.create_run("s", "h", "", [])
        with write_lock_held(path, seconds=0.6):
            started = time.monotonic()
            store.finish_run(run_id)
            assert time.monotonic() - started > 0.5
        assert store.run(run_id).status == "finished"


def test_a_lock_that_never_comes_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_failures, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(sqlite_failures, "BUSY_PATIENCE_S", 0.3)
    with Store(tmp_path) as store:
        run_id = store.create_run("s", "h", "", [])
        with write_lock_held(store.path), pytest.raises(StoreWriteError) as caught:
            store.finish_run(run_id)
        message = str(caught.value)
        assert str(store.path) in message and "database is locked" in message and "\n" not in message
        assert "another process held its lock" in message and "--resume to continue it" in message
        assert store.run(run_id).status == "running"
        store.finish_run(run_id)  # the lock is free again: the same store goes on working
        assert store.run(run_id).status == "finished"


def test_a_reader_never_blocks_a_writer_and_keeps_its_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Were the reader to block the writer, the write would fail within these 0.2 s.
    monkeypatch.setattr(sqlite_failures, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(sqlite_failures, "BUSY_PATIENCE_S", 0.2)
    with Store(tmp_path) as store:
        first = store.create_run("s", "h", "", [])
        reader = sqlite3.connect(store.path, isolation_level=None, timeout=0.05)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        second = store.create_run("s", "h", "", [])
        unit = UnitRecord("p", "a", "m", 0, "prompt", {}, "key")
        store.save_unit(second, unit, ProbeOutput([Metric("m", "x", 1.0)], {}, {}), 0.0)
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 1  # its snapshot, unchanged
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
        reader.close()
        assert list(store.runs()["id"]) == [first, second]


# --- a disk that fills up ----------------------------------------------------------------------------------


def limited_to(size: int) -> Any:
    """A preexec_fn: the child may write files up to `size` bytes; a write past it fails with EFBIG (as on a
    full disk) instead of killing the process with SIGXFSZ."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_a_full_disk_mid_probe_is_a_clear_error_and_the_run_resumes_to_a_clean_runs_results(
    suite: Path, tmp_path: Path
) -> None:
    with Store(tmp_path / "clean") as clean:
        clean_run = run_suite(plan_suite(str(suite)), clean)
        expected = results(clean, clean_run)
    full_size = (tmp_path / "clean" / "results.sqlite").stat().st_size
    store_dir = tmp_path / "store"
    Store(store_dir).close()  # a new, empty store: its schema is all it holds
    empty_size = (store_dir / "results.sqlite").stat().st_size
    # The write-ahead log fills up about halfway through the prompt-set probe's units.
    limit = empty_size + (full_size - empty_size) // 2
    child = subprocess.run(
        run_command(suite, store_dir), capture_output=True, text=True, timeout=300, preexec_fn=limited_to(limit)
    )
    assert child.returncode == 2, child.stderr
    line = one_error_line(child.stderr)
    assert f"cannot write to the results store {store_dir / 'results.sqlite'}: disk I/O error" in line
    assert "ulimit -f" in line and "run 1 keeps everything stored before this" in line and "--resume" in line
    assert integrity(store_dir / "results.sqlite") == "ok"
    with Store(store_dir) as store:
        stored = len(store.units(1, "numbers"))
        assert 0 < stored < UNITS, stored  # it failed in the middle of the probe, keeping what had finished
        assert store.run(1).status == "running" and store.finished_probes(1) == []
        kept = results(store, 1)
        assert run_suite(plan_suite(str(suite)), store, resume=True) == 1
        assert store.run(1).status == "finished"
        assert results(store, 1) == expected
        for key, value in kept.items():  # what was stored before the failure is kept as it was
            assert expected[key] == value
    assert integrity(store_dir / "results.sqlite") == "ok"


def test_a_disk_too_full_to_create_the_store_is_a_clear_error(suite: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    child = subprocess.run(
        run_command(suite, store_dir), capture_output=True, text=True, timeout=120, preexec_fn=limited_to(20_000)
    )
    assert child.returncode == 2, child.stderr
    line = one_error_line(child.stderr)
    assert f"cannot open the results store {store_dir / 'results.sqlite'}: disk I/O error" in line
    assert "ulimit -f" in line
    with Store(store_dir) as store:  # nothing half-made is left: the store opens, whole and empty
        assert store.latest_run() is None
        assert integrity(store.path) == "ok"


# --- files that are not modescope stores -------------------------------------------------------------------


def a_finished_store(tmp_path: Path) -> Path:
    with Store(tmp_path / "good") as store:
        run_id = store.create_run("s", "h", "", [{"name": "m"}])
        for k in range(30):  # enough pages that cutting the file short loses some
            unit = UnitRecord("p", str(k), "m", k, "prompt", {}, f"key{k}")
            output = ProbeOutput([Metric("m", "x", float(k))], {"k": k}, {"f": Artifact("x", bytes([k]) * 9000)})
            store.save_unit(run_id, unit, output, 0.0)
        store.save_probe(
            run_id, "p", "distribution", {}, "probe-key", 0.0, ProbeOutput([Metric("m", "y", 1.0)], {}, {})
        )
        store.finish_run(run_id)
        return store.path


def corrupt(kind: str, good: Path, path: Path) -> None:
    data = good.read_bytes()
    rng = random.Random(kind)
    if kind == "random bytes":
        path.write_bytes(rng.randbytes(50_000))
    elif kind == "a text file":
        path.write_text("run,probe,value\n1,ints,0.5\n" * 200)
    elif kind == "a database cut at half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "a database cut inside its last page":
        path.write_bytes(data[:-100])
    elif kind == "a database cut inside its header":
        path.write_bytes(data[:60])
    elif kind == "another program's database":
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
            conn.execute("INSERT INTO notes VALUES ('mine')")
    elif kind == "a store from a newer modescope":
        path.write_bytes(data)
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("INSERT INTO schema_version VALUES (?, 'future', 0)", (latest_version() + 1,))
    else:
        raise AssertionError(kind)


BAD_STORES = {
    "random bytes": "is not a modescope results store (not an SQLite database)",
    "a text file": "is not a modescope results store (not an SQLite database)",
    "a database cut at half": "is not a modescope results store, or a damaged one",
    "a database cut inside its last page": "is not a modescope results store, or a damaged one",
    "a database cut inside its header": "is not a modescope results store, or a damaged one",
    "another program's database": "is an SQLite database but not a modescope results store (its tables: notes)",
    "a store from a newer modescope": "newer than this modescope knows",
}


@pytest.mark.parametrize("kind", list(BAD_STORES))
def test_a_file_that_is_not_a_store_is_refused_in_one_line_and_left_alone(
    kind: str, suite: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad.sqlite"
    corrupt(kind, a_finished_store(tmp_path), path)
    before = path.read_bytes()
    result = invoke("run", suite, "--store", path)
    assert_user_error(result, BAD_STORES[kind])
    assert str(path) in result.output
    assert path.read_bytes() == before  # nothing was written to it: no migration, no WAL switch, no repair
    for command in ("runs --store", "export 1 --format csv --store"):
        assert_user_error(invoke(command, path), BAD_STORES[kind])
    with pytest.raises(ModescopeError, match="modescope"):
        Store(path)


def test_a_damaged_page_found_while_reading_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    path = a_finished_store(tmp_path)
    with closing(sqlite3.connect(path)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size : root * page_size] = b"\xff" * page_size  # the table's root page: garbage
    path.write_bytes(bytes(data))
    with Store(path) as store:  # the schema and the runs are intact: opening works
        assert store.latest_run() == 1
    result = invoke("export 1 --format csv -o", tmp_path / "out.csv", "--store", path)
    assert_user_error(result, f"{path} is not a modescope results store, or a damaged one")
    assert "malformed" in result.output
    with pytest.raises(ModescopeError, match="damaged"), Store(path) as store:
        store.probe_output(1, "p")
