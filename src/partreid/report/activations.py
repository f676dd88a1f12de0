"""Activation-map figures (CGPN paper Fig. 5, RMGL Fig. 4): named maps over the input images."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ..data.io import Item, read_image  # noqa: E402


def _denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def draw_activation_maps(
    model,
    items: Sequence[Item],
    transform,
    device,
    path: str,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
) -> str:
    """One row per image: the image, then each named map of ``model.activation_maps`` over it."""
    was = model.training
    model.eval()
    images = torch.stack([transform(read_image(p)) for p, _, _ in items]).to(device)
    maps = model.activation_maps(images)
    model.train(was)
    names = list(maps)
    h, w = images.shape[-2:]
    fig, axes = plt.subplots(
        len(items),
        len(names) + 1,
        figsize=(1.3 * (len(names) + 1), 2.6 * len(items)),
        squeeze=False,
    )
    for r in range(len(items)):
        img = _denormalize(images[r], mean, std)
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"id {items[r][1]}", fontsize=7)
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
