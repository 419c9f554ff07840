"""Bounded distributions (a model behind a top-k server) shown as bounds everywhere a distribution is shown:
the `dist` tables, the matplotlib figure and the suite report; exact results keep their plain look."""

from __future__ import annotations

import html
import io
import math
import re
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer
from rich.console import Console

from modescope.cli.suites import print_overview
from modescope.models.analytic import AnalyticBackend
from modescope.models.base import Backend, Capabilities
from modescope.probes.distribution import DistributionResult, distribution
from modescope.store import Store
from modescope.suites import schema
from modescope.suites.kinds import ProbeContext, run_distribution
from modescope.viz.distribution_plot import distribution_figure, plot_distribution, share_bounds
from modescope.viz.report_html import report_html
from tests.unit.test_cli import PNG_MAGIC, TOKENS, WIDE, invoke

# a candidate no shown path reaches has lower bound 0, so its log is -inf (0 log 0 is taken as 0)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

LABEL = "bounds (top-5 server)"
INTERVAL = r"\[\d[\d.e+-]*%, \d[\d.e+-]*%\]"


def toy(name: str, top_k: int | None = 5) -> Backend:
    """A toy model; with `top_k`, one whose capabilities claim a top-k server (the in-process query serves it)."""
    backend = AnalyticBackend(TOKENS, name=name, seed=zlib.crc32(name.encode()))
    if top_k is not None:
        backend.capabilities = Capabilities(tier="top-k", top_k=top_k, server=f"{name}@http://x/v1")
    return backend


@pytest.fixture(autouse=True)
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODESCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def bounded() -> DistributionResult:
    """One bounded and one exact model over 0..12."""
    result = distribution([toy("served"), toy("local", None)], "Q:", [str(i) for i in range(13)])
    served = result.result("served")
    assert served.bounds == LABEL
    assert all(o.mass <= o.mass_upper for o in served.outcomes)
    assert any(o.mass_upper > 2 * o.mass for o in served.outcomes)  # some wide intervals to show
    return result


# --- the terminal ------------------------------------------------------------------------------------------


def test_dist_prints_intervals_and_the_label_of_a_bounded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("modescope.models.load", lambda name, **_: toy(name, 5 if name == "served" else None))
    result = invoke("dist -m served -m local --prompt Q: --integers 0 12 --top 4", env=WIDE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert LABEL in out
    assert "absolute mass [lower, upper]" in out
    rows = [line.split("│")[2:4] for line in out.splitlines() if re.match(r"│\s+[1-4] │", line)]
    assert len(rows) == 4
    served, local = [row[0] for row in rows], [row[1] for row in rows]
    assert all(re.fullmatch(rf"\s*'\d+'\s+{INTERVAL}\s*", cell) for cell in served), served
    assert all(re.fullmatch(r"\s*'\d+'\s+\d+\.\d%\s*", cell) for cell in local), local  # exact: as before
    coverage = next(line for line in out.splitlines() if "coverage" in line)
    assert re.search(INTERVAL, coverage)
    assert f"* served: {LABEL}; numbers within the set come from the lower bounds" in out
    assert "undecided" not in out


def test_an_exact_model_notes_undecided_utf8_mass_only_when_there_is_some(bounded: DistributionResult) -> None:
    from modescope.cli.distribution import print_distribution

    exact = replace(bounded, results=[bounded.result("local")], comparisons=[])
    console = Console(record=True, width=200, file=io.StringIO())
    print_distribution(exact, console, 5)
    assert "undecided" not in console.export_text()

    outcomes = [replace(o) for o in exact.results[0].outcomes]
    outcomes[3].mass_upper = outcomes[3].mass * (1 + 1e-3)  # a token after "3" starts an incomplete character
    undecided = replace(exact, results=[replace(exact.results[0], outcomes=outcomes)])
    console = Console(record=True, width=200, file=io.StringIO())
    print_distribution(undecided, console, 5)
    text = console.export_text()
    assert f"undecided UTF-8 mass up to {outcomes[3].mass * 1e-3:.2g}" in text and "mass_upper" in text
    assert LABEL not in text and "[" not in text  # still an exact result: no intervals


# --- the figure --------------------------------------------------------------------------------------------


def test_share_bounds_contain_every_share_the_masses_allow() -> None:
    low, high = [0.1, 0.2, 0.0], [0.3, 0.2, 0.1]
    smallest, largest = share_bounds(low, high)
    assert smallest == pytest.approx([0.1 / 0.4, 0.2 / 0.6, 0.0])
    assert largest == pytest.approx([0.3 / 0.5, 0.2 / 0.3, 0.1 / 0.4])
    for point in ([0.1, 0.2, 0.0], [0.3, 0.2, 0.1], [0.2, 0.2, 0.05]):
        shares = [m / sum(point) for m in point]
        assert all(s - 1e-12 <= x <= b + 1e-12 for s, x, b in zip(smallest, shares, largest, strict=True))


def test_the_figure_draws_error_bars_for_the_bounded_model_only(bounded: DistributionResult, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = distribution_figure(bounded)
    [ax] = fig.axes
    [errors] = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]  # one model is bounded
    served = bounded.result("served")
    low, high = share_bounds([o.mass for o in served.outcomes], [o.mass_upper for o in served.outcomes])
    [segments] = [collection.get_segments() for collection in errors.lines[2]]
    assert len(segments) == len(served.outcomes)
    for segment, lo, hi, outcome in zip(segments, low, high, served.outcomes, strict=True):
        assert sorted(segment[:, 1]) == pytest.approx([lo, hi], abs=1e-12)
        assert lo - 1e-12 <= outcome.prob <= hi + 1e-12  # the bar (share of the lower bounds) lies inside
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert LABEL in legend[0] and "bounds" not in legend[1]
    plt.close(fig)

    exact = replace(bounded, results=[bounded.result("local")], comparisons=[])
    fig = distribution_figure(exact)
    assert not [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    plt.close(fig)
    assert plot_distribution(bounded, tmp_path / "d.png").read_bytes()[:8] == PNG_MAGIC


# --- the report ----------------------------------------------------------------------------------------------


def test_the_report_labels_a_bounded_distribution_and_shows_its_intervals(tmp_path: Path) -> None:
    hostile = "<b>x</b>"
    backends = [toy("served"), toy(hostile, None)]
    probe = schema.DistributionProbe(name="ints", kind="distribution", prompt="Q:", integers=(0, 12))
    output = run_distribution(ProbeContext(backends, "Q:", lambda _: None), probe)
    with Store(tmp_path / "store") as store:
        run = store.create_run("toy", "h", "", [{"name": "served"}, {"name": hostile}])
        store.save_probe(run, "ints", "distribution", probe.model_dump(), "k", 1.0, output)
        page = report_html(store, run)
        console = Console(record=True, width=200, file=io.StringIO())
        print_overview(store, run, console)  # the headline numbers `modescope run` prints
    headlines = [line for line in console.export_text().splitlines() if " ints " in line]
    assert len(headlines) == 6  # top1, top1_share and entropy_bits per model
    assert all(("(bounds)" in line) == (" served " in line) for line in headlines), headlines
    assert page.count(f">{LABEL}</span>") == 3  # overview, metrics column, intervals block
    overview = page[page.index('class="overview"') : page.index("</table>", page.index('class="overview"'))]
    assert "top-1 share" in overview and "(bounds)" in overview
    assert re.search(rf"coverage {INTERVAL}", overview)
    assert len(re.findall(rf"<td>{INTERVAL}</td>", page)) == 8 + 1  # its top outcomes and coverage
    served = output.payload["results"][0]
    best = max(served["outcomes"], key=lambda o: o["mass"])
    assert f'title="{best["text"]}: absolute mass between' in page
    assert math.isfinite(best["mass_upper"]) and best["mass_upper"] >= best["mass"]
    assert hostile not in page and html.escape(hostile) in page
    # marked: the bounded model's 5 metrics (and its coverage interval), the pair's 4 and its 3 overview
    # numbers; the exact model's none
    assert page.count("(bounds)") == 5 + 4 + 3
