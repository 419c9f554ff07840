"""The results store of src/modescope/store: round trips, replacement, cache, tables, exports, refusals, and
a SIGKILL in the middle of a run."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from modescope.errors import ModescopeError
from modescope.store import Artifact, Metric, ProbeOutput, Store
from modescope.store.schema import latest_version, migrations, statements

# The start of a real PNG file (signature and IHDR chunk), then bytes of every value, NUL included.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
MODELS = [{"name": "gemma-3-270m", "dtype": "float32"}, {"name": "smollm2-135m-instruct", "chat": True}]


def output(value: float = 1.0, *, figures: int = 1) -> ProbeOutput:
    return ProbeOutput(
        metrics=[
            Metric("gemma-3-270m", "entropy_bits", value),
            Metric("gemma-3-270m", "top1", 0.25, text="42"),
            Metric("smollm2-135m-instruct", "tau_star", None),
            Metric("", "js_bits", 0.5),
        ],
        payload={"prompt": "Pick a number", "results": [{"model": "gemma-3-270m", "masses": [0.1, 0.2]}]},
        artifacts={f"figure{k}": Artifact("image/png", PNG) for k in range(figures)},
        notes=["gemma-3-270m: coverage below 0.5"],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "results") as opened:
        yield opened


def new_run(store: Store, suite_hash: str = "h1") -> int:
    return store.create_run("collapse", suite_hash, "probes:\n  - dist\n", MODELS)


def test_probe_output_round_trips(store: Store) -> None:
    run = new_run(store)
    saved = output(figures=2)
    saved.artifacts["page"] = Artifact("text/html", "<p>é</p>".encode())
    saved.metrics.append(Metric("gemma-3-270m", "chi2", math.inf))
    saved.payload["nan"] = math.nan
    store.save_probe(run, "dist", "distribution", {"integers": [0, 100]}, "k1", 2.5, saved)

    loaded = store.probe_output(run, "dist")
    assert loaded.metrics[:4] == saved.metrics[:4]
    assert loaded.metrics[4] == Metric("gemma-3-270m", "chi2", None)  # not finite -> None
    assert loaded.payload == {**saved.payload, "nan": None}
    assert loaded.artifacts == saved.artifacts
    assert loaded.notes == saved.notes
    assert store.probes(run) == [
        {
            "name": "dist",
            "kind": "distribution",
            "params": {"integers": [0, 100]},
            "cache_key": "k1",
            "seconds": 2.5,
            "from_cache": False,
            "order": 0,
        }
    ]
    info = store.run(run)
    assert (info.suite, info.suite_hash, info.status, info.finished) == ("collapse", "h1", "running", None)
    assert info.models == MODELS
    assert info.suite_text == "probes:\n  - dist\n"


def test_numpy_values_are_stored_as_plain_json(store: Store) -> None:
    np = pytest.importorskip("numpy")
    run = new_run(store)
    out = ProbeOutput([Metric("m", "x", np.float32(0.5))], {"a": np.arange(3), "b": np.float64("nan")}, {})
    store.save_probe(run, "p", "k", {"n": np.int64(3)}, "key", np.float64(1.0), out)
    assert store.probe_output(run, "p").payload == {"a": [0, 1, 2], "b": None}
    assert store.probe_output(run, "p").metrics == [Metric("m", "x", 0.5)]
    assert store.probes(run)[0]["params"] == {"n": 3}


def test_saving_a_probe_again_replaces_it_in_place(store: Store) -> None:
    run = new_run(store)
    for name in ("a", "b", "c"):
        store.save_probe(run, name, "kind", {}, f"key-{name}", 1.0, output(figures=3))
    store.save_probe(run, "b", "kind", {"rerun": True}, "key-b2", 3.0, output(7.0, figures=1))

    assert store.finished_probes(run) == ["a", "b", "c"]
    assert [p["order"] for p in store.probes(run)] == [0, 1, 2]
    replaced = store.probe_output(run, "b")
    assert replaced.metrics[0].value == 7.0
    assert list(replaced.artifacts) == ["figure0"]
    table = store.metrics(run)
    assert len(table) == 3 * 4
    assert table[table.probe == "b"]["value"].iloc[0] == 7.0
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 3 + 1 + 3


def test_cache_is_shared_across_runs_and_survives_replacement(store: Store) -> None:
    first = new_run(store)
    store.save_probe(first, "dist", "distribution", {}, "K", 1.0, output(3.0))
    assert store.cached("unknown") is None

    second = new_run(store)
    hit = store.cached("K")
    assert hit == output(3.0)
    store.save_probe(second, "dist", "distribution", {}, "K", 0.0, hit, from_cache=True)
    assert store.probes(second)[0]["from_cache"] is True

    # Rerunning the first run's probe with other params moves the entry for K to the second run's copy.
    store.save_probe(first, "dist", "distribution", {"new": 1}, "K2", 1.0, output(4.0))
    assert store.cached("K") == output(3.0)
    assert store.cached("K2") == output(4.0)
    # With no copy left, the key is gone rather than pointing at another output.
    store.save_probe(second, "dist", "distribution", {"new": 1}, "K2", 1.0, output(4.0))
    assert store.cached("K") is None


def test_resumable_run_is_the_latest_unfinished_run_of_the_suite(store: Store) -> None:
    assert store.resumable_run("h1") is None
    run = new_run(store)
    assert store.resumable_run("h1") == run
    assert store.resumable_run("other") is None
    store.finish_run(run)
    assert store.resumable_run("h1") is None
    assert store.run(run).status == "finished"
    assert store.run(run).finished is not None

    failed = new_run(store)
    store.finish_run(failed, "failed")
    assert store.resumable_run("h1") == failed
    store.finish_run(failed, "running")
    assert (store.run(failed).status, store.run(failed).finished) == ("running", None)
    assert store.latest_run() == failed
    with pytest.raises(ValueError, match="status"):
        store.finish_run(failed, "done")


def test_unknown_runs_and_probes_are_user_errors(store: Store) -> None:
    assert store.latest_run() is None
    with pytest.raises(ModescopeError, match="holds no runs"):
        store.run(1)
    first, second = new_run(store), new_run(store)
    with pytest.raises(ModescopeError, match=rf"no run 99 .*{first}, {second} \(see `modescope runs`\)"):
        store.run(99)
    with pytest.raises(ModescopeError, match="no run 99"):
        store.save_probe(99, "p", "k", {}, "key", 1.0, output())
    with pytest.raises(ModescopeError, match="no run 99"):
        store.finish_run(99)
    with pytest.raises(ModescopeError, match="no run 99"):
        store.metrics(99)
    store.save_probe(first, "dist", "k", {}, "key", 1.0, output())
    with pytest.raises(ModescopeError, match="no probe 'temp'; its probes are: dist"):
        store.probe_output(first, "temp")


def test_runs_and_metrics_tables(store: Store) -> None:
    first, second = new_run(store), new_run(store, "h2")
    store.save_probe(first, "dist", "distribution", {}, "k1", 1.0, output(1.0))
    store.save_probe(first, "temp", "temperature", {}, "k2", 1.0, output(2.0))
    store.save_probe(second, "dist", "distribution", {}, "k1", 0.0, output(1.0), from_cache=True)
    store.finish_run(first)

    runs = store.runs()
    assert list(runs.columns) == ["id", "suite", "suite_hash", "status", "started", "finished", "models", "probes"]
    assert runs["id"].tolist() == [first, second]
    assert runs["status"].tolist() == ["finished", "running"]
    assert runs["probes"].tolist() == [2, 1]
    assert runs["models"].iloc[0] == ["gemma-3-270m", "smollm2-135m-instruct"]
    assert math.isnan(runs["finished"].iloc[1])

    table = store.metrics()
    assert list(table.columns) == ["run", "probe", "kind", "model", "metric", "value", "text"]
    assert len(table) == 3 * 4
    assert table["value"].dtype == "float64"
    mine = store.metrics(first)
    assert mine["probe"].tolist() == ["dist"] * 4 + ["temp"] * 4
    row = mine[(mine.probe == "dist") & (mine.metric == "top1")].iloc[0]
    assert (row.model, row.value, row.text) == ("gemma-3-270m", 0.25, "42")
    assert math.isnan(mine[mine.metric == "tau_star"]["value"].iloc[0])
    assert mine[mine.metric == "js_bits"]["model"].tolist() == ["", ""]


def test_empty_tables_keep_their_columns(store: Store) -> None:
    assert list(store.runs().columns)[:3] == ["id", "suite", "suite_hash"]
    run = new_run(store)
    table = store.metrics(run)
    assert table.empty
    assert list(table.columns) == ["run", "probe", "kind", "model", "metric", "value", "text"]


def test_exports_read_back(store: Store, tmp_path: Path) -> None:
    run = new_run(store)
    store.save_probe(run, "dist", "distribution", {"integers": [0, 100]}, "k1", 1.0, output(1.0))
    store.save_probe(run, "temp", "temperature", {"t": [0.5, 1.0]}, "k2", 1.0, output(2.0))
    expected = store.metrics(run)

    parquet = store.export(run, "parquet", tmp_path / "out" / "m.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), expected, check_dtype=False)

    csv = store.export(run, "csv", tmp_path / "m.csv")
    read = pd.read_csv(csv, dtype={"text": "str", "model": "str"}, keep_default_na=False, na_values={"value": [""]})
    assert read["value"].isna().tolist() == expected["value"].isna().tolist()
    assert read["text"].tolist().count("42") == 2
    assert read[["probe", "metric"]].values.tolist() == expected[["probe", "metric"]].values.tolist()

    folder = tmp_path / "exports"
    folder.mkdir()
    document_path = store.export(run, "json", folder)
    assert document_path == folder / f"run-{run}.json"
    document = json.loads(document_path.read_text())
    assert document["run"]["id"] == run
    assert document["run"]["models"] == MODELS
    assert [(p["name"], p["params"]) for p in document["probes"]] == [
        ("dist", {"integers": [0, 100]}),
        ("temp", {"t": [0.5, 1.0]}),
    ]
    assert document["probes"][0]["payload"] == output().payload
    assert document["probes"][0]["artifacts"] == {"figure0": "image/png"}
    metrics = pd.DataFrame(document["metrics"])
    assert metrics[["probe", "metric", "text"]].values.tolist() == expected[["probe", "metric", "text"]].values.tolist()
    assert None in [m["value"] for m in document["metrics"]]  # NaN is written as null, so the file is valid JSON

    with pytest.raises(ModescopeError, match="parquet, csv, json"):
        store.export(run, "xlsx", tmp_path / "m.xlsx")


def test_default_location_and_path_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Store() as default:
        assert default.path.resolve() == tmp_path / "modescope-results" / "results.sqlite"
    for given, expected in [
        (tmp_path / "a", tmp_path / "a" / "results.sqlite"),
        (str(tmp_path / "b.db"), tmp_path / "b.db"),
        (tmp_path / "deep" / "c.sqlite", tmp_path / "deep" / "c.sqlite"),
        (tmp_path / "modescope-results" / "results.sqlite", tmp_path / "modescope-results" / "results.sqlite"),
    ]:
        with Store(given) as opened:
            assert opened.path == expected
            assert expected.is_file()
            journal = sqlite3.connect(expected).execute("PRAGMA journal_mode").fetchone()[0]
            assert journal == "wal"


def test_reopening_keeps_runs_and_records_the_schema_version(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        run = new_run(store)
        store.save_probe(run, "dist", "k", {}, "key", 1.0, output())
    with Store(tmp_path) as store:
        assert store.finished_probes(run) == ["dist"]
        versions = sqlite3.connect(store.path).execute("SELECT version, name FROM schema_version").fetchall()
    assert versions == [(m.version, m.name) for m in migrations()]
    assert versions[0] == (1, "initial")


def test_migration_scripts_split_into_statements() -> None:
    assert statements("-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT ';');\nSELECT 1;\n") == [
        "-- a comment; with a semicolon\nCREATE TABLE t (x TEXT DEFAULT ';');",
        "SELECT 1;",
    ]
    assert len(statements(migrations()[0].sql)) >= 7


def test_a_store_from_a_newer_modescope_is_refused(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        path = store.path
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'future', 0)", (latest_version() + 1,))
    with pytest.raises(ModescopeError, match=r"schema version \d+, newer .* upgrade modescope"):
        Store(path)


def test_an_unwritable_path_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModescopeError, match=str(blocker)):
        Store(blocker / "results")
    with pytest.raises(ModescopeError, match=str(blocker)):
        Store(blocker / "x.sqlite")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ModescopeError, match=str(folder)):
            Store(folder)
    finally:
        folder.chmod(0o700)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    for name in ("results.sqlite", "notes.txt"):  # a store name, and any existing file given as the store
        path = tmp_path / name
        path.write_text("these are my notes, not a database\n" * 100)
        with pytest.raises(ModescopeError, match="not an SQLite database"):
            Store(path)
        assert path.read_text().startswith("these are my notes")


# Saves probes in a loop until killed. Even iterations add a new probe; odd ones replace one of a few
# names, so a kill can land in an insert or a replacement. Every metric and the "marker" artifact hold the
# iteration number, so a probe mixing two saves would show. Two 1 MB figures make the transaction most of
# each iteration's time. It prints the iteration and how long the save took after each commit.
CHILD = textwrap.dedent(
    """
    import sys, time
    from modescope.store import Artifact, Metric, ProbeOutput, Store

    store = Store(sys.argv[1])
    run = store.resumable_run("crash") or store.create_run("crash", "crash", "", [{"name": "m"}])
    first = int(sys.argv[2])
    figures = {f"figure{k}": Artifact("image/png", bytes([k]) * 1_000_000) for k in range(2)}
    for i in range(first, first + 100_000):
        out = ProbeOutput(
            metrics=[Metric("m", f"metric{k}", float(i)) for k in range(40)],
            payload={"i": i},
            artifacts=figures | {"marker": Artifact("text/plain", str(i).encode())},
        )
        name = f"new{i}" if i % 2 == 0 else f"again{i % 5}"
        start = time.perf_counter()
        store.save_probe(run, name, "loop", {"i": i}, f"key{i}", 0.0, out)
        print(i, time.perf_counter() - start, flush=True)
    """
)


def name_of(i: int) -> str:
    return f"new{i}" if i % 2 == 0 else f"again{i % 5}"


def test_a_killed_run_leaves_only_complete_probes(tmp_path: Path) -> None:
    reported: list[int] = []
    # Each round kills the child a different fraction of the way into a save (measured on this machine), so
    # the kills fall before, inside and after the transaction; later rounds resume the interrupted run.
    for round_, fraction in enumerate([0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9]):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(round_ * 10_000)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        assert child.stdout is not None
        seconds = []
        for _ in range(3):
            line = child.stdout.readline()
            assert line, "the child process died before saving"
            reported.append(int(line.split()[0]))
            seconds.append(float(line.split()[1]))
        time.sleep(fraction * min(seconds))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        reported += [int(line.split()[0]) for line in child.stdout.read().splitlines()]
        child.stdout.close()

    with Store(tmp_path) as store:
        assert sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.runs()["id"].tolist() == [1]
        names = store.finished_probes(1)
        assert len(names) == len(set(names))
        stored = {}
        for name in names:
            out = store.probe_output(1, name)
            i = out.payload["i"]
            assert name_of(i) == name
            assert [(m.name, m.value) for m in out.metrics] == [(f"metric{k}", float(i)) for k in range(40)]
            assert sorted(out.artifacts) == ["figure0", "figure1", "marker"]
            assert out.artifacts["marker"].data == str(i).encode()
            assert [len(out.artifacts[f"figure{k}"].data) for k in range(2)] == [1_000_000] * 2
            assert store.cached(f"key{i}") == out
            stored[name] = i
        # Every save the child reported as done survived; at most the one in flight at each kill is missing.
        for i in reported:
            assert stored[name_of(i)] >= i
        assert len(store.metrics(1)) == 40 * len(names)


def test_processes_opening_a_new_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    script = "import sys; from modescope.store import Store; Store(sys.argv[1]).create_run('s', 'h', '', [])"
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)]) for _ in range(4)]
    assert [child.wait(timeout=60) for child in children] == [0] * 4
    with Store(tmp_path) as store:
        assert sorted(store.runs()["id"]) == [1, 2, 3, 4]
        assert (
            sqlite3.connect(store.path).execute("SELECT count(*) FROM schema_version").fetchone()[0] == latest_version()
        )
