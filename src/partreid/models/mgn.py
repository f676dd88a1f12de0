"""MGN: multiple granularity network (Wang et al., ACM MM 2018; SPEC section 3).

Read top to bottom like the MGN paper's figure::

    image ─ trunk (conv1 .. res_conv4_1, shared)
          ├─ Global branch (res_conv4_2 .. res_conv5, last stride 2)  -> GMP -> zg_G      (2048)
          ├─ Part-2 branch (last stride 1) -> GMP -> zg_P2; 2 stripes GMP -> zp2_1, zp2_2
          └─ Part-3 branch (last stride 1) -> GMP -> zg_P3; 3 stripes GMP -> zp3_1..zp3_3
    every z: 1x1 conv + BN + ReLU -> 256-d f, own classifier (CE on all 8)
    triplet on the 3 global features zg_G, zg_P2, zg_P3 (2048-d pooled, as the paper)
    test feature: the 8 reduced features concatenated (8 x 256 = 2048-d)
"""

from __future__ import annotations

import copy
from typing import Dict, Sequence

import torch
from torch import nn

from ..errors import InvalidValueError
from .backbones import Backbone, build_backbone
from .parts import ReductionHead, check_choice, pool2d, stripe_pool
from .registry import register_model


class MGNBranch(nn.Module):
    """A copy of the backbone's last layers, a global feature and ``num_stripes`` stripe features."""

    def __init__(
        self,
        layers: nn.Module,
        channels: int,
        num_classes: int,
        num_stripes: int,
        reduction_dim: int,
    ):
        super().__init__()
        self.layers = layers
        self.num_stripes = num_stripes
        self.global_head = ReductionHead(channels, num_classes, reduction_dim)
        self.stripe_heads = nn.ModuleList(
            ReductionHead(channels, num_classes, reduction_dim) for _ in range(num_stripes)
        )

    def forward(self, shared: torch.Tensor):
        """Pooled ``(global, [stripes])``, each N x c."""
        t = self.layers(shared)
        zg = pool2d(t, "max")
        zp = list(stripe_pool(t, self.num_stripes, "max").unbind(-1)) if self.num_stripes else []
        return zg, zp


@register_model("mgn")
class MGN(nn.Module):
    """Multiple granularity network.

    Args:
        backbone: built by ``build_model`` from its options ``backbone``, ``pretrained`` and
            ``last_stride`` (see :func:`~partreid.models.backbones.build_backbone`). Its last
            stride is the res_conv5 stride of the part branches (1 in the paper).
        num_classes: training identities.
        global_last_stride: res_conv5 stride of the global branch (2 in the paper); another
            than the backbone's gives the global branch a backbone of the same name and weights
            with this stride.
        parts: stripe counts of the part branches ((2, 3) in the paper); the global branch has none.
        reduction_dim: size of every reduced feature (256).
        triplet_on: the triplet loss reads the ``pooled`` global features (the paper's 2048-d)
            or their ``reduced`` 256-d versions.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        global_last_stride: int = 2,
        parts: Sequence[int] = (2, 3),
        reduction_dim: int = 256,
        triplet_on: str = "pooled",
    ):
        super().__init__()
        check_choice("triplet_on", triplet_on, ("pooled", "reduced"))
        if isinstance(parts, (int, str)) or not all(isinstance(k, int) for k in parts):
            raise InvalidValueError(
                f"model.parts must be a list of stripe counts, one per part branch "
                f"(e.g. [2, 3]), got {parts!r}"
            )
        parts = [int(k) for k in parts]
        if any(k < 1 for k in parts):
            raise InvalidValueError(f"model.parts must list stripe counts >= 1, got {parts}")
        self.triplet_on = triplet_on
        self.trunk, rest = backbone.split("res_conv4_1")  # conv1 .. res_conv4_1, shared
        c = backbone.out_channels
        if global_last_stride != backbone.last_stride:
            # Same weights, other stride: a fresh backbone with the global branch's stride,
            # loaded from the first (works for every backbone without knowing where its stride is).
            bb_global = build_backbone(backbone.name, False, global_last_stride)
            bb_global.load_state_dict(backbone.state_dict())
            rest_global = bb_global.split("res_conv4_1")[1]
        else:
            rest_global = copy.deepcopy(rest)
        self.branches = nn.ModuleList(
            [MGNBranch(rest_global, c, num_classes, 0, reduction_dim)]  # Global
            + [
                MGNBranch(copy.deepcopy(rest), c, num_classes, k, reduction_dim)  # Part-k
                for k in parts
            ]
        )
        self.feature_names = (
            ["zg_G"]
            + [f"zg_P{k}" for k in parts]
            + [f"zp{k}_{j}" for k in parts for j in range(1, k + 1)]
        )
        self.feature_dim = reduction_dim * len(self.feature_names)

    def forward(self, x: torch.Tensor):
        """Train mode: dict of named outputs (logits, triplet, mse=[]); eval mode: N x 2048."""
        shared = self.trunk(x)
        pooled = [branch(shared) for branch in self.branches]
        # Global features first (zg_G, zg_P2, zg_P3), then the stripes (zp2_1 .. zp3_3).
        feats = [(zg, b.global_head) for (zg, _), b in zip(pooled, self.branches)]
        feats += [
            (z, head)
            for (_, zp), b in zip(pooled, self.branches)
            for z, head in zip(zp, b.stripe_heads)
        ]
        reduced, logits = zip(*[head(z) for z, head in feats])
        if not self.training:
            return torch.cat(reduced, 1)
        n_global = len(self.branches)
        source = [z for z, _ in feats] if self.triplet_on == "pooled" else list(reduced)
        return {"logits": list(logits), "triplet": source[:n_global], "mse": []}

    @torch.no_grad()
    def activation_maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``branch_G`` / ``branch_P{k}``: each branch's output map, N x h x w (mean of squares)."""
        was_training = self.training
        self.eval()  # BN with running statistics, which stay untouched
        shared = self.trunk(x)
        names = ["branch_G"] + [f"branch_P{b.num_stripes}" for b in self.branches[1:]]
        maps = {n: b.layers(shared).pow(2).mean(1) for n, b in zip(names, self.branches)}
        self.train(was_training)
        return maps
