"""The interactive block multiverse page, driven in headless Chromium on hand-built expansions."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from modescope.viz.multiverse_html import multiverse_html, write_multiverse_html
from tests.browser.harness import PageLog

SCRIPT_TEXT = "<script>alert(1)</script>\nx"
HEIGHT_TOLERANCE_PX = 1.5


def node(
    text: str,
    prob: float,
    joint: float,
    entropy: float | None = None,
    unexpanded: float = 0.0,
    eos: bool = False,
    children: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "text": text,
        "prob": prob,
        "joint": joint,
        "entropy_bits": entropy,
        "unexpanded": unexpanded,
        "eos": eos,
        "children": children or [],
    }


def unode(
    text: str,
    probs: list[float | None],
    joints: list[float | None],
    eos: bool = False,
    entropy: list[float | None] | None = None,
    unexpanded: list[float | None] | None = None,
    children: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "text": text,
        "probs": probs,
        "joints": joints,
        "entropy_bits": entropy or [None, None],
        "unexpanded": unexpanded or [None, None],
        "eos": eos,
        "children": children or [],
    }


def expansion() -> dict[str, Any]:
    """Base and tuned, three levels deep, with an EOS node, unexpanded mass, a not comparable union entry,
    and a token that is markup with a newline in it."""
    base = node("", 1.0, 1.0, 1.5, 0.1, children=[
        node(" Paris", 0.6, 0.6, 1.0, 0.06, children=[
            node(",", 0.55, 0.33),
            node("", 0.35, 0.21, eos=True),
        ]),
        node(SCRIPT_TEXT, 0.3, 0.3, 0.9, 0.015, children=[
            node(" and", 0.9, 0.27, 0.4, 0.027, children=[node(" more", 0.9, 0.243)]),
            node("ß", 0.05, 0.015),
        ]),
    ])  # fmt: skip
    tuned = node("", 1.0, 1.0, 0.5, 0.05, children=[
        node(" Paris", 0.9, 0.9, 0.5, 0.027, children=[
            node(",", 0.95, 0.855),
            node("", 0.02, 0.018, eos=True),
        ]),
        node(SCRIPT_TEXT, 0.05, 0.05, 0.2, 0.005, children=[node(" and", 0.9, 0.045)]),
    ])  # fmt: skip
    union = unode("", [1.0, 1.0], [1.0, 1.0], entropy=[1.5, 0.5], unexpanded=[0.1, 0.05], children=[
        unode(" Paris", [0.6, 0.9], [0.6, 0.9], entropy=[1.0, 0.5], unexpanded=[0.06, 0.027], children=[
            unode(",", [0.55, 0.95], [0.33, 0.855]),
            unode("", [0.35, 0.02], [0.21, 0.018], eos=True),
        ]),
        unode(SCRIPT_TEXT, [0.3, 0.05], [0.3, 0.05], entropy=[0.9, 0.2], unexpanded=[0.015, 0.005], children=[
            unode(" and", [0.9, 0.9], [0.27, 0.045]),
            unode("ß", [0.05, None], [0.015, None]),
        ]),
    ])  # fmt: skip
    return {
        "prompt": f"Name a city. {SCRIPT_TEXT} <!-- end",
        "prefix": "",
        "models": ["base", "tuned"],
        "depth": 3,
        "cutoff": 0.01,
        "max_nodes": 2000,
        "merge": False,
        "truncated": True,
        "notices": ["stopped at --max-nodes 2000: <b>not</b> everything was expanded"],
        "trees": [
            {"model": "base", "root": base, "nodes_expanded": 4, "seconds": 0.5},
            {"model": "tuned", "root": tuned, "nodes_expanded": 3, "seconds": 0.4},
        ],
        "union": union,
    }


def open_page(page: Page, tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "multiverse.html"
    write_multiverse_html(data, path, title="test multiverse")
    page.goto(path.as_uri())
    page.wait_for_function("() => window.multiverseReady === true")


def height(page: Page, selector: str) -> float:
    return float(page.eval_on_selector(selector, "e => e.getBoundingClientRect().height"))


def drawing_height(page: Page) -> float:
    return height(page, "#drawing")


def view_root(page: Page) -> tuple[str, float]:
    header = page.locator("#view-root")
    return str(header.get_attribute("data-path")), float(str(header.get_attribute("data-joint")))


def block(path: str) -> str:
    return f'#drawing .block[data-path="{path}"]'


def test_embedded_json_cannot_close_its_script_element() -> None:
    page = multiverse_html(expansion())
    embedded = page.split('id="multiverse-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in embedded
    assert json.loads(embedded) == json.loads(json.dumps(expansion()))
    # the static parts are escaped too
    assert "<script>alert(1)" not in page and "&lt;b&gt;not&lt;/b&gt;" in page


@pytest.mark.browser
def test_page_draws_every_view_without_errors(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, expansion())
    tabs = page.eval_on_selector_all("[data-view]", "els => els.map(e => e.dataset.view)")
    assert tabs == ["model:0", "model:1", "difference"]
    paths = set(page.eval_on_selector_all("#drawing .block", "els => els.map(e => e.dataset.path)"))
    assert paths == {"", "0", "1", "0/0", "0/1", "1/0", "1/1", "1/0/0"}
    assert view_root(page) == ("", 1.0)
    assert drawing_height(page) == pytest.approx(height(page, block("")), abs=HEIGHT_TOLERANCE_PX)
    assert page.locator(f"{block('0/1')}.eos").count() == 1
    assert "2000: <b>not</b> everything was expanded" in page.locator("#notices").inner_text()
    page.click('[data-view="model:1"]')
    assert page.locator(block("0/0")).count() == 1 and page.locator(block("1/1")).count() == 0
    page_log.assert_clean()


@pytest.mark.browser
def test_click_renormalizes_to_the_block(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, expansion())
    page.click(block("0"))
    assert view_root(page) == ("0", 0.6)
    full = drawing_height(page)
    assert height(page, block("0")) == pytest.approx(full, abs=HEIGHT_TOLERANCE_PX)
    assert page.eval_on_selector(block("0"), "e => e.getBoundingClientRect().left") == pytest.approx(
        page.eval_on_selector("#drawing", "e => e.getBoundingClientRect().left")
    )
    assert height(page, block("0/0")) == pytest.approx(0.33 / 0.6 * full, abs=HEIGHT_TOLERANCE_PX)
    assert height(page, block("0/1")) == pytest.approx(0.21 / 0.6 * full, abs=HEIGHT_TOLERANCE_PX)
    rest = page.locator('#drawing .rest[data-rest-of="0"]')
    assert height(page, '#drawing .rest[data-rest-of="0"]') == pytest.approx(0.06 / 0.6 * full, abs=1.5)
    assert rest.inner_text() == "other 10%"
    assert page.locator(block("1")).count() == 0  # outside the view root
    page_log.assert_clean()


@pytest.mark.browser
def test_up_and_root_controls(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, expansion())
    assert page.locator("#up").is_disabled()
    page.click(block("1"))
    page.click(block("1/0"))
    assert view_root(page) == ("1/0", 0.27)
    assert height(page, block("1/0/0")) == pytest.approx(0.9 * drawing_height(page), abs=HEIGHT_TOLERANCE_PX)
    page.click("#up")
    assert view_root(page) == ("1", 0.3)
    page.click(block("1/0"))
    page.click("#root")
    assert view_root(page) == ("", 1.0)
    assert page.locator("#up").is_disabled()
    page_log.assert_clean()


@pytest.mark.browser
def test_difference_view_draws_the_union(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, expansion())
    page.click('[data-view="difference"]')
    assert "not comparable" in page.locator("#legend").inner_text()
    assert page.locator(f"{block('1/1')}.nc").count() == 1  # null for tuned: hatched
    assert page.locator("#drawing .block.nc").count() == 1
    # tuned raised " Paris" (0.6 -> 0.9): red; lowered the script token (0.3 -> 0.05): blue
    paris = page.eval_on_selector(block("0"), "e => getComputedStyle(e).backgroundColor")
    lowered = page.eval_on_selector(block("1"), "e => getComputedStyle(e).backgroundColor")
    red, _, blue = (int(v) for v in re.findall(r"\d+", paris)[:3])
    assert red > blue
    red, _, blue = (int(v) for v in re.findall(r"\d+", lowered)[:3])
    assert blue > red
    page.click(block("0"))
    path, joint = view_root(page)
    assert path == "0" and joint == pytest.approx(0.75)
    comma = (0.33 + 0.855) / 2
    assert height(page, block("0/0")) == pytest.approx(comma / 0.75 * drawing_height(page), abs=HEIGHT_TOLERANCE_PX)
    page_log.assert_clean()


@pytest.mark.browser
def test_switching_view_keeps_the_path_of_texts(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, expansion())
    page.click(block("1"))
    page.click('[data-view="model:1"]')
    assert view_root(page) == ("1", 0.05)
    page_log.assert_clean()


@pytest.mark.browser
def test_model_text_is_shown_as_text(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    data = expansion()
    data["prefix"] = " Paris is <i>"
    open_page(page, tmp_path, data)
    assert page.locator("#view-root").inner_text().startswith("View root: ␣Paris is <i>")
    assert page.locator(block("1")).inner_text().startswith("<script>alert(1)</script>⏎x")
    assert page.locator(".prompt").inner_text().startswith("Name a city. <script>alert(1)</script>\nx")
    assert page.locator(block("0")).inner_text().startswith("␣Paris")
    assert page.locator(block("0/1")).inner_text().startswith("⟨end⟩")
    assert page.eval_on_selector_all("script", "els => els.length") == 2
    page_log.assert_clean()  # no alert dialog fired


@pytest.mark.browser
def test_tooltip_shows_the_probabilities(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, expansion())
    page.hover(block("0/0"))
    tip = page.locator("#tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "conditional p\t0.55" in text and "joint p\t0.33" in text
    assert "␣Paris" in text and "entropy of next token" in text
    page.click('[data-view="difference"]')
    page.hover(block("0"))
    text = tip.inner_text()
    assert "base\t0.6\t0.6\t1" in text and "tuned\t0.9\t0.9\t0.5" in text
    assert "+0.58 bits" in text
    page_log.assert_clean()


def wide_expansion(branching: int, depth: int) -> dict[str, Any]:
    def grow(text: str, prob: float, joint: float, level: int) -> dict[str, Any]:
        if level == depth:
            return node(text, prob, joint)
        share = [2.0 ** -(i + 1) for i in range(branching)]
        children = [grow(f" w{level}_{i}", p, joint * p, level + 1) for i, p in enumerate(share)]
        return node(text, prob, joint, 1.0, joint * (1 - sum(share)), children=children)

    data = expansion()
    data["trees"] = [{"model": "base", "root": grow("", 1.0, 1.0, 0), "nodes_expanded": 0, "seconds": 0.0}]
    data["models"], data["union"] = ["base"], None
    return data


@pytest.mark.browser
def test_a_few_thousand_nodes_draw_quickly(page: Page, page_log: PageLog, tmp_path: Path) -> None:
    open_page(page, tmp_path, wide_expansion(branching=14, depth=3))  # 2,955 nodes
    started = time.perf_counter()
    page.click(block("0"))
    assert view_root(page)[0] == "0"
    assert time.perf_counter() - started < 2.0
    assert page.locator("[data-view]").count() == 1  # one model: no difference view
    drawn = page.eval_on_selector_all("#drawing .block", "els => els.map(e => e.getBoundingClientRect().height)")
    assert min(drawn) >= 0.5
    page_log.assert_clean()
