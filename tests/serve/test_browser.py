"""The page in a real browser: Debian's chromium driven by Playwright, against a live server.

Needs ``pip install playwright`` (the ``browser`` extra) and ``apt-get install chromium``
(``playwright install`` downloads its own browser, which is not possible everywhere); skipped
with the reason when either is missing. Set ``PARTREID_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import threading
import time

import pytest

CHROMIUM = os.environ.get("PARTREID_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_COPY = "/tmp/partreid_serve_screenshot.png"
# Page-side predicates as functions (the page's CSP forbids evaluating strings).
HEAT_SHOWN = """() => { const h = document.getElementById('query-heat');
  return !h.hidden && h.src.startsWith('data:image/png') && h.naturalWidth > 0; }"""
ALL_THUMBS_SETTLED = """() => [...document.querySelectorAll('#results .card')].every(c =>
  c.classList.contains('missing') || (c.querySelector('img').complete
                                      && c.querySelector('img').naturalWidth > 0))"""
SUMMARY_HAS = "(t) => document.getElementById('results-summary').textContent.includes(t)"
FIRST_RESULT_IS = """(i) => { const c = document.querySelector('#results .card');
  return c !== null && c.dataset.index === i; }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(serve_setup):
    """uvicorn on 127.0.0.1:<free port> in a thread, over the session's worker."""
    uvicorn = pytest.importorskip("uvicorn")
    from partreid.serve import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(serve_setup["worker"]), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _install_chromium() -> str:
    """Install Debian's chromium where that is possible (root, apt-get); '' or why not."""
    import subprocess

    if CHROMIUM != "/usr/bin/chromium":
        return "PARTREID_CHROMIUM names a missing file"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return "it cannot be installed here (needs apt-get as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, env=env, check=True, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"installing it failed ({type(exc).__name__})"
    return "" if os.path.exists(CHROMIUM) else "the chromium package did not provide it"


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through Playwright (skipped when either is missing)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[browser])"
    )
    if not os.path.exists(CHROMIUM):
        why = _install_chromium()
        if why:
            pytest.skip(
                f"no chromium at {CHROMIUM} and {why} (apt-get install chromium, or "
                "set PARTREID_CHROMIUM)"
            )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_page_uploads_a_crop_and_shows_the_ranked_gallery(
    browser, live_server, serve_setup, tmp_path
):
    gallery = serve_setup["worker"].gallery
    expected = 6
    target = os.path.join(serve_setup["gallery"], str(gallery.rel_paths[expected]))
    pid = int(gallery.pids[expected])
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(live_server + "/")
    page.wait_for_function("() => document.getElementById('meta').textContent.includes('gallery')")
    assert f"{len(gallery)} items" in page.inner_text("#meta")

    # 1. choose the file: the first match is the same gallery image, framed green
    page.set_input_files("#file", target)
    page.wait_for_selector("#results .card")
    cards = page.query_selector_all("#results .card")
    assert len(cards) == 10
    first = cards[0]
    assert first.get_attribute("data-index") == str(expected)
    assert "match" in first.get_attribute("class").split()
    assert first.query_selector(".rank").inner_text() == "#1"
    assert float(first.query_selector(".dist").inner_text()) == pytest.approx(0.0, abs=0.05)
    assert first.query_selector("img").evaluate("img => img.complete && img.naturalWidth") > 0
    classes = [c.get_attribute("class").split() for c in cards]
    pids = [int(c.query_selector(".pid").inner_text().split()[-1]) for c in cards]
    assert [("match" in c) for c in classes] == [p == pid for p in pids]
    assert [("nomatch" in c) for c in classes] == [p != pid for p in pids]
    assert page.input_value("#qpid") == str(pid)  # read from the Market-style file name

    # 2. the activation map overlay and re-ranking switches re-run the query
    page.check("#heat", force=True)
    page.wait_for_function(HEAT_SHOWN)
    page.check("#rerank", force=True)
    page.wait_for_function(SUMMARY_HAS, arg="re-ranked")
    assert page.query_selector("#results .card").get_attribute("data-index") == str(expected)
    page.wait_for_function(HEAT_SHOWN)
    page.wait_for_function(ALL_THUMBS_SETTLED)
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, SCREENSHOT_COPY)
    print(f"screenshot: {shot} (copied to {SCREENSHOT_COPY})")

    # 3. drag and drop another crop onto the drop zone
    other = 11
    with open(os.path.join(serve_setup["gallery"], str(gallery.rel_paths[other])), "rb") as f:
        data = base64.b64encode(f.read()).decode()
    page.uncheck("#rerank", force=True)
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
            const drop = document.getElementById('drop');
            drop.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [data, "dropped.jpg"],
    )
    page.wait_for_function(FIRST_RESULT_IS, arg=str(other))
    # no identity in the name 'dropped.jpg': no green/red borders
    assert page.query_selector_all("#results .card.match, #results .card.nomatch") == []

    # 4. the gallery tab pages through the gallery; clicking a crop searches with it
    page.click("#tab-gallery")
    page.wait_for_selector("#gallery .card")
    assert len(page.query_selector_all("#gallery .card")) == min(48, len(gallery))
    page.wait_for_timeout(300)  # let the thumbnails paint
    page.screenshot(path=str(tmp_path / "serve_gallery.png"), full_page=True)
    shutil.copy(tmp_path / "serve_gallery.png", "/tmp/partreid_serve_gallery.png")
    page.click("#gallery .card[data-index='3']")
    page.wait_for_function(SUMMARY_HAS, arg=str(gallery.rel_paths[3]))
    assert "3" not in [
        c.get_attribute("data-index") for c in page.query_selector_all("#results .card")
    ]

    # 5. a bad upload shows the server's message and the page keeps working
    page.set_input_files(
        "#file", files=[{"name": "x.png", "mimeType": "image/png", "buffer": b"not a png"}]
    )
    page.wait_for_selector("#status.error")
    assert "not an image" in page.inner_text("#status")
    page.set_input_files("#file", target)
    page.wait_for_function(FIRST_RESULT_IS, arg=str(expected))
    assert "error" not in page.get_attribute("#status", "class")

    outside = [u for u in requests if not u.startswith((live_server, "data:", "blob:"))]
    assert outside == [], f"the page fetched from elsewhere: {outside}"
    # the only console errors: the refused symlinked crop (403) and the bad upload (400)
    assert [e for e in errors if not re.search(r"status of 40[03] ", e)] == []
    page.close()
