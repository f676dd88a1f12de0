"""An exported partreid OpenVINO IR (``model.xml`` + ``model.bin``, the ``openvino`` extra) run
on the CPU; the metadata of the ONNX graph it was converted from travels in its ``rt_info``
(:class:`~partreid.inference.exported.ExportedModel`)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..errors import InvalidValueError
from ..utils.extras import require
from .exported import ExportedModel, one_line

# where OpenVINO's ONNX front end keeps the ONNX file's metadata_props
METADATA_KEY = ["framework", "partreid"]


class OpenVinoModel(ExportedModel):
    """An exported partreid OpenVINO IR run on the CPU; ``info`` from its metadata."""

    runtime = "openvino"
    kind = "OpenVINO"

    def _open(self, path: str, device: str, threads: int) -> Tuple[Optional[str], Sequence]:
        """Read and compile the IR for the CPU, in float32 where the graph is not quantised
        (recent OpenVINO defaults to bf16 on CPUs that have it, which drifts from PyTorch)."""
        ov = require("openvino", "openvino")
        if device not in ("auto", "cpu"):
            raise InvalidValueError(f"OpenVINO models run on the CPU here; use cpu, not {device}")
        core = ov.Core()
        try:
            model = core.read_model(path)
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
            if threads > 0:
                config["INFERENCE_NUM_THREADS"] = threads
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise InvalidValueError(
                f"cannot load OpenVINO model {path} with openvino {ov.get_version()}: "
                f"{one_line(exc)}"
            ) from None
        self.request = self.compiled.create_infer_request()
        meta = None
        if model.has_rt_info(METADATA_KEY):
            meta = model.get_rt_info(METADATA_KEY).astype(str)
        dims = model.inputs[0].get_partial_shape()
        shape = [d.get_length() if d.is_static else None for d in dims]
        return meta, shape

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled model on one float32 batch."""
        self.request.infer({0: x.contiguous().numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())
