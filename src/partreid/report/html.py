"""The run report page: a self-contained HTML file with the metrics tables and pictures."""

from __future__ import annotations

import html
import os
from typing import Any, Dict, List, Optional

from .robustness import robustness_table_html

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def write_html(
    out_dir: str,
    title: str,
    metrics: Dict[str, Any],
    images: List[str],
    notes: Optional[List[str]] = None,
    robustness: Optional[Dict[str, Any]] = None,
) -> str:
    """A small self-contained page: the metrics table(s) and the pictures of the run (and the
    robustness tables when ``robustness`` holds a sweep's result)."""
    rows = [(metrics.get("dataset", "test"), metrics)] + list(
        metrics.get("cross_domain", {}).items()
    )
    table = "".join(
        f"<tr><td>{html.escape(str(n))}</td>"
        + "".join(f"<td>{100 * m[k]:.1f}</td>" for k in METRIC_KEYS)
        + f"<td>{m.get('num_valid_queries', '')}</td><td>{m.get('num_gallery', '')}</td></tr>"
        for n, m in rows
    )
    pics = "".join(
        f'<figure><img src="{html.escape(p)}"><figcaption>{html.escape(p)}</figcaption></figure>'
        for p in images
    )
    extra = "".join(f"<p>{html.escape(n)}</p>" for n in (notes or []))
    if robustness:
        pics = robustness_table_html(robustness) + pics
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1>{extra}
<table><tr><th>test set</th><th>rank-1 %</th><th>rank-5 %</th><th>rank-10 %</th><th>mAP %</th>
<th>mINP %</th><th>queries</th><th>gallery</th></tr>{table}</table>{pics}</body></html>"""
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path
