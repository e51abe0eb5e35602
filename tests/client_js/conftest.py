"""Fixtures of the browser tests: a Chromium context per test (the browser is tests/conftest.py's)."""

from __future__ import annotations

import pytest


@pytest.fixture
def context(browser, request):
    """A fresh context (its own storage), sized by the test module's VIEWPORT, with reduced motion;
    every wait bounded generously for a busy machine."""
    context = browser.new_context(viewport=request.module.VIEWPORT, reduced_motion="reduce")
    context.set_default_timeout(60_000)
    yield context
    context.close()
