"""A real Chromium (the distribution's package, which ``make setup`` installs) driven by Playwright against a live
front end on the session's tiny-profile tritonserver. One browser and one front end per module; each test gets a
fresh page. Chromium's fake media devices play ``examples/speech.wav`` as the microphone."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from stack.processes import FrontendProcess
from tests.conftest import EXAMPLES, PROJECT_ROOT

# each run's screenshots (build/ is ignored); one of each flow is committed under docs/ui/
SCREENSHOTS = PROJECT_ROOT / "build" / "screenshots"
HALLO2_STEPS = 2


@pytest.fixture(scope="module")
def ui_frontend(triton_server, tmp_path_factory):
    """A front end of its own: its Hallo2 configuration and tasks are not the other tests' (the page changes both)."""
    data = tmp_path_factory.mktemp("ui_hallo2")
    env = {
        "EMOSERVE_HALLO2__DATABASE_URL": f"sqlite:///{data / 'tasks.db'}",
        "EMOSERVE_HALLO2__DATA_DIR": str(data / "tasks"),
        "EMOSERVE_HALLO2__INFERENCE_STEPS": str(HALLO2_STEPS),
        "EMOSERVE_HALLO2__POLL_INTERVAL_S": "0.2",
    }
    process = FrontendProcess(triton_server.grpc_url, env).start()
    yield process
    process.stop()


@pytest.fixture()
def ui_api(ui_frontend):
    """The same front end over plain HTTP: what the API itself answers, to compare the page with."""
    with httpx.Client(base_url=ui_frontend.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "the browser tests need Debian's chromium on PATH: `make setup` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={EXAMPLES / 'speech.wav'}",
            "--autoplay-policy=no-user-gesture-required",
        ])
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, ui_frontend) -> Page:
    context = browser.new_context(base_url=ui_frontend.base_url, viewport={"width": 1100, "height": 900}, accept_downloads=True)
    outside = []
    # every asset is the front end's own: a request to any other host fails the test
    context.route(lambda url: not url.startswith(ui_frontend.base_url), lambda route: (outside.append(route.request.url), route.abort()))
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto("/ui")
    page.get_by_role("tab", name="Audio to expression").wait_for()
    yield page
    context.close()
    assert not outside, f"the page asked other hosts: {outside}"
    assert not problems, f"script errors on the page: {problems}"


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path
