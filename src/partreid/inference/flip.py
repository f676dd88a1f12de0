"""The test-time feature of a batch, averaged with its mirror image's: the one implementation,
used by evaluation, the Extractor, the robustness sweep and the exported ONNX graph."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def flip_averaged(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor):
    """``0.5 * (f(x) + f(mirror x))`` with ``f = forward``: image and mirror image in one 2N
    batch (half the per-call overhead), the features cast to float32 before averaging (under
    autocast the model may return float16/bfloat16)."""
    n = images.shape[0]
    both = forward(torch.cat([images, torch.flip(images, dims=[3])])).float()
    return 0.5 * (both[:n] + both[n:])


class FlipAveraged(nn.Module):
    """``model`` with test-time flip-averaging (:func:`flip_averaged`), e.g. for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Flip-averaged features of a preprocessed batch."""
        return flip_averaged(self.model, images)
