"""``load_model`` is the one place a checkpoint becomes a model; ``load_trained`` adds the
config it is evaluated with.

model = partreid.load_model("runs/cgpn/last.pth")      # eval mode, no config file needed
tf = model.info.transform()                            # PIL image -> normalised tensor
feats = model(torch.stack([tf(img) for img in images]))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, load_model_state
from ..config import Config, load_config
from ..data.transforms import build_test_transform
from ..models import build_model, model_options
from ..utils.device import resolve_device


@dataclass
class ModelInfo:
    """What a checkpoint says about its model (``model.info`` after :func:`load_model`)."""

    name: str
    model_cfg: Dict[str, Any]
    num_classes: int
    height: int
    width: int
    mean: List[float]
    std: List[float]
    feature_dim: int
    dataset: str = ""
    partreid_version: str = ""
    torch_version: str = ""
    epoch: int = 0
    step: int = 0
    metrics: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @classmethod
    def from_meta(cls, meta: Dict[str, Any], path: str = "") -> ModelInfo:
        """Read the ``meta`` entry of a checkpoint; a missing key is a clear error."""
        try:
            inp = meta["input"]
            return cls(
                name=meta["model"]["name"],
                model_cfg=dict(meta["model"]),
                num_classes=int(meta["num_classes"]),
                height=int(inp["height"]),
                width=int(inp["width"]),
                mean=list(inp["mean"]),
                std=list(inp["std"]),
                feature_dim=int(meta["feature_dim"]),
                dataset=meta.get("dataset", ""),
                partreid_version=meta.get("partreid_version", ""),
                torch_version=meta.get("torch_version", ""),
                epoch=int(meta.get("epoch", 0)),
                step=int(meta.get("step", 0)),
                metrics=dict(meta.get("metrics", {})),
                config=dict(meta.get("config", {})),
                path=path,
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: the checkpoint's description is incomplete "
                f"(missing {exc}); it was not written by partreid"
            ) from None

    @property
    def input_size(self) -> tuple:
        """``(height, width)`` the model was trained at."""
        return (self.height, self.width)

    def transform(self) -> Callable:
        """The test-time preprocessing: PIL image -> normalised float tensor (3, H, W)."""
        return build_test_transform(self.height, self.width, self.mean, self.std)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-value copy (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short digest of what makes features comparable: the model, its options, input
        and training (data set, config, step, metrics); the same for a checkpoint, its
        weights-only export and its ONNX export, other for another model or training run."""
        d = self.to_dict()
        for k in ("path", "partreid_version", "torch_version"):
            d.pop(k)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_model(
    path: str, device: Union[str, torch.device] = "cpu", overrides: Optional[Dict[str, Any]] = None
) -> nn.Module:
    """Build the model a partreid checkpoint describes, load its weights, return it in eval mode.

    ``model.info`` (:class:`ModelInfo`) carries its input size, normalisation, feature
    dimension, training data set and versions. ``overrides`` changes test-time model options
    (e.g. ``{"abp": False}`` for RMGL); options that change the weights' shapes are refused.
    """
    return model_from_checkpoint(load_checkpoint(path), path, device, overrides)


def model_from_checkpoint(
    ckpt: Dict[str, Any],
    path: str,
    device: Union[str, torch.device] = "cpu",
    overrides: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """:func:`load_model` for a checkpoint already read with ``load_checkpoint``."""
    info = ModelInfo.from_meta(ckpt.get("meta", {}), path)
    cfg = {k: v for k, v in info.model_cfg.items() if k != "name"}
    overrides = {k: v for k, v in (overrides or {}).items() if k != "pretrained"}
    wanted = {
        "name": overrides.pop("name", info.name),
        "backbone": overrides.get("backbone", info.model_cfg.get("backbone")),
    }
    if wanted["name"] != info.name or wanted["backbone"] != info.model_cfg.get("backbone"):
        raise CheckpointError(
            f"checkpoint {path} holds model {info.name!r} (backbone "
            f"{info.model_cfg.get('backbone')!r}) but the config builds {wanted['name']!r} "
            f"(backbone {wanted['backbone']!r}); use the config it was trained with "
            "(its run folder has config.yaml), or leave the config out"
        )
    if overrides:
        valid = model_options(info.name)
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise CheckpointError(
                f"unknown option(s) {unknown} for model {info.name!r}; "
                f"valid options: {sorted(valid)}"
            )
        cfg.update(overrides)
        info.model_cfg = {**info.model_cfg, **overrides}
    cfg["pretrained"] = False  # the checkpoint holds every weight
    model = build_model(info.name, info.num_classes, **cfg)
    load_model_state(model, ckpt, path)
    model.info = info
    return model.to(torch.device(device)).eval()


class TrainedModel(NamedTuple):
    """A checkpoint's model with the config it is evaluated with and the device it is on."""

    cfg: Config
    model: nn.Module
    device: torch.device


def load_trained(
    checkpoint: str, config: Optional[str] = None, overrides: Sequence[str] = ()
) -> TrainedModel:
    """``(cfg, model in eval mode, device)`` for ``partreid eval`` and ``visualize``: the config
    is ``config`` or, by default, the one saved in the checkpoint, with ``key=value``
    ``overrides`` (test-time ``model.*`` options among them); the device is its
    ``train.device``."""
    ckpt = load_checkpoint(checkpoint)
    base = None if config else ckpt.get("meta", {}).get("config")
    cfg = load_config(config, overrides, base=base)
    device = resolve_device(cfg.train.device)
    model = model_from_checkpoint(ckpt, checkpoint, device, overrides=dict(cfg.model))
    return TrainedModel(cfg, model, device)
