"""The API reference builds with `mkdocs build --strict` and documents every public name with its docstring."""

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modescope

ROOT = Path(__file__).resolve().parents[2]
# values, not functions or classes: the models page describes them in prose
DATA_EXPORTS = {"DEFAULT_MODELS", "PRESETS"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    return out


def page_text(page: Path) -> str:
    """The page's visible text, whitespace collapsed (docstrings wrap where the source does)."""
    text = re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))
    return " ".join(html.unescape(text).split())


def api_pages(site: Path) -> dict[Path, str]:
    return {page: page.read_text(encoding="utf-8") for page in sorted((site / "api").glob("*/index.html"))}


def first_line(obj: object) -> str:
    """The docstring's first line as the page shows it: code spans lose their backticks."""
    doc = inspect.getdoc(obj)
    assert doc, f"{obj!r} has no docstring"
    return " ".join(doc.splitlines()[0].replace("`", "").split())


def test_every_public_name_is_documented_with_its_docstring(site: Path) -> None:
    pages = api_pages(site)
    assert len(pages) >= 5, sorted(p.parent.name for p in pages)
    for name in sorted(set(modescope._EXPORTS) - DATA_EXPORTS):
        obj = getattr(modescope, name)
        anchor = f'id="{obj.__module__}.{obj.__qualname__}"'
        found = [page for page, source in pages.items() if anchor in source]
        # a new export needs one `::: module.name` line on the page of its group (docs/api/*.md)
        assert found, f"modescope.{name} ({obj.__module__}) is on no page of docs/api"
        assert first_line(obj) in page_text(found[0]), f"modescope.{name}: docstring missing from {found[0]}"


def test_reference_shows_signatures_and_parameters(site: Path) -> None:
    probes = page_text(site / "api" / "probes" / "index.html")
    assert "distribution" in probes and "multiverse" in probes
    # the Args: section of `distribution` renders as a parameter table, not as prose
    assert re.search(r"Parameters: .*candidates .*Sequence\[str\]", probes)
    models = page_text(site / "api" / "models" / "index.html")
    assert "load( name: str" in models


def test_home_links_to_the_readme_as_the_guide(site: Path) -> None:
    guide = (site / "guide" / "index.html").read_text(encoding="utf-8")
    assert 'id="python"' in guide
    assert 'src="../report.png"' in guide  # README's docs/report.png, relative to the built page
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="guide/#sampling-diversity-and-temperature"' in home


def test_site_loads_nothing_from_the_network(site: Path) -> None:
    for page in site.rglob("*.html"):
        source = page.read_text(encoding="utf-8")
        external = re.findall(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"", source)
        assert not external, f"{page.relative_to(site)} loads {external}"
