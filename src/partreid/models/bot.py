"""BoT: the strong global baseline (Luo et al., "Bag of Tricks and a Strong Baseline", 2019).

backbone (last stride 1) -> GAP -> f_t (triplet) -> BNNeck -> f_i (classifier, test feature).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .backbones import Backbone
from .parts import ReductionHead, check_choice, pool2d
from .registry import register_model


@register_model("bot")
class BoT(nn.Module):
    """Global feature with BNNeck; CE on the BN feature's logits, triplet before BN.

    Args:
        backbone: built by ``build_model`` from its options ``backbone``, ``pretrained`` and
            ``last_stride`` (see :func:`~partreid.models.backbones.build_backbone`).
        num_classes: training identities.
        pooling: ``avg`` (GAP, the paper's) or ``max``.
        test_feature: ``after_bn`` (the paper's) or ``before_bn``.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        pooling: str = "avg",
        test_feature: str = "after_bn",
    ):
        super().__init__()
        check_choice("test_feature", test_feature, ("after_bn", "before_bn"))
        self.backbone = backbone
        self.pooling = pooling
        self.test_feature = test_feature
        self.head = ReductionHead(self.backbone.out_channels, num_classes, dim=None, relu=False)
        self.head.reduction[0].bias.requires_grad_(False)  # BNNeck: no BN shift
        self.feature_dim = self.backbone.out_channels

    def forward(self, x: torch.Tensor):
        fmap = self.backbone(x)
        f_t = pool2d(fmap, self.pooling)
        f_i, logits = self.head(f_t)
        if self.training:
            return {"logits": [logits], "triplet": [f_t]}
        return f_i if self.test_feature == "after_bn" else f_t

    @torch.no_grad()
    def activation_maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named N x h x w activation maps (mean of squared activations over channels).

        Runs in eval mode so that BN running statistics stay untouched."""
        was_training = self.training
        self.eval()
        maps = {"global": self.backbone(x).pow(2).mean(1)}
        self.train(was_training)
        return maps
