"""Experiment suites on toy models: validation errors, the cached and resumable runner, export and report."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from modescope.errors import ModescopeError
from modescope.store import Store
from modescope.suites.runner import plan_suite, run_suite
from modescope.suites.schema import builtin_suites, load_suite, parse_suite
from tests.unit.test_cli import assert_user_error, invoke

TOY_SUITE = """
name = "toy"
[variables]
thing = "bugs"

[[models]]
name = "toy:base"

[[models]]
name = "toy:tuned"

[[probes]]
name = "ints"
kind = "distribution"
prompt = "Q: a number?\\nA:"
integers = [0, 20]

[[probes]]
name = "talk"
kind = "sample"
prompt = "Q: ${thing}?\\nA:"
n = 4
max_tokens = 8

[[probes]]
name = "tree"
kind = "multiverse"
prompt = "Q: ${thing}?\\nA:"
depth = 2
cutoff = 0.05
"""


def write_suite(tmp_path: Path, text: str = TOY_SUITE, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (('kind = "sample"', 'kind = "sampel"'), "line 20: probes.1.kind: unknown probe kind"),
        (("integers = [0, 20]", ""), "line 12: probes.0: a distribution probe needs integers"),
        (("n = 4", "n = 4\nnn = 3"), "line 23: probes.1.nn: unknown key"),
        (('name = "toy:tuned"', 'name = "toy:base"'), "model name 'toy:base' is used twice"),
        (('name = "talk"', 'name = "ints"'), "probe name 'ints' is used twice"),
        (('prompt = "Q: a number?\\nA:"', ""), "give exactly one of prompt, prompt_file, prompts_file and prompts"),
        (("depth = 2", "depth = 0"), "probes.2.depth: Input should be greater than or equal to 1"),
        (('thing = "bugs"', 'other = "bugs"'), "no variable of that name"),
        (("[variables]", "[variables"), "not valid TOML"),
    ],
)
def test_bad_suites_name_the_key_and_line(tmp_path: Path, change: tuple[str, str], phrase: str) -> None:
    path = write_suite(tmp_path, TOY_SUITE.replace(*change, 1))
    with pytest.raises(ModescopeError) as caught:
        plan_suite(str(path))
    assert phrase in str(caught.value)


def test_unknown_kind_error_lists_the_kinds(tmp_path: Path) -> None:
    path = write_suite(tmp_path, TOY_SUITE.replace('kind = "sample"', 'kind = "sampel"'))
    result = invoke("run", path, "--store", tmp_path / "store")
    assert_user_error(result, "use one of distribution, sample, temperature, attractor, forks, multiverse")


def test_a_model_listed_twice_on_the_command_line(tmp_path: Path) -> None:
    result = invoke("run", write_suite(tmp_path), "--model", "toy:a", "--model", "toy:a", "--store", tmp_path / "s")
    assert_user_error(result, "listed twice")


def test_a_suite_needs_two_models(tmp_path: Path) -> None:
    result = invoke("run", write_suite(tmp_path), "--model", "toy:a", "--store", tmp_path / "s")
    assert_user_error(result, "needs at least two models to compare (got toy:a)")


def test_the_builtin_essay_suite_is_valid() -> None:
    assert "essay" in builtin_suites()
    suite, _, _ = load_suite("essay")
    kinds = {p.kind for p in suite.probes}
    assert kinds >= {"distribution", "sample", "temperature", "attractor", "multiverse", "frontier"}
    names = [m.name for m in suite.models]
    assert names == ["gemma-3-270m", "smollm2-135m-instruct", "smollm2-135m-sentiment-rl", "smollm2-135m-typical-rl"]
    assert max(max(p.temperatures) for p in suite.probes if p.kind == "temperature") == pytest.approx(1.9)
    plan = plan_suite("essay")
    assert all(p.prompt and "${" not in p.prompt for p in plan.probes)
    assert parse_suite(builtin_suites()["essay"].read_text()).name == "essay"


# --- running -----------------------------------------------------------------------------------------------


def test_run_stores_every_probe_and_a_rerun_comes_from_the_cache(tmp_path: Path) -> None:
    path = write_suite(tmp_path)
    with Store(tmp_path / "store") as store:
        first = run_suite(plan_suite(str(path)), store)
        second = run_suite(plan_suite(str(path)), store)
        assert first != second
        probes = {p["name"]: p for p in store.probes(second)}
        assert set(probes) == {"ints", "talk", "tree"} and all(p["from_cache"] for p in probes.values())
        a, b = store.probe_output(first, "ints"), store.probe_output(second, "ints")
        assert a.metrics == b.metrics and a.artifacts.keys() == b.artifacts.keys()
        metrics = store.metrics(first)
        assert set(metrics["model"]) >= {"toy:base", "toy:tuned"}
        assert store.run(first).status == "finished"


def test_only_recomputes_one_probe_in_the_latest_run(tmp_path: Path) -> None:
    path = write_suite(tmp_path)
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan_suite(str(path)), store)
        again = run_suite(plan_suite(str(path)), store, only=["talk"])
        assert again == run_id
        probes = store.probes(run_id)
        assert [p["name"] for p in probes].count("talk") == 1
        assert not next(p for p in probes if p["name"] == "talk")["from_cache"]
        with pytest.raises(ModescopeError, match="no probe 'nope'"):
            run_suite(plan_suite(str(path)), store, only=["nope"])
        with pytest.raises(ModescopeError, match="no unfinished run"):
            run_suite(plan_suite(str(path)), store, resume=True)


SLOW_SUITE = TOY_SUITE + "".join(
    f"""
[[probes]]
name = "slow{k}"
kind = "sample"
prompt = "Q: tell me more, part {k}?\\nA:"
n = 24
max_tokens = 32
seed = {k}
"""
    for k in range(2)
)


def _stored_probes(database: Path) -> list[str]:
    if not database.exists():
        return []
    try:
        with sqlite3.connect(database, timeout=5) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM probes")]
    except sqlite3.OperationalError:
        return []


def test_a_killed_run_resumes_without_lost_or_duplicated_probes(tmp_path: Path) -> None:
    """SIGKILL the CLI once its first probe is stored, then --resume: every probe exactly once."""
    suite = write_suite(tmp_path, SLOW_SUITE)
    store_dir = tmp_path / "store"
    command = [sys.executable, "-m", "modescope.cli", "run", str(suite), "--store", str(store_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _stored_probes(store_dir / "results.sqlite") and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = _stored_probes(store_dir / "results.sqlite")
    assert 1 <= len(before) < 5, before
    with Store(store_dir) as store:
        run_id = store.latest_run()
        assert run_id is not None and store.run(run_id).status == "running"
        kept = {name: store.probe_output(run_id, name).metrics for name in before}
    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    with Store(store_dir) as store:
        assert store.latest_run() == run_id
        names = [p["name"] for p in store.probes(run_id)]
        assert sorted(names) == sorted(["ints", "talk", "tree", "slow0", "slow1"])
        assert len(names) == len(set(names))
        assert store.run(run_id).status == "finished"
        for name, metrics in kept.items():  # what was stored before the kill is kept as it was
            assert store.probe_output(run_id, name).metrics == metrics


# --- command line: export, report, store errors ------------------------------------------------------------


def test_run_export_and_report_commands(tmp_path: Path) -> None:
    suite, store = write_suite(tmp_path), tmp_path / "store"
    report = tmp_path / "out" / "report.html"
    result = invoke("run", suite, "--store", store, "--report", report)
    assert result.exit_code == 0, result.output
    assert "run 1 finished" in result.output and report.is_file()
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"run.{fmt}"
        assert invoke("export 1 --format", fmt, "-o", out, "--store", store).exit_code == 0
        table = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out) if fmt == "parquet" else None
        if table is not None:
            assert {"probe", "model", "metric", "value"} <= set(table.columns) and len(table) > 10
        else:
            assert "ints" in json.dumps(json.loads(out.read_text()))
    listed = invoke("runs --store", store)
    assert listed.exit_code == 0 and "toy" in listed.output
    assert invoke("report latest -o", tmp_path / "again.html", "--store", store).exit_code == 0
    assert_user_error(invoke("report 7 --store", store), "7")
    bad_format = invoke("export 1 --format xml --store", store)  # refused by the option parser itself
    assert bad_format.exit_code == 2 and "'xml' is not one of" in bad_format.output


def test_store_errors_are_clear(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_user_error(invoke("run", suite, "--store", blocker / "store"), str(blocker))
    newer = tmp_path / "newer"
    with Store(newer) as store:
        path = store.path
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version (version, name, applied) VALUES (999, 'future', 0)")
    assert_user_error(invoke("run", suite, "--store", newer), "newer")


def test_suites_command_lists_essay() -> None:
    result = invoke("suites", env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "essay" in result.output
