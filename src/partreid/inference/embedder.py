"""An appearance embedder for multi-object trackers (DeepSORT, BoT-SORT, StrongSORT, ...): a
tracker calls it once per frame with that frame's boxes and gets one L2-normalised row each.

    from partreid.inference import AppearanceEmbedder

    embed = AppearanceEmbedder("runs/cgpn/last.pth", channels="bgr")   # or model.onnx, .xml
    for frame in frames:                      # H x W x 3 uint8, as OpenCV reads it
        boxes = detector(frame)               # (N, 4) x1, y1, x2, y2 in pixels
        feats = embed(frame, boxes)           # (N, D) float32, unit rows, one batch per frame
        tracks = tracker.update(boxes, feats)

The crops are preprocessed exactly as ``partreid extract`` and ``partreid ingest`` do (the
model's own resize and normalisation, flip-averaged), so a tracker's features can be searched
against a store of ingested crops.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.sources import clip_boxes
from ..errors import InvalidValueError
from .extractor import Extractor


class AppearanceEmbedder:
    """``embedder(frame, boxes_xyxy) -> (N, D)`` L2-normalised float32 features.

    ``model``: a checkpoint, an exported ``.onnx`` (ONNX Runtime) or OpenVINO ``.xml``, a
    module from :func:`partreid.load_model`, or an :class:`Extractor`. ``channels``: the frame's channel
    order, ``"bgr"`` (OpenCV) or ``"rgb"``. A box is clipped to the frame; one with no area left
    gets a zero row (and a tracker should treat it as having no appearance).
    """

    def __init__(
        self,
        model: Union[str, nn.Module, Extractor],
        device: str = "auto",
        channels: str = "bgr",
        batch_size: int = 64,
    ):
        if channels not in ("bgr", "rgb"):
            raise InvalidValueError(f"channels: expected 'bgr' or 'rgb', got {channels!r}")
        self.channels = channels
        self.extractor = (
            model
            if isinstance(model, Extractor)
            else Extractor(model, device=device, batch_size=batch_size, num_workers=0)
        )
        self.feature_dim = self.extractor.feature_dim

    def crops(self, frame: np.ndarray, boxes: np.ndarray):
        """``(preprocessed crops (M, 3, H, W), indices of the boxes they belong to)``."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InvalidValueError(
                f"frame: expected H x W x 3 uint8, got {frame.dtype} {frame.shape}"
            )
        xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        clipped, ok = clip_boxes(xywh, frame.shape[1], frame.shape[0])  # as video ingest does
        img = Image.fromarray(
            np.ascontiguousarray(frame[..., ::-1] if self.channels == "bgr" else frame)
        )
        tensors, keep = [], []
        for i in np.flatnonzero(ok):
            x, y, w, h = (int(v) for v in clipped[i])
            tensors.append(self.extractor.transform(img.crop((x, y, x + w, y + h))))
            keep.append(int(i))
        return tensors, keep

    def __call__(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Features of every box of one frame, in one batch (``batch_size`` at a time)."""
        tensors, keep = self.crops(frame, boxes)
        out = np.zeros((len(np.asarray(boxes).reshape(-1, 4)), self.feature_dim), np.float32)
        if keep:
            feats = self.extractor(torch.stack(tensors))
            norms = np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
            out[keep] = feats / norms
        return out
