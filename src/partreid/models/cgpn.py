"""CGPN: coarse granularity part-level network (the CGPN paper's Fig. 2; SPEC section 1).

Read top to bottom like the figure::

    image ─ trunk (conv1 .. res_conv4_1, shared)
          ├─ branch i (a copy of res_conv4_2 .. res_conv5)  ->  T_i  (c x h x w)
          │    global part: M 1x1 convs (c -> c), GMP each    -> fg_p_i   (p = 1..M)
          │                 fg_i = [fg_1_i, .., fg_M_i]        (M*c; triplet reads it)
          │                 targets: GMP of M equal stripes of T_i -> fgl_p_i,
          │                 MSE(fg_p_i, fgl_p_i)  (training only)
          │    local part:  K_i stripes; GMP of every window of L adjacent stripes,
          │                 K_i/2 <= L < K_i                   -> fl_j_i  (c each)
          └─ every fg_i and fl_j_i: 1x1 conv + BN + ReLU -> 256-d, own classifier (CE)

Branch i has K_i = i + 1 stripes (``stripes=(2, 3, 4)``), which gives 2 + 2 + 5 = 9 local
windows; with the 3 global features that is 12 features and a 12 x 256 = 3072-d test feature.

Windows are max-pooled from stripe maxima (the max over a window is the max of its stripes'
maxima), so no kernel size is hard-coded and any input size and stripe count works.

Every choice the paper leaves open is a constructor switch (= a key of the ``model:`` config
section): last stride, target detached or not, where the triplet loss reads, M, the stripe counts
of the branches, which parts exist, and the initialisation of the global 1x1 convs.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..errors import InvalidValueError
from .backbones import Backbone
from .parts import ReductionHead, check_choice, pool2d, stripe_pool, window_max
from .registry import register_model

LOCAL_PARTS = ("coarse", "fine", "none")
TRIPLET_ON = ("pooled", "reduced")
TRIPLET_FEATURES = ("global", "local", "all", "none")
CONV_INITS = ("identity", "kaiming")


def window_lengths(k: int, local_part: str = "coarse") -> List[int]:
    """Window lengths L (in stripes) of a branch with ``k`` stripes.

    ``coarse`` (CGPN): every integer L with ``k/2 <= L < k`` (k=2 -> [1], 3 -> [2], 4 -> [2, 3],
    5 -> [3, 4], 6 -> [3, 4, 5]); empty for k=1 (a branch with one stripe has no coarse local part).
    ``fine`` (CGPN-2): the k single stripes, L = 1. ``none``: no local part.
    """
    if local_part not in LOCAL_PARTS:
        raise InvalidValueError(f"local_part must be one of {LOCAL_PARTS}, got {local_part!r}")
    if k < 1:
        raise InvalidValueError(f"a branch needs at least 1 stripe, got {k}")
    if local_part == "none":
        return []
    if local_part == "fine":
        return [1]
    return list(range(math.ceil(k / 2), k))


def local_windows(k: int, local_part: str = "coarse") -> List[Tuple[int, int]]:
    """Stripe index ranges ``[(first, last_exclusive), ...]`` of the local features, in output order
    (by window length, then from top to bottom)."""
    return [
        (s, s + length) for length in window_lengths(k, local_part) for s in range(k - length + 1)
    ]


class CGPNBranch(nn.Module):
    """One branch: its copy of the backbone's last layers, global part, local part and heads."""

    def __init__(
        self,
        layers: nn.Module,
        channels: int,
        num_classes: int,
        num_stripes: int,
        global_parts: int,
        global_part: bool,
        local_part: str,
        reduction_dim: int,
        global_conv_init: str,
    ):
        super().__init__()
        self.layers = layers  # res_conv4_2 .. res_conv5 -> T_i
        self.num_stripes = num_stripes  # K_i
        self.global_parts = global_parts if global_part else 0  # M (0: no global part)
        self.lengths = window_lengths(num_stripes, local_part)
        self.num_local = sum(num_stripes - length + 1 for length in self.lengths)
        c = channels
        # Global part: M separate 1x1 convs c -> c (bias-free), each followed by GMP.
        self.global_convs = nn.ModuleList(
            nn.Conv2d(c, c, 1, bias=False) for _ in range(self.global_parts)
        )
        for conv in self.global_convs:
            if global_conv_init == "identity":
                with torch.no_grad():
                    conv.weight.copy_(torch.eye(c).view(c, c, 1, 1))
            else:
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        self.global_head = (
            ReductionHead(self.global_parts * c, num_classes, reduction_dim)
            if self.global_parts
            else None
        )
        self.local_heads = nn.ModuleList(
            ReductionHead(c, num_classes, reduction_dim) for _ in range(self.num_local)
        )

    def global_features(self, t: torch.Tensor) -> List[torch.Tensor]:
        """fg_p_i = GMP(conv_p(T_i)) for p = 1..M, each N x c."""
        return [pool2d(conv(t), "max") for conv in self.global_convs]

    def global_targets(self, t: torch.Tensor) -> List[torch.Tensor]:
        """fgl_p_i = GMP of the p-th of M equal horizontal stripes of T_i, each N x c."""
        return list(stripe_pool(t, self.global_parts, "max").unbind(-1))

    def local_features(self, t: torch.Tensor) -> List[torch.Tensor]:
        """fl_j_i: GMP of every window of adjacent stripes (from stripe maxima), each N x c."""
        if not self.lengths:
            return []
        stripes = stripe_pool(t, self.num_stripes, "max")  # N x c x K
        windows = torch.cat([window_max(stripes, length) for length in self.lengths], -1)
        return list(windows.unbind(-1))


@register_model("cgpn")
class CGPN(nn.Module):
    """Coarse granularity part-level network.

    Args:
        backbone: built by ``build_model`` from its options ``backbone``, ``pretrained`` and
            ``last_stride`` (see :func:`~partreid.models.backbones.build_backbone`). Its last
            stride is the stride of res_conv5 in every branch (1: MGN-like 24x8 map at 384x128;
            the paper is silent).
        num_classes: training identities.
        stripes: stripe count K_i of each branch; one branch per entry. (2, 3, 4) is CGPN;
            (2,) keeps only branch 1, (2, 3, 4, 5) is "CGPN + Branch 4". A branch with K=1
            has no coarse window (no integer L with 1/2 <= L < 1), so only its global part
            (the paper has no such branch; its branch i has K = i + 1).
        global_parts: M, the number of supervised 1x1 convs (and target stripes) per branch.
        global_part: whether the branches have the global part (False: CGPN-3).
        local_part: ``coarse`` (CGPN's windows), ``fine`` (CGPN-2: the single stripes) or
            ``none`` (CGPN-1 and "Branch1-Global").
        mse_supervision: emit the (fg_p_i, fgl_p_i) pairs for the MSE loss (False: CGPN-4).
        detach_target: stop the MSE gradient through the targets fgl_p_i (the paper's formula
            does not; default False).
        reduction_dim: size of every reduced feature (256).
        triplet_on: the triplet loss reads the ``pooled`` features (the paper's fg_i, M*c-d) or
            their ``reduced`` 256-d versions.
        triplet_features: which features get a triplet loss: ``global`` (the paper), ``local``
            (CGPN-3, which has no global part), ``all`` or ``none``.
        global_conv_init: ``identity`` (fg_p_i starts as GMP(T_i) and the MSE starts small) or
            ``kaiming``; the paper does not say.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        stripes: Sequence[int] = (2, 3, 4),
        global_parts: int = 2,
        global_part: bool = True,
        local_part: str = "coarse",
        mse_supervision: bool = True,
        detach_target: bool = False,
        reduction_dim: int = 256,
        triplet_on: str = "pooled",
        triplet_features: str = "global",
        global_conv_init: str = "identity",
    ):
        super().__init__()
        if isinstance(stripes, (int, str)) or not all(isinstance(k, int) for k in stripes):
            raise InvalidValueError(
                f"model.stripes must be a list of stripe counts, one per branch "
                f"(e.g. [2, 3, 4]), got {stripes!r}"
            )
        stripes = [int(k) for k in stripes]
        check_choice("local_part", local_part, LOCAL_PARTS)
        check_choice("triplet_on", triplet_on, TRIPLET_ON)
        check_choice("triplet_features", triplet_features, TRIPLET_FEATURES)
        check_choice("global_conv_init", global_conv_init, CONV_INITS)
        if not stripes or any(k < 1 for k in stripes):
            raise InvalidValueError(
                f"model.stripes must be a non-empty list of stripe counts >= 1, got {stripes}"
            )
        if int(global_parts) < 1:
            raise InvalidValueError(f"model.global_parts (M) must be >= 1, got {global_parts}")
        self.stripes = stripes
        self.global_parts = int(global_parts)
        self.global_part = bool(global_part)
        self.local_part = local_part
        self.mse_supervision = bool(mse_supervision)
        self.detach_target = bool(detach_target)
        self.triplet_on = triplet_on
        self.triplet_features = triplet_features

        self.trunk, rest = backbone.split("res_conv4_1")  # conv1 .. res_conv4_1, shared
        self.channels = backbone.out_channels  # c
        self.branches = nn.ModuleList(
            CGPNBranch(
                copy.deepcopy(rest),
                self.channels,
                num_classes,
                k,
                self.global_parts,
                self.global_part,
                local_part,
                reduction_dim,
                global_conv_init,
            )
            for k in stripes
        )

        # Feature names in test-feature order: fg_1 .. fg_B, then fl_j_i branch by branch.
        self.global_names = [f"fg{i}" for i, b in enumerate(self.branches, 1) if b.global_parts]
        self.local_names = [
            f"fl{j}_{i}" for i, b in enumerate(self.branches, 1) for j in range(1, b.num_local + 1)
        ]
        self.feature_names = self.global_names + self.local_names
        if not self.feature_names:
            raise InvalidValueError(
                f"CGPN with global_part=false and local_part={local_part!r} and "
                f"stripes={stripes} has no features; keep a global or a local part"
            )
        selected = {
            "global": self.global_names,
            "local": self.local_names,
            "all": self.feature_names,
            "none": None,
        }[triplet_features]
        if selected == []:
            raise InvalidValueError(
                f"model.triplet_features={triplet_features!r} selects no features of this "
                f"CGPN (global_part={global_part}, local_part={local_part!r}); use "
                "'local' for CGPN-3, 'global' otherwise, or 'none'"
            )
        self.feature_dim = reduction_dim * len(self.feature_names)

    def forward(self, x: torch.Tensor):
        """Train mode: dict of named outputs (logits, triplet, mse); eval mode: N x feature_dim."""
        shared = self.trunk(x)
        fg, fl, mse = [], [], []  # (pooled, head) pairs; MSE pairs
        for branch in self.branches:
            t = branch.layers(shared)  # T_i
            _check_height(t, branch, x)
            if branch.global_parts:
                fg_parts = branch.global_features(t)  # fg_p_i
                fg.append((torch.cat(fg_parts, 1), branch.global_head))  # fg_i
                if self.training and self.mse_supervision:
                    fgl_parts = branch.global_targets(t)  # fgl_p_i
                    if self.detach_target:
                        fgl_parts = [f.detach() for f in fgl_parts]
                    mse += list(zip(fg_parts, fgl_parts))
            fl += list(zip(branch.local_features(t), branch.local_heads))  # fl_j_i

        pooled = [p for p, _ in fg + fl]
        reduced, logits = zip(*[head(p) for p, head in fg + fl])  # 256-d, CE
        if not self.training:
            return torch.cat(reduced, 1)  # 12 x 256 = 3072-d
        n_global = len(fg)
        source = pooled if self.triplet_on == "pooled" else list(reduced)
        triplet = {
            "global": source[:n_global],
            "local": source[n_global:],
            "all": source,
            "none": [],
        }[self.triplet_features]
        return {"logits": list(logits), "triplet": list(triplet), "mse": mse}

    @torch.no_grad()
    def activation_maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per branch i: ``branch{i}.global{p}`` (the p-th 1x1 conv output of the global part)
        and ``branch{i}.local`` (T_i, which the local part pools), each N x h x w: the mean of
        squared activations over channels."""
        was_training = self.training
        self.eval()  # BN with running statistics, which stay untouched
        shared = self.trunk(x)
        maps = {}
        for i, branch in enumerate(self.branches, 1):
            t = branch.layers(shared)
            for p, conv in enumerate(branch.global_convs, 1):
                maps[f"branch{i}.global{p}"] = conv(t).pow(2).mean(1)
            if branch.num_local:
                maps[f"branch{i}.local"] = t.pow(2).mean(1)
        self.train(was_training)
        return maps


def _check_height(t: torch.Tensor, branch: CGPNBranch, x: torch.Tensor) -> None:
    need = max(branch.num_stripes if branch.num_local else 1, branch.global_parts or 1)
    if t.shape[2] < need:
        raise InvalidValueError(
            f"input {tuple(x.shape[2:])} gives a {t.shape[2]}-row map, too short for "
            f"{need} stripes; use taller images or fewer stripes"
        )
