"""Debian's chromium driven by Playwright for the UI tests (never `playwright install`, which downloads a
browser build): the module-scoped ``browser`` fixture and signing in through Airflow's own login page."""

from __future__ import annotations

import os
import re

import pytest

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does this when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=120_000)
        yield b
        b.close()


def sign_in(browser, stack, viewport: tuple[int, int] = (1400, 1000)):
    """Through Airflow's own login page, like a person: the UI then holds the `_token` cookie.

    :returns: (the browser context, its signed-in page).
    """
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    context.set_default_timeout(90_000)
    page = context.new_page()
    page.goto(f"{stack.base}/")
    page.wait_for_url(re.compile(r".*/auth/login.*"))
    page.fill("input[name=username]", stack.user)
    page.fill("input[name=password]", stack.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)
    assert any(c["name"] == "_token" for c in context.cookies())
    return context, page
