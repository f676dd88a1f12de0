"""The web pages put together from the shared templates, and how the server serves them."""

from __future__ import annotations

import re

import pytest

from partreid.serve.pages import GALLERY_PAGE, STORE_PAGE, render_page
from partreid.serve.routes import PAGE_CSP, STATIC_DIR

PAGES = {"gallery": (GALLERY_PAGE, "app.js"), "store": (STORE_PAGE, "store.js")}


def _static(name: str) -> str:
    with open(f"{STATIC_DIR}/{name}", encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(PAGES))
def test_each_page_is_one_whole_document(name):
    page, script = PAGES[name]
    html = render_page(page)
    assert "$" not in html  # every placeholder filled
    assert html.startswith("<!doctype html>\n") and html.endswith("</body>\n</html>\n")
    for tag in ("<html", "<head>", "<body>", "<header", "<main", "<nav>", "</main>", "</nav>"):
        assert html.count(tag) == 1, tag
    assert f"<title>partreid · {page.subtitle}</title>" in html
    assert f'<span class="sub">{page.subtitle}</span>' in html
    assert "\n\n\n" not in html and not re.search(r"\n[ ]+\n", html)  # no line left blank
    css = re.findall(r'<link rel="stylesheet" href="/static/([^"]+)">', html)
    assert css == ["style.css", *page.stylesheets]
    js = re.findall(r'<script src="/static/([^"]+)"></script>', html)
    assert js == ["auth.js", "page.js", *page.scripts] and script in js
    assert html.index("</main>") < html.index("<script")  # the scripts find the page's elements


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_element_the_scripts_look_up_is_on_the_page(name):
    page = PAGES[name][0]
    html = render_page(page)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    sources = [_static(s) for s in ("auth.js", "page.js", *page.scripts)]
    wanted = {i for s in sources for i in re.findall(r'\$\("([^"]+)"\)', s)}
    made = {i for s in sources for i in re.findall(r'\.id = "([^"]+)"', s)}  # created by a script
    assert wanted and wanted - made <= set(ids), sorted(wanted - made - set(ids))


def test_the_pages_options():
    gallery, store = render_page(GALLERY_PAGE), render_page(STORE_PAGE)
    assert 'id="query-heat"' in gallery and 'id="query-heat"' not in store  # app.js's overlay
    assert 'id="logout"' in store and 'id="logout"' not in gallery  # store.js shows it
    assert 'class="drop small"' in store and 'class="drop"' in gallery
    assert 'id="tracklet-form"' in store and 'id="gallery-view"' in gallery


def test_the_page_is_served_at_the_root_and_no_template_under_static():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from partreid.serve.routes import add_page

    app = FastAPI()
    add_page(app, STORE_PAGE)
    with TestClient(app) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.text == render_page(STORE_PAGE)
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["content-security-policy"] == PAGE_CSP
        assert r.headers["cache-control"] == "no-cache"
        for name in ("shell.html", "query_drop.html", "gallery.html", "store.html", "index.html"):
            assert c.get(f"/static/{name}").status_code == 404, name
            assert c.get(f"/static/../templates/{name}").status_code == 404, name
        assert c.get("/static/store.js").status_code == 200
