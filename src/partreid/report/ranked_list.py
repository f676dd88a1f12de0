"""The ranked-list picture: each query with its top matches, green = same person, red = not."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.io import Item, read_image

GREEN = (40, 180, 60)
RED = (220, 40, 40)


def pick_queries(q_pids, g_pids, q_cams, g_cams, n: int) -> list:
    """Up to ``n`` query indices, evenly spread, among the queries that have a valid match."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_cams, g_cams = np.asarray(q_cams), np.asarray(g_cams)
    valid = [
        i
        for i in range(len(q_pids))
        if np.any((g_pids == q_pids[i]) & ((g_cams != q_cams[i]) | (q_cams[i] < 0)))
    ]
    if not valid:
        return []
    idx = np.linspace(0, len(valid) - 1, num=min(n, len(valid))).round().astype(int)
    return [valid[i] for i in sorted(set(idx.tolist()))]


def draw_ranked_lists(
    distmat,
    query: Sequence[Item],
    gallery: Sequence[Item],
    path: str,
    num_queries: int = 8,
    topk: int = 10,
    tile=(128, 64),
    query_indices: Optional[Sequence[int]] = None,
) -> str:
    """Draw ``num_queries`` rows: the query, then its ``topk`` gallery matches.

    Gallery images of the query's identity taken by the query's camera are left out, as the
    evaluation protocol ignores them. Each match has a green border when it is the same person
    and red otherwise (as in the CGPN paper's Fig. 6). Returns ``path``.
    """
    d = distmat.detach().cpu().numpy() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    q_pids = np.array([p for _, p, _ in query])
    q_cams = np.array([c for _, _, c in query])
    g_pids = np.array([p for _, p, _ in gallery])
    g_cams = np.array([c for _, _, c in gallery])
    rows = (
        list(query_indices)
        if query_indices is not None
        else pick_queries(q_pids, g_pids, q_cams, g_cams, num_queries)
    )
    th, tw = tile
    pad, gap, border = 4, 16, 4
    width = pad + (tw + pad) * (topk + 1) + gap
    canvas = Image.new("RGB", (width, pad + (th + 16 + pad) * max(len(rows), 1)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, qi in enumerate(rows):
        y = pad + r * (th + 16 + pad)
        canvas.paste(read_image(query[qi][0]).resize((tw, th)), (pad, y))
        draw.text((pad, y + th + 2), f"query {q_pids[qi]}", fill="black")
        keep = ~((g_pids == q_pids[qi]) & (g_cams == q_cams[qi]) & (q_cams[qi] >= 0))
        order = np.argsort(d[qi], kind="stable")
        order = order[keep[order]][:topk]
        for j, gi in enumerate(order):
            x = pad + (tw + pad) * (j + 1) + gap
            img = read_image(gallery[gi][0]).resize((tw - 2 * border, th - 2 * border))
            colour = GREEN if g_pids[gi] == q_pids[qi] else RED
            draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=colour)
            canvas.paste(img, (x + border, y + border))
            draw.text((x, y + th + 2), f"{j + 1}", fill=colour)
    canvas.save(path)
    return path
