"""PCB: part-based convolutional baseline (Sun et al., "Beyond Part Models", ECCV 2018; SPEC 3).

    backbone (ResNet-50, last stride 1) -> map T (24 x 8 at 384 x 128)
      -> 6 uniform horizontal stripes -> GAP each -> g_p (2048-d)
      -> per stripe: 1x1 conv + BN + ReLU -> h_p (256-d) -> its own classifier (cross-entropy)
    test feature: [h_1, ..., h_6] (6 x 256 = 1,536-d) by default; ``test_feature="pooled"``
    gives the paper's larger alternative [g_1, ..., g_6] (6 x 2048 = 12,288-d).

No refined part pooling (RPP) and no triplet loss. ``abp=True`` re-pools the stripes with
activation balanced pooling at test time (RMGL's ABP, reusable here).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..errors import InvalidValueError
from .abp import abp_pool as _abp_pool
from .backbones import Backbone
from .parts import ReductionHead, check_choice, stripe_pool
from .registry import register_model


@register_model("pcb")
class PCB(nn.Module):
    """Uniform stripes of the last map, each reduced to 256-d and classified on its own.

    Args:
        backbone: built by ``build_model`` from its options ``backbone``, ``pretrained`` and
            ``last_stride`` (see :func:`~partreid.models.backbones.build_backbone`); the paper's:
            ResNet-50, ImageNet, last stride 1.
        num_classes: training identities.
        stripes: number of uniform horizontal stripes (the paper's p = 6).
        pooling: ``avg`` (GAP, the paper's) or ``max``.
        reduction_dim: size of every reduced stripe feature h (256).
        test_feature: ``reduced`` (h, 6 x 256) or ``pooled`` (g, 6 x 2048).
        abp: pool the stripes with activation balanced pooling at test time (not in PCB).
        abp_pool: ABP's stripe pooling, ``avg`` or ``max``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        stripes: int = 6,
        pooling: str = "avg",
        reduction_dim: int = 256,
        test_feature: str = "reduced",
        abp: bool = False,
        abp_pool: str = "avg",
    ):
        super().__init__()
        if isinstance(stripes, bool) or not isinstance(stripes, int) or stripes < 1:
            raise InvalidValueError(f"model.stripes must be a positive integer, got {stripes!r}")
        check_choice("pooling", pooling, ("avg", "max"))
        check_choice("test_feature", test_feature, ("reduced", "pooled"))
        check_choice("abp_pool", abp_pool, ("avg", "max"))
        self.backbone = backbone
        self.stripes = stripes
        self.pooling = pooling
        self.test_feature = test_feature
        self.abp = abp
        self.abp_pool = abp_pool
        channels = self.backbone.out_channels
        self.heads = nn.ModuleList(
            ReductionHead(channels, num_classes, reduction_dim, relu=True) for _ in range(stripes)
        )
        self.feature_dim = stripes * (reduction_dim if test_feature == "reduced" else channels)

    def forward(self, x: torch.Tensor):
        fmap = self.backbone(x)
        if self.abp and not self.training:
            g = _abp_pool(fmap, self.stripes, self.abp_pool)  # N x C x p
        else:
            g = stripe_pool(fmap, self.stripes, self.pooling)  # N x C x p
        if not self.training and self.test_feature == "pooled":
            return g.transpose(1, 2).flatten(1)  # [g_1, ..., g_p]
        outs = [head(g[:, :, i]) for i, head in enumerate(self.heads)]
        if self.training:
            return {"logits": [lg for _, lg in outs], "triplet": [], "mse": []}
        return torch.cat([h for h, _ in outs], dim=1)  # [h_1, ..., h_p]

    @torch.no_grad()
    def activation_maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The last map's response (mean of squared activations), N x h x w."""
        return {"global": self.backbone(x).pow(2).mean(1)}
