"""Small pieces shared by several models: stripe and window pooling, heads."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import InvalidValueError


def check_choice(key: str, value: str, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``; else an error naming the ``model.<key>`` option."""
    if value not in valid:
        raise InvalidValueError(f"model.{key} must be one of {list(valid)}, got {value!r}")
    return value


def pool2d(x: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Global pooling of an N x C x H x W map to N x C (``max`` = GMP, ``avg`` = GAP)."""
    if mode == "max":
        return x.amax(dim=(2, 3))
    if mode == "avg":
        return x.mean(dim=(2, 3))
    raise InvalidValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")


def stripe_bounds(height: int, k: int) -> list:
    """Row ranges ``[(start, end), ...]`` of ``k`` horizontal stripes of a map of ``height`` rows.

    Equal stripes when ``k`` divides ``height``; otherwise the remainder rows go one each to
    the first stripes, so stripes never overlap and every row belongs to exactly one stripe.
    """
    if not 1 <= k <= height:
        raise InvalidValueError(f"cannot cut a map of height {height} into {k} stripes")
    base, extra = divmod(height, k)
    bounds, start = [], 0
    for i in range(k):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def stripe_pool(x: torch.Tensor, k: int, mode: str = "max") -> torch.Tensor:
    """Pool each of ``k`` horizontal stripes of ``x`` (N x C x H x W) -> N x C x k."""
    n, c, h, w = x.shape
    if h % k == 0:
        s = x.reshape(n, c, k, (h // k) * w)
        return s.amax(-1) if mode == "max" else s.mean(-1)
    return torch.stack([pool2d(x[:, :, a:b], mode) for a, b in stripe_bounds(h, k)], dim=-1)


def window_max(stripes: torch.Tensor, length: int) -> torch.Tensor:
    """Max over every window of ``length`` adjacent stripes: N x C x K -> N x C x (K - length + 1).

    The max of a window of stripes is the max of its stripes' maxima, so this equals GMP over
    the corresponding rows of the map without any hard-coded kernel size.
    """
    k = stripes.shape[-1]
    if not 1 <= length <= k:
        raise InvalidValueError(f"window length {length} must be in 1..{k}")
    return stripes.unfold(-1, length, 1).amax(-1)


class ReductionHead(nn.Module):
    """1x1 conv (as a linear layer) + BN (+ ReLU) to ``dim``, then a bias-free classifier.

    ``forward`` takes a pooled N x C feature and returns ``(reduced, logits)``. With
    ``dim=None`` there is no reduction (BNNeck style: BN only, then the classifier).
    """

    def __init__(
        self, in_channels: int, num_classes: int, dim: Optional[int] = 256, relu: bool = True
    ):
        super().__init__()
        layers = []
        out = in_channels
        if dim is not None:
            layers.append(nn.Conv2d(in_channels, dim, 1, bias=False))
            out = dim
        layers.append(nn.BatchNorm2d(out))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        self.reduction = nn.Sequential(*layers)
        self.classifier = nn.Linear(out, num_classes, bias=False)
        self.out_dim = out
        init_head(self)

    def forward(self, feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self.reduction(feat.reshape(feat.shape[0], -1, 1, 1)).flatten(1)
        return z, self.classifier(z)


def init_head(module: nn.Module) -> None:
    """Kaiming init for 1x1 reductions, BN weight 1 / bias 0, classifier N(0, 0.001)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
