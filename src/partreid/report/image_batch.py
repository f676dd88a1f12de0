"""The images a model figure is drawn over: read and preprocessed once, shown as they were seen."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms as T
from torch import nn

from ..data.io import Item, read_image


def _normalize_of(transform) -> Tuple[Sequence[float], Sequence[float]]:
    """The mean and std of the ``Normalize`` step in ``transform`` (a ``Compose``, nested or not);
    0 and 1 (nothing to undo) when it has none."""
    steps = [transform]
    while steps:
        t = steps.pop(0)
        if isinstance(t, T.Normalize):
            return t.mean, t.std
        steps[:0] = getattr(t, "transforms", [])
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """One normalised ``3 x H x W`` tensor back to an ``H x W x 3`` picture in [0, 1]."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class ImageBatch:
    """``items`` as the model sees them (``tensor``, ``N x 3 x H x W`` on its device) and as a
    figure shows them (``pictures``, ``H x W x 3`` in [0, 1], the normalisation undone)."""

    items: Sequence[Item]
    tensor: torch.Tensor
    pictures: List[np.ndarray]

    @classmethod
    def read(cls, items: Sequence[Item], transform, device: torch.device) -> ImageBatch:
        """Read ``items``, apply ``transform`` (the test transform), move the batch to
        ``device``; the mean and std to undo are those of its ``Normalize`` step."""
        tensor = torch.stack([transform(read_image(p)) for p, _, _ in items]).to(device)
        mean, std = _normalize_of(transform)
        return cls(list(items), tensor, [_denormalize(x, mean, std) for x in tensor])

    @property
    def size(self) -> Tuple[int, int]:
        """``(H, W)`` of the model's input."""
        h, w = self.tensor.shape[-2:]
        return int(h), int(w)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; its train/eval mode as before afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
