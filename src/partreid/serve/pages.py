"""The server's two web pages, built from shared templates.

``templates/shell.html`` is what both pages share: the document head, the top bar and the
scripts; ``templates/gallery.html`` and ``templates/store.html`` are the pages' bodies (their
``<main>``), and both hold ``templates/query_drop.html``, the query's drop zone (the same ids
for ``app.js`` and ``store.js``). :func:`render_page` fills them for a :class:`Page`. The
templates are not under ``static/``: ``/static`` serves no unfilled template and no page
without its head.

Templates are :class:`string.Template` text. A placeholder for several lines stands alone at
the start of its line, and its value carries its own indentation; a line that held only a
placeholder filled with nothing (an element the page leaves out) is dropped.
"""

import os
from dataclasses import dataclass
from string import Template
from typing import Tuple

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
SIGN_OUT = '<button id="logout" class="linkish" type="button" hidden>Sign out</button>'
HEAT_MAP = '<img id="query-heat" class="heat" alt="activation map of the query" hidden>'


@dataclass(frozen=True)
class Page:
    """One page: its subtitle (in its title and top bar), its body's template, the files of
    ``/static`` it loads besides ``style.css``, ``auth.js`` and ``page.js``, and its options:
    a Sign out button in the top bar, the query's activation map over the query image, a
    shorter drop zone (room for the filters below it)."""

    subtitle: str
    body: str
    stylesheets: Tuple[str, ...] = ()
    scripts: Tuple[str, ...] = ()
    sign_out: bool = False
    heat_map: bool = False
    small_drop: bool = False


GALLERY_PAGE = Page("person search", "gallery.html", scripts=("app.js",), heat_map=True)
STORE_PAGE = Page(
    "store search",
    "store.html",
    stylesheets=("route.css",),
    scripts=("store.js", "route.js"),
    sign_out=True,
    small_drop=True,
)


def render_page(page: Page) -> str:
    """The page's HTML: the shell around its body, with its title, top bar, files and options."""
    query_drop = _fill(
        "query_drop.html",
        drop_class="drop small" if page.small_drop else "drop",
        heat_map=HEAT_MAP if page.heat_map else "",
    )
    stylesheets = [f'  <link rel="stylesheet" href="/static/{s}">' for s in page.stylesheets]
    scripts = [f'  <script src="/static/{s}"></script>' for s in page.scripts]
    shell = _fill(
        "shell.html",
        subtitle=page.subtitle,
        stylesheets="\n".join(stylesheets),
        sign_out=SIGN_OUT if page.sign_out else "",
        body=_fill(page.body, query_drop=query_drop),
        scripts="\n".join(scripts),
    )
    return shell + "\n"


def _fill(name: str, **values: str) -> str:
    """The template ``name`` filled with ``values`` (no final newline), less the lines that held
    only a placeholder filled with nothing."""
    with open(os.path.join(TEMPLATES_DIR, name), encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        filled = Template(line).substitute(values)
        if filled.strip() or not line.strip():
            kept.append(filled)
    return "\n".join(kept)
