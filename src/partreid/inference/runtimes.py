"""Which runtime runs an exported partreid model: chosen by the file's suffix."""

from __future__ import annotations

import os
from typing import Dict, Type

from ..errors import InvalidValueError
from .exported import ExportedModel
from .onnx import OnnxModel
from .openvino import OpenVinoModel

EXPORTED: Dict[str, Type[ExportedModel]] = {".onnx": OnnxModel, ".xml": OpenVinoModel}


def is_exported(path: object) -> bool:
    """Whether ``path`` names an exported model (``.onnx``, OpenVINO ``.xml``), not a
    checkpoint."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(
        tuple(EXPORTED)
    )


def open_exported(path: str, device: str = "auto", threads: int = 0) -> ExportedModel:
    """The exported model at ``path`` in its runtime (ONNX Runtime or OpenVINO)."""
    for suffix, cls in EXPORTED.items():
        if path.lower().endswith(suffix):
            return cls(path, device=device, threads=threads)
    raise InvalidValueError(f"{path} is not an exported model: expected {' or '.join(EXPORTED)}")
