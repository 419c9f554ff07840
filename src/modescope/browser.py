"""Headless Chromium, for printing reports to PDF and for the browser tests.

These flags start it quietly on a machine without a display or network: no sandbox (it runs as root in
containers), no GPU, and none of the background connections that would otherwise fail at every start.
"""

from __future__ import annotations

import shutil

HEADLESS_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
