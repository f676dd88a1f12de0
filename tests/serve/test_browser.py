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


def _run_live(app):
    """uvicorn on 127.0.0.1:<free port> in a thread; yields its URL, stops it after."""
    uvicorn = pytest.importorskip("uvicorn")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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


@pytest.fixture(scope="module")
def live_server(serve_setup):
    """uvicorn on 127.0.0.1:<free port> in a thread, over the session's worker."""
    pytest.importorskip("uvicorn")
    from partreid.serve import create_app

    yield from _run_live(create_app(serve_setup["worker"]))


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


STORE_SCREENSHOT_COPY = "/tmp/partreid_serve_store_screenshot.png"
STORE_TOKEN = "browser-test-token-0123456789abcdef"
TCARDS_SETTLED = """() => { const cs = [...document.querySelectorAll('#results .tcard')];
  return cs.length > 0 && cs.every(c => c.classList.contains('missing')
    || (c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0)); }"""
FIRST_TRACKLET_IS = """(t) => { const c = document.querySelector('#results .tcard');
  return c !== null && c.dataset.tracklet === t; }"""


@pytest.fixture(scope="module")
def store_server(store_setup, tmp_path_factory):
    """The store app, token-protected and audited, live on a free local port."""
    pytest.importorskip("uvicorn")
    from partreid.serve import create_app
    from partreid.serve.access import AuditLog

    audit = AuditLog(str(tmp_path_factory.mktemp("audit") / "audit.log"))
    app = create_app(
        store_setup["worker"], store=store_setup["store"], token=STORE_TOKEN, audit=audit
    )
    yield from _run_live(app)
    audit.close()


def _card_texts(page):
    return [
        (c.get_attribute("data-tracklet"), c.query_selector(".when").inner_text())
        for c in page.query_selector_all("#results .tcard")
    ]


def test_store_page_logs_in_filters_and_groups_by_tracklet(
    browser, store_server, store_setup, tmp_path
):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(store_server + "/")
    # 1. the token prompt; a wrong token is refused, the right one opens the page
    page.wait_for_selector("#login-token")
    page.fill("#login-token", "wrong")
    page.click(".login button")
    page.wait_for_function("() => document.getElementById('login-error').textContent !== ''")
    page.fill("#login-token", STORE_TOKEN)
    page.click(".login button")
    page.wait_for_function(
        "() => document.getElementById('meta').textContent.includes('tracklets')"
    )
    meta = page.inner_text("#meta")
    st = store_setup["store"].stats()
    assert f"{st.crops} crops in {st.tracklets} tracklets" in meta and "4 cameras" in meta

    # 2. upload: tracklets, the query's own first, each card with its best crop and a timeline
    page.set_input_files("#file", store_setup["query_image"])
    page.wait_for_function(FIRST_TRACKLET_IS, arg="2:9")
    page.wait_for_function(TCARDS_SETTLED)
    first = page.query_selector("#results .tcard")
    assert "2 crops" in first.inner_text() and "camera 2" in first.inner_text()
    assert first.query_selector(".timeline .seg-span") is not None

    # 3. filters: cameras 1 and 9 (chips), from 14:00:00.5 UTC on, sorted by time
    page.click("#cam-chips .chip[data-camera='1']")
    page.click("#cam-chips .chip[data-camera='9']")
    assert page.input_value("#cameras") == "1,9"
    page.fill("#after", "2026-12-03T14:00:00")
    page.click("#run")
    page.wait_for_function(SUMMARY_HAS, arg="cameras 1, 9")
    page.wait_for_function(TCARDS_SETTLED)
    cams = [c.inner_text() for c in page.query_selector_all("#results .tcard .cam")]
    assert cams and all(c.startswith(("camera 1 ", "camera 9 ")) for c in cams)
    page.click("#sort-time")
    starts = [w for _, w in _card_texts(page)]
    assert starts == sorted(starts)
    shot = tmp_path / "serve_store.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copy(shot, STORE_SCREENSHOT_COPY)
    print(f"screenshot: {shot} (copied to {STORE_SCREENSHOT_COPY})")

    # 4. by crop: the crops found, grouped by their tracklet
    page.select_option("#by", "crop")
    page.wait_for_function(SUMMARY_HAS, arg="by crop")
    page.wait_for_function(TCARDS_SETTLED)
    assert "matching crops" in page.inner_text("#results .tcard")
    tracklets = [t for t, _ in _card_texts(page)]
    assert len(tracklets) == len(set(tracklets))
    page.screenshot(path=str(tmp_path / "serve_store_crops.png"), full_page=True)
    shutil.copy(tmp_path / "serve_store_crops.png", "/tmp/partreid_serve_store_crops.png")
    page.select_option("#by", "tracklet")
    page.wait_for_function(SUMMARY_HAS, arg="by tracklet")

    # 5. a click on a card searches with its tracklet, which is left out of its results
    tid = page.query_selector("#results .tcard").get_attribute("data-tracklet")
    page.click("#results .tcard")
    page.wait_for_function(SUMMARY_HAS, arg=f"tracklet {tid}")
    assert tid not in [t for t, _ in _card_texts(page)]

    # 6. a bad filter shows the server's message naming the field
    page.fill("#cameras", "3-x")
    page.click("#run")
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").startswith("cameras")
    assert [e for e in errors if not re.search(r"status of 4(01|22) ", e)] == []
    page.close()


@pytest.fixture(scope="module")
def linked_server(store_setup, linked_copy, tmp_path_factory):
    """A linked copy of the store (site identities), token-protected and audited, live."""
    pytest.importorskip("uvicorn")
    from partreid.serve import create_app
    from partreid.serve.access import AuditLog
    from partreid.store import open_store

    audit = AuditLog(str(tmp_path_factory.mktemp("linked_audit") / "audit.log"))
    with open_store(linked_copy()) as store:
        app = create_app(store_setup["worker"], store=store, token=STORE_TOKEN, audit=audit)
        yield from ((url, store) for url in _run_live(app))
    audit.close()


ROUTE_SHOWN = """(n) => { const d = document.getElementById('route-dialog');
  return d !== null && d.open && d.querySelectorAll('.route-item').length === n
    && [...d.querySelectorAll('.route-item img')].every(i => i.complete && i.naturalWidth > 0); }"""


def test_store_page_shows_a_route_searches_from_it_and_forgets_the_person(
    browser, linked_server, store_setup, tmp_path
):
    from partreid.store.identity import route_of

    url, store = linked_server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#login-token")
    page.fill("#login-token", STORE_TOKEN)
    page.click(".login button")
    page.wait_for_function(
        "() => document.getElementById('meta').textContent.includes('tracklets')"
    )
    page.set_input_files("#file", store_setup["query_image"])
    page.wait_for_function(TCARDS_SETTLED)
    # 1. a result opens its person's route: a row per camera, a crop per tracklet, in order
    card = page.query_selector("#results .tcard")
    key = card.get_attribute("data-tracklet")
    table = store.tracklets(keys=[key])
    want = route_of(store, int(table.identity[0]))
    card.query_selector(".route-btn").click()
    page.wait_for_function(ROUTE_SHOWN, arg=len(want))
    rows = page.query_selector_all("#route-dialog .route-row")
    cams = list(dict.fromkeys(s.camera for s in want))
    assert [int(r.get_attribute("data-camera")) for r in rows] == cams
    items = page.query_selector_all("#route-dialog .route-item")
    assert [i.get_attribute("data-tracklet") for i in items] == [s.tracklet for s in want]
    lefts = [float(i.evaluate("e => parseFloat(e.style.left)")) for i in items]
    assert lefts == sorted(lefts) and lefts[0] == 0.0  # one shared time axis
    page.screenshot(path=str(tmp_path / "route.png"))
    shutil.copy(tmp_path / "route.png", "/tmp/partreid_serve_route.png")
    # 2. search with the route: its own tracklets are not among the results
    page.click("#route-dialog button.primary")
    page.wait_for_function(SUMMARY_HAS, arg="the route of identity")
    page.wait_for_function(TCARDS_SETTLED)
    shown = {t for t, _ in _card_texts(page)}
    assert shown and not shown & {s.tracklet for s in want}
    # 3. forget the person: confirmed, gone from the store and from the page
    page.query_selector("#results .tcard .route-btn").click()
    page.wait_for_selector("#route-dialog[open]")
    other = [
        i.get_attribute("data-tracklet")
        for i in page.query_selector_all("#route-dialog .route-item")
    ]
    who = int(store.tracklets(keys=[other[0]]).identity[0])
    page.once("dialog", lambda d: d.accept())
    page.click("#route-dialog button.danger")
    page.wait_for_function(
        "(w) => document.getElementById('status').textContent.includes('forgot identity ' + w)",
        arg=who,
    )
    assert len(store.tracklets(identities=[who])) == 0
    assert not {t for t, _ in _card_texts(page)} & set(other)
    assert errors == []
    page.close()
