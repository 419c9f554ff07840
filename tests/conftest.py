"""Shared test setup: never reach a model hub; headless Chromium fixtures for every test that drives a page."""

import os

from tests.browser.harness import browser, page, page_log  # noqa: F401 - fixtures for tests/browser and integration

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
