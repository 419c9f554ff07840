"""mkdocs hook: the repository's README becomes the page `guide.md`, so the docs link to its sections.

The README sits outside `docs/` and links to `docs/...`; the page gets the same text with those links made
relative to `docs/`, so mkdocs checks them (and their anchors) like any other link.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parent.parent / "README.md"


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    text = re.sub(r"\]\(docs/", "](", README.read_text(encoding="utf-8"))
    files.append(File.generated(config, "guide.md", content=text))
    return files
