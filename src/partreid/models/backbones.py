"""Backbones behind one stage interface.

A :class:`Backbone` is ``stem`` followed by four ``stages``; every stage is an
``nn.Sequential`` of blocks, so a model can cut anywhere between blocks and
deep-copy what follows into its branches::

    bb = build_backbone("resnet50", pretrained=False, last_stride=1)
    trunk, rest = bb.split("res_conv4_1")     # conv1 .. layer3[0] | layer3[1:] + layer4
    branch = copy.deepcopy(rest)

Cut points are written ``"input"``, ``"stem"``, ``"stage{s}"`` (after the whole
stage ``s`` in 1..4) or ``"stage{s}.{b}"`` (after block ``b`` of stage ``s``).
The ResNet names of the papers are aliases: ``res_conv2`` ... ``res_conv5`` are
the ends of layer1 ... layer4, ``res_conv4_1`` is ``layer3[0]`` and
``res_conv2c`` the last block of layer1.
"""

from __future__ import annotations

import copy
import os
import re
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import InvalidValueError, NotFoundError, PartreidError

# ResNet names used by the papers -> our cut points.
CUT_ALIASES = {
    "res_conv1": "stem",
    "res_conv2": "stage1",
    "res_conv2c": "stage1",
    "res_conv3": "stage2",
    "res_conv4": "stage3",
    "res_conv4_1": "stage3.0",
    "res_conv5": "stage4",
}

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")

Pretrained = Union[bool, str, None]


class PretrainedWeightsError(PartreidError, RuntimeError):
    """Pretrained weights could not be obtained (offline, no file)."""


class Backbone(nn.Module):
    """``stem`` + four ``stages`` with known channels and strides per stage."""

    def __init__(
        self,
        name: str,
        stem: nn.Module,
        stages: Sequence[nn.Sequential],
        channels: Sequence[int],
        strides: Sequence[int],
    ):
        super().__init__()
        self.name = name
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)  # output channels of stem, stage1..stage4
        self.strides = list(strides)  # output stride of stem, stage1..stage4

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    @property
    def last_stride(self) -> int:
        """Stride of stage4 alone (1: it keeps the stage3 resolution, the Re-ID convention)."""
        return self.strides[-1] // self.strides[-2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def blocks(self) -> List[Tuple[str, nn.Module]]:
        """All blocks in order as ``(cut_name_after_block, module)``."""
        out = [("stem", self.stem)]
        for s, stage in enumerate(self.stages, start=1):
            for b, block in enumerate(stage):
                out.append((f"stage{s}.{b}", block))
        return out

    def _cut_index(self, cut: str) -> int:
        """Number of leading blocks (of :meth:`blocks`) that lie before ``cut``."""
        cut = CUT_ALIASES.get(cut, cut)
        names = [n for n, _ in self.blocks()]
        if cut == "input":
            return 0
        m = re.fullmatch(r"stage([1-4])", cut)
        if m:
            s = int(m.group(1))
            cut = f"stage{s}.{len(self.stages[s - 1]) - 1}"
        if cut not in names:
            valid = ["input", "stem", "stage1..stage4", "stage{s}.{b}"] + sorted(CUT_ALIASES)
            raise InvalidValueError(
                f"unknown cut point {cut!r} for backbone {self.name}; valid: {valid}"
            )
        return names.index(cut) + 1

    def split(self, cut: str) -> Tuple[nn.Sequential, nn.Sequential]:
        """Return ``(trunk, rest)``: the blocks before and after ``cut``.

        Both share modules with this backbone; deep-copy ``rest`` for branches.
        """
        blocks = [m for _, m in self.blocks()]
        i = self._cut_index(cut)
        return nn.Sequential(*blocks[:i]), nn.Sequential(*blocks[i:])

    def channels_at(self, cut: str) -> int:
        """Channels of the feature map at ``cut`` (3 for ``"input"``)."""
        i = self._cut_index(cut)
        if i == 0:
            return 3
        probe = torch.zeros(1, 3, 64, 32)
        trunk, _ = self.split(cut)
        modes = [(m, m.training) for m in trunk.modules()]
        trunk.eval()  # no BN statistics update from the probe
        with torch.no_grad():
            c = trunk(probe).shape[1]
        for m, mode in modes:
            m.training = mode
        return c


def _resnet(name: str, last_stride: int) -> Backbone:
    import torchvision.models as tvm

    net = getattr(tvm, name)(weights=None)
    if last_stride == 1:
        block = net.layer4[0]
        conv = block.conv2 if hasattr(block, "conv3") else block.conv1  # v1.5 bottleneck / basic
        conv.stride = (1, 1)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    exp = 4 if name == "resnet50" else 1
    channels = [64, 64 * exp, 128 * exp, 256 * exp, 512 * exp]
    strides = [4, 4, 8, 16, 32 // (2 // last_stride)]
    bb = Backbone(name, stem, stages, channels, strides)
    bb._tv = net  # torchvision model, for loading its state dict
    return bb


def _mobilenet_v2(last_stride: int) -> Backbone:
    import torchvision.models as tvm

    net = tvm.mobilenet_v2(weights=None)
    f = net.features
    # Output strides: f[0:2] -> 2, f[2:4] -> 4, f[4:7] -> 8, f[7:14] -> 16, f[14:19] -> 32.
    if last_stride == 1:
        dw = f[14].conv[1][0]  # depthwise 3x3 of the first block of the last stage
        dw.stride = (1, 1)
    stem = nn.Sequential(*f[0:2])
    stages = [
        nn.Sequential(*f[2:4]),
        nn.Sequential(*f[4:7]),
        nn.Sequential(*f[7:14]),
        nn.Sequential(*f[14:19]),
    ]
    channels = [16, 24, 32, 96, 1280]
    strides = [2, 4, 8, 16, 32 // (2 // last_stride)]
    bb = Backbone("mobilenet_v2", stem, stages, channels, strides)
    bb._tv = net
    return bb


_TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}


def _load_pretrained(bb: Backbone, pretrained: Pretrained) -> None:
    net = bb._tv
    if isinstance(pretrained, str) and pretrained.lower() not in ("imagenet", "true"):
        path = os.path.expanduser(pretrained)
        if not os.path.isfile(path):
            raise NotFoundError(
                f"pretrained weights file not found: {path}. Pass model.pretrained=<path to a "
                f"torchvision {bb.name} state dict>, model.pretrained=imagenet to use torchvision's "
                "download, or model.pretrained=false to train from scratch."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        head = ("fc.", "classifier.")
        missing = [k for k in missing if not k.startswith(head)]
        if missing or unexpected:
            raise InvalidValueError(
                f"weights file {path} does not fit torchvision's {bb.name}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                f"keys (e.g. {unexpected[:3]}). Expected a {bb.name} state dict in torchvision's layout."
            )
        return
    import torchvision.models as tvm

    weights = getattr(tvm, _TV_WEIGHTS[bb.name]).IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # offline, proxy, ...
        raise PretrainedWeightsError(
            f"could not get ImageNet weights for {bb.name} from torchvision ({type(exc).__name__}: "
            f"{exc}). Without internet, download {weights.url} elsewhere and pass its path as "
            "model.pretrained=/path/to/file.pth (for MobileNetV2 on the dev machine: "
            "../shared/weights/mobilenetv2_imagenet.pth), or model.pretrained=false."
        ) from exc
    net.load_state_dict(state)


def build_backbone(
    name: str = "resnet50", pretrained: Pretrained = False, last_stride: int = 1
) -> Backbone:
    """Build a backbone with four stages.

    Args:
        name: one of ``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v2``.
        pretrained: ``False`` (random init), ``True``/``"imagenet"`` (torchvision's weights API;
            needs the file in the torch hub cache or internet) or a path to a state dict file.
        last_stride: 1 (Re-ID convention: stage4 keeps the stage3 resolution) or 2.
    """
    if last_stride not in (1, 2):
        raise InvalidValueError(f"last_stride must be 1 or 2, got {last_stride}")
    if name.startswith("resnet") and name in BACKBONES:
        bb = _resnet(name, last_stride)
    elif name in ("mobilenet_v2", "mobilenetv2"):
        bb = _mobilenet_v2(last_stride)
    else:
        raise InvalidValueError(f"unknown backbone {name!r}; available: {list(BACKBONES)}")
    if pretrained and pretrained not in ("false", "none", "False"):
        _load_pretrained(bb, pretrained)
    del bb._tv
    return bb


def clone(module: nn.Module) -> nn.Module:
    """Deep copy (branches start from the same pretrained weights)."""
    return copy.deepcopy(module)
