"""Robustness results as text, HTML and pictures: tables per kind, curves, altered examples.

A robustness result is the plain dict that ``partreid.engine.robustness`` stores in
``metrics.json`` under ``"robustness"``::

    {"dataset": ..., "seed": 0, "alter_gallery": false, "kinds": [...], "severities": [...],
     "clean": {"rank1": .., "rank5": .., "mAP": .., "mINP": ..},
     "results": {kind: [{"severity": 0.1, "rank1": .., "mAP": .., "mINP": ..}, ...], ...},
     "per_query_ap": {"clean": [ap, ...], kind: [[ap, ...] per severity], ...},  # None: no match
     "query_digest": "..."}                     # the query list's fingerprint (pairs runs)

This module only reads such dicts (it knows no engine).
"""

from __future__ import annotations

import html
from typing import Any, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

TABLE_METRICS = ("rank1", "mAP", "mINP")
LABELS = {"rank1": "rank-1", "rank5": "rank-5", "mAP": "mAP", "mINP": "mINP"}


def curve(rob: Dict[str, Any], kind: str, metric: str = "mAP") -> Tuple[List[float], List[float]]:
    """``(severities, values)`` of one kind, starting with the clean result at severity 0."""
    pts = {0.0: rob["clean"][metric]} if "clean" in rob else {}
    for r in rob.get("results", {}).get(kind, []):
        pts[float(r["severity"])] = float(r[metric])
    xs = sorted(pts)
    return xs, [pts[x] for x in xs]


def format_robustness_table(rob: Dict[str, Any], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """A Markdown table: one row per kind and severity (metrics in %), clean first."""
    head = "| kind | severity | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |"
    lines = [head, "|" + "---|" * (2 + len(metrics))]
    clean = rob.get("clean")
    if clean:
        lines.append("| clean | 0 | " + " | ".join(f"{100 * clean[m]:.1f}" for m in metrics) + " |")
    for kind in rob.get("kinds", []):
        for r in rob["results"].get(kind, []):
            vals = " | ".join(f"{100 * r[m]:.1f}" for m in metrics)
            lines.append(f"| {kind} | {r['severity']:g} | {vals} |")
    return "\n".join(lines)


def robustness_table_html(rob: Dict[str, Any], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """The run page's robustness section: a kinds x severities table per metric."""
    sev = [float(s) for s in rob.get("severities", [])]
    clean = rob.get("clean", {})
    what = "query and gallery" if rob.get("alter_gallery") else "query"
    parts = [
        f"<h2>Robustness ({html.escape(what)} images altered, seed {rob.get('seed', 0)})</h2>",
        "<p>severity = fraction of the crop lost: occluded area (person_*/clutter_*) or height "
        "cut off (keep_top/keep_bottom keep the rest and resize it back).</p>",
    ]
    for m in metrics:
        head = "".join(f"<th>{s:g}</th>" for s in sev)
        rows = ""
        for kind in rob.get("kinds", []):
            by = {float(r["severity"]): r for r in rob["results"].get(kind, [])}
            cells = "".join(
                f"<td>{100 * by[s][m]:.1f}</td>" if s in by else "<td></td>" for s in sev
            )
            rows += f"<tr><td>{html.escape(kind)}</td>{cells}</tr>"
        clean_cell = f"{100 * clean[m]:.1f}" if m in clean else ""
        parts.append(
            f"<h3>{LABELS.get(m, m)} % (clean {clean_cell})</h3><table><tr><th>kind</th>{head}"
            f"</tr>{rows}</table>"
        )
    return "".join(parts)


def draw_robustness_curves(
    runs: Dict[str, Dict[str, Any]],
    path: str,
    metrics: Sequence[str] = ("mAP", "rank1"),
    kinds: Optional[Sequence[str]] = None,
) -> str:
    """One panel per kind (and one with the mean over kinds): metric vs severity, one colour
    per run, one line style per metric. ``runs`` maps a label to a robustness dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kinds is None:
        kinds = []
        for rob in runs.values():
            kinds += [k for k in rob.get("kinds", []) if k not in kinds]
    panels = list(kinds) + (["mean over kinds"] if len(kinds) > 1 else [])
    cols = min(4, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False, sharey=True
    )
    styles = ["-", "--", ":", "-."]
    for i, panel in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for c, (label, rob) in enumerate(runs.items()):
            for j, m in enumerate(metrics):
                if panel == "mean over kinds":
                    xs, ys = mean_curve(rob, [k for k in kinds if k in rob.get("results", {})], m)
                else:
                    xs, ys = curve(rob, panel, m) if panel in rob.get("results", {}) else ([], [])
                if xs:
                    ax.plot(
                        xs,
                        [100 * y for y in ys],
                        styles[j % len(styles)],
                        color=f"C{c}",
                        marker="o",
                        ms=3,
                        label=f"{label} {LABELS.get(m, m)}",
                    )
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("severity (fraction lost)", fontsize=8)
        ax.grid(alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("%", fontsize=8)
    for i in range(len(panels), nrows * cols):
        axes[i // cols][i % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) - 1) // 4 + 1), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mean_curve(
    rob: Dict[str, Any], kinds: Sequence[str], metric: str = "mAP"
) -> Tuple[List[float], List[float]]:
    """The mean over ``kinds`` of the metric at each severity that all of them have."""
    curves = [dict(zip(*curve(rob, k, metric))) for k in kinds]
    if not curves:
        return [], []
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    return xs, [sum(c[x] for c in curves) / len(curves) for x in xs]


def draw_example_strip(
    rows: Sequence[Tuple[str, Sequence[Image.Image]]],
    header: Sequence[str],
    path: str,
    tile: Tuple[int, int] = (128, 64),
) -> str:
    """A grid of altered examples: one row per ``(label, images)``, columns titled ``header``
    (e.g. clean, then each severity). ``tile`` is (height, width). Returns ``path``."""
    th, tw = tile
    pad, left, top = 4, 110, 16
    ncols = max([len(imgs) for _, imgs in rows] + [len(header), 1])
    canvas = Image.new(
        "RGB", (left + (tw + pad) * ncols + pad, top + (th + pad) * max(len(rows), 1)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, h in enumerate(header):
        draw.text((left + j * (tw + pad), 2), str(h), fill="black")
    for i, (label, imgs) in enumerate(rows):
        y = top + i * (th + pad)
        draw.text((4, y + th // 2 - 6), str(label), fill="black")
        for j, img in enumerate(imgs):
            canvas.paste(img.convert("RGB").resize((tw, th)), (left + j * (tw + pad), y))
    canvas.save(path)
    return path
