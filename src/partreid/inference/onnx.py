"""An exported partreid ONNX file run with ONNX Runtime (the ``deploy`` extra); its model
description (``ModelInfo``) and flip flag come from the file's metadata
(:class:`~partreid.inference.exported.ExportedModel`)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..errors import InvalidValueError
from ..utils.extras import require
from .exported import ONNX_FORMAT, ExportedModel, one_line

__all__ = ["ONNX_FORMAT", "OnnxModel"]


class OnnxModel(ExportedModel):
    """An exported partreid ONNX file run with ONNX Runtime; ``info`` from its metadata."""

    runtime = "onnxruntime"
    kind = "ONNX"

    def _open(self, path: str, device: str, threads: int) -> Tuple[Optional[str], Sequence]:
        """An ONNX Runtime session (CUDA when asked and available, else the CPU)."""
        ort = require("onnxruntime", "deploy")
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads  # 0: ONNX Runtime's default (all cores)
            # idle worker threads sleep instead of spinning: same speed alone (132.8 vs 131.8
            # img/s at batch 64, demo CGPN), and the server's search after each forward pass
            # no longer competes with them (10k exact at 8 clients: 64.5 vs 49.8 req/s)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as exc:
            raise InvalidValueError(
                f"cannot load ONNX model {path} with onnxruntime {ort.__version__}: {one_line(exc)}"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        shape = [d if isinstance(d, int) else None for d in self.session.get_inputs()[0].shape]
        return self.session.get_modelmeta().custom_metadata_map.get("partreid"), shape

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The graph on one float32 batch."""
        return torch.from_numpy(
            self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        )
