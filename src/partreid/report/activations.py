"""Activation-map figures (CGPN paper Fig. 5, RMGL Fig. 4): named maps over the input images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .image_batch import ImageBatch, eval_mode  # noqa: E402


@torch.no_grad()
def draw_activation_maps(model, batch: ImageBatch, path: str) -> str:
    """One row per image: the image, then each named map of ``model.activation_maps`` over it."""
    with eval_mode(model):
        maps = model.activation_maps(batch.tensor)
    names = list(maps)
    h, w = batch.size
    n = len(batch.items)
    fig, axes = plt.subplots(
        n, len(names) + 1, figsize=(1.3 * (len(names) + 1), 2.6 * n), squeeze=False
    )
    for r, img in enumerate(batch.pictures):
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"id {batch.items[r][1]}", fontsize=7)
        for c, name in enumerate(names, start=1):
            m = maps[name][r : r + 1, None].float()
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0, 0].cpu()
            m = (m - m.min()) / (m.max() - m.min() + 1e-12)
            axes[r, c].imshow(img)
            axes[r, c].imshow(m.numpy(), cmap="jet", alpha=0.5)
            if r == 0:
                axes[r, c].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
