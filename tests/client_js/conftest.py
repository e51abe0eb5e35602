"""Fixtures of the browser tests: a Chromium context per test (the browser is tests/conftest.py's),
and the researcher's static host the survey stand-ins import client_js/ from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from local_gateway.threaded import serve_in_thread

CLIENT_JS = Path(__file__).resolve().parents[2] / "client_js"


@pytest.fixture
def context(browser, request):
    """A fresh context (its own storage), sized by the test module's VIEWPORT, with reduced motion;
    every wait bounded generously for a busy machine."""
    context = browser.new_context(viewport=request.module.VIEWPORT, reduced_motion="reduce")
    context.set_default_timeout(60_000)
    yield context
    context.close()


@pytest.fixture(scope="module")
def site():
    """client_js/ on loopback, without CORS: the origin of a page served from it (the demo page,
    the LimeSurvey stand-in)."""
    app = web.Application()
    app.router.add_static("/", CLIENT_JS)
    with serve_in_thread(app) as served:
        yield served


@pytest.fixture(scope="module")
def static_host():
    """The researcher's static host for client_js/, which sends CORS headers (a module imported
    from another origin needs them)."""

    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    app = web.Application(middlewares=[cors])
    app.router.add_static("/", CLIENT_JS)
    with serve_in_thread(app) as served:
        yield served
