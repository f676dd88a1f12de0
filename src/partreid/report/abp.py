"""Activation balanced pooling borders drawn over images (RMGL, Sec. III-C)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..errors import InvalidValueError  # noqa: E402
from .image_batch import ImageBatch, eval_mode  # noqa: E402

COLOURS = ["#ff3030", "#30c0ff", "#ffd020", "#50ff50", "#ff50ff", "#ffffff"]


@torch.no_grad()
def draw_abp_borders(model, batch: ImageBatch, path: str) -> str:
    """One row per image, one panel per branch: the image with that branch's ABP stripe borders
    (uniform stripes dashed for comparison)."""
    if not hasattr(model, "abp_borders"):
        raise InvalidValueError(
            f"model {type(model).__name__} has no activation balanced pooling "
            "(use an RMGL or PCB config with model.abp=true)"
        )
    with eval_mode(model):
        borders = model.abp_borders(batch.tensor, image_rows=True)
    names = list(borders)
    h = batch.size[0]
    n = len(batch.items)
    fig, axes = plt.subplots(n, len(names), figsize=(1.5 * len(names), 2.8 * n), squeeze=False)
    for r, img in enumerate(batch.pictures):
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(img)
            b = borders[name][r].tolist()
            k = len(b) - 1
            for i in range(1, k):
                ax.axhline(h * i / k - 0.5, color="white", lw=0.8, ls="--")
                ax.axhline(b[i] - 0.5, color=COLOURS[i % len(COLOURS)], lw=2)
            if r == 0:
                ax.set_title(f"ABP {name}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
