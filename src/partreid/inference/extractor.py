"""``Extractor``: features of many images, batched and flip-averaged like evaluation, from a
checkpoint, an exported model (ONNX, OpenVINO) or a loaded module."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .._version import __version__
from ..data.io import read_image
from ..errors import InvalidValueError
from ..utils.device import resolve_device
from .exported import ExportedModel
from .flip import flip_averaged
from .model import ModelInfo, load_model
from .runtimes import is_exported, open_exported
from .stream import extract_source


class Extractor:
    """Turn images into re-id features the way ``partreid eval`` does (flip-averaged).

    ``model`` is a partreid checkpoint (``.pth``), an exported model (``.onnx`` run with ONNX
    Runtime, OpenVINO ``.xml`` run with OpenVINO; preprocessing read from its metadata) or a
    module from :func:`load_model`.
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
        if int(batch_size) < 1:
            raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.num_workers = max(0, int(num_workers))
        self.flip = bool(flip)
        self.progress = bool(progress)
        self.exported: Optional[ExportedModel] = None
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
        elif is_exported(model):
            self.exported = open_exported(str(model), device=str(device))
            self.device = torch.device("cpu")
            self.model = None
            self.source_path = os.path.abspath(str(model))
            if not self.flip and self.exported.flip_in_graph:
                raise InvalidValueError(
                    f"{model} averages each image with its mirror image inside the graph; "
                    "for unflipped features export with `partreid export ... --no-flip`"
                )
        else:
            self.device = resolve_device(str(device))
            self.model = load_model(str(model), self.device)
            self.source_path = os.path.abspath(str(model))
        self.info: ModelInfo = self.exported.info if self.exported else self.model.info
        self.feature_dim = int(self.info.feature_dim)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.transform = (self.exported or self.info).transform()
        self.backend = self.exported.runtime if self.exported else "torch"

    @property
    def onnx(self) -> Optional[ExportedModel]:
        """The exported model run by a CPU runtime (ONNX Runtime or OpenVINO), else None."""
        return self.exported

    # ---------------------------------------------------------------- one batch
    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> np.ndarray:
        """Features of a preprocessed batch ``(B, 3, H, W)`` -> float32 ``(B, D)``."""
        if self.exported is not None:
            return self.exported.run(images.numpy(), flip=self.flip)
        x = images.to(self.device, non_blocking=True)
        amp_dtype = None
        if self.amp:  # CUDA only (set in __init__): bf16 where the GPU has it, else fp16
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp):
            f = flip_averaged(self.model, x) if self.flip else self.model(x).float()
        return f.cpu().numpy().astype(np.float32, copy=False)

    def _to_tensor(self, image) -> torch.Tensor:
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
        ev = self.info.config.get("eval", {}) if isinstance(self.info.config, dict) else {}
        return {
            "model": self.info.name,
            "checkpoint": self.source_path,
            "feature_dim": self.feature_dim,
            "fingerprint": self.info.fingerprint(),
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
            "backend": self.backend,
        }

    def extract(self, source: str, boxes: Optional[str] = None, out: Optional[str] = None):
        """Features of every item of ``source`` (folder, manifest CSV, image, or video with a MOT
        ``boxes`` file), streamed in batches; saved to ``out`` when given. Under torchrun the
        items are split across processes and every process returns the merged result."""
        return extract_source(self, source, boxes=boxes, out=out)
