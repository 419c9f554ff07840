"""Reduced precision on tiny in-process models: the weights' dtype is recorded with every result, labelled in
pages and reports, keeps its own cache entries, and a bfloat16 model runs the probes."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import modescope as ms
from modescope import precision
from modescope.models.base import Backend, Capabilities
from modescope.models.hf import HFBackend
from modescope.remedies.guided import GuidedBackend
from modescope.store import Metric, ProbeOutput, Store
from modescope.suites.runner import plan_suite, run_suite
from modescope.viz.multiverse_html import multiverse_html
from modescope.viz.precision_html import capabilities_note, precision_note
from modescope.viz.report_html import report_html
from modescope.viz.tokens_html import sampling_page
from tests.unit.test_cli import invoke
from tests.unit.tiny_models import tiny_backend

LABEL = "computed in bfloat16 (reduced precision)"
PROMPT = "Q: 12?\nA:"


def tiny_in(dtype: torch.dtype, name: str = "tiny") -> HFBackend:
    """The same random tiny model (seed 0) with its weights in `dtype`."""
    base = tiny_backend()
    return HFBackend(name, base.model.to(dtype), base.tokenizer, source="in-process")


@pytest.fixture(scope="module")
def fp32() -> HFBackend:
    return tiny_in(torch.float32, "tiny-fp32")


@pytest.fixture(scope="module")
def bf16() -> HFBackend:
    return tiny_in(torch.bfloat16, "tiny-bf16")


# --- the recorded fact -------------------------------------------------------------------------------------


def test_the_backend_records_its_weights_dtype(fp32: HFBackend, bf16: HFBackend) -> None:
    assert fp32.capabilities.metadata()["precision"] == "float32"
    assert bf16.capabilities.metadata()["precision"] == "bfloat16"
    assert tiny_backend().capabilities.precision == "float64"
    assert Capabilities().metadata()["precision"] is None  # unknown: a server does not say


@pytest.mark.parametrize(
    ("found", "reduced"),
    [
        ("float32", False),
        ("float64", False),
        (None, False),
        ("bfloat16", True),
        ("float16", True),
        ("bfloat16 + float32", True),
    ],
)
def test_which_precisions_are_reduced(found: str | None, reduced: bool) -> None:
    assert precision.is_reduced(found) is reduced


def test_a_guided_mixture_records_both_models_precisions(fp32: HFBackend, bf16: HFBackend) -> None:
    assert GuidedBackend(bf16, fp32, 0.5).capabilities.precision == "bfloat16 + float32"
    assert GuidedBackend(fp32, fp32, 0.5).capabilities.precision == "float32"


def test_fingerprints_differ_by_precision_and_float32_keeps_its_old_one(fp32: HFBackend, bf16: HFBackend) -> None:
    assert fp32.fingerprint() != bf16.fingerprint()
    assert fp32.fingerprint() != tiny_in(torch.float16).fingerprint()
    # float32 fingerprints are computed as before precision was recorded, so existing disk caches still match
    digest = hashlib.sha256(f"in-process|{type(fp32.model).__name__}|{fp32.vocab.size}".encode())
    for name, parameter in fp32.model.named_parameters():
        digest.update(f"{name}:{tuple(parameter.shape)}:{float(parameter.detach().sum())!r}".encode())
    assert fp32.fingerprint() == digest.hexdigest()


# --- the bfloat16 model runs the probes --------------------------------------------------------------------


def test_bfloat16_distributions_are_normalized_in_full_precision(bf16: HFBackend) -> None:
    """The weights are bfloat16 but log-probabilities are normalized in a wide type: a bfloat16 log-softmax
    would leave errors near 1e-2 in the total."""
    logprobs = bf16.next_logprobs([bf16.prompt_ids(PROMPT)])
    assert logprobs.dtype in (torch.float32, torch.float64)
    assert abs(float(torch.logsumexp(logprobs.double(), -1))) < 1e-5


def test_a_bfloat16_model_runs_dist_close_to_float32(fp32: HFBackend, bf16: HFBackend) -> None:
    result = ms.distribution([fp32, bf16], PROMPT, ms.integers(0, 20))
    low, reduced = result.results
    assert [r.capabilities["precision"] for r in result.results] == ["float32", "bfloat16"]
    assert 0 < reduced.coverage <= 1 + 1e-9 and math.isclose(sum(o.prob for o in reduced.outcomes), 1.0)
    assert result.comparisons[0].tv < 0.05  # close to float32, yet not equal: the weights were rounded
    assert any(a.mass != b.mass for a, b in zip(low.outcomes, reduced.outcomes, strict=True))
    data = json.loads(result.to_json())
    assert data["results"][1]["capabilities"]["precision"] == "bfloat16"


def test_a_bfloat16_model_samples_and_its_page_says_so(fp32: HFBackend, bf16: HFBackend) -> None:
    result = ms.sample_models([fp32, bf16], PROMPT, n=3, max_tokens=5, seed=0)
    assert result.capabilities["tiny-bf16"]["precision"] == "bfloat16"
    tokens = [t for c in result.models[1].completions for t in c.tokens]
    assert len(tokens) > 0 and all(math.isfinite(t.raw_logprob) and t.raw_logprob <= 0 for t in tokens)
    page = sampling_page(result)
    assert f"{LABEL}: tiny-bf16" in page and "tiny-fp32" not in page.split(LABEL)[1].split("</p>")[0]
    assert LABEL not in sampling_page(ms.sample_models(fp32, PROMPT, n=2, max_tokens=3, seed=0))


def test_the_multiverse_page_says_so(bf16: HFBackend) -> None:
    tree = ms.multiverse(bf16, PROMPT, depth=1, cutoff=0.2)
    assert LABEL in multiverse_html(tree.to_dict())


def test_the_multiverse_disk_cache_keeps_precisions_apart(tmp_path: Path) -> None:
    """The disk cache is keyed by fingerprint: the same model in bfloat16 under the same name is not served
    the float32 tree."""
    first, second = tiny_in(torch.float32, "same"), tiny_in(torch.bfloat16, "same")
    full = ms.multiverse(first, PROMPT, depth=1, cutoff=0.2, cache_dir=tmp_path)
    reduced = ms.multiverse(second, PROMPT, depth=1, cutoff=0.2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert (full.capabilities["same"]["precision"], reduced.capabilities["same"]["precision"]) == (
        "float32",
        "bfloat16",
    )


def test_the_note_escapes_model_names_and_stays_empty_without_reduced_precision() -> None:
    note = precision_note({"<b>x</b>": "bfloat16", "y": "float32", "z": None})
    assert "&lt;b&gt;x&lt;/b&gt;" in note and "<b>" not in note and "y" not in note.split(LABEL)[1]
    assert precision_note({"y": "float32", "z": None}) == ""
    assert capabilities_note({"a": {"precision": "float16"}}).count("computed in float16 (reduced precision)") == 1


def test_the_cli_prints_the_label_and_writes_it_to_json(
    bf16: HFBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modescope.models.load", lambda name, **options: bf16)
    out = tmp_path / "dist.json"
    result = invoke(f"dist -m tiny-bf16 --prompt '{PROMPT}' --integers 0 20 --dtype bfloat16 --json", out)
    assert result.exit_code == 0, result.output
    assert f"tiny-bf16: {LABEL}" in result.output
    assert json.loads(out.read_text())["results"][0]["capabilities"]["precision"] == "bfloat16"


# --- suites: stored records, caches and reports -------------------------------------------------------------

SUITE = """
name = "precision"

[[models]]
name = "first"

[[models]]
name = "second"

[[probes]]
name = "ints"
kind = "distribution"
prompt = "Q: 12?\\nA:"
integers = [0, 20]

[[probes]]
name = "over"
kind = "sample"
prompts = ["Q: 1?\\nA:", "Q: 2?\\nA:"]
n = 2
max_tokens = 3
"""


class DtypeLoader:
    """A stand-in for `modescope.models.load`: the tiny model in the dtype asked for (float32 for auto)."""

    def __init__(self) -> None:
        self.models = {dtype: tiny_in(DTYPES[dtype]) for dtype in ("float32", "bfloat16")}

    def __call__(self, name: str, device: str = "auto", dtype: str = "auto", **options: Any) -> Backend:
        return copy.copy(self.models["float32" if dtype == "auto" else dtype])  # the runner renames what it loads


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("modescope.models.load", DtypeLoader())
    path = tmp_path / "precision.toml"
    path.write_text(SUITE)
    return path


def stored_precisions(store: Store, run_id: int) -> dict[str, dict[str, str | None]]:
    found = {p["name"]: precision.recorded(store.probe_output(run_id, p["name"]).payload) for p in store.probes(run_id)}
    for unit in store.units(run_id, "over"):
        found[f"over/{unit.record.prompt_id}/{unit.record.model}"] = precision.recorded(unit.output.payload)
    return found


def test_stored_records_carry_the_precision_and_the_report_labels_it(suite: Path, tmp_path: Path) -> None:
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan_suite(str(suite)), store, device="cpu", dtype="bfloat16")
        found = stored_precisions(store, run_id)
        assert len(found) == 2 + 4  # two probes, and the prompt set's 2 prompts x 2 models
        assert all(set(p.values()) == {"bfloat16"} for p in found.values()), found
        page = report_html(store, run_id)
        assert page.count(LABEL) >= 4  # the models table, and each probe's section
        prompts_page = store.probe_output(run_id, "over").artifacts["prompts.html"].data.decode()
        assert LABEL in prompts_page


def test_a_float32_run_has_no_label(suite: Path, tmp_path: Path) -> None:
    with Store(tmp_path / "store") as store:
        run_id = run_suite(plan_suite(str(suite)), store, device="cpu", dtype="float32")
        assert all(set(p.values()) == {"float32"} for p in stored_precisions(store, run_id).values())
        page = report_html(store, run_id)
        assert "reduced precision" not in page and "<td>float32</td>" in page


def test_the_suite_cache_never_crosses_precisions(suite: Path, tmp_path: Path) -> None:
    plan = plan_suite(str(suite))
    with Store(tmp_path / "store") as store:
        run_suite(plan, store, device="cpu", dtype="float32")
        reduced = run_suite(plan, store, device="cpu", dtype="bfloat16")
        assert not any(p["from_cache"] for p in store.probes(reduced))
        assert all(set(p.values()) == {"bfloat16"} for p in stored_precisions(store, reduced).values())
        again = run_suite(plan, store, device="cpu", dtype="bfloat16")
        assert all(p["from_cache"] for p in store.probes(again))
        full = run_suite(plan, store, device="cpu", dtype="auto")  # auto on the CPU is float32: its cache
        assert all(p["from_cache"] for p in store.probes(full))
        assert set(stored_precisions(store, full)["ints"].values()) == {"float32"}


def test_float32_keeps_the_keys_results_were_stored_under() -> None:
    assert precision.keyed("k", "float32") == "k"
    assert len({precision.keyed("k", p) for p in ("float32", "bfloat16", "float16")}) == 3
    assert precision.requested_precision("cpu", "auto") == "float32"
    assert precision.requested_precision("cuda:1", "auto") == "bfloat16"
    assert precision.requested_precision("cpu", "bfloat16") == "bfloat16"


def test_a_report_of_results_stored_before_precision_was_recorded(tmp_path: Path) -> None:
    with Store(tmp_path / "store") as store:
        run_id = store.create_run("old", "h", "", [{"name": "a"}])
        output = ProbeOutput([Metric("a", "top1_share", 0.5)], {"results": []}, {})
        store.save_probe(run_id, "ints", "distribution", {"rendered_prompt": "Q"}, "k", 1.0, output)
        assert precision.recorded(store.probe_output(run_id, "ints").payload) == {}
        page = report_html(store, run_id)
        assert "not recorded" in page and "reduced precision" not in page
