"""Receptive partition (RP; RMGL paper, Sec. III-B, Fig. 3).

An intermediate map is cut into ``k`` horizontal stripes, the stripes are stacked along the
batch dimension (``k*n x c x h/k x w``), run through the *same* layers as the whole map, and split
back. Every output stripe then only sees its own stripe of the partitioned map: the layers'
receptive field is cut at the stripe border.

Heights that ``k`` does not divide: stripes follow :func:`~partreid.models.parts.stripe_bounds`
(the first ``H mod k`` stripes are one row taller). Stripes of equal height are stacked and run
together, so there are at most two groups; each stripe is processed exactly as it would be alone
(no padding). In ``train()`` mode BatchNorm then takes batch statistics per group, i.e. over all
stripes of the same height; when ``k`` divides ``H`` there is a single group, as in the paper.

:class:`ReceptivePartition` is the dual-path wrapper of Fig. 3(b) for a plain layer sequence;
RMGL, whose partition may lie inside the trunk shared by its branches, uses
:func:`run_on_stripes` directly.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import InvalidValueError
from .parts import stripe_bounds


def split_stripes(x: torch.Tensor, k: int) -> List[torch.Tensor]:
    """Cut N x C x H x W into ``k`` horizontal stripes (views), top to bottom."""
    h = x.shape[2]
    if not 1 <= k <= h:
        raise InvalidValueError(
            f"receptive partition cannot cut a map of height {h} into {k} stripes; "
            "partition earlier (a larger map) or use fewer stripes"
        )
    return [x[:, :, a:b] for a, b in stripe_bounds(h, k)]


def run_on_stripes(
    layers: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, k: int
) -> List[torch.Tensor]:
    """The RP path: ``layers`` applied to each of the ``k`` stripes of ``x`` -> ``k`` outputs.

    Stripes of equal height are stacked along the batch dimension (stripe-major:
    ``[stripe_1 of all images, stripe_2 of all images, ...]``) and run in one call.
    """
    n = x.shape[0]
    stripes = split_stripes(x, k)
    groups: Dict[int, List[int]] = {}
    for i, s in enumerate(stripes):
        groups.setdefault(s.shape[2], []).append(i)
    out: List[Optional[torch.Tensor]] = [None] * k
    for members in groups.values():
        y = layers(torch.cat([stripes[i] for i in members], dim=0))
        for j, i in enumerate(members):
            out[i] = y[j * n : (j + 1) * n]
    return out  # type: ignore[return-value]


def stitch(stripes: List[torch.Tensor]) -> torch.Tensor:
    """Stripe outputs stitched back along the height: the RP path's whole map."""
    return torch.cat(stripes, dim=2)


class ReceptivePartition(nn.Module):
    """Dual-path wrapper (Fig. 3(b)): ``layers`` on the whole map and on its ``k`` stripes.

    ``forward(x)`` returns ``(original, stripes)``: the original path's output (``None`` when
    ``original=False``, "only RP") and the list of the ``k`` RP stripe outputs. Both paths share
    ``layers`` (same weights). With ``k = 1`` the RP path equals the original path.
    """

    def __init__(self, layers: nn.Module, k: int, original: bool = True):
        super().__init__()
        if k < 1:
            raise InvalidValueError(f"receptive partition needs k >= 1 stripes, got {k}")
        self.layers = layers
        self.k = k
        self.original = original

    def forward(self, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], List[torch.Tensor]]:
        whole = self.layers(x) if self.original else None
        return whole, run_on_stripes(self.layers, x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}, original={self.original}"
