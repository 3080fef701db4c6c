"""Browser tests: Debian's Chromium driven by playwright against a real ``fedmomentum up``
(API, embedded Celery worker, SQLite, filesystem broker). Chromium missing fails the tests
(``make test`` installs it); nothing here downloads a browser.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.service.conftest import Service, _env

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page at 1280 px that fails the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``fedmomentum up`` with its embedded worker, shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("dashboard")
    service = Service(tmp, _env(tmp))
    try:
        service.api(worker=True)
        yield service
    finally:
        service.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def traces(page: Page, chart: str) -> list[dict[str, Any]]:
    """The traces plotted in a chart's graph div: name, uid, x, y (plotly's own data)."""
    result: list[dict[str, Any]] = page.evaluate(
        """(id) => {
            const div = document.getElementById(id);
            if (!div || !div.data) return null;
            return div.data.map((t) => ({ name: t.name, uid: t.uid, x: Array.from(t.x ?? []),
                                          y: Array.from(t.y ?? []) }));
        }""",
        chart,
    )
    assert result is not None, f"{chart} has no plot"
    return result


def trace(page: Page, chart: str, uid: str) -> dict[str, Any]:
    found = [t for t in traces(page, chart) if t["uid"] == uid]
    assert len(found) == 1, f"{chart}: no single trace {uid!r} in {traces(page, chart)}"
    return found[0]
