"""Using a trained model: ``load_model`` is the one place a checkpoint becomes a model.

model = partreid.load_model("runs/cgpn/last.pth")      # eval mode, no config file needed
tf = model.info.transform()                            # PIL image -> normalised tensor
feats = model(torch.stack([tf(img) for img in images]))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, load_model_state
from .errors import InvalidValueError


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
        from .data.transforms import build_test_transform

        return build_test_transform(self.height, self.width, self.mean, self.std)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-value copy (JSON-serialisable)."""
        return dataclasses.asdict(self)


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
    from .models import build_model, model_options

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


# --------------------------------------------------------------------------------------------
# Extractor: features of many images, batched, streamed, from a checkpoint or an ONNX file
# --------------------------------------------------------------------------------------------
class Extractor:
    """Turn images into re-id features the way ``partreid eval`` does (flip-averaged).

    ``model`` is a partreid checkpoint (``.pth``), an exported ONNX file (``.onnx``, run with
    ONNX Runtime; preprocessing read from its metadata) or a module from :func:`load_model`.
    Calling it on images gives a float32 ``(N, D)`` array; :meth:`extract` streams a folder, a
    manifest, an image or a video with boxes into a :class:`~partreid.features.Features`.
    """

    def __init__(
        self,
        model: Union[str, nn.Module],
        device: Union[str, torch.device] = "auto",
        batch_size: int = 64,
        num_workers: int = 2,
        flip: bool = True,
        amp: bool = True,
        progress: bool = True,
    ):
        from .utils.device import resolve_device

        if int(batch_size) < 1:
            raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.num_workers = max(0, int(num_workers))
        self.flip = bool(flip)
        self.progress = bool(progress)
        self.onnx = None
        self.source_path = ""
        if isinstance(model, nn.Module):
            if not isinstance(getattr(model, "info", None), ModelInfo):
                raise InvalidValueError(
                    "Extractor needs a module from partreid.load_model (it reads model.info); "
                    "or pass the checkpoint path"
                )
            self.device = (
                resolve_device(str(device)) if str(device) == "auto" else torch.device(device)
            )
            self.model = model.to(self.device).eval()
            self.source_path = os.path.abspath(model.info.path) if model.info.path else ""
        elif str(model).lower().endswith(".onnx"):
            from .deploy.export import OnnxModel

            self.onnx = OnnxModel(str(model), device=str(device))
            self.device = torch.device("cpu")
            self.model = None
            self.source_path = os.path.abspath(str(model))
            if not self.flip and self.onnx.flip_in_graph:
                raise InvalidValueError(
                    f"{model} averages each image with its mirror image inside the graph; "
                    "for unflipped features export with `partreid export ... --no-flip`"
                )
        else:
            self.device = resolve_device(str(device))
            self.model = load_model(str(model), self.device)
            self.source_path = os.path.abspath(str(model))
        self.info: ModelInfo = self.onnx.info if self.onnx else self.model.info
        self.feature_dim = int(self.info.feature_dim)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.transform = self.info.transform()

    # ---------------------------------------------------------------- one batch
    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> np.ndarray:
        """Features of a preprocessed batch ``(B, 3, H, W)`` -> float32 ``(B, D)``."""
        if self.onnx is not None:
            return self.onnx.run(images.numpy(), flip=self.flip)
        x = images.to(self.device, non_blocking=True)
        amp_dtype = None
        if self.amp:  # CUDA only (set in __init__): bf16 where the GPU has it, else fp16
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp):
            if self.flip:  # image and mirror image in one pass: half the per-call overhead
                both = self.model(torch.cat([x, torch.flip(x, dims=[3])])).float()
                f = 0.5 * (both[: x.shape[0]] + both[x.shape[0] :])
            else:
                f = self.model(x).float()
        return f.cpu().numpy().astype(np.float32, copy=False)

    def _to_tensor(self, image) -> torch.Tensor:
        from PIL import Image

        from .data.io import read_image

        if isinstance(image, (str, os.PathLike)):
            return self.transform(read_image(str(image)))
        if isinstance(image, Image.Image):
            return self.transform(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise InvalidValueError(
                    f"a numpy image must be H x W x 3 uint8 RGB, got {image.dtype} {image.shape}"
                )
            return self.transform(Image.fromarray(image))
        if isinstance(image, torch.Tensor):
            want = (3, self.info.height, self.info.width)
            if tuple(image.shape) != want:
                raise InvalidValueError(
                    f"a tensor image must be preprocessed to {want} (model.info.transform()), "
                    f"got {tuple(image.shape)}"
                )
            return image.float()
        raise InvalidValueError(
            f"cannot extract from a {type(image).__name__}: give paths, PIL images, "
            "H x W x 3 uint8 arrays or preprocessed 3 x H x W tensors"
        )

    def __call__(self, images) -> np.ndarray:
        """Features of ``images`` (paths, PIL images, HxWx3 uint8 arrays, 3xHxW tensors, or a
        preprocessed N x 3 x H x W tensor) -> float32 ``(N, D)``, ``batch_size`` at a time."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (str, os.PathLike)) or not hasattr(images, "__len__"):
            images = [images]
        out = np.zeros((len(images), self.feature_dim), np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self._to_tensor(im) for im in chunk])
            out[start : start + len(chunk)] = self.forward(batch)
        return out

    # ---------------------------------------------------------------- whole inputs
    def meta(self, source: str) -> Dict[str, Any]:
        """What a features file records about how it was made."""
        from ._version import __version__

        ev = self.info.config.get("eval", {}) if isinstance(self.info.config, dict) else {}
        return {
            "model": self.info.name,
            "checkpoint": self.source_path,
            "feature_dim": self.feature_dim,
            "distance": ev.get("distance", "euclidean"),
            "normalize": bool(ev.get("normalize", False)),
            "flip": self.flip,
            "partreid_version": __version__,
            "source": os.path.abspath(source),
            "input": {
                "height": self.info.height,
                "width": self.info.width,
                "mean": list(self.info.mean),
                "std": list(self.info.std),
            },
            "backend": "onnxruntime" if self.onnx is not None else "torch",
        }

    def extract(self, source: str, boxes: Optional[str] = None, out: Optional[str] = None):
        """Features of every item of ``source`` (folder, manifest CSV, image, or video with a MOT
        ``boxes`` file), streamed in batches; saved to ``out`` when given. Under torchrun the
        items are split across processes and every process returns the merged result."""
        from .deploy.extract import extract_source

        return extract_source(self, source, boxes=boxes, out=out)
