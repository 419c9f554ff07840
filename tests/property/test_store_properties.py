"""Every record the results store keeps reads back equal to what was written: runs, probes (metrics, payload,
notes, artifacts, params), units of prompt sets, failures and the caches, with any unicode (NUL included),
empty strings, large integers, and NaN/inf where a number may be missing (stored as NULL / null). A state
machine then replays random sequences of saves, replacements and failures against a model of what the store
must hold.

What "equal" means follows the store's documented conversions: a JSON value reads back with not-finite floats
as null and tuples as lists; a metric's not-finite value reads back as None.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from modescope.store import Artifact, Metric, ProbeOutput, Store, UnitRecord
from tests.property.strategies import property_settings

# any unicode but lone surrogates (no UTF-8 text, from a model or a file, holds them), NUL included
texts = st.text(max_size=20)
numbers = st.one_of(
    st.integers(-(10**60), 10**60),  # beyond 64 bits: JSON keeps them exact
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
metrics = st.builds(
    Metric, model=texts, name=texts, value=st.one_of(st.none(), st.floats()), text=st.one_of(st.none(), texts)
)
artifacts = st.builds(Artifact, mime=texts, data=st.binary(max_size=64))
outputs = st.builds(
    ProbeOutput,
    metrics=st.lists(metrics, max_size=5),
    payload=json_objects,
    artifacts=st.dictionaries(texts, artifacts, max_size=3),
    notes=st.lists(texts, max_size=3),
)
int64 = st.integers(-(2**63), 2**63 - 1)
seconds = st.floats(0.0, 1e9)


def plain(value: Any) -> Any:
    """A value as JSON gives it back: not-finite floats become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def stored(output: ProbeOutput) -> ProbeOutput:
    """What the store gives back for `output`."""
    return ProbeOutput(
        metrics=[
            Metric(m.model, m.name, m.value if m.value is not None and math.isfinite(m.value) else None, m.text)
            for m in output.metrics
        ],
        payload=plain(output.payload),
        artifacts=dict(output.artifacts),
        notes=list(output.notes),
    )


def assert_same_output(found: ProbeOutput | None, written: ProbeOutput) -> None:
    expected = stored(written)
    assert found is not None
    assert found.payload == expected.payload and found.notes == expected.notes
    assert found.artifacts == expected.artifacts and list(found.artifacts) == list(expected.artifacts)
    assert found.metrics == expected.metrics  # -0.0 reads back as 0.0, which compares equal
    assert all(m.value is None or isinstance(m.value, float) for m in found.metrics)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store for the module; every example writes a run of its own, so examples do not see each other."""
    with Store(tmp_path_factory.mktemp("store") / "results.sqlite") as opened:
        yield opened


@given(
    suite=texts,
    suite_hash=texts,
    suite_text=texts,
    models=st.lists(json_objects, max_size=3),
    status=st.sampled_from(["running", "finished", "failed"]),
)
@property_settings(100)
def test_runs_read_back_as_written(
    store: Store, suite: str, suite_hash: str, suite_text: str, models: list[dict[str, Any]], status: str
) -> None:
    run_id = store.create_run(suite, suite_hash, suite_text, models)
    info = store.run(run_id)
    assert (info.id, info.suite, info.suite_hash, info.suite_text) == (run_id, suite, suite_hash, suite_text)
    assert info.models == plain(models) and info.status == "running" and info.finished is None
    store.finish_run(run_id, status)
    again = store.run(run_id)
    assert again.status == status and (again.finished is None) == (status == "running")
    assert store.resumable_run(suite_hash) == (None if status == "finished" else run_id)
    names = store.runs().set_index("id").loc[run_id, "models"]
    assert names == [str(m.get("name", "")) for m in models]


@given(
    name=texts,
    kind=texts,
    params=json_objects,
    cache_key=texts,
    took=seconds,
    from_cache=st.booleans(),
    output=outputs,
)
@property_settings(200)
def test_probes_read_back_as_written(
    store: Store,
    name: str,
    kind: str,
    params: dict[str, Any],
    cache_key: str,
    took: float,
    from_cache: bool,
    output: ProbeOutput,
) -> None:
    note(repr(output))
    run_id = store.create_run("suite", "hash", "", [])
    store.save_probe(run_id, name, kind, params, cache_key, took, output, from_cache)
    assert_same_output(store.probe_output(run_id, name), output)
    assert_same_output(store.cached(cache_key), output)
    (probe,) = store.probes(run_id)
    assert probe == {
        "name": name,
        "kind": kind,
        "params": plain(params),
        "cache_key": cache_key,
        "seconds": took,
        "from_cache": from_cache,
        "order": 0,
    }
    assert store.finished_probes(run_id) == [name]
    table = store.metrics(run_id)
    assert table["metric"].tolist() == [m.name for m in output.metrics]
    # pandas shows a missing text as NaN
    assert [None if t is None or t != t else t for t in table["text"]] == [m.text for m in output.metrics]
    for value, metric in zip(table["value"], stored(output).metrics, strict=True):
        assert (math.isnan(value) and metric.value is None) or value == metric.value


@given(
    record=st.builds(
        UnitRecord,
        probe=texts,
        prompt_id=texts,
        model=texts,
        position=int64,
        prompt=texts,
        meta=json_objects,
        cache_key=texts,
    ),
    output=outputs,
    took=seconds,
    from_cache=st.booleans(),
)
@property_settings(200)
def test_units_read_back_as_written(
    store: Store, record: UnitRecord, output: ProbeOutput, took: float, from_cache: bool
) -> None:
    note(repr(output))
    run_id = store.create_run("suite", "hash", "", [])
    store.save_unit(run_id, record, output, took, from_cache)
    (unit,) = store.units(run_id, record.probe, with_artifacts=True)
    assert unit.record == UnitRecord(**{**record.__dict__, "meta": plain(record.meta)})
    assert unit.seconds == took and unit.from_cache == from_cache
    assert_same_output(unit.output, output)
    assert_same_output(store.cached_unit(record.cache_key), output)
    assert store.finished_units(run_id, record.probe) == {(record.prompt_id, record.model)}
    for name, artifact in output.artifacts.items():
        assert store.unit_artifact(run_id, record.probe, record.prompt_id, record.model, name) == artifact
    (without,) = store.units(run_id, record.probe)
    assert without.output.artifacts == {}


@given(probe=texts, prompt_id=texts, model=texts, error=texts, attempts=int64)
@property_settings(100)
def test_failures_read_back_as_written(
    store: Store, probe: str, prompt_id: str, model: str, error: str, attempts: int
) -> None:
    run_id = store.create_run("suite", "hash", "", [])
    store.record_failure(run_id, probe, prompt_id, model, error, attempts)
    expected = {"probe": probe, "prompt_id": prompt_id, "model": model, "error": error, "attempts": attempts}
    assert store.failures(run_id) == [expected]


# ---------------------------------------------------------------------------------------------------------------
# Random sequences of writes against a model of the store

few_names = st.sampled_from(["a", "b", "é", ""])  # few, so saves replace earlier ones
few_keys = st.sampled_from(["k1", "k2", "k3"])
small_outputs = st.builds(
    ProbeOutput,
    metrics=st.lists(metrics, max_size=2),
    payload=st.dictionaries(texts, json_values, max_size=2),
    artifacts=st.dictionaries(few_names, artifacts, max_size=2),
    notes=st.lists(texts, max_size=2),
)


class StoreMachine(RuleBasedStateMachine):
    """Saves, replacements, failures and run status changes in two runs; after every step the store holds
    what the model says: each run's probes (in first-saved order) and units, the probe cache pointing at the
    newest stored probe with each key, the unit cache at the newest unit saved under each key while it is
    stored, and each run's failures (a unit saved later clears its failure)."""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="modescope-store-"))
        self.store = Store(self.folder / "results.sqlite")
        self.probes: dict[tuple[int, str], tuple[str, ProbeOutput, int]] = {}  # -> (cache key, output, saved at)
        self.order: dict[int, list[str]] = {}
        self.units: dict[tuple[int, str, str, str], tuple[str, ProbeOutput, int]] = {}
        self.failures: dict[int, dict[tuple[str, str, str], tuple[str, int]]] = {}
        self.status: dict[int, str] = {}
        self.clock = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @initialize(target=runs)
    def first_run(self) -> int:
        return self.new_run()

    @rule(target=runs)
    def second_run(self) -> int:
        return self.new_run()

    def new_run(self) -> int:
        run_id = self.store.create_run("suite", "hash", "", [{"name": "m"}])
        self.order[run_id], self.failures[run_id], self.status[run_id] = [], {}, "running"
        return run_id

    @rule(run=runs, name=few_names, key=few_keys, output=small_outputs)
    def save_probe(self, run: int, name: str, key: str, output: ProbeOutput) -> None:
        self.clock += 1
        self.store.save_probe(run, name, "kind", {"n": self.clock}, key, 0.5, output)
        self.probes[(run, name)] = (key, output, self.clock)
        if name not in self.order[run]:
            self.order[run].append(name)

    @rule(run=runs, probe=few_names, prompt=few_names, model=few_names, key=few_keys, output=small_outputs)
    def save_unit(self, run: int, probe: str, prompt: str, model: str, key: str, output: ProbeOutput) -> None:
        self.clock += 1
        record = UnitRecord(probe, prompt, model, self.clock, "prompt", {}, key)
        self.store.save_unit(run, record, output, 0.25, False)
        self.units[(run, probe, prompt, model)] = (key, output, self.clock)
        self.failures[run].pop((probe, prompt, model), None)

    @rule(run=runs, probe=few_names, prompt=few_names, model=few_names, error=texts, attempts=st.integers(1, 5))
    def record_failure(self, run: int, probe: str, prompt: str, model: str, error: str, attempts: int) -> None:
        self.store.record_failure(run, probe, prompt, model, error, attempts)
        self.failures[run][(probe, prompt, model)] = (error, attempts)

    @rule(run=runs, status=st.sampled_from(["running", "finished", "failed"]))
    def finish_run(self, run: int, status: str) -> None:
        self.store.finish_run(run, status)
        self.status[run] = status

    @invariant()
    def probes_match(self) -> None:
        for run, names in self.order.items():
            assert self.store.finished_probes(run) == names
            for name in names:
                assert_same_output(self.store.probe_output(run, name), self.probes[(run, name)][1])
        self.check_cache(self.store.cached, list(self.probes.values()))

    @invariant()
    def units_match(self) -> None:
        for run in self.order:
            for probe in {p for r, p, _, _ in self.units if r == run}:
                found = {(u.record.prompt_id, u.record.model): u for u in self.store.units(run, probe, True)}
                expected = {(pr, m): v for (r, p, pr, m), v in self.units.items() if r == run and p == probe}
                assert set(found) == set(expected)
                for where, (key, output, saved) in expected.items():
                    assert found[where].record.cache_key == key and found[where].record.position == saved
                    assert_same_output(found[where].output, output)
        self.check_cache(self.store.cached_unit, list(self.units.values()))

    @staticmethod
    def check_cache(cached: Any, held: list[tuple[str, ProbeOutput, int]]) -> None:
        """Each cache key gives the output of the newest stored record with that key; none when none has it."""
        newest: dict[str, tuple[int, ProbeOutput]] = {}
        for key, output, saved in held:
            if key not in newest or saved > newest[key][0]:
                newest[key] = (saved, output)
        for key in ["k1", "k2", "k3"]:
            found = cached(key)
            assert (found is None) == (key not in newest), f"cache key {key}: {found}"
            if key in newest:
                assert_same_output(found, newest[key][1])

    @invariant()
    def failures_and_status_match(self) -> None:
        for run, failures in self.failures.items():
            found = {
                (f["probe"], f["prompt_id"], f["model"]): (f["error"], f["attempts"]) for f in self.store.failures(run)
            }
            assert found == failures
            assert self.store.run(run).status == self.status[run]


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = property_settings(100)
