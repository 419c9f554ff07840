"""Failures the property tests (tests/property) found, shrunk by hypothesis, kept as ordinary tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from modescope.cli import app
from modescope.engine.samplers import SamplerSettings, apply_chain, top_p, typical_p
from modescope.errors import ModescopeError
from modescope.models.analytic import AnalyticBackend, TransitionBackend
from modescope.probes.distribution import distribution
from modescope.probes.multiverse import Multiverse, multiverse
from modescope.store import ProbeOutput, Store, UnitRecord
from modescope.viz.multiverse_plot import OTHER_COLOUR, Panel, _difference_panel, _draw


def test_canonical_mode_refuses_a_candidate_the_toy_tokenizer_cannot_encode() -> None:
    """Shrunk: vocabulary ["a", "b"], candidate "1", --tokenizations canonical raised a bare ValueError."""
    with pytest.raises(ModescopeError, match=r"cannot encode '1'.*--tokenizations all"):
        distribution(AnalyticBackend(["a", "b"]), "a", ["1"], tokenizations="canonical")
    result = CliRunner().invoke(
        app, ["dist", "-m", "toy:x", "--prompt", "Q", "--choices", "é", "--tokenizations", "canonical"]
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "cannot encode 'é'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("keep", [top_p, typical_p])
@pytest.mark.parametrize("logits", [[[0.0]], [[1.0, 3.0, 2.0]]])
def test_a_mass_below_the_tolerance_still_keeps_one_token(keep: Any, logits: list[list[float]]) -> None:
    """Shrunk: top_p(logits [[0.0]], 2.2e-308) removed every token (0 before the first token 'reached' a mass
    below TOLERANCE), so the chain's softmax was NaN."""
    x = torch.tensor(logits, dtype=torch.float64)
    kept = keep(x, 2.2250738585072014e-308)
    assert torch.isfinite(kept).sum() == 1
    assert not torch.isnan(apply_chain(SamplerSettings(top_p=5e-324, typical_p=5e-324), x)).any()


def test_a_tiny_temperature_is_the_greedy_limit_not_nan() -> None:
    """Shrunk: temperature 5e-324 overflowed the top logit to +inf and the whole row became NaN."""
    chained = apply_chain(SamplerSettings(temperature=5e-324), torch.tensor([[1.0, 20.0, -3.0]], dtype=torch.float64))
    assert chained.exp().tolist() == [[0.0, 1.0, 0.0]]
    tied = apply_chain(SamplerSettings(temperature=1e-310), torch.tensor([[2.0, 2.0, -1.0]], dtype=torch.float64))
    assert tied.exp().tolist() == [[0.5, 0.5, 0.0]]  # the limit of tempering: uniform over the tied top tokens


def test_a_tiny_distribution_temperature_keeps_the_likeliest_tokens() -> None:
    """Shrunk: a uniform model over <eos>, "a", "b" at temperature 5e-324 gave "a" mass 0 (every tempered
    log-probability overflowed to -inf); the limit keeps the distribution uniform, so P("a", then <eos>) = 1/9."""
    uniform = TransitionBackend(["a", "b"], {})
    (outcome,) = distribution(uniform, "a", ["a"], leading_space="none", temperature=5e-324).results[0].outcomes
    assert outcome.mass == pytest.approx(1 / 9, rel=1e-12)


class RecordingAxes:
    """Keeps the (bottom, top) of every block `_draw` adds, per colour."""

    def __init__(self) -> None:
        self.blocks: dict[str, tuple[float, float]] = {}

    def add_patch(self, patch: Any) -> None:
        from matplotlib.colors import to_hex

        self.blocks[to_hex(patch.get_facecolor())] = (patch.get_y(), patch.get_y() + patch.get_height())

    def text(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_difference_panel_blocks_stay_inside_their_parents() -> None:
    """Shrunk: models over ["a", "b"] and ["a", " "]: "b" and " " exist in one model each and are sized by that
    model alone, so the root's children added up to 4/3 of it and the last ones (and their children) were drawn
    outside the figure."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    first, second = TransitionBackend(["a", "b"], {}, name="first"), TransitionBackend(["a", " "], {}, name="second")
    tree = multiverse([first, second], "a", depth=3, cutoff=0.01, cache=False)
    panel = _difference_panel(tree, TwoSlopeNorm(vmin=-4, vcenter=0, vmax=4), colormaps["RdBu_r"])
    nodes = list(tree.nodes())
    colour = {id(n): f"#{k + 1:06x}" for k, n in enumerate(nodes)}
    axes = RecordingAxes()
    _draw(axes, Panel("", panel.size, lambda n: colour[id(n)], panel.label, panel.children), tree.root, 3, (1, 1e9))
    drawn = 0
    for node in nodes:
        if (span := axes.blocks.get(colour[id(node)])) is None:
            continue
        drawn += 1
        parent = node.parent
        outer = (0.0, 1.0) if parent is tree.root or parent is None else axes.blocks[colour[id(parent)]]
        assert outer[0] - 1e-12 <= span[0] <= span[1] <= outer[1] + 1e-12, node.path_text()
    assert drawn > 10 and OTHER_COLOUR not in colour.values()


def test_a_step_spelled_too_many_ways_is_still_expanded() -> None:
    """Shrunk: four tokens "aa" of a uniform model merge into one step, so after four steps its mass is spread
    over 4^4 = 256 spellings, none holding SPELLING_SHARE (1%) of it: the node was marked expanded but nothing
    was forwarded (no entropy), so the page, which reads "expanded" from the entropy, and the tree read back
    from JSON showed it unexpanded while the figure drew it expanded. The likeliest spelling is continued now."""
    uniform = TransitionBackend(["a", "b", "aa", "aa", "aa", "aa"], {})
    tree = multiverse(uniform, "a", depth=6, cutoff=0.05, cache=False)
    deep = tree.find(["aa"] * 4)
    assert deep.expanded and deep.values[0] is not None and deep.values[0].entropy_bits is not None
    nodes = [tree.root, *tree.nodes()]
    back = Multiverse.from_dict(json.loads(tree.to_json()))
    assert [n.expanded for n in [back.root, *back.nodes()]] == [n.expanded for n in nodes]


def test_replacing_a_unit_keeps_its_old_cache_key_on_another_unit(tmp_path: Path) -> None:
    """Shrunk state machine run: unit 1 and unit 2 saved under key k2, then unit 2 saved again under k1. The
    replaced unit took k2's cache entry with it although unit 1 still holds k2 (probes re-point the key)."""
    first, second = ProbeOutput([], {"unit": 1}, {}), ProbeOutput([], {"unit": 2}, {})
    with Store(tmp_path / "results.sqlite") as store:
        run = store.create_run("suite", "hash", "", [])
        store.save_unit(run, UnitRecord("p", "one", "m", 0, "x", {}, "k2"), first, 1.0)
        store.save_unit(run, UnitRecord("p", "two", "m", 1, "x", {}, "k2"), second, 1.0)
        store.save_unit(run, UnitRecord("p", "two", "m", 1, "x", {}, "k1"), second, 1.0)
        found = store.cached_unit("k2")
        assert found is not None and found.payload == {"unit": 1}
        assert (store.cached_unit("k1") or ProbeOutput([], {}, {})).payload == {"unit": 2}


def test_metric_values_that_are_not_finite_read_back_as_none(tmp_path: Path) -> None:
    """Documents the conversion the store round-trip properties rely on (not a bug)."""
    from modescope.store import Metric

    output = ProbeOutput([Metric("m", "x", math.nan), Metric("m", "y", -math.inf), Metric("m", "z", -0.0)], {}, {})
    with Store(tmp_path / "results.sqlite") as store:
        run = store.create_run("suite", "hash", "", [])
        store.save_probe(run, "probe", "kind", {}, "key", 0.0, output)
        assert [m.value for m in store.probe_output(run, "probe").metrics] == [None, None, 0.0]
