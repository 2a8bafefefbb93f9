"""The try-it page in a real browser (Debian's chromium, driven by playwright): type a sentence,
submit with the keyboard, and every pane shows text in its target's script, side by side."""

import os
import shutil

import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

from swcm.resources import udhr  # noqa: E402
from swcm.script_tokens import dominant_script  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCRIPTS = {"ug": "Arabic", "kk": "Cyrillic", "mn": "Cyrillic", "bo": "Tibetan"}


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("SWCM_REQUIRE_BROWSER"):  # CI installs chromium: there it must run
            pytest.fail(f"{CHROMIUM} is missing")
        pytest.skip("needs chromium (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


def test_the_page_translates_into_every_chosen_language_side_by_side(browser, demo_shaped_runs, start_server):
    process, url = start_server(f"ws={demo_shaped_runs['ws']}", f"random={demo_shaped_runs['random']}")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    outside = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(url) else None)
    page.goto(url)
    page.wait_for_selector("body[data-ready]")
    checked = page.eval_on_selector_all("#targets input:checked", "boxes => boxes.map(b => b.value)")
    assert sorted(checked) == sorted(SCRIPTS)  # the languages the models were tested on
    page.locator("#source-text").press_sequentially(udhr("test")[0]["text"]["zh"])
    page.locator("#source-text").press("Control+Enter")  # the keyboard submits
    page.wait_for_selector("#results[data-done]")
    panes = page.locator(".pane")
    assert panes.count() == len(SCRIPTS) * 2
    seen = set()
    for i in range(panes.count()):
        pane = panes.nth(i)
        target, model = pane.get_attribute("data-target"), pane.get_attribute("data-model")
        text = pane.locator(".output").inner_text()
        assert text.strip() and dominant_script(text) == SCRIPTS[target], (model, target, text)
        assert pane.get_attribute("data-script") == SCRIPTS[target]  # the page names the script it found
        assert pane.locator(".score").inner_text().startswith("test chrF++")
        seen.add((target, model))
    assert seen == {(t, m) for t in SCRIPTS for m in ("ws", "random")}
    assert not outside  # offline: nothing but the server was asked for anything
    # a phone-width window: nothing wider than the screen
    page.set_viewport_size({"width": 360, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()
