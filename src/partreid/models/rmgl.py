"""RMGL: receptive multi-granularity learning (SPEC section 2; the RMGL paper, Figs. 2-3).

Reads top to bottom like the paper's Fig. 2::

    image --trunk (conv1 .. res_conv2c, shared)--> branch b, a copy of layer2..layer4, K_b stripes
      original path: the whole map through the branch -> map T_b (24 x 8)
                     f^(0,0)_b = GMP(T_b), f^(0,k)_b = GMP(stripe k of T_b)      k = 1..K_b
      RP path:       the map at the partition depth cut into K_b stripes, stacked along the
                     batch, the SAME layers -> K_b maps
                     f^(1,k)_b = GMP(map k), f^(1,0)_b = GMP(maps stitched back)  (``rp_global``)
      every pooled feature -> 1x1 conv + BN -> 256-d -> its own classifier (cross-entropy)
      triplet (one per branch) on the concatenation of the branch's 256-d features
    test feature: all 256-d features concatenated, 2 x [(1+2) + (1+3)] x 256 = 3,584-d;
    activation balanced pooling (ABP) replaces the original path's uniform stripes at test time.

A branch with ``K = 1`` is a plain global branch (RMGL(1+2+3)'s extra "Global Branch"): one
feature, no RP path (one stripe would repeat the original path).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import InvalidValueError
from .abp import abp_borders as _abp_borders
from .abp import abp_pool as _abp_pool
from .backbones import Backbone
from .parts import ReductionHead, check_choice, pool2d, stripe_pool
from .receptive import run_on_stripes, stitch
from .registry import register_model

# Fig. 9's partition depths: "res x" = where the map is fed into res_conv x. Values are the
# backbone cut point right before (see backbones.py: "stage1" = after layer1 = res_conv2c).
PARTITION_DEPTHS = {
    "input": "input",
    "ip": "input",
    "res2": "stem",  # before layer1
    "res3": "stage1",  # before layer2 = after res_conv2c (the paper's default)
    "res4": "stage2",  # before layer3
    "res5": "stage3",  # before layer4
}
OUTPUT_DEPTHS = ("output", "op")

Paths = List[Tuple[Optional[torch.Tensor], Optional[List[torch.Tensor]]]]


@register_model("rmgl")
class RMGL(nn.Module):
    """Receptive multi-granularity network: branches of K stripes, each with an original and a
    receptive-partitioned (RP) path through shared weights.

    Args:
        backbone: built by ``build_model`` from its options ``backbone``, ``pretrained`` and
            ``last_stride`` (see :func:`~partreid.models.backbones.build_backbone`); the paper's:
            ResNet-50, ImageNet, last stride 1.
        num_classes: training identities.
        stripes: stripe count ``K`` of every branch: ``[2, 3]`` = RMGL (Local-2, Local-3),
            ``[1, 2, 3]`` = RMGL(1+2+3) (``K = 1``: global branch), ``[2, 3, 4]``, ``[2]`` = the
            "2-stripe" single-branch networks of Table V.
        branch_cut: where the branches leave the shared trunk (``res_conv2c``, the paper's).
        rp: add the receptive-partitioned path (dual path).
        only_rp: drop the original path of the ``K > 1`` branches ("only RP"); needs ``rp``.
        partition_depth: where RP cuts (Fig. 9): ``input`` (``ip``, the image), ``res2``..``res5``
            (the map fed into res_conv2..res_conv5, i.e. before layer1..layer4), ``output``
            (``op``, the branch output), or any backbone cut point (``res_conv2c``,
            ``stage3.0``, ...), meaning right *after* it. Default ``res3`` = after res_conv2c.
            A depth inside the trunk runs the trunk's remaining layers on the stripes as well.
        rp_global: the RP path's ``k = 0`` feature: ``stitch`` (pool the stripe outputs stitched
            back along the height; our choice, the paper is unclear) or ``none``.
        abp: at test time pool the original path's stripes with activation balanced pooling.
        abp_pool: ABP's stripe pooling, ``avg`` (the paper's Eq. 11) or ``max``.
        pooling: ``max`` (GMP, the paper's) or ``avg`` for every other feature.
        reduction_dim: size of every reduced feature (256).
        reduction_relu: ReLU after the reduction's BN (the paper names 1x1 conv + BN only).
        triplet_on: ``reduced`` (the branch's 256-d features, which form the test feature) or
            ``pooled`` (the branch's pooled features before reduction).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        stripes: Union[int, Sequence[int]] = (2, 3),
        branch_cut: str = "res_conv2c",
        rp: bool = True,
        only_rp: bool = False,
        partition_depth: str = "res3",
        rp_global: str = "stitch",
        abp: bool = True,
        abp_pool: str = "avg",
        pooling: str = "max",
        reduction_dim: int = 256,
        reduction_relu: bool = False,
        triplet_on: str = "reduced",
    ):
        super().__init__()
        stripes = [stripes] if isinstance(stripes, int) else list(stripes)
        if not stripes or any(
            not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in stripes
        ):
            raise InvalidValueError(
                f"model.stripes must be a non-empty list of positive integers, got {stripes!r}"
            )
        if only_rp and not rp:
            raise InvalidValueError(
                "model.only_rp=true drops the original path and needs model.rp=true"
            )
        if only_rp and abp:
            raise InvalidValueError(
                "model.abp re-pools the original path's stripes, which model.only_rp=true "
                "removes; set model.abp=false"
            )
        self.stripes = stripes
        self.rp = rp
        self.only_rp = only_rp
        self.rp_global = check_choice("rp_global", rp_global, ("stitch", "none"))
        self.abp = abp
        self.abp_pool = check_choice("abp_pool", abp_pool, ("avg", "max"))
        self.pooling = check_choice("pooling", pooling, ("max", "avg"))
        self.triplet_on = check_choice("triplet_on", triplet_on, ("reduced", "pooled"))

        trunk, rest = backbone.split(branch_cut)
        self.trunk = trunk
        self.branches = nn.ModuleList(copy.deepcopy(rest) for _ in stripes)
        self._trunk_len = len(trunk)
        self.partition_depth = partition_depth
        self._depth = self._resolve_depth(backbone, partition_depth, len(trunk) + len(rest))

        channels = backbone.out_channels
        self.feature_names: List[str] = []
        self.branch_names: List[str] = []
        for b, k in enumerate(stripes):
            tag = f"L{k}" if stripes.count(k) == 1 else f"L{k}b{b}"
            self.branch_names.append(tag)
            if self._has_original(k):
                self.feature_names.append(f"{tag}.orig.g")
                if k > 1:
                    self.feature_names += [f"{tag}.orig.s{i}" for i in range(1, k + 1)]
            if self._has_rp(k):
                if rp_global == "stitch":
                    self.feature_names.append(f"{tag}.rp.g")
                self.feature_names += [f"{tag}.rp.s{i}" for i in range(1, k + 1)]
        self.heads = nn.ModuleList(
            ReductionHead(channels, num_classes, reduction_dim, reduction_relu)
            for _ in self.feature_names
        )
        self.feature_dim = reduction_dim * len(self.feature_names)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _resolve_depth(bb: Backbone, depth: str, total: int) -> int:
        """Number of backbone blocks (trunk + branch) before the partition."""
        key = str(depth).lower()
        if key in OUTPUT_DEPTHS:
            return total
        try:
            return len(bb.split(PARTITION_DEPTHS.get(key, depth))[0])
        except ValueError:
            raise InvalidValueError(
                f"model.partition_depth: unknown depth {depth!r}; use one of "
                f"{sorted(PARTITION_DEPTHS) + list(OUTPUT_DEPTHS)} or a backbone cut point "
                "(res_conv2c, stage2, stage3.0, ...: right after it)"
            ) from None

    def _has_original(self, k: int) -> bool:
        return k == 1 or not self.only_rp

    def _has_rp(self, k: int) -> bool:
        return self.rp and k > 1

    def _paths(self, x: torch.Tensor) -> Paths:
        """Per branch: (original path output map or None, RP stripe output maps or None)."""
        p, t_len = self._depth, self._trunk_len
        if p < t_len:  # the partition lies inside the shared trunk (IP, res2)
            z = self.trunk[:p](x)  # map at the partition depth, whole
            rest_of_trunk = self.trunk[p:]
            need_t = any(self._has_original(k) for k in self.stripes)
            t = rest_of_trunk(z) if need_t else None
        else:
            t = self.trunk(x)
        out: Paths = []
        for k, branch in zip(self.stripes, self.branches):
            orig = rp = None
            if p < t_len:
                if self._has_original(k):
                    orig = branch(t)
                if self._has_rp(k):
                    rp = run_on_stripes(lambda s, br=branch: br(rest_of_trunk(s)), z, k)
            else:
                q = p - t_len
                m = branch[:q](t)  # shared by both paths up to the partition depth
                if self._has_original(k):
                    orig = branch[q:](m)
                if self._has_rp(k):
                    # at OP (q = len(branch)) branch[q:] is empty: the stripes of T_b itself
                    rp = run_on_stripes(branch[q:], m, k)
            out.append((orig, rp))
        return out

    def _pooled(self, paths: Paths) -> List[List[torch.Tensor]]:
        """Per branch, its pooled N x C features in ``feature_names`` order."""
        use_abp = self.abp and not self.training
        feats_per_branch = []
        for k, (orig, rp) in zip(self.stripes, paths):
            feats: List[torch.Tensor] = []
            if orig is not None:
                feats.append(pool2d(orig, self.pooling))  # f^(0,0): whole map
                if k > 1:
                    local = (
                        _abp_pool(orig, k, self.abp_pool)
                        if use_abp
                        else stripe_pool(orig, k, self.pooling)
                    )
                    feats += list(local.unbind(-1))  # f^(0,k): stripes of T_b
            if rp is not None:
                if self.rp_global == "stitch":
                    feats.append(pool2d(stitch(rp), self.pooling))  # f^(1,0)
                feats += [pool2d(r, self.pooling) for r in rp]  # f^(1,k)
            feats_per_branch.append(feats)
        return feats_per_branch

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor):
        pooled = self._pooled(self._paths(x))
        heads = iter(self.heads)
        reduced: List[List[torch.Tensor]] = []
        logits: List[torch.Tensor] = []
        for feats in pooled:
            zs = []
            for f in feats:
                z, lg = next(heads)(f)
                zs.append(z)
                logits.append(lg)
            reduced.append(zs)
        if self.training:
            per_branch = reduced if self.triplet_on == "reduced" else pooled
            return {
                "logits": logits,
                "triplet": [torch.cat(fs, dim=1) for fs in per_branch],
                "mse": [],
            }
        return torch.cat([z for zs in reduced for z in zs], dim=1)

    def pooled_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The pooled N x C feature of every head, by name (``feature_names``), before reduction.

        Follows the current mode: in ``eval()`` with ``abp`` the original stripes are ABP-pooled.
        """
        pooled = [f for feats in self._pooled(self._paths(x)) for f in feats]
        return dict(zip(self.feature_names, pooled))

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def activation_maps(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Fig. 4: per branch the original path's response ``O-K`` and the RP path's ``RP-K``
        (stripe outputs stitched back), each N x h x w (mean of squared activations)."""
        maps: Dict[str, torch.Tensor] = {}
        for tag, (orig, rp) in zip(self.branch_names, self._paths(x)):
            name = tag[1:]
            if orig is not None:
                maps[f"O-{name}"] = orig.pow(2).mean(1)
            if rp is not None:
                maps[f"RP-{name}"] = stitch(rp).pow(2).mean(1)
        return maps

    @torch.no_grad()
    def abp_borders(self, x: torch.Tensor, image_rows: bool = True) -> Dict[str, torch.Tensor]:
        """ABP stripe borders of the original path of every ``K > 1`` branch.

        Returns ``{"O-K": N x (K+1) long tensor}``: borders ``0 = h_0 < ... < h_K`` in rows of
        the input image (``image_rows=True``, rounded) or of the output map.
        """
        out: Dict[str, torch.Tensor] = {}
        for k, tag, (orig, _) in zip(self.stripes, self.branch_names, self._paths(x)):
            if orig is None or k == 1:
                continue
            b = _abp_borders(orig, k)
            if image_rows:
                h = orig.shape[2]
                b = torch.div(b * x.shape[2] + h // 2, h, rounding_mode="floor")
            out[f"O-{tag[1:]}"] = b
        return out
