"""``partreid export --format openvino``: the ONNX graph (:func:`~partreid.deploy.export.
export_onnx`) converted to an OpenVINO IR, ``model.xml`` + ``model.bin``.

The IR keeps the ONNX file's metadata (OpenVINO's ONNX front end copies ``metadata_props`` into
``rt_info["framework"]``), so :class:`~partreid.inference.OpenVinoModel` reads the same model
description, flip flag and input normalisation. Weights stay float32 (``save_model`` would
halve them to float16 by default, which moves features by ~1e-3); the batch axis stays dynamic
and the input size fixed.
"""

from __future__ import annotations

import os

from torch import nn

from ..errors import InvalidValueError
from ..utils.extras import require
from .export import export_onnx


def check_xml_path(out: str) -> str:
    """``out`` must name the IR's ``.xml`` (its weights go to the ``.bin`` beside it)."""
    if not out.lower().endswith(".xml"):
        raise InvalidValueError(
            f"--out {out}: an OpenVINO model is written as NAME.xml (+ NAME.bin); give a .xml path"
        )
    return out


def save_openvino(ov_model, out: str) -> str:
    """Write an ``openvino.Model`` as ``out`` (.xml) + .bin, float32 weights, atomically."""
    ov = require("openvino", "openvino")
    check_xml_path(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out[:-4]}.tmp{os.getpid()}.xml"
    try:
        ov.save_model(ov_model, tmp, compress_to_fp16=False)
        os.replace(tmp[:-4] + ".bin", out[:-4] + ".bin")
        os.replace(tmp, out)
    finally:
        for f in (tmp, tmp[:-4] + ".bin"):
            if os.path.exists(f):
                os.remove(f)
    return out


def onnx_to_openvino(onnx_path: str, out: str) -> str:
    """Convert a partreid ONNX export to an OpenVINO IR at ``out`` (.xml), metadata kept."""
    ov = require("openvino", "openvino")
    return save_openvino(ov.convert_model(onnx_path), out)


def export_openvino(model: nn.Module, out: str, flip: bool = True) -> str:
    """Write ``model`` (from :func:`partreid.load_model`) as an OpenVINO IR (``out`` .xml +
    .bin) through its ONNX graph: same input, output and metadata as ``--format onnx``."""
    require("openvino", "openvino")
    check_xml_path(out)
    tmp = f"{out[:-4]}.tmp{os.getpid()}.onnx"
    try:
        export_onnx(model, tmp, flip=flip)
        return onnx_to_openvino(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
