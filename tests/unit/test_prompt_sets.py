"""Prompt sets on toy models: files and their errors, units stored per prompt and model (cached, resumable),
the CLI's --prompts-file, and the Python API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import modescope as ms
from modescope.errors import ModescopeError
from modescope.store import Store
from modescope.suites.prompt_sets import builtin_prompt_sets, load_prompts_file
from modescope.suites.runner import ModelPool, plan_suite, run_suite
from modescope.suites.schema import load_suite
from modescope.suites.units import Batch, Executor, ExecutorEvents, LocalExecutor, UnitResult
from tests.unit.test_cli import assert_user_error, invoke

SET_SUITE = """
name = "toyset"
[variables]
tail = "A:"

[[models]]
name = "toy:base"

[[models]]
name = "toy:tuned"

[[probes]]
name = "talk"
kind = "sample"
prompts_file = "prompts.jsonl"
template = "Q: ${prompt}\\n${tail}"
n = 4
max_tokens = 6

[[probes]]
name = "ints"
kind = "distribution"
prompts = ["Q: a number?\\nA:", {id = "bare", prompt = "Number:"}]
integers = [0, 20]
"""

PROMPTS = [
    {"id": "a", "prompt": "a number", "category": "x"},
    {"id": "b", "prompt": "a word", "category": "y"},
    {"id": "c", "prompt": "a thing", "category": "x"},
]


def write_set(folder: Path, rows: Sequence[object] = PROMPTS, name: str = "prompts.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_suite(folder: Path) -> Path:
    write_set(folder)
    path = folder / "suite.toml"
    path.write_text(SET_SUITE, encoding="utf-8")
    return path


# --- files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": \n', "line 2: not valid JSON"),
        ('{"id": "a", "prompt": "x"}\n\n{"id": "b", "text": "y"}\n', 'line 3: the line has no "prompt" key'),
        ("", "holds no prompts"),
        ("\n  \n", "holds no prompts"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "line 2: id 'a' is already used on line 1"),
        ('{"id": "a", "prompt": ""}\n', 'line 1: "prompt" must be a non-empty string'),
        ('["a", "b"]\n', "line 1: each line is a JSON object"),
    ],
)
def test_a_malformed_prompts_file_names_the_file_and_line(tmp_path: Path, content: str, phrase: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ModescopeError, match=r"bad\.jsonl") as caught:
        load_prompts_file(path)
    assert phrase in str(caught.value)
    # the CLI says the same and exits 2, before loading any model
    result = invoke(f"sample --model toy:a --prompts-file {path} -n 2 --max-tokens 2")
    assert_user_error(result, phrase)
    suite = tmp_path / "suite.toml"
    suite.write_text(SET_SUITE.replace("prompts.jsonl", "bad.jsonl"), encoding="utf-8")
    assert_user_error(invoke(f"run {suite} --store {tmp_path / 'store'}"), phrase)


def test_text_files_hold_one_prompt_per_line_and_ids_count_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first\n\nthird has $ signs\n", encoding="utf-8")
    items = load_prompts_file(path)
    assert [(i.id, i.text) for i in items] == [("1", "first"), ("3", "third has $ signs")]


def test_a_missing_prompts_file_lists_the_builtin_sets(tmp_path: Path) -> None:
    with pytest.raises(ModescopeError, match="built-in prompt sets: open-ended"):
        load_prompts_file(tmp_path / "nope.jsonl")
    with pytest.raises(ModescopeError, match=r"\.jsonl .* or \.txt"):
        load_prompts_file(write_set(tmp_path, name="p.csv"))


def test_the_builtin_open_ended_set_and_diversity_suite() -> None:
    items = load_prompts_file("open-ended")
    assert "open-ended" in builtin_prompt_sets()
    assert len(items) >= 50 and len({i.id for i in items}) == len(items)
    categories = {i.meta["category"] for i in items}
    assert {"stories", "jokes", "names", "poems"} <= categories and len(categories) == 8
    plan = plan_suite("diversity")
    (probe,) = plan.probes
    assert probe.prompts is not None and len(probe.prompts) == len(items)
    assert probe.prompts[0].text.startswith("Q: ") and probe.prompts[0].text.endswith("\nA:")
    assert len(probe.units) == 2 * len(items)


def test_a_probe_takes_one_prompt_or_one_set(tmp_path: Path) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(SET_SUITE.replace('kind = "sample"', 'kind = "sample"\nprompt = "x"'), encoding="utf-8")
    with pytest.raises(ModescopeError, match="exactly one of prompt, prompt_file, prompts_file and prompts"):
        load_suite(str(suite))
    suite.write_text(
        SET_SUITE.replace('name = "ints"', 'name = "ints"\ntemplate = "${prompt}"').replace(
            'prompts = ["Q', 'prompt = "Q: a"\n#'
        ),
        encoding="utf-8",
    )
    with pytest.raises(ModescopeError, match="template wraps the prompts of a prompt set"):
        load_suite(str(suite))


def test_templates_fill_prompts_variables_and_metadata(tmp_path: Path) -> None:
    plan = plan_suite(str(write_suite(tmp_path)))
    talk = plan.probes[0]
    assert talk.prompts is not None
    assert [p.text for p in talk.prompts] == ["Q: a number\nA:", "Q: a word\nA:", "Q: a thing\nA:"]
    assert talk.prompts[0].meta == {"category": "x"}
    assert [(u.prompt_id, u.model) for u in talk.units][:2] == [("a", "toy:base"), ("a", "toy:tuned")]
    ints = plan.probes[1]
    assert ints.prompts is not None and [p.id for p in ints.prompts] == ["1", "bare"]


# --- the runner -----------------------------------------------------------------------------------------------


@dataclass
class CountingExecutor(Executor):
    """The local executor, counting the units it computes and stopping (like Ctrl-C) after `stop_after`."""

    inner: LocalExecutor
    stop_after: int | None = None
    computed: list[tuple[str, str, str]] = field(default_factory=list)

    def run(self, batches: Sequence[Batch], events: ExecutorEvents) -> None:
        def deliver(result: UnitResult) -> None:
            if self.stop_after is not None and len(self.computed) >= self.stop_after:
                raise KeyboardInterrupt
            self.computed.append((result.unit.probe, result.unit.prompt_id, result.unit.model))
            events.deliver(result)

        self.inner.run(batches, ExecutorEvents(deliver, events.fail, events.progress))


def counting(stop_after: int | None = None) -> CountingExecutor:
    return CountingExecutor(LocalExecutor(ModelPool("cpu")), stop_after)


def test_units_are_stored_per_prompt_and_model_and_reused_from_the_cache(tmp_path: Path) -> None:
    plan = plan_suite(str(write_suite(tmp_path)))
    executor = counting()
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan, store, executor=executor)
        assert store.run(run_id).status == "finished"
        assert len(executor.computed) == 3 * 2 + 2 * 2
        assert store.finished_units(run_id, "talk") == {(p, m) for p in "abc" for m in ("toy:base", "toy:tuned")}
        assert [p["name"] for p in store.probes(run_id)] == ["talk", "ints"]
        one = store.units(run_id, "talk")[0]
        assert one.record.prompt == "Q: a number\nA:" and one.record.meta == {"category": "x"}
        assert len(one.output.payload["models"][0]["completions"]) == 4
        # a new run of the same suite: every aggregate comes from the cache, nothing is computed
        again = counting()
        second = run_suite(plan, store, executor=again)
        assert again.computed == [] and second != run_id
        assert all(p["from_cache"] for p in store.probes(second))


def test_a_new_prompt_computes_only_its_own_units(tmp_path: Path) -> None:
    suite = write_suite(tmp_path)
    with Store(tmp_path / "store") as store:
        run_suite(plan_suite(str(suite)), store, executor=counting())
        write_set(tmp_path, [*PROMPTS, {"id": "d", "prompt": "a fourth"}])
        executor = counting()
        run_id = run_suite(plan_suite(str(suite)), store, executor=executor)
        assert sorted(executor.computed) == [("talk", "d", "toy:base"), ("talk", "d", "toy:tuned")]
        assert len(store.finished_units(run_id, "talk")) == 8


def test_a_killed_run_resumes_with_only_the_missing_units(tmp_path: Path) -> None:
    plan = plan_suite(str(write_suite(tmp_path)))
    with Store(tmp_path / "store") as store:
        with pytest.raises(KeyboardInterrupt):
            run_suite(plan, store, executor=counting(stop_after=4))
        run_id = store.latest_run()
        assert run_id is not None and store.run(run_id).status == "running"
        assert len(store.finished_units(run_id, "talk")) == 4
        executor = counting()
        assert run_suite(plan, store, resume=True, executor=executor) == run_id
        # 2 of talk's 6 units, and ints' 4
        assert len(executor.computed) == 2 + 4
        assert store.run(run_id).status == "finished"
        assert len(store.finished_units(run_id, "talk")) == 6
        rows = store._conn.execute("SELECT count(*) FROM units WHERE run_id = ?", (run_id,)).fetchone()[0]
        assert rows == 6 + 4  # nothing duplicated


def test_same_seeds_give_the_same_samples_as_one_prompt_at_a_time(tmp_path: Path) -> None:
    plan = plan_suite(str(write_suite(tmp_path)))
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan, store, executor=counting())
        units = store.units(run_id, "talk")
    base = ms.load("toy:base")
    for unit in units:
        if unit.record.model != "toy:base":
            continue
        alone = ms.sample_models(base, unit.record.prompt, n=4, max_tokens=6, seed=0)
        stored = unit.output.payload["models"][0]["completions"]
        assert [c["text"] for c in stored] == alone.models[0].texts


# --- the command line and Python ------------------------------------------------------------------------------


def test_sample_over_a_prompts_file_from_the_cli(tmp_path: Path) -> None:
    path = write_set(tmp_path)
    out = tmp_path / "agg.json"
    page = tmp_path / "set.html"
    command = f"sample -m toy:base -m toy:tuned --prompts-file {path} -n 3 --max-tokens 4 --store {tmp_path / 's'}"
    result = invoke(f"{command} --json {out} --html {page}")
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [p["id"] for p in payload["prompts"]] == ["a", "b", "c"]
    assert "toy:base" in payload["per_model"] and payload["pairs"]
    assert "<html" in page.read_text().lower()
    # one prompt and a prompt set do not mix; --plot is for one prompt
    assert_user_error(invoke(f"{command} --prompt hi"), "not both")
    assert_user_error(
        invoke(f"dist -m toy:a --prompts-file {path} --integers 0 3 --plot x.png"), "--plot is for a single"
    )
    assert_user_error(invoke("sample -m toy:a --prompt hi --resume"), "go with --prompts-file")


def test_python_takes_a_list_of_prompts_where_one_prompt_goes() -> None:
    base, tuned = ms.load("toy:base"), ms.load("toy:tuned")
    result = ms.sample_models([base, tuned], ["Q: a\nA:", "Q: b\nA:"], n=3, max_tokens=4, seed=1)
    assert isinstance(result, ms.PromptSetResult)
    assert [p.id for p in result.prompts] == ["1", "2"]
    alone = ms.sample_models(tuned, "Q: b\nA:", n=3, max_tokens=4, seed=1)
    stored = result.unit("2", "toy:tuned").payload["models"][0]["completions"]
    assert [c["text"] for c in stored] == alone.models[0].texts
    dist = ms.distribution([base, tuned], ["Q: a\nA:", "N:"], ms.integers(0, 5))
    assert isinstance(dist, ms.PromptSetResult)
    table = dist.to_pandas()
    assert set(table["prompt"]) == {"1", "2"} and set(table["model"]) == {"toy:base", "toy:tuned"}


def test_a_temperature_prompt_set_fits_tau_per_prompt_in_pair_units(tmp_path: Path) -> None:
    suite = tmp_path / "t.toml"
    suite.write_text(
        """
name = "temps"
[[models]]
name = "toy:base"
[[models]]
name = "toy:tuned"
[[probes]]
name = "temp"
kind = "temperature"
prompts = ["Q: a number?\\nA:", "Number:"]
temperatures = [0.5, 1.0]
n = 3
max_tokens = 3
integers = [0, 12]
""",
        encoding="utf-8",
    )
    plan = plan_suite(str(suite))
    models = [u.model for u in plan.probes[0].units]
    assert models == ["toy:base", "toy:tuned", "toy:base → toy:tuned"] * 2
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan, store, executor=counting())
        output = store.probe_output(run_id, "temp")
        pair_units = [u for u in store.units(run_id, "temp") if u.record.model == "toy:base → toy:tuned"]
    # each prompt's pair unit holds the fits the one-prompt probe computes for that pair
    base, tuned = ms.load("toy:base"), ms.load("toy:tuned")
    from modescope.probes.temperature import outcome_level_fits, token_level_fits

    for unit in pair_units:
        fits = token_level_fits(base, tuned, unit.record.prompt, n=3, max_tokens=16, seed=0)
        fits += outcome_level_fits(base, tuned, unit.record.prompt, ms.integers(0, 12))
        assert [f["tau"] for f in unit.output.payload["fits"]] == pytest.approx([f.tau for f in fits])
    # the aggregate: τ* per prompt, averaged over the prompts as a comparison of the pair
    (pair,) = output.payload["pairs"]
    taus = [u.output.payload["fits"][0]["tau"] for u in pair_units]
    assert pair["comparisons"]["tau_star_token"]["mean"] == pytest.approx(sum(taus) / len(taus))
    assert "tau_star_outcome (reverse)" in pair["comparisons"]


def test_a_distribution_prompt_set_expands_the_prompts_together_with_the_same_masses(tmp_path: Path) -> None:
    plan = plan_suite(str(write_suite(tmp_path)))
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan, store, executor=counting())
        units = store.units(run_id, "ints")
    for unit in units:
        alone = ms.distribution(ms.load(unit.record.model), unit.record.prompt, ms.integers(0, 20))
        stored = unit.output.payload["results"][0]["outcomes"]
        assert [o["mass"] for o in stored] == pytest.approx([o.mass for o in alone.results[0].outcomes], rel=1e-9)
