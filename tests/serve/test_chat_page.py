"""The chat page in a real headless browser (Debian's chromium driven by Playwright): type a message and
watch the streamed answer appear."""

import os
import shutil

import pytest
from helpers import running

pytestmark = pytest.mark.real_model

CHROMIUM = os.environ.get("OPENGEMMA_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def base_url():
    import opengemma
    from opengemma.serve.app import create_app

    llm = opengemma.load("gemma-3-270m", quantize="int8")
    app = create_app(llm, model_name="gemma-3-270m", max_batch=2, max_len=1024)
    with running(app) as url:
        yield url


def test_chat_page_streams_an_answer(base_url, tmp_path):
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), (
        f"{CHROMIUM} not found: install Debian's chromium (make test does)"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )  # Playwright gives each launch a fresh profile
        page = browser.new_page()
        page.goto(base_url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'gemma-3-270m'")
        page.fill("#max_tokens", "32")
        page.fill("#input", "Write one sentence about the sea.")
        page.click("#send")
        # the answer grows while streaming (Stop enabled), then the page hands control back
        page.wait_for_function(
            "document.querySelector('.msg.model') && document.querySelector('.msg.model').textContent.length > 0",
            timeout=60_000,
        )
        page.wait_for_function("!document.getElementById('send').disabled", timeout=120_000)
        answer = page.text_content(".msg.model")
        assert page.text_content(".msg.user") == "Write one sentence about the sea."
        assert answer and "Error" not in answer
        # a second turn keeps the conversation
        page.fill("#input", "And one about the sky.")
        page.press("#input", "Enter")
        page.wait_for_function(
            "document.querySelectorAll('.msg.model').length === 2 && !document.getElementById('send').disabled",
            timeout=120_000,
        )
        browser.close()
