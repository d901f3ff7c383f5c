"""A real browser (Debian's Chromium, driven by Playwright) against a real `spotter serve` on loopback.

Screenshots of each tab are written to $SPOTTER_ARTEFACTS/serve (default: artefacts/serve in the repository).
"""
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import serve_runs
from serve_process import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
WAIT = 120_000  # ms: this shared 2-core machine can be slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    serve_runs.need_shared_data()
    runs = [serve_runs.histo_run(tmp_path_factory), serve_runs.tweets_run(tmp_path_factory, "bigru"),
            serve_runs.tweets_run(tmp_path_factory, "tfidf")]
    s = Server(runs, log=tmp_path_factory.mktemp("browser") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def artefacts():
    folder = Path(os.environ.get("SPOTTER_ARTEFACTS", Path(__file__).resolve().parents[1] / "artefacts")) / "serve"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        yield page
        browser.close()
        assert not errors, errors


def open_page(page, server):
    """The page with its models loaded (each test can run alone)."""
    if not page.url.startswith(server.url):
        page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=WAIT)


def test_patches_tab(server, page, artefacts, tmp_path_factory):
    data = serve_runs.histo_data(tmp_path_factory)
    files = sorted((data / "train").glob("*.tif"))[:10] + sorted((data / "test").glob("*.tif"))[:4]
    open_page(page, server)
    assert "cnn" in page.locator("#model").input_value()
    assert "AUC" in page.locator("#model option").first.inner_text()
    page.set_input_files("#patch-files", [str(f) for f in files])
    page.wait_for_function(f"document.querySelectorAll('#grid .card[data-probability]').length === {len(files)}",
                           timeout=WAIT)
    shown = page.eval_on_selector_all(
        "#grid .card", "cards => cards.map(c => [c.querySelector('.name').textContent, +c.dataset.probability, "
                       "c.querySelector('.prob b').textContent])")
    api = httpx.post(server.url + "/api/histo/cnn/predict", timeout=120,
                     files=[("files", (f.name, f.read_bytes())) for f in files]).json()["results"]
    expected = {r["name"]: r["probability"] for r in api}
    assert sorted(name for name, _, _ in shown) == sorted(expected)
    for name, prob, text in shown:
        assert prob == pytest.approx(expected[name], abs=2e-5)
        assert text == f"{100 * expected[name]:.1f}%"
    assert [p for _, p, _ in shown] == sorted((p for _, p, _ in shown), reverse=True)  # most likely first

    page.locator("#grid .card").first.click()
    page.wait_for_function("(document.getElementById('detail-img').getAttribute('src') || '').startsWith('data:image/png')",
                           timeout=WAIT)
    assert "of the map in the centre square" in page.locator("#detail-text").inner_text()
    page.screenshot(path=str(artefacts / "patches.png"), full_page=True)

    page.select_option("#sort", "prob-asc")
    ascending = page.eval_on_selector_all("#grid .card", "cards => cards.map(c => +c.dataset.probability)")
    assert ascending == sorted(ascending)


def test_tweets_tab(server, page, artefacts):
    tweets = ["Forest fire near La Ronge Sask. Canada",
              "13,000 people receive #wildfires evacuation orders in California",
              "I love fruits",
              "Summer is lovely http://t.co/abc",
              "Earthquake hits the coast, buildings collapsed and people are trapped"]
    open_page(page, server)
    page.locator("#tab-tweets").click()
    page.wait_for_function("document.getElementById('model').value === 'rnn'", timeout=WAIT)
    page.fill("#tweet-text", "\n".join(tweets))
    page.locator("#tweet-run").click()
    page.wait_for_function(f"document.querySelectorAll('#tweet-table tbody tr').length === {len(tweets)}", timeout=WAIT)
    page.wait_for_function("document.getElementById('tweet-status').textContent.includes('about a disaster')", timeout=WAIT)
    rows = page.eval_on_selector_all("#tweet-table tbody tr", "rows => rows.map(r => [r.cells[3].textContent, "
                                     "r.querySelectorAll('.word').length, r.cells[4].textContent])")
    api = httpx.post(server.url + "/api/tweets/rnn/predict", json={"texts": tweets}, timeout=120).json()
    for (prob, words, decision), text, r in zip(rows, tweets, api["results"]):
        assert prob == f"{100 * r['probability']:.1f}%"
        assert words == len(text.split())
        assert decision == ("disaster" if r["label"] else "not a disaster")
    assert page.locator("#tweet-legend").is_visible()
    page.screenshot(path=str(artefacts / "tweets.png"), full_page=True)


def test_slide_tab(server, page, artefacts, tmp_path_factory, tmp_path):
    data = serve_runs.histo_data(tmp_path_factory)
    pixels = [np.asarray(Image.open(p)) for p in sorted((data / "train").glob("*.tif"))[:16]]
    mosaic = tmp_path / "mosaic.tif"
    Image.fromarray(np.concatenate([np.concatenate(pixels[r * 4:(r + 1) * 4], 1) for r in range(4)], 0)).save(mosaic)
    open_page(page, server)
    page.locator("#tab-slide").click()
    page.set_input_files("#slide-file", str(mosaic))
    page.fill("#slide-mpp", "0.972")  # Kaggle's patches: 0.972 µm per pixel
    page.select_option("#slide-stride", "96")
    page.locator("#slide-run").click()
    page.wait_for_function("document.getElementById('slide-img').complete && "
                           "document.getElementById('slide-img').naturalWidth > 0", timeout=WAIT)
    assert "overlay.png" in page.locator("#slide-links").inner_text()
    page.screenshot(path=str(artefacts / "slide.png"), full_page=True)


def test_keyboard_and_narrow_window(server, page, artefacts):
    open_page(page, server)
    page.locator("#tab-slide").focus()
    page.keyboard.press("ArrowLeft")
    assert page.locator("#tab-patches").get_attribute("aria-selected") == "true"
    assert page.locator("#panel-patches").is_visible()
    page.keyboard.press("Tab")  # from the tab list onwards: every control is reachable
    page.set_viewport_size({"width": 400, "height": 900})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page is {width} px wide in a 400 px window"
    page.screenshot(path=str(artefacts / "narrow.png"), full_page=True)


def test_names_and_texts_are_shown_as_text_never_run(server, page):
    """A file named like markup, and markup pasted as a tweet, show literally and run nothing (DOM XSS)."""
    hostile = "<img src=x onerror=window.__xss=1>.tif"
    open_page(page, server)
    page.locator("#patch-clear").click()
    page.set_input_files("#patch-files", [{"name": hostile, "mimeType": "image/tiff", "buffer": b"not a tiff"}])
    page.wait_for_function("[...document.querySelectorAll('#grid .card .prob')].some(p => p.textContent.includes('⚠'))",
                           timeout=WAIT)
    error = page.locator("#grid .card .prob").first.text_content()
    assert hostile in error and "judged by its bytes" in error
    assert page.locator("#grid .card .name").first.text_content() == hostile
    assert page.locator("#grid img[src='x']").count() == 0
    tweet = "<img src=x onerror=window.__xss=2> fire <b>downtown</b>"
    page.locator("#tab-tweets").click()
    page.wait_for_function("document.getElementById('model').value === 'rnn'", timeout=WAIT)
    for explain in (False, True):  # plain text cell, and the word spans of an explanation
        page.set_checked("#tweet-explain", explain)
        page.fill("#tweet-text", tweet)
        page.locator("#tweet-run").click()
        page.wait_for_function("document.querySelectorAll('#tweet-table tbody tr').length === 1 && "
                               "document.getElementById('tweet-status').textContent.includes('about a disaster')",
                               timeout=WAIT)
        assert page.locator("#tweet-table tbody td.text").text_content().replace("\u00a0", " ") == tweet
        assert page.locator("#tweet-table img, #tweet-table b").count() == 0
    page.wait_for_timeout(500)  # an injected image's error handler fires asynchronously
    assert page.evaluate("window.__xss") is None
    page.locator("#tab-patches").click()
    page.locator("#patch-clear").click()
