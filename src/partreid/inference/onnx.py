"""An exported partreid ONNX file run with ONNX Runtime (the ``deploy`` extra); its model
description (``ModelInfo``) and flip flag come from the file's metadata."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import InvalidValueError, NotFoundError
from ..utils.extras import require
from .flip import flip_averaged
from .model import ModelInfo

ONNX_FORMAT = "partreid-onnx/1"  # the "format" of the "partreid" metadata entry


class OnnxModel:
    """An exported partreid ONNX file run with ONNX Runtime; ``info`` from its metadata."""

    def __init__(self, path: str, device: str = "auto", threads: int = 0):
        ort = require("onnxruntime", "deploy")
        if not os.path.isfile(path):
            raise NotFoundError(f"ONNX model not found: {path}")
        providers = ["CPUExecutionProvider"]
        if str(device) != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = int(threads)  # 0: ONNX Runtime's default (all cores)
            # idle worker threads sleep instead of spinning: same speed alone (132.8 vs 131.8
            # img/s at batch 64, demo CGPN), and the server's search after each forward pass
            # no longer competes with them (10k exact at 8 clients: 64.5 vs 49.8 req/s)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as exc:
            raise InvalidValueError(f"cannot load ONNX model {path}: {exc}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "partreid" not in props:
            raise InvalidValueError(
                f"{path} is not a partreid ONNX export (no 'partreid' metadata); write one with "
                "`partreid export CKPT --format onnx --out F.onnx`"
            )
        meta = json.loads(props["partreid"])
        if meta.get("format") != ONNX_FORMAT:
            raise InvalidValueError(f"{path}: unknown partreid ONNX format {meta.get('format')!r}")
        self.path = path
        self.flip_in_graph = bool(meta["flip_in_graph"])
        self.info = ModelInfo(**{**meta["info"], "path": os.path.abspath(path)})
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray, flip: bool = True) -> np.ndarray:
        """Features of a preprocessed float32 batch; flip-averaged (in the graph or here)."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        f = flip_averaged(self._run, x) if flip and not self.flip_in_graph else self._run(x)
        return np.ascontiguousarray(f.numpy(), dtype=np.float32)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The graph on one float32 batch."""
        return torch.from_numpy(
            self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        )
