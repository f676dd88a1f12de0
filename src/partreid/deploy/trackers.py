"""BoxMOT as a client of partreid's exports (the ``trackers`` extra).

BoxMOT's ReID runtime (``boxmot.reid.core.runtime.ReID(path)``) picks its backend by the file's
suffix (``.onnx``: ONNX Runtime, ``.xml``: OpenVINO), cuts each box out of the BGR frame,
resizes it with OpenCV, converts it to RGB, scales it to [0, 1], normalises it with the ImageNet
mean/std (fixed in its code) and L2-normalises the output. partreid's exports take exactly that
input (a model trained with another normalisation renormalises inside the graph), and
:func:`write_sidecar` writes the ``<file>.metadata.json`` BoxMOT reads for the crop size: its
ONNX backend takes the size from the graph, its OpenVINO backend does not (without the sidecar
it feeds 256 x 128 crops and OpenVINO refuses them).

:func:`boxmot_agreement` runs BoxMOT's own runtime on a file and compares its features with
partreid's on the same crops (the remaining difference is OpenCV's resize against PIL's).
BoxMOT 25 pip-installs the ONNX Runtime version it pins (``onnxruntime==1.24.3``) whenever
another one is installed; partreid never lets it change the environment: the check runs with
that install refused and says which version BoxMOT asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Sequence
from unittest import mock

import numpy as np

from .._version import __version__
from ..data.io import read_image
from ..errors import PartreidError
from ..inference import Extractor
from ..inference.exported import one_line
from ..utils.extras import require

BOXMOT_PREPROCESS = "resize"  # BoxMOT's default crop resize (no padding), as partreid resizes


class BoxmotError(PartreidError, RuntimeError):
    """BoxMOT cannot load or run an exported partreid model."""


def boxmot_module(name: str = ""):
    """``boxmot`` (or its submodule ``boxmot.NAME``); a clear error without the extra."""
    root = require("boxmot", "trackers")
    return importlib.import_module(f"boxmot.{name}") if name else root


def sidecar_path(path: str) -> str:
    """Where BoxMOT looks for a model file's metadata: ``<file>.metadata.json``."""
    return f"{path}.metadata.json"


def write_sidecar(path: str, info) -> str:
    """Write BoxMOT's ``<file>.metadata.json`` for an exported model: crop size, resize."""
    size = [int(info.height), int(info.width)]
    data = {
        "schema_version": 1,
        "model_name": f"partreid-{info.name}",
        "num_classes": int(info.num_classes),
        "preprocess": BOXMOT_PREPROCESS,
        "model_kwargs_schema_version": 1,
        "model_kwargs": {"img_size": size},
        "img_size": size,
        "exported_by": f"partreid {__version__}",
    }
    out = sidecar_path(path)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, out)
    return out


@contextlib.contextmanager
def boxmot_quiet_no_installs() -> Iterator[List[str]]:
    """BoxMOT with its runtime ``pip install`` refused (the packages it asked for are
    collected in the yielded list) and its INFO logging off."""
    checks = boxmot_module("utils.checks")
    wanted: List[str] = []

    def refuse(self, packages: Sequence[str], extra_args: Any = None) -> None:
        wanted.extend(str(p) for p in packages)

    logger = logging.getLogger("boxmot")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with mock.patch.object(checks.RequirementsChecker, "_install_packages", refuse):
            yield wanted
    finally:
        logger.setLevel(level)


def boxmot_reid(path: str, wanted: List[str]):
    """BoxMOT's ReID runtime on ``path`` (inside :func:`boxmot_quiet_no_installs`)."""
    runtime = boxmot_module("reid.core.runtime")
    version = boxmot_module().__version__
    try:
        return runtime.ReID(path, device="cpu", half=False)
    except Exception as exc:
        asked = f" (it asked to pip install {', '.join(wanted)})" if wanted else ""
        raise BoxmotError(f"BoxMOT {version} cannot load {path}{asked}: {one_line(exc)}") from None


def _rgb(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    return np.asarray(read_image(str(image)))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / np.maximum(
        np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
    )


def boxmot_agreement(path: str, images: Sequence) -> Dict[str, Any]:
    """Cosine similarity of BoxMOT's features of ``images`` (paths or RGB arrays, as crops)
    with partreid's :class:`Extractor` on the same file (mean, min), and with partreid fed
    crops resized by OpenCV as BoxMOT resizes them (``min_cos_same_resize``: 1 unless something
    other than the resize differs); BoxMOT's version and crop size."""
    cv2 = require("cv2", "trackers")
    rgb = [_rgb(im) for im in images]
    with boxmot_quiet_no_installs() as wanted:
        reid = boxmot_reid(path, wanted)
        try:
            theirs = reid([np.ascontiguousarray(im[..., ::-1]) for im in rgb])
        except Exception as exc:
            raise BoxmotError(f"BoxMOT cannot run {path}: {one_line(exc)}") from None
    h, w = (int(v) for v in reid.model.input_shape)
    ext = Extractor(path, device="cpu", num_workers=0, progress=False)
    cos = _cosine(theirs, ext(rgb))
    same = _cosine(
        theirs, ext([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR) for im in rgb])
    )
    return {
        "mean_cos": float(cos.mean()),
        "min_cos": float(cos.min()),
        "min_cos_same_resize": float(same.min()),
        "boxmot_version": boxmot_module().__version__,
        "refused_installs": wanted,
        "input_size": (h, w),
    }
