"""An exported partreid model run by a CPU runtime: the one interface the :class:`Extractor`
uses for ONNX Runtime (``OnnxModel``, ``.onnx``) and OpenVINO (``OpenVinoModel``, ``.xml``).

A runtime subclass opens the file and runs one float32 batch; everything else is here: the
``partreid`` metadata (model description, flip flag, the graph's input normalisation and
precision), the fixed input size check, the preprocessing and flip-averaging.

The metadata is the JSON string ``{"format": ..., "flip_in_graph": ..., "info": ModelInfo}``
plus, optionally, ``"input": {"mean": [...], "std": [...]}`` (the normalisation the graph
expects when it differs from the model's own: the graph then normalises itself, format
``partreid-onnx/2`` so that older readers refuse it rather than feed it wrongly) and
``"precision"`` (``"fp32"`` or ``"int8"``) with ``"quantization"`` (how it was calibrated).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.transforms import build_test_transform
from ..errors import InvalidValueError, NotFoundError
from .flip import flip_averaged
from .model import ModelInfo

ONNX_FORMAT = "partreid-onnx/1"  # the graph takes the model's own normalisation
ONNX_FORMAT_SELF_NORMALISING = "partreid-onnx/2"  # the graph takes "input" and renormalises
FORMATS = (ONNX_FORMAT, ONNX_FORMAT_SELF_NORMALISING)
EXPORT_HINT = "`partreid export CKPT --format onnx --out F.onnx` (or --format openvino --out F.xml)"


def one_line(exc: BaseException) -> str:
    """A runtime's (often multi-line) exception message as one line: its last non-empty line."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__


class ExportedModel:
    """A partreid export run by a CPU runtime; ``info`` and the input contract come from its
    metadata. Subclasses implement :meth:`_open` and :meth:`_run` (and set ``runtime``)."""

    runtime = ""  # "onnxruntime" / "openvino": what features files and logs call the backend
    kind = ""  # "ONNX" / "OpenVINO": how messages name the file

    def __init__(self, path: str, device: str = "auto", threads: int = 0):
        if not os.path.isfile(path):
            raise NotFoundError(f"{self.kind} model not found: {path}")
        self.path = path
        metadata, shape = self._open(path, str(device), int(threads))
        meta = self._read_metadata(path, metadata)
        self.flip_in_graph = bool(meta["flip_in_graph"])
        self.info = ModelInfo(**{**meta["info"], "path": os.path.abspath(path)})
        inp = meta.get("input") or {}
        self.input_mean: List[float] = list(inp.get("mean", self.info.mean))
        self.input_std: List[float] = list(inp.get("std", self.info.std))
        self.precision: str = str(meta.get("precision", "fp32"))
        self.quantization: Dict[str, Any] = dict(meta.get("quantization") or {})
        self._check_input(shape)

    # ---------------------------------------------------------------- runtime hooks
    def _open(self, path: str, device: str, threads: int) -> Tuple[Optional[str], Sequence]:
        """Load ``path``; return its ``partreid`` metadata string (None when absent) and the
        input shape (an int per fixed dimension, None per dynamic one)."""
        raise NotImplementedError

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The graph on one float32 batch."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def _read_metadata(self, path: str, metadata: Optional[str]) -> Dict[str, Any]:
        if metadata is None:
            raise InvalidValueError(
                f"{path} is not a partreid {self.kind} export (no 'partreid' metadata); "
                f"write one with {EXPORT_HINT}"
            )
        meta = json.loads(metadata)
        if meta.get("format") not in FORMATS:
            raise InvalidValueError(
                f"{path}: unknown partreid export format {meta.get('format')!r} (this partreid "
                f"reads {', '.join(FORMATS)}); export it again with this version"
            )
        return meta

    def _check_input(self, shape: Sequence) -> None:
        """The graph takes N x 3 x H x W with H x W fixed to the model's input size."""
        dims = list(shape)
        want = [3, self.info.height, self.info.width]
        if len(dims) != 4 or dims[1:] != want:
            raise InvalidValueError(
                f"{self.path}: the input size is not fixed to the model's: the graph's input is "
                f"{['?' if d is None else d for d in dims]}, expected [batch, {want[0]}, "
                f"{want[1]}, {want[2]}]; export it again with {EXPORT_HINT}"
            )

    def transform(self) -> Callable:
        """PIL image -> the float tensor (3, H, W) the graph takes (its input normalisation)."""
        return build_test_transform(
            self.info.height, self.info.width, self.input_mean, self.input_std
        )

    def run(self, images: np.ndarray, flip: bool = True) -> np.ndarray:
        """Features of a preprocessed float32 batch; flip-averaged (in the graph or here)."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        f = flip_averaged(self._run, x) if flip and not self.flip_in_graph else self._run(x)
        return np.ascontiguousarray(f.numpy(), dtype=np.float32)
